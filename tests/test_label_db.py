"""The labelling app's database on SQLite and on a real PostgreSQL server: the Alembic migration gives
exactly the models' schema, init is idempotent, the constraints that keep answers unique hold, and SQLite
runs in WAL mode with full sync and a busy timeout."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import (
    Answer,
    Base,
    DisplayOrder,
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
    assert version == "0001"
    engine.dispose()


def _project(db, kind="pairwise"):
    alice = add_user(db, password_hasher(cheap=True), "alice", "password-a")
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
        db.add(Answer(client_id="c1", item_id=items[0], **common))
        db.commit()
        db.add(Answer(client_id="c2", item_id=items[0], **common))  # same item, same labeller
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        db.add(Answer(client_id="c1", item_id=items[1], **common))  # same client_id
        with pytest.raises(IntegrityError):
            db.commit()
        db.rollback()
        db.add(DisplayOrder(item_id=items[0], user_id=alice.id, permutation=[1, 0]))
        db.commit()
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
        users = [add_user(db, hasher, f"u{i}", "password-x") for i in range(50)]
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
                # with "database is locked" (checked by hand); BEGIN IMMEDIATE makes them queue instead
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
