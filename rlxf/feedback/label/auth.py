"""Accounts and permissions of the labelling app: password hashes, login sessions, CSRF, FastAPI dependencies.

* Passwords are stored as argon2id hashes (argon2-cffi's :class:`~argon2.PasswordHasher`; its default
  cost in production, a cheaper one for tests through :func:`password_hasher`).
* A login creates a session: a random token (``secrets.token_urlsafe``) goes to the browser in the
  ``rlxf_session`` cookie (HttpOnly, SameSite=Lax); the database keeps only its sha256, so a leaked
  database holds no usable cookie. Sessions expire (:data:`SESSION_TTL`); logout deletes the row.
* Each session has its own CSRF token, returned by login and ``/api/me``; every state-changing request
  must echo it in the ``X-CSRF-Token`` header (compared with ``secrets.compare_digest``). SameSite=Lax
  already keeps the cookie off cross-site POSTs; the header is the second lock.
* Dependencies: :func:`current_user` (401 without a valid session, or for a disabled account),
  :func:`check_csrf` (403), :func:`require_admin` (403 for a labeller) and :func:`require_member` (the
  ``pid`` path parameter: 404 if no such project, and the same 404 for a labeller who is not a member, so
  a labeller cannot tell which project ids exist).
* Logins (:func:`log_in`): :class:`LoginThrottle` first (failed logins per client address and per
  username, in a moving window, from the ``limits`` library, attempts still being checked counted too:
  429 with ``Retry-After`` before any work, sent after a one-second tarpit),
  then the user is read in a short read transaction, the password checked with no transaction open and
  in :data:`HASH_WORKERS` low-priority threads (at most that many argon2 hashes at once, 64 MiB each at
  the default cost, on the cores labelling leaves free),
  and only a correct login takes the write lock, to store its session and purge expired ones.
* New passwords (:func:`check_new_password`): 8 to 1024 characters, and not guessable: zxcvbn's score
  >= 2 (about 10^6 guesses or more), with the username as a known word, so ``12345678``, ``password``
  and eight spaces are refused. Usernames (:func:`check_username`): ASCII letters, digits and ``._@+-``
  (no invisible, bidi or look-alike characters), unique regardless of case.

Left out: password reset by e-mail, "remember me" lifetimes, and a throttle shared between server
processes (the counts live in each process's memory; ``limits`` has Redis storage for that).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import ipaddress
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import argon2
from fastapi import Depends, HTTPException, Path, Request
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from rlxf.feedback.label.db import LoginSession, Project, ProjectMember, User, begin_write, utcnow
from rlxf.feedback.label.schema import FieldError, check_text

COOKIE = "rlxf_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = dt.timedelta(days=14)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this bounds the work a request can ask for
MIN_PASSWORD_SCORE = 2  # zxcvbn's 0..4 scale: 2 is "somewhat guessable" (>= 10^6 guesses)
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Argon2 runs in HASH_WORKERS threads of its own (at the default cost one hash takes ~150 ms, ~230 ms of
# CPU over its 4 lanes, and 64 MiB), at a lower CPU priority (nice +HASH_NICE, Linux): a flood of logins
# then waits for the cores the labellers leave free instead of taking them. A hash that has not started
# within HASH_WAIT_S is dropped with a 503.
HASH_WORKERS = 2
HASH_NICE = 10
HASH_WAIT_S = 30.0
# Failed logins allowed in a moving window before 429: per client address (an IPv6 /64 counts as one) and
# per username (whoever tries it). Only failures count, so labellers logging in behind one NAT are fine.
FAILED_LOGINS_PER_ADDRESS = "20/minute"
FAILED_LOGINS_PER_USERNAME = "10/15 minutes"
TARPIT_S = 1.0  # a throttled attempt's 429 waits this long (LoginThrottle)
MAX_TARPITTED = 1024  # 429s waiting at once; past that they go out at once


def password_hasher(cheap: bool = False) -> argon2.PasswordHasher:
    """argon2-cffi's hasher: its default (RFC 9106 low-memory) cost, or with ``cheap`` the smallest
    sensible cost, for tests that create many accounts."""
    if cheap:
        return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return argon2.PasswordHasher()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(username: str, field: str = "username") -> str:
    """``username`` if it is a valid new name; :class:`FieldError` naming ``field`` otherwise."""
    if not USERNAME.fullmatch(username):
        raise FieldError(
            field,
            "1-64 characters: ASCII letters, digits and . _ @ + - (starting with a letter or digit), "
            f"got {username[:70]!r}",
        )
    return username


def check_new_password(password: str, username: str = "", field: str = "password") -> None:
    """:class:`FieldError` naming ``field`` when ``password`` is too short, too long or guessable."""
    from zxcvbn import zxcvbn

    if len(password) < MIN_PASSWORD_LENGTH:
        raise FieldError(field, f"must have at least {MIN_PASSWORD_LENGTH} characters")
    check_text(password, field, max_length=MAX_PASSWORD_LENGTH)  # no NUL, no lone surrogate
    if not password.strip():
        raise FieldError(field, "must hold more than spaces")
    # zxcvbn reads at most 72 characters; a longer password is not weaker than its first 72.
    strength = zxcvbn(password[:72], user_inputs=[username] if username else [])
    if strength["score"] < MIN_PASSWORD_SCORE:
        hint = strength["feedback"].get("warning") or "too easy to guess"
        raise FieldError(field, f"{hint.rstrip('.')}: pick a longer or less common password")


def _lower_priority() -> None:
    """Run this (hashing) thread at a lower CPU priority: on Linux ``setpriority`` on a thread id changes
    that thread alone, and argon2's lane threads inherit it. Elsewhere it stays as it is."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)


