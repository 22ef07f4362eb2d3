"""Creating and changing what the labelling app works on: accounts (add, disable, new password),
memberships (add, remove) and projects with their items, one write transaction each (the admin API and
the ``rlxf label`` commands both call these). Passwords are hashed before the write transaction opens, and
a project's items go in as one multi-row insert, so no writer holds the lock for long.

Left out: editing or deleting projects and items once created (make a new project instead), and deleting
accounts (disable them: their answers stay attributed).
"""

from __future__ import annotations

from typing import Any

import argon2
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from rlxf.feedback.label.auth import check_new_password, check_username, hash_password, revoke_sessions
from rlxf.feedback.label.db import Item, Project, ProjectMember, User, begin_write
from rlxf.feedback.label.schema import Candidate, FieldError, Settings, check_settings


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "is_admin": user.is_admin, "disabled": user.disabled}


def find_user(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == username))


def add_user(
    db: Session, hasher: argon2.PasswordHasher, username: str, password: str, is_admin: bool = False
) -> User:
    """A new account (committed); :class:`FieldError` for a bad or taken username or a weak password."""
    check_username(username)
    check_new_password(password, username)
    password_hash = hash_password(hasher, password)  # before the write lock: ~150 ms at the default cost
    begin_write(db)
    # Unique regardless of case: "Alice" beside "alice" is a name to mistake for another.
    if db.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise FieldError("username", f"{username!r} is taken")
    user = User(username=username, password_hash=password_hash, is_admin=is_admin, disabled=False)
    db.add(user)
    db.commit()
    return user


def set_password(
    db: Session,
    hasher: argon2.PasswordHasher,
    user: User,
    password: str,
    field: str = "password",
    keep_session: int | None = None,
) -> int:
    """Give ``user`` a new password (checked, then hashed with no transaction open) and end their sessions
    (all, or all but ``keep_session``: the one that changed its own password); returns how many ended."""
    check_new_password(password, user.username, field)
    password_hash = hash_password(hasher, password)
    begin_write(db)
    db.get(User, user.id).password_hash = password_hash
    revoked = revoke_sessions(db, user.id, keep=keep_session)
    db.commit()
    return revoked


def set_disabled(db: Session, user: User, disabled: bool) -> User:
    """Disable (no login, every session ended) or enable an account; committed."""
    begin_write(db)
    row = db.get(User, user.id)
    row.disabled = disabled
    if disabled:
        revoke_sessions(db, user.id)
    db.commit()
    return row


def add_member(db: Session, project: Project, username: str) -> User:
    """Let ``username`` label ``project`` (committed; adding a member twice is harmless)."""
    begin_write(db)
    user = find_user(db, username)
    if user is None:
        db.rollback()
        raise LookupError(f"no user {username!r}")
    if db.get(ProjectMember, (project.id, user.id)) is None:
        db.add(ProjectMember(project_id=project.id, user_id=user.id))
    db.commit()
    return user


def remove_member(db: Session, project: Project, user_id: int) -> bool:
    """Stop ``user_id`` from labelling ``project`` (their answers stay); False when they were no member."""
    begin_write(db)
    removed = db.execute(
        delete(ProjectMember).where(ProjectMember.project_id == project.id, ProjectMember.user_id == user_id)
    ).rowcount
    db.commit()
    return bool(removed)


def create_project(
    db: Session, settings: Settings, candidates: list[Candidate], members: list[str] = ()
) -> Project:
    """A project with its items and members, in one transaction: on any error nothing is written."""
    settings = check_settings(settings)
    begin_write(db)
    if db.scalar(select(Project).where(Project.name == settings.name)) is not None:
        raise FieldError("name", f"a project called {settings.name!r} exists")
    users = []
    for i, username in enumerate(members):
        user = find_user(db, username)
        if user is None:
            raise FieldError(f"members[{i}]", f"no user {username!r}; create it first (rlxf label user add)")
        users.append(user)
    project = Project(
        name=settings.name,
        kind=settings.kind,
        guidelines=settings.guidelines,
        labels_per_item=settings.labels_per_item,
        aspects=settings.aspects,
        scale=settings.scale,
        ask_reason=settings.ask_reason,
    )
    db.add(project)
    db.flush()
    # One executemany, not an ORM object per item: 20,000 items hold the write lock for well under a second.
    db.execute(
        insert(Item),
        [
            {
                "project_id": project.id,
                "position": i,
                "external_id": c.id,
                "prompt": c.prompt,
                "responses": c.responses,
                "meta": c.meta,
            }
            for i, c in enumerate(candidates)
        ],
    )
    db.add_all(
        ProjectMember(project_id=project.id, user_id=user.id) for user in {u.id: u for u in users}.values()
    )
    db.commit()
    return project
