"""The labelling app's database on SQLite and on a real PostgreSQL server: the Alembic migration gives
exactly the models' schema, init is idempotent, the constraints that keep answers unique hold, and SQLite
runs in WAL mode with full sync and a busy timeout; reads never wait for a writer, and a write outside a
write transaction is refused; the SQLite file is private (0600); a damaged or read-only database stops
init_db with a clear message."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import (
    Answer,
    Base,
    DatabaseError,
    DisplayOrder,
    begin_write,
    database_url,
    init_db,
    make_engine,
    make_sessionmaker,
)
from rlxf.feedback.label.projects import Candidate, Settings, add_user, create_project


def test_migration_matches_the_models(label_db):
    engine = make_engine(label_db)
    init_db(engine)
    init_db(engine)  # idempotent: a second run at head changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        tables = set(inspect(conn).get_table_names())
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert version == "0002"
    engine.dispose()


def _project(db, kind="pairwise"):
    alice = add_user(db, password_hasher(cheap=True), "alice", "apricot-lantern-41")
    project = create_project(
        db, Settings(name="p", kind=kind), [Candidate("q", ["x", "y"]), Candidate("r", ["u", "v"])]
    )
    return alice, project


def test_answers_are_unique_per_client_id_and_per_item_and_labeller(label_db):
    engine = make_engine(label_db)
    init_db(engine)
    with make_sessionmaker(engine)() as db:
        alice, project = _project(db)
        items = sorted(project_items(db, project.id))
        common = dict(project_id=project.id, user_id=alice.id, display_order=[0, 1], raw={}, value={})
        begin_write(db)
        db.add(Answer(client_id="c1", item_id=items[0], **common))
        db.commit()
        begin_write(db)
        db.add(Answer(client_id="c2", item_id=items[0], **common))  # same item, same labeller
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        begin_write(db)
        db.add(Answer(client_id="c1", item_id=items[1], **common))  # same client_id
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        begin_write(db)
        db.add(DisplayOrder(item_id=items[0], user_id=alice.id, permutation=[1, 0]))
        begin_write(db)
        db.add(DisplayOrder(item_id=items[0], user_id=alice.id, permutation=[0, 1]))
        with pytest.raises(IntegrityError):
            db.commit()
    engine.dispose()


def project_items(db, project_id):
    return db.scalars(text("SELECT id FROM items WHERE project_id = :p").bindparams(p=project_id)).all()


def test_a_failed_project_creation_writes_nothing(label_db):
    engine = make_engine(label_db)
    init_db(engine)
    with make_sessionmaker(engine)() as db:
        with pytest.raises(ValueError, match="members\\[0\\]"):
            create_project(db, Settings(name="p", kind="pairwise"), [Candidate("q", ["x", "y"])], ["nobody"])
        db.rollback()
        assert db.execute(text("SELECT count(*) FROM projects")).scalar_one() == 0
        assert db.execute(text("SELECT count(*) FROM items")).scalar_one() == 0
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(tmp_path):
    engine = make_engine(str(tmp_path / "x.db"))  # a bare path is a SQLite file
    init_db(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    engine.dispose()


def test_database_urls():
    assert database_url("x.db") == "sqlite:///x.db"
    assert database_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert database_url("sqlite:///a/b.db") == "sqlite:///a/b.db"
    with pytest.raises(ValueError, match="in-memory"):
        make_engine("sqlite://")


def test_fifty_concurrent_writers_all_commit(label_db):
    """50 threads insert answers at once (each its own connection and transaction): none fails with
    "database is locked" and every row is there."""
    engine = make_engine(label_db)
    init_db(engine)
    maker = make_sessionmaker(engine)
    with maker() as db:
        hasher = password_hasher(cheap=True)
        users = [add_user(db, hasher, f"u{i}", "apricot-lantern-41") for i in range(50)]
        project = create_project(db, Settings(name="p", kind="pairwise"), [Candidate("q", ["x", "y"])])
        (item_id,) = project_items(db, project.id)
    engine.pool.dispose()
    barrier = threading.Barrier(50)
    errors = []

    def write(user_id: int) -> None:
        try:
            barrier.wait()
            with maker() as db:
                # read, then write, in one transaction: with a deferred BEGIN some of these fail at once
                # with "database is locked" (checked by hand); begin_write's BEGIN IMMEDIATE queues them
                begin_write(db)
                db.execute(text("SELECT count(*) FROM answers")).scalar_one()
                db.add(DisplayOrder(item_id=item_id, user_id=user_id, permutation=[0, 1]))
                db.add(
                    Answer(
                        client_id=f"c{user_id}",
                        project_id=project.id,
                        item_id=item_id,
                        user_id=user_id,
                        display_order=[0, 1],
                        raw={"choice": "A"},
                        value={"choice": 0},
                    )
                )
                db.commit()
        except Exception as exc:  # collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(u.id,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM answers")).scalar_one() == 50
    engine.dispose()


def test_reads_do_not_wait_for_a_writer_and_writes_need_a_write_transaction(label_db):
    engine = make_engine(label_db)
    init_db(engine)
    maker = make_sessionmaker(engine)
    with maker() as writer, maker() as reader:
        _project(writer)
        begin_write(writer)  # holds SQLite's write lock (PostgreSQL: an open write transaction) ...
        writer.execute(text("UPDATE projects SET guidelines = 'changing'"))
        started = time.monotonic()
        # ... while a read in another session answers at once, with what was committed before
        assert reader.execute(text("SELECT guidelines FROM projects")).scalar_one() == ""
        assert time.monotonic() - started < 1.0  # the busy timeout is 30 s: a waiting read would show
        reader.commit()
        writer.commit()
        reader.add(DisplayOrder(item_id=1, user_id=1, permutation=[0, 1]))
        with pytest.raises(RuntimeError, match="begin_write"):
            reader.flush()
    engine.dispose()


def test_the_sqlite_file_is_private(tmp_path):
    engine = make_engine(str(tmp_path / "labels.db"))
    init_db(engine)
    engine.dispose()
    assert stat.S_IMODE(os.stat(tmp_path / "labels.db").st_mode) == 0o600
    wal = tmp_path / "labels.db-wal"
    if wal.exists():  # SQLite gives its WAL the database file's mode
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_a_damaged_or_read_only_database_is_refused_with_the_reason(tmp_path):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a SQLite database, just text " * 100)
    with pytest.raises(DatabaseError, match=r"damaged\.db: cannot use this database: file is not a database"):
        init_db(make_engine(str(damaged)))

    good = tmp_path / "good.db"
    engine = make_engine(str(good))
    init_db(engine)
    engine.dispose()
    # the header of every b-tree page after the first overwritten (a disk fault, a bad copy)
    data = bytearray(good.read_bytes())
    for page in range(4096, len(data), 4096):
        data[page : page + 8] = b"\xff" * 8
    good.write_bytes(bytes(data))
    with pytest.raises(DatabaseError, match="good.db: (cannot use this database|the database is damaged)"):
        init_db(make_engine(str(good)))

    readonly = tmp_path / "readonly.db"
    engine = make_engine(str(readonly))
    init_db(engine)
    engine.dispose()
    engine = make_engine(f"sqlite:///file:{readonly}?mode=ro&uri=true")
    with pytest.raises(DatabaseError, match="readonly"):
        init_db(engine)
    engine.dispose()