_HASHING = concurrent.futures.ThreadPoolExecutor(HASH_WORKERS, "rlxf-argon2", initializer=_lower_priority)


def _in_hashing_thread(function: Callable[[], Any]) -> Any:
    future = _HASHING.submit(function)
    try:
        return future.result(timeout=HASH_WAIT_S)
    except concurrent.futures.TimeoutError:
        future.cancel()  # still queued: dropped; already running: finishes unseen
        raise HTTPException(
            503, "the server is busy checking passwords; try again", {"Retry-After": "5"}
        ) from None


def hash_password(hasher: argon2.PasswordHasher, password: str) -> str:
    """argon2id hash of ``password``, in a hashing thread; call it with no transaction open."""
    return _in_hashing_thread(lambda: hasher.hash(password))


def verify_password(hasher: argon2.PasswordHasher, user: User | None, password: str) -> bool:
    """True when ``password`` matches ``user``'s hash (checked in a hashing thread). An unknown user still
    costs one hash, so response times do not tell which usernames exist. Call it with no transaction open."""

    def check() -> bool:
        if user is None:
            hasher.hash(password)
            return False
        try:
            return hasher.verify(user.password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        except UnicodeEncodeError:  # a lone surrogate: matches no stored password
            return False

    return _in_hashing_thread(check)


class LoginThrottle:
    """Failed logins per client address and per username in moving windows (``limits``, in memory).

    An attempt is admitted only while the failures in each window plus the attempts still being checked
    stay under the limit: counting attempts in flight closes the race in which many concurrent attempts
    all pass the check during the ~150 ms before any of them has failed (each freed slot of the window
    would let every waiting attacker through). A key with no failure in its window is not limited, so a
    room of labellers behind one address can log in at once; an attacker gets one such burst, as many
    attempts as it has connections (hashed :data:`HASH_WORKERS` at a time, at a low priority). A refused attempt is answered
    429 after :data:`TARPIT_S` (an attacker's loop that ignores ``Retry-After`` then runs at one attempt
    a second, not hundreds), sleeping without a thread, for up to :data:`MAX_TARPITTED` at once.
    """

    def __init__(
        self, per_address: str = FAILED_LOGINS_PER_ADDRESS, per_username: str = FAILED_LOGINS_PER_USERNAME
    ) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.limits: list[tuple[str, RateLimitItem]] = [
            ("address", parse(per_address)),
            ("username", parse(per_username)),
        ]
        self.lock = threading.Lock()
        self.in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        self.tarpitted = 0

    def _keys(self, address: str, username: str) -> list[tuple[str, str]]:
        return [("address", _address_key(address)), ("username", username.casefold()[:200])]

    @contextlib.contextmanager
    def attempt(self, address: str, username: str) -> Iterator[None]:
        """One login attempt: 429 with ``Retry-After`` (seconds) at once when a window is full; a 401
        raised inside counts as a failure."""
        keys = self._keys(address, username)
        with self.lock:
            waits = []
            for (_kind, limit), key in zip(self.limits, keys):
                stats = self.limiter.get_window_stats(limit, "failed-login", *key)
                failures = limit.amount - stats.remaining
                # No failure yet: not limited (fifty labellers behind one NAT log in at once). After one,
                # the attempts still being checked count as failures too.
                if failures > 0 and failures + self.in_flight[key] >= limit.amount:
                    waits.append(max(1, math.ceil(stats.reset_time - time.time())))
            if waits:
                wait = max(waits)
                raise HTTPException(
                    429,
                    f"too many failed logins for this account or address; try again in {wait} s",
                    {"Retry-After": str(wait)},
                )
            self.in_flight.update(keys)
        failed = False
        try:
            yield
        except HTTPException as exc:
            failed = exc.status_code == 401
            raise
        finally:
            with self.lock:
                self.in_flight.subtract(keys)
                self.in_flight += collections.Counter()  # drop the zeros: the counter does not grow
                if failed:
                    for (_kind, limit), key in zip(self.limits, keys):
                        self.limiter.hit(limit, "failed-login", *key)

    async def tarpit(self) -> None:
        """Wait :data:`TARPIT_S` before a 429 goes out (at once when too many are waiting already)."""
        if self.tarpitted >= MAX_TARPITTED:
            return
        self.tarpitted += 1
        try:
            await anyio.sleep(TARPIT_S)
        finally:
            self.tarpitted -= 1


def _address_key(address: str) -> str:
    """The throttle's key for a client address: the address, or its /64 network for IPv6 (one host
    usually owns a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def log_in(
    maker: sessionmaker, hasher: argon2.PasswordHasher, username: str, password: str
) -> tuple[str, LoginSession, User]:
    """Check a login (module docstring: read, hash with no transaction, write; the caller throttles):
    the new session's cookie token, its row and the user; 401 for a wrong password or a disabled account."""
    with maker() as db:
        user = db.scalar(select(User).where(User.username == username))
        db.commit()  # end the read: the hash below takes ~150 ms and must not hold anything
        if not verify_password(hasher, user, password) or user.disabled:
            raise HTTPException(401, "wrong username or password")
        begin_write(db)
        db.execute(delete(LoginSession).where(LoginSession.expires_at <= utcnow()))  # expired: gone
        token, row = open_session(db, user)
        db.commit()
        return token, row, user


def revoke_sessions(db: Session, user_id: int, keep: int | None = None) -> int:
    """End ``user_id``'s sessions (all, or all but session ``keep``) in the current write transaction;
    returns how many ended."""
    query = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    return db.execute(query).rowcount or 0


def active_sessions(db: Session) -> dict[int, int]:
    """user id -> number of unexpired sessions."""
    rows = db.execute(
        select(LoginSession.user_id, func.count())
        .where(LoginSession.expires_at > utcnow())
        .group_by(LoginSession.user_id)
    )
    return {user_id: n for user_id, n in rows}


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


def current_user(request: Request, db: DB) -> Caller:
    """The caller, from the session cookie; 401 when it is missing, unknown or expired."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise HTTPException(401, "not logged in")
    found = db.execute(
        select(LoginSession, User)
        .join(User, User.id == LoginSession.user_id)
        .where(LoginSession.token_hash == hash_token(token))
    ).first()
    if found is None or found[0].expires_at <= utcnow() or found[1].disabled:
        raise HTTPException(401, "session expired or unknown; log in again")
    row, user = found
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


MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; a larger one is a 422, not a database error
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="a project's id")]


def require_member(pid: ProjectId, caller: Checked, db: DB) -> Project:
    """The project ``pid`` if the caller may work on it: 404 if it does not exist, 403 if the caller is a
    labeller who is not a member. Admins may see every project."""
    project = db.get(Project, pid)
    if project is None:
        raise HTTPException(404, f"no project {pid}")
    if not caller.user.is_admin and not is_member(db, pid, caller.user.id):
        raise HTTPException(
            404, f"no project {pid}"
        )  # as for a missing one: ids of others' projects stay hidden
    return project


def require_admin_project(pid: ProjectId, caller: Admin, db: DB) -> Project:
    """The project ``pid`` for an admin-only endpoint: 403 for a labeller (member or not), 404 if absent."""
    project = db.get(Project, pid)
    if project is None:
        raise HTTPException(404, f"no project {pid}")
    return project


MemberProject = Annotated[Project, Depends(require_member)]
AdminProject = Annotated[Project, Depends(require_admin_project)]
