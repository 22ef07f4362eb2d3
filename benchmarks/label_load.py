"""Load on the labelling app (``rlxf label serve``): concurrent labellers over loopback, a SIGKILL, and a
flood of wrong-password logins.

Every phase starts from a fresh database on the chosen backend (``--db-backend``): a SQLite file (the
default), or a new database on a throwaway PostgreSQL cluster that the script starts for the run
(``initdb`` + ``pg_ctl`` into a temporary folder, unix socket only, as ``tests/pg.py`` does; the
PostgreSQL 15 binaries from scripts/test.sh) and passes to the server as a ``postgresql+psycopg://`` URL.
The server is the real one (``rlxf label serve --db URL``) in a subprocess, with its default argon2 cost.

Phase ``load``: a pairwise project of VOTES / 2 items (k=2 labels per item), LABELLERS labeller accounts
and an admin; LABELLERS threads, each with its own HTTP client, log in and loop ``GET /next`` -> ``POST
.../answers`` (a random choice, a fresh client_id) until VOTES answers are acknowledged (201, or 200 for a
replayed client_id). Printed: p50 / p95 / max latency of the answer POSTs that were acknowledged and of
``GET /next``, votes per second, and the 5xx answers seen (each retried). Then the admin's raw export
must hold every acknowledged answer exactly once (matched by client_id; the answer_ids by the admin's
answer list) and no answer that was never acknowledged.

Phase ``kill``: the same, but the server is killed with SIGKILL once KILL_AFTER answers are acknowledged
and started again on the same database and port. Labellers whose request failed keep the answer and retry
with the same client_id (a commit whose response was lost comes back as 200 with the stored answer_id),
as the web page does. Printed: the same figures plus failed attempts, replays and the downtime; the same
checks.

Phase ``flood``: FLOOD_LABELLERS labellers (10) and the admin log in first; then for FLOOD_SECONDS (60)
the labellers label as in ``load`` while ATTACKERS threads (32), one HTTP client each, in a process of
their own (so that their client work does not hold the labellers' GIL), loop ``POST /api/login`` with
wrong passwords, half of them against the labellers' usernames and half against random names, ignoring
any Retry-After. Everything comes from 127.0.0.1, so a per-IP throttle sees one
client; the labellers are logged in before the flood starts and need no login during it. The labeller
accounts get real argon2 hashes in this phase (a wrong password against an existing name costs a full
verify, one against an unknown name a full hash: the work an attacker makes the server do). Printed, for
the labellers: answer POST and ``GET /next`` p50 / p95 / max, 5xx answers, votes acknowledged; for the
attackers: answers by status (401 / 429 / other) and attempts per second; then the same export check
(through the admin's session opened before the flood). The phase fails on any 5xx to a labeller, an
answer POST p95 of 500 ms or more, an export mismatch, or attackers that never got a 429.

The script exits non-zero when a check fails. In the load and kill phases accounts get a cheap argon2
hash (logins are not what is measured). Client threads and the server share this machine's cores, so the
latencies include the client's own Python overhead; run it on an otherwise idle machine.

    python benchmarks/label_load.py                    # 50 labellers, 2,000 votes, then a 60 s flood
    python benchmarks/label_load.py --quick            # 10 labellers, 200 votes; a 20 s flood
    python benchmarks/label_load.py --phase kill       # only the SIGKILL phase
    python benchmarks/label_load.py --phase flood --db-backend postgresql
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker
from rlxf.feedback.label.projects import add_user, create_project
from rlxf.feedback.label.schema import Candidate, Settings

PASSWORD = "load-test-password"
ADMIN = "admin"
LABELS_PER_ITEM = 2
CHOICES = ("A", "B", "tie", "both_bad")
PHASES = ("load", "kill", "flood")
FLOOD_P95_LIMIT_MS = 500.0  # a labeller's answer POST p95 under the flood must stay below this
FLOOD_VOTES_PER_SECOND = 100  # items seeded for the flood: enough that the queue outlasts it


@dataclass
class Tally:
    """What the labeller threads share: tickets (one per vote still to be cast) and what came back."""

    target: int
    deadline: float  # time.monotonic() after which labellers give up (a stuck server fails the run)
    stop_at: float | None = None  # time.monotonic() after which no new ticket is handed out (flood)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    acked: dict[str, int] = field(default_factory=dict)  # client_id -> answer_id
    replays: int = 0  # acknowledgements with 200: the answer had been committed by an earlier attempt
    latencies: list[float] = field(default_factory=list)  # seconds, acknowledged POSTs only
    next_latencies: list[float] = field(default_factory=list)  # seconds, GET /next that got an answer
    failed_attempts: int = 0  # POSTs that got no answer or a 5xx (each was retried)
    server_errors: int = 0  # answers with a 5xx status, to any labeller request (each was retried)
    errors: list[str] = field(default_factory=list)  # anything unexpected: the run fails

    def past_deadline(self, who: str) -> bool:
        if time.monotonic() < self.deadline:
            return False
        with self.lock:
            self.errors.append(f"{who}: gave up at the --timeout deadline")
        return True

    def take_ticket(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.issued >= self.target or now >= self.deadline:
                return False
            if self.stop_at is not None and now >= self.stop_at:
                return False
            self.issued += 1
            return True

    def return_ticket(self) -> None:
        with self.lock:
            self.issued -= 1


class Server:
    """``rlxf label serve`` in a subprocess, on a fixed port, logging to a file."""

    def __init__(self, db_url: str, port: int, log_path: Path) -> None:
        self.db_url, self.port, self.log_path = db_url, port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> float:
        """Starts the server and waits until it answers; returns the seconds that took."""
        started = time.perf_counter()
        command = [sys.executable, "-m", "rlxf", "label", "serve", "--db", self.db_url]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}/login", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"the server did not answer within {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Postgres:
    """A throwaway PostgreSQL cluster for the run, as ``tests/pg.py`` starts one for the tests: ``initdb``
    into a temporary folder, ``pg_ctl start`` on a free port with its unix socket in that folder and no
    TCP listener, ``fsync=off`` (it is thrown away); as root the server runs as the ``postgres`` OS user.
    ``database(name)`` creates an empty database and returns its ``postgresql+psycopg://`` URL."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found and shutil.which("initdb"):
            found = [shutil.which("initdb")]
        if not found:
            raise SystemExit(
                "--db-backend postgresql: PostgreSQL server binaries (initdb, pg_ctl) not found; "
                "scripts/test.sh installs PostgreSQL 15 with apt-get"
            )
        self.bin_dir = Path(found[-1]).parent
        self.root = tempfile.mkdtemp(prefix="rlxf-label-load-pg-")  # not under --keep: postgres must reach it
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.data, self.log = f"{self.root}/data", f"{self.root}/server.log"
        self.port = free_port()

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_postgres, *args], cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            log = Path(self.log).read_text() if Path(self.log).exists() else ""
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{log}")

    def __enter__(self) -> Postgres:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", self.data, "-o", options, "-l", self.log, "-w", "start")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.bin_dir / "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
            cwd=self.root,
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host=self.root, port=self.port, user="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@/{name}?host={self.root}&port={self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(db_url: str, labellers: int, votes: int, real_hash: bool = False) -> int:
    """The admin, the labellers and a pairwise project of votes / k items they all belong to; its id.
    ``real_hash``: the labellers' passwords get the server's default argon2 cost (the admin's stays cheap)."""
    engine = make_engine(db_url)
    init_db(engine)
    cheap = password_hasher(cheap=True)
    hasher = password_hasher() if real_hash else cheap
    names = [f"labeller{i:03d}" for i in range(labellers)]
    items = [
        Candidate(f"Prompt {i}: say something about the number {i}.", [f"{i} is a number.", f"{i} is not."])
        for i in range(-(-votes // LABELS_PER_ITEM))
    ]
    with make_sessionmaker(engine)() as db:
        add_user(db, cheap, ADMIN, PASSWORD, is_admin=True)
        for name in names:
            add_user(db, hasher, name, PASSWORD)
        settings = Settings(name="load", kind="pairwise", labels_per_item=LABELS_PER_ITEM, ask_reason="off")
        project_id = create_project(db, settings, items, names).id
    engine.dispose()
    return project_id


def wait_a_little(attempt: int) -> None:
    time.sleep(min(0.05 * 2**attempt, 1.0))


def request_until_answered(
    client: httpx.Client, tally: Tally, method: str, url: str, timings: list[float] | None = None, **kwargs
) -> httpx.Response | None:
    """Sends until the server answers with something other than a 5xx (it may be down, being restarted);
    None at the deadline. 5xx answers are counted in ``tally.server_errors``; the seconds of the attempt
    that got the answer are appended to ``timings``."""
    attempt = 0
    while not tally.past_deadline(f"{method} {url}"):
        started = time.perf_counter()
        try:
            response = client.request(method, url, **kwargs)
            if response.status_code < 500:
                if timings is not None:
                    with tally.lock:
                        timings.append(time.perf_counter() - started)
                return response
            with tally.lock:
                tally.server_errors += 1
        except httpx.TransportError:
            pass
        attempt += 1
        wait_a_little(attempt)
    return None


def log_in(client: httpx.Client, tally: Tally, username: str) -> dict[str, str] | None:
    """Logs ``client`` in as ``username``; the CSRF header for its writes, or None (an error is noted)."""
    response = request_until_answered(
        client, tally, "POST", "/api/login", json={"username": username, "password": PASSWORD}
    )
    if response is None:
        return None
    if response.status_code != 200:
        tally.errors.append(f"{username}: login answered {response.status_code} {response.text}")
        return None
    return {"X-CSRF-Token": response.json()["csrf_token"]}


def labeller(base: str, username: str, project_id: int, tally: Tally, seed_value: int) -> None:
    """One labeller: log in, then next -> answer until no ticket is left or the queue is empty."""
    with httpx.Client(base_url=base, timeout=60) as client:
        headers = log_in(client, tally, username)
        if headers is not None:
            label(client, headers, username, project_id, tally, seed_value)


def label(
    client: httpx.Client,
    headers: dict[str, str],
    username: str,
    project_id: int,
    tally: Tally,
    seed_value: int,
) -> None:
    """A logged-in labeller's loop: next -> answer until no ticket is left or the queue is empty."""
    rng = random.Random(seed_value)
    while tally.take_ticket():
        response = request_until_answered(
            client, tally, "GET", f"/api/projects/{project_id}/next", timings=tally.next_latencies
        )
        if response is None:
            return
        if response.status_code == 204:
            tally.return_ticket()
            return
        if response.status_code != 200:
            tally.errors.append(f"{username}: next answered {response.status_code} {response.text}")
            tally.return_ticket()
            return
        item_id = response.json()["item_id"]
        body = {"client_id": str(uuid.uuid4()), "choice": rng.choice(CHOICES)}
        url = f"/api/projects/{project_id}/items/{item_id}/answers"
        attempt = 0
        while not tally.past_deadline("answer POST"):  # the same body and client_id until acknowledged
            started = time.perf_counter()
            try:
                response = client.post(url, json=body, headers=headers)
            except httpx.TransportError:
                response = None
            elapsed = time.perf_counter() - started
            if response is not None and response.status_code in (200, 201):
                with tally.lock:
                    tally.acked[body["client_id"]] = response.json()["answer_id"]
                    tally.latencies.append(elapsed)
                    tally.replays += response.status_code == 200
                break
            if response is not None and response.status_code < 500:
                tally.errors.append(f"{username}: answer answered {response.status_code} {response.text}")
                break
            attempt += 1
            with tally.lock:
                tally.failed_attempts += 1
                tally.server_errors += response is not None
            wait_a_little(attempt)


@dataclass
class Attack:
    """What the attacker threads share: answers to their wrong-password logins, by status."""

    stop_at: float  # time.monotonic() after which no attacker sends another login
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: collections.Counter = field(default_factory=collections.Counter)  # 401, 429, ..., "no answer"
    retry_after: list[float] = field(default_factory=list)  # the Retry-After values of the 429s
    latencies: list[float] = field(default_factory=list)  # seconds per login attempt that got an answer


def attacker(base: str, usernames: list[str], attack: Attack, seed_value: int) -> None:
    """Wrong-password logins in a loop until ``attack.stop_at``: against ``usernames`` (picked at random),
    or, when it is empty, against a fresh random name each time. Retry-After is ignored."""
    rng = random.Random(seed_value)
    with httpx.Client(base_url=base, timeout=60) as client:
        while time.monotonic() < attack.stop_at:
            username = rng.choice(usernames) if usernames else f"nobody-{uuid.UUID(int=rng.getrandbits(128))}"
            body = {"username": username, "password": f"wrong-{rng.getrandbits(64):x}"}
            started = time.perf_counter()
            try:
                response = client.post("/api/login", json=body)
            except httpx.TransportError:
                with attack.lock:
                    attack.statuses["no answer"] += 1
                continue
            elapsed = time.perf_counter() - started
            with attack.lock:
                attack.statuses[response.status_code] += 1
                attack.latencies.append(elapsed)
                if response.status_code == 429:
                    try:
                        attack.retry_after.append(float(response.headers.get("retry-after", "nan")))
                    except ValueError:
                        attack.retry_after.append(float("nan"))


def attack_process(base: str, usernames: list[str], attackers: int, ready, go, stop_at, results) -> None:
    """The attackers in a process of their own (their client work must not hold the labellers' GIL):
    signals ``ready``, waits for ``go``, attacks until ``stop_at.value`` (time.monotonic(), the same clock
    in every process), then puts its counts, Retry-After values and latencies on ``results``."""
    ready.set()
    go.wait()
    attack = Attack(stop_at=stop_at.value)
    threads = [  # even-numbered attackers hit the labellers' names, odd-numbered ones random names
        threading.Thread(target=attacker, args=(base, usernames if i % 2 == 0 else [], attack, 1000 + i))
        for i in range(attackers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((dict(attack.statuses), attack.retry_after, attack.latencies))


def check_export(base: str, project_id: int, tally: Tally, client: httpx.Client | None = None) -> list[str]:
    """Problems found comparing the acknowledged answers with the admin's raw export and answer list.
    ``client``: the admin's logged-in client (the flood logs it in before the attack); else a new login."""
    with httpx.Client(base_url=base, timeout=120) as own:
        if client is None:
            client = own
            login = client.post("/api/login", json={"username": ADMIN, "password": PASSWORD})
            login.raise_for_status()
        raw_text = client.get(f"/api/projects/{project_id}/export", params={"format": "raw"})
        raw_text.raise_for_status()
        answers = client.get(f"/api/projects/{project_id}/answers")
        answers.raise_for_status()
    raw = [json.loads(line) for line in raw_text.text.splitlines() if line.strip()]
    problems = []
    in_export = collections.Counter(record["client_id"] for record in raw)
    missing = [cid for cid in tally.acked if in_export[cid] == 0]
    doubled = [cid for cid, n in in_export.items() if n > 1]
    unacked = [cid for cid in in_export if cid not in tally.acked]
    if missing:
        problems.append(f"{len(missing)} acknowledged answers missing from the export, e.g. {missing[:3]}")
    if doubled:
        problems.append(f"{len(doubled)} answers in the export more than once, e.g. {doubled[:3]}")
    if unacked:
        problems.append(f"{len(unacked)} answers in the export were never acknowledged, e.g. {unacked[:3]}")
    pairs = collections.Counter((record["labeller"], record["item_id"]) for record in raw)
    if any(n > 1 for n in pairs.values()):
        problems.append("a labeller has two answers to the same item")
    answer_ids = {a["client_id"]: a["answer_id"] for a in answers.json()}
    wrong_ids = [cid for cid, aid in tally.acked.items() if answer_ids.get(cid) != aid]
    if wrong_ids:
        problems.append(
            f"{len(wrong_ids)} acknowledged answer_ids differ from the stored ones, e.g. {wrong_ids[:3]}"
        )
    print(
        f"  export: {len(raw)} answers in the raw export, {len(tally.acked)} acknowledged, {len(missing)} missing"
    )
    return problems


def spread(seconds: list[float]) -> tuple[str, float]:
    """``"p50 X ms, p95 Y ms, max Z ms"`` of ``seconds`` and the p95 in ms (inf with fewer than 2)."""
    ms = sorted(1000 * s for s in seconds)
    if len(ms) < 2:
        return f"{len(ms)} timed", float("inf")
    cuts = statistics.quantiles(ms, n=100, method="inclusive")  # never above the max
    return f"p50 {cuts[49]:.1f} ms, p95 {cuts[94]:.1f} ms, max {ms[-1]:.1f} ms", cuts[94]


def report(name: str, problems: list[str]) -> list[str]:
    print(f"  checks: {'OK' if not problems else 'FAILED'}")
    for problem, count in collections.Counter(problems).most_common(10):
        print(f"  - {problem}" + (f" (x{count})" if count > 1 else ""))
    return [f"{name}: {p}" for p in problems]


def run_phase(
    name: str, args: argparse.Namespace, db_url: str, workdir: Path, kill_after: int | None
) -> list[str]:
    project_id = seed(db_url, args.labellers, args.votes)
    server = Server(db_url, args.port or free_port(), workdir / f"{name}-server.log")
    server.start()
    print(f"{name}: server started ({args.db_backend}); {args.labellers} labellers start", flush=True)
    tally = Tally(target=args.votes, deadline=time.monotonic() + args.timeout)
    threads = [
        threading.Thread(
            target=labeller, args=(server.base, f"labeller{i:03d}", project_id, tally, i), daemon=True
        )
        for i in range(args.labellers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    downtime = None
    try:
        if kill_after is not None:
            while len(tally.acked) < kill_after and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            acked_at_kill = len(tally.acked)
            killed = time.perf_counter()
            server.kill()
            time.sleep(args.down_s)  # let the labellers run into the dead server
            server.start()
            downtime = time.perf_counter() - killed
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        problems = list(tally.errors)
        if len(tally.latencies) < 2:
            raise SystemExit(
                f"{name}: only {len(tally.latencies)} votes acknowledged; errors: {tally.errors[:5]}"
            )
        print(f"{name}: {args.labellers} labellers, {len(tally.acked)} votes acknowledged in {wall:.1f} s")
        print(f"  answer POST latency: {spread(tally.latencies)[0]}; {len(tally.acked) / wall:.0f} votes/s")
        print(f"  GET /next latency: {spread(tally.next_latencies)[0]}; {tally.server_errors} 5xx answers")
        if kill_after is not None:
            print(
                f"  SIGKILL after {acked_at_kill} acknowledged; down {downtime:.2f} s (restart included);"
                f" {tally.failed_attempts} failed attempts retried, {tally.replays} acknowledged as replays (200)"
            )
        if len(tally.acked) != args.votes:
            problems.append(f"{len(tally.acked)} votes acknowledged, expected {args.votes}")
        problems += check_export(server.base, project_id, tally)
    finally:
        server.stop()
    return report(name, problems)


def run_flood(args: argparse.Namespace, db_url: str, workdir: Path) -> list[str]:
    name = "flood"
    labellers = args.flood_labellers
    votes = max(args.flood_seconds * FLOOD_VOTES_PER_SECOND, 2 * labellers)
    project_id = seed(db_url, labellers, votes, real_hash=True)
    server = Server(db_url, args.port or free_port(), workdir / f"{name}-server.log")
    server.start()
    usernames = [f"labeller{i:03d}" for i in range(labellers)]
    tally = Tally(target=votes, deadline=time.monotonic() + args.timeout)
    admin = httpx.Client(base_url=server.base, timeout=120)
    clients = [httpx.Client(base_url=server.base, timeout=60) for _ in usernames]
    try:
        # Everyone who works logs in before the attack (a throttle on failed logins must not lock them out).
        admin.post("/api/login", json={"username": ADMIN, "password": PASSWORD}).raise_for_status()
        logins = [log_in(client, tally, username) for client, username in zip(clients, usernames)]
        if any(headers is None for headers in logins):
            raise SystemExit(f"{name}: labeller logins failed before the flood: {tally.errors[:5]}")
        print(
            f"{name}: server started ({args.db_backend}); {labellers} labellers logged in; "
            f"{args.attackers} attackers for {args.flood_seconds:.0f} s",
            flush=True,
        )
        context = multiprocessing.get_context("spawn")
        ready, go, stop_at, results = (
            context.Event(),
            context.Event(),
            context.Value("d", 0.0),
            context.Queue(),
        )
        attackers = context.Process(
            target=attack_process,
            args=(server.base, usernames, args.attackers, ready, go, stop_at, results),
            daemon=True,
        )
        attackers.start()
        if not ready.wait(60):
            raise SystemExit(f"{name}: the attacker process did not start")
        started = time.monotonic()
        tally.stop_at = stop_at.value = started + args.flood_seconds
        go.set()
        threads = [
            threading.Thread(target=label, args=(c, h, u, project_id, tally, i), daemon=True)
            for i, (c, h, u) in enumerate(zip(clients, logins, usernames))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses, retry_after, attack_latencies = results.get(timeout=args.timeout)
        attackers.join()
        attack = Attack(stop_at=stop_at.value, statuses=collections.Counter(statuses))
        attack.retry_after, attack.latencies = retry_after, attack_latencies
        wall = time.monotonic() - started
        problems = list(tally.errors)
        answer_spread, answer_p95 = spread(tally.latencies)
        print(
            f"{name}: {labellers} labellers, {len(tally.acked)} votes acknowledged in {wall:.1f} s under the flood"
        )
        print(f"  answer POST latency: {answer_spread}; {len(tally.acked) / wall:.1f} votes/s")
        print(f"  GET /next latency: {spread(tally.next_latencies)[0]}")
        print(f"  labeller 5xx answers: {tally.server_errors}; {tally.failed_attempts} answer POSTs retried")
        attempts = sum(attack.statuses.values())
        others = {k: v for k, v in attack.statuses.items() if k not in (401, 429)}
        print(
            f"  attackers: {attempts} wrong-password logins, {attempts / wall:.1f}/s:"
            f" {attack.statuses[401]} x 401, {attack.statuses[429]} x 429,"
            f" {sum(others.values())} other{f' {dict(others)}' if others else ''};"
            f" login latency {spread(attack.latencies)[0]}"
        )
        if attack.retry_after:
            print(f"  Retry-After of the 429s: {min(attack.retry_after):g} .. {max(attack.retry_after):g} s")
        if tally.server_errors:
            problems.append(f"{tally.server_errors} 5xx answers to labellers")
        if len(tally.latencies) < 2:
            problems.append(f"only {len(tally.latencies)} votes acknowledged under the flood")
        elif answer_p95 >= FLOOD_P95_LIMIT_MS:
            problems.append(
                f"answer POST p95 {answer_p95:.0f} ms under the flood, limit {FLOOD_P95_LIMIT_MS:.0f} ms"
            )
        if attack.statuses[429] == 0:
            problems.append("the attackers never got a 429: failed logins are not throttled")
        problems += check_export(server.base, project_id, tally, client=admin)
    finally:
        for client in [admin, *clients]:
            client.close()
        server.stop()
    return report(name, problems)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labellers", type=int, default=50, help="concurrent labellers (default 50)")
    parser.add_argument(
        "--votes", type=int, default=2000, help="votes to acknowledge per phase (default 2000)"
    )
    parser.add_argument(
        "--kill-after", type=int, help="SIGKILL the server after this many (default votes / 2)"
    )
    parser.add_argument("--down-s", type=float, default=0.5, help="seconds the killed server stays down")
    parser.add_argument(
        "--phase", choices=(*PHASES, "all"), default="all", help="the phase to run (default all: all three)"
    )
    parser.add_argument(
        "--db-backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="sqlite (default): a file per phase; postgresql: a throwaway cluster, a database per phase",
    )
    parser.add_argument("--flood-seconds", type=float, default=60, help="length of the flood (default 60)")
    parser.add_argument(
        "--flood-labellers", type=int, default=10, help="labellers during the flood (default 10)"
    )
    parser.add_argument(
        "--attackers", type=int, default=32, help="attacker threads in the flood (default 32)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument(
        "--quick", action="store_true", help="a small run: 10 labellers, 200 votes, a 20 s flood"
    )
    parser.add_argument("--keep", help="keep the SQLite databases and server logs in this folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take (default 600)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM (e.g. a CI timeout) ends the run through the finally blocks, which stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.labellers, args.votes, args.flood_seconds = 10, 200, 20
    kill_after = args.kill_after or args.votes // 2
    if not 0 < kill_after < args.votes:
        parser.error(f"--kill-after must be between 1 and --votes - 1, got {kill_after}")
    if not 0 < args.flood_seconds < args.timeout:
        parser.error("--flood-seconds must be above 0 and below --timeout")
    phases = PHASES if args.phase == "all" else (args.phase,)
    with tempfile.TemporaryDirectory(prefix="rlxf-label-load-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        postgres = stack.enter_context(Postgres()) if args.db_backend == "postgresql" else None

        def db_url(phase: str) -> str:
            if postgres:
                return postgres.database(phase)
            for old in workdir.glob(f"{phase}.db*"):  # a --keep folder of an earlier run: start afresh
                old.unlink()
            return f"sqlite:///{workdir / f'{phase}.db'}"

        problems = []
        for phase in phases:
            if phase == "flood":
                problems += run_flood(args, db_url(phase), workdir)
            else:
                problems += run_phase(
                    phase, args, db_url(phase), workdir, kill_after if phase == "kill" else None
                )
        if len(phases) > 1:
            print(f"all phases: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
