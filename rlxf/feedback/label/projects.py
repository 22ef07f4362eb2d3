"""Creating what the labelling app works on: accounts, memberships and projects with their items, one
transaction each (the admin API and the ``rlxf label`` commands both call these).

Left out: editing or deleting projects and items once created (make a new project instead).
"""

from __future__ import annotations

from typing import Any

import argon2
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlxf.data.errors import show
from rlxf.feedback.label.auth import check_new_password
from rlxf.feedback.label.db import Item, Project, ProjectMember, User
from rlxf.feedback.label.schema import Candidate, FieldError, Settings, check_settings


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "is_admin": user.is_admin}


def find_user(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == username))


def add_user(
    db: Session, hasher: argon2.PasswordHasher, username: str, password: str, is_admin: bool = False
) -> User:
    """A new account (committed); :class:`FieldError` for a bad or taken username or a short password."""
    if not username.strip() or username != username.strip() or len(username) > 100:
        raise FieldError(
            "username", f"expected 1-100 characters without surrounding spaces, got {show(username)}"
        )
    try:
        check_new_password(password)
    except ValueError as exc:
        raise FieldError("password", str(exc).split(": ", 1)[1]) from None
    if find_user(db, username) is not None:
        raise FieldError("username", f"{username!r} is taken")
    user = User(username=username, password_hash=hasher.hash(password), is_admin=is_admin)
    db.add(user)
    db.commit()
    return user


def add_member(db: Session, project: Project, username: str) -> User:
    """Let ``username`` label ``project`` (committed; adding a member twice is harmless)."""
    user = find_user(db, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    if db.get(ProjectMember, (project.id, user.id)) is None:
        db.add(ProjectMember(project_id=project.id, user_id=user.id))
        db.commit()
    return user


def create_project(
    db: Session, settings: Settings, candidates: list[Candidate], members: list[str] = ()
) -> Project:
    """A project with its items and members, in one transaction: on any error nothing is written."""
    settings = check_settings(settings)
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
    db.add_all(
        Item(
            project_id=project.id,
            position=i,
            external_id=c.id,
            prompt=c.prompt,
            responses=c.responses,
            meta=c.meta,
        )
        for i, c in enumerate(candidates)
    )
    db.add_all(
        ProjectMember(project_id=project.id, user_id=user.id) for user in {u.id: u for u in users}.values()
    )
    db.commit()
    return project
