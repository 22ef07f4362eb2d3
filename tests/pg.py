"""A real PostgreSQL server for the labelling app's tests, and the ``label_db`` fixture over both backends.

``postgres_server`` (one per test session): ``initdb`` into a temporary folder, ``pg_ctl start`` on a free
port with its unix socket in that folder and no TCP listener, torn down (``pg_ctl stop``, folder removed)
at the end. As root, the server runs as the ``postgres`` OS user (``runuser -u postgres --``), which
owns the folder; PostgreSQL refuses to run as root. ``fsync=off``: the cluster is thrown away, and the
durability test (a killed server process) runs on SQLite, whose commits are fsynced.

Missing binaries FAIL the tests that need them, with the fix (scripts/test.sh installs PostgreSQL 15);
they are not skipped.

``label_db`` gives each test a fresh, empty database URL: a SQLite file in the test's tmp folder, or a
new database on the session's PostgreSQL server.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class PostgresServer:
    socket_dir: str
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found and shutil.which("initdb"):
        found = [shutil.which("initdb")]
    if not found:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/test.sh, which installs "
            "PostgreSQL 15 with apt-get; the labelling app's database tests need a real server",
            pytrace=False,
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_bin()
    root = tempfile.mkdtemp(prefix="rlxf-pg-")
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, log = f"{root}/data", f"{root}/server.log"
    port = _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_postgres, *args], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            server_log = Path(log).read_text() if Path(log).exists() else ""
            pytest.fail(
                f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{server_log}", pytrace=False
            )

    run(str(bin_dir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses='' -c fsync=off -c max_connections=200"
    run(str(bin_dir / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start")
    try:
        yield PostgresServer(root, port)
    finally:
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"], cwd=root
        )
        shutil.rmtree(root, ignore_errors=True)


_database_numbers = itertools.count()


def new_postgres_database(server: PostgresServer) -> str:
    """A new empty database on ``server``; its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(host=server.socket_dir, port=server.port, user="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def label_db(request, tmp_path) -> str:
    """A fresh database URL: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/label.db"
    return new_postgres_database(request.getfixturevalue("postgres_server"))
