"""Accounts and permissions of the labelling app: password hashes, login sessions, CSRF, FastAPI dependencies.

* Passwords are stored as argon2id hashes (argon2-cffi's :class:`~argon2.PasswordHasher`; its default
  cost in production, a cheaper one for tests through :func:`password_hasher`).
* A login creates a session: a random token (``secrets.token_urlsafe``) goes to the browser in the
  ``rlxf_session`` cookie (HttpOnly, SameSite=Lax); the database keeps only its sha256, so a leaked
  database holds no usable cookie. Sessions expire (:data:`SESSION_TTL`); logout deletes the row.
* Each session has its own CSRF token, returned by login and ``/api/me``; every state-changing request
  must echo it in the ``X-CSRF-Token`` header (compared with ``secrets.compare_digest``). SameSite=Lax
  already keeps the cookie off cross-site POSTs; the header is the second lock.
* Dependencies: :func:`current_user` (401 without a valid session), :func:`check_csrf` (403),
  :func:`require_admin` (403 for a labeller) and :func:`require_member` (the ``pid`` path parameter:
  404 if no such project, 403 for a labeller who is not a member).

Left out: password reset, rate limiting of logins, and "remember me" lifetimes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import argon2
from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlxf.feedback.label.db import LoginSession, Project, ProjectMember, User, utcnow

COOKIE = "rlxf_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = dt.timedelta(days=14)
MIN_PASSWORD_LENGTH = 8
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def password_hasher(cheap: bool = False) -> argon2.PasswordHasher:
    """argon2-cffi's hasher: its default (RFC 9106 low-memory) cost, or with ``cheap`` the smallest
    sensible cost, for tests that create many accounts."""
    if cheap:
        return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return argon2.PasswordHasher()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password: must have at least {MIN_PASSWORD_LENGTH} characters")


def verify_password(hasher: argon2.PasswordHasher, user: User | None, password: str) -> bool:
    """True when ``password`` matches ``user``'s hash. An unknown user still costs one hash, so response
    times do not tell which usernames exist."""
    if user is None:
        hasher.hash(password)
        return False
    try:
        return hasher.verify(user.password_hash, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


def open_session(db: Session, user: User) -> tuple[str, LoginSession]:
    """A new login session for ``user``; returns the cookie's token (shown once, stored hashed) and the row."""
    token = secrets.token_urlsafe(32)
    row = LoginSession(
        token_hash=hash_token(token),
        csrf_token=secrets.token_urlsafe(32),
        user_id=user.id,
        expires_at=utcnow() + SESSION_TTL,
    )
    db.add(row)
    return token, row


@dataclass
class Caller:
    """The logged-in user of a request and their session (for the CSRF token)."""

    user: User
    session: LoginSession


def get_db(request: Request) -> Iterator[Session]:
    """One database session per request (closed after the response)."""
    with request.app.state.sessionmaker() as db:
        yield db


DB = Annotated[Session, Depends(get_db)]


def _end_read(db: Session) -> None:
    """End a dependency's read transaction. On SQLite every transaction starts with ``BEGIN IMMEDIATE``
    (it holds the write lock); a dependency must not keep that lock while its endpoint waits for a
    thread. (``expire_on_commit=False``: what was read stays readable.)"""
    db.commit()


def current_user(request: Request, db: DB) -> Caller:
    """The caller, from the session cookie; 401 when it is missing, unknown or expired."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise HTTPException(401, "not logged in")
    row = db.scalar(select(LoginSession).where(LoginSession.token_hash == hash_token(token)))
    if row is None or row.expires_at <= utcnow():
        raise HTTPException(401, "session expired or unknown; log in again")
    user = db.get(User, row.user_id)
    if user is None:
        raise HTTPException(401, "session expired or unknown; log in again")
    _end_read(db)
    return Caller(user, row)


LoggedIn = Annotated[Caller, Depends(current_user)]


def check_csrf(request: Request, caller: LoggedIn) -> Caller:
    """403 unless a state-changing request carries the session's CSRF token in ``X-CSRF-Token``."""
    if request.method in SAFE_METHODS:
        return caller
    sent = request.headers.get(CSRF_HEADER)
    if not sent or not secrets.compare_digest(sent.encode(), caller.session.csrf_token.encode()):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
    return caller


Checked = Annotated[Caller, Depends(check_csrf)]
"""The logged-in caller of a request that passed the CSRF check (if it changes state)."""


def require_admin(caller: Checked) -> Caller:
    if not caller.user.is_admin:
        raise HTTPException(403, "admins only")
    return caller


Admin = Annotated[Caller, Depends(require_admin)]


def is_member(db: Session, project_id: int, user_id: int) -> bool:
    return db.get(ProjectMember, (project_id, user_id)) is not None


def require_member(pid: int, caller: Checked, db: DB) -> Project:
    """The project ``pid`` if the caller may work on it: 404 if it does not exist, 403 if the caller is a
    labeller who is not a member. Admins may see every project."""
    project = db.get(Project, pid)
    if project is None:
        raise HTTPException(404, f"no project {pid}")
    if not caller.user.is_admin and not is_member(db, pid, caller.user.id):
        raise HTTPException(403, "you are not a member of this project")
    _end_read(db)
    return project


def require_admin_project(pid: int, caller: Admin, db: DB) -> Project:
    """The project ``pid`` for an admin-only endpoint: 403 for a labeller (member or not), 404 if absent."""
    project = db.get(Project, pid)
    if project is None:
        raise HTTPException(404, f"no project {pid}")
    _end_read(db)
    return project


MemberProject = Annotated[Project, Depends(require_member)]
AdminProject = Annotated[Project, Depends(require_admin_project)]
