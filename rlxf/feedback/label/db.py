"""The labelling app's database: SQLAlchemy 2 models, engines for SQLite or PostgreSQL, and migrations.

Tables (one class each below): ``users``, ``sessions`` (login sessions: a hashed token, a CSRF token, an
expiry), ``projects`` (settings of one labelling job), ``project_members`` (which labellers may work on
which project), ``items`` (one prompt with its candidate responses), ``display_orders`` (the random order
in which one labeller sees one item's responses, stored the first time the item is served) and
``answers`` (one labeller's raw answer to one item; ``client_id`` unique, the idempotency key; one
answer per (item, labeller)).

Engines (:func:`make_engine`): a URL such as ``sqlite:///rlxf-label.db`` (the default; a bare path is
taken as a SQLite file, created with mode 0600: it holds password hashes) or
``postgresql+psycopg://user@host/db``. SQLite runs in WAL mode with ``synchronous=FULL``: a commit has
reached the disk (the WAL is fsynced) before it returns, so an answer the server acknowledged survives a
killed process and even a power cut.

Reads and writes (one rule for both backends): a session's transactions are reads (SQLite: a deferred
``BEGIN``, which in WAL mode neither waits for nor blocks the one writer) until :func:`begin_write` ends
the read and opens a write transaction (SQLite: ``BEGIN IMMEDIATE``, which takes the write lock at once
and waits up to ``busy_timeout`` for it: a deferred transaction that reads and then writes can fail at once
with "database is locked" when another writer committed in between). A flush outside a write transaction
is a bug and raises (:func:`make_sessionmaker`), so no write can slip in as a read. Writers hold the lock
only for their own statements: password hashing, JSON parsing and checks happen before
:func:`begin_write`. :func:`lock_item` serialises the writers of one item's leases and answers on
PostgreSQL too (a transaction-scoped advisory lock), where SQLite's single writer already does.

Schema changes go through Alembic (``migrations/`` beside this file, configured from code, no ini file):
:func:`init_db` upgrades a database to the newest revision, then checks that it is sound and writable
(:class:`DatabaseError` with the reason otherwise: a corrupted file, a read-only file or folder, a role
without write rights); every command calls it at start, so a bad database stops the server before it
answers anything.
Left out: downgrades beyond the initial revision, and read replicas.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from rlxf.config import ConfigError
from rlxf.feedback.label.schema import DEFAULT_DB

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for the lock before "database is locked"
# Connections: enough for FastAPI's 40 worker threads plus a margin (PostgreSQL allows 100 by default).
POOL = {"pool_size": 10, "max_overflow": 50}
WRITE = "rlxf_write"  # the execution option that marks a write transaction (begin_write)
_PG_ITEM_LOCKS = 0x726C69  # pg_advisory_xact_lock(namespace, item id): "rli", apart from other apps' locks


class DatabaseError(ConfigError):
    """The database given with ``--db`` cannot be used: the message says which and why."""


def utcnow() -> dt.datetime:
    """Now in UTC, as a naive datetime: every timestamp column holds UTC without a zone (the same on
    SQLite, which keeps no zone, and PostgreSQL's ``timestamp``)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2 encoded hash (rlxf.feedback.label.auth)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)  # cannot log in; has no sessions
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the cookie's token
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # pairwise, ranking or rating (schema.KINDS)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    labels_per_item: Mapped[int] = mapped_column(Integer, default=1)
    aspects: Mapped[list[str]] = mapped_column(JSON)  # rating aspects (["overall"] for other kinds)
    scale: Mapped[int] = mapped_column(Integer, default=5)  # ratings are 1..scale
    ask_reason: Mapped[str] = mapped_column(
        String(20), default="optional"
    )  # off, optional or required (schema.ASK_REASON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 0-based line of the input file
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the input's "id"
    prompt: Mapped[str] = mapped_column(Text)
    responses: Mapped[list[str]] = mapped_column(JSON)  # in the input's (original) order
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DisplayOrder(Base):
    """``permutation[slot]`` is the original index of the response a labeller sees in display slot ``slot``."""

    __tablename__ = "display_orders"

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    permutation: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Until then the item counts towards its k labels for this labeller (None: no lease, e.g. answered).
    leased_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Answer(Base):
    """One labeller's answer to one item, kept raw (display slots, as sent) and mapped to original indices.

    ``raw`` is the body as sent (``{"choice": "A"}``, ``{"ranking": [1, 0]}`` or ``{"ratings": [...]}``,
    slots in display order); ``value`` the same answer in original response indices: pairwise
    ``{"choice": 0 | 1 | "tie" | "both_bad"}``, ranking ``{"ranking": [index, ...]}`` best first, rating
    ``{"ratings": [{aspect: n}, ...]}`` one dict per original response.
    """

    __tablename__ = "answers"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        Index("ix_answers_project_user", "project_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    display_order: Mapped[list[int]] = mapped_column(JSON)
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def database_url(db: str) -> str:
    """A SQLAlchemy URL from ``--db``: a URL as given, a bare path as a SQLite file
    (``postgresql://`` gets the psycopg 3 driver, the one the ``label`` extra installs)."""
    if "://" not in db:
        return f"sqlite:///{db}"
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def make_engine(db: str = DEFAULT_DB) -> Engine:
    """An engine for ``db`` (see :func:`database_url`); a new SQLite file is created with mode 0600 and
    gets WAL, FULL sync and a busy timeout; transactions are reads until :func:`begin_write` (module
    docstring)."""
    url = make_url(database_url(db))
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **POOL)
    if url.database in (None, "", ":memory:"):
        raise ValueError(
            f"--db {db}: give a SQLite file (sqlite:///path.db); an in-memory database loses every answer"
        )
    if not url.query.get("uri"):  # a file: URI (e.g. ?mode=ro) names a file SQLite opens as told
        _private_file(Path(url.database))
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **POOL)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling off, so that the "begin" hook below decides how they start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (it holds password hashes; SQLite gives its -wal
    and -shm files the same mode); warn when an existing one is readable by others."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                f"{path} is readable by other users (mode {stat.filemode(mode)}); it holds password hashes: "
                f"chmod 600 {path}"
            )
        return
    except OSError as exc:
        raise DatabaseError(f"--db {path}: cannot create the database file ({exc.strerror})") from None
    os.close(fd)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    # expire_on_commit=False: objects stay readable after the commit that acknowledged them.
    maker = sessionmaker(engine, expire_on_commit=False)

    @event.listens_for(maker, "before_flush")
    def _writes_only_in_write_transactions(session: Session, _context: Any, _instances: Any) -> None:
        if not session.connection().get_execution_options().get(WRITE, False):
            raise RuntimeError(
                "a write outside a write transaction: call begin_write(db) before changing rows"
            )

    @event.listens_for(maker, "after_transaction_end")
    def _end_of_write(session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the root transaction ended: committed, rolled back or closed
            _release_write_lock(session)

    return maker


def begin_write(db: Session) -> None:
    """End ``db``'s read transaction (keeping what it loaded) and open a write transaction: on SQLite a
    ``BEGIN IMMEDIATE`` that waits for the write lock. Call it after every slow step (hashing, parsing).

    On SQLite the writers of this process first queue on a Python lock per database file (released when
    the transaction ends): SQLite's own busy handler retries with sleeps of up to 100 ms, so writers
    that queue there wait in bursts and the slowest answers take seconds; a lock hands over at once. The
    busy handler still orders writers of different processes (a second server, a CLI command).
    """
    db.commit()
    lock = _process_write_lock(db.get_bind())
    if lock is not None:
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError(f"no write lock on the database within {SQLITE_BUSY_TIMEOUT_MS / 1000:.0f} s")
        db.info[_HELD] = lock
    try:
        db.connection(execution_options={WRITE: True})
    except BaseException:
        _release_write_lock(db)
        raise


_HELD = "rlxf_process_write_lock"
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _process_write_lock(engine: Engine) -> threading.Lock | None:
    """The lock of this process's writers to one SQLite file (None on PostgreSQL: no single writer)."""
    if engine.dialect.name != "sqlite":
        return None
    key = os.path.realpath(engine.url.database.removeprefix("file:").split("?")[0])
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def _release_write_lock(session: Session) -> None:
    lock = session.info.pop(_HELD, None)
    if lock is not None:
        lock.release()


def lock_item(db: Session, item_id: int) -> None:
    """Serialise the writers of one item's leases and answers until the end of the write transaction (the
    count of its labels and the new one: no item past k): SQLite has one writer already; PostgreSQL waits
    for a transaction-scoped advisory lock."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": _PG_ITEM_LOCKS, "key": item_id})


def try_lock_item(db: Session, item_id: int) -> bool:
    """:func:`lock_item` without waiting: False when another transaction holds it (always True on SQLite)."""
    if db.get_bind().dialect.name != "postgresql":
        return True
    query = text("SELECT pg_try_advisory_xact_lock(:ns, :key)")
    return bool(db.scalar(query, {"ns": _PG_ITEM_LOCKS, "key": item_id}))


def alembic_config(connection: Any = None) -> Any:
    """Alembic's configuration, built in code (no alembic.ini): the scripts in ``migrations/``; the
    ``connection`` to migrate is handed to ``migrations/env.py`` through ``attributes``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def init_db(engine: Engine) -> None:
    """Create or upgrade the database to the newest schema (Alembic ``upgrade head``; idempotent), then
    check that it is sound and writable: :class:`DatabaseError` saying why not, before any request."""
    from alembic import command

    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.execution_options(**{WRITE: True}).begin() as connection:
            command.upgrade(alembic_config(connection), "head")
            if engine.dialect.name == "sqlite":
                problems = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise DatabaseError(f"--db {where}: the database is damaged: {'; '.join(problems[:3])}")
            # A real write (rolled back by nothing: it changes no value) shows a read-only file or role now.
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
    except sqlalchemy.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DatabaseError(f"--db {where}: cannot use this database: {reason}") from None
