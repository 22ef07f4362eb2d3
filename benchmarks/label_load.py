"""Load on the labelling app (``rlxf label serve``): concurrent labellers over loopback, then a SIGKILL.

Phase 1: a fresh SQLite database (the default backend) with a pairwise project of VOTES / 2 items (k=2
labels per item), LABELLERS labeller accounts and an admin; the real server in a subprocess; LABELLERS
threads, each with its own HTTP client, log in and loop ``GET /next`` -> ``POST .../answers`` (a random
choice, a fresh client_id) until VOTES answers are acknowledged (201, or 200 for a replayed client_id).
Printed: p50 / p95 / max latency of the answer POSTs that were acknowledged, and votes per second. Then
the admin's raw export must hold every acknowledged answer exactly once (matched by client_id; the
answer_ids by the admin's answer list) and no answer that was never acknowledged.

Phase 2: the same from a fresh database, but the server is killed with SIGKILL once KILL_AFTER answers
are acknowledged and started again on the same database and port. Labellers whose request failed keep
the answer and retry with the same client_id (a commit whose response was lost comes back as 200 with
the stored answer_id), as the web page does. Printed: the same figures plus failed attempts, replays and
the downtime; the same checks.

The script exits non-zero when a check fails. Accounts get a cheap argon2 hash (logins are not what is
measured). Client threads and the server share this machine's cores, so the latencies include the
client's own Python overhead; run it on an otherwise idle machine.

    python benchmarks/label_load.py                    # 50 labellers, 2,000 votes, both phases
    python benchmarks/label_load.py --quick            # 10 labellers, 200 votes
    python benchmarks/label_load.py --phase kill       # only the SIGKILL phase
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
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


@dataclass
class Tally:
    """What the labeller threads share: tickets (one per vote still to be cast) and what came back."""

    target: int
    deadline: float  # time.monotonic() after which labellers give up (a stuck server fails the run)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    acked: dict[str, int] = field(default_factory=dict)  # client_id -> answer_id
    replays: int = 0  # acknowledgements with 200: the answer had been committed by an earlier attempt
    latencies: list[float] = field(default_factory=list)  # seconds, acknowledged POSTs only
    failed_attempts: int = 0  # POSTs that got no answer or a 5xx (each was retried)
    errors: list[str] = field(default_factory=list)  # anything unexpected: the run fails

    def past_deadline(self, who: str) -> bool:
        if time.monotonic() < self.deadline:
            return False
        with self.lock:
            self.errors.append(f"{who}: gave up at the --timeout deadline")
        return True

    def take_ticket(self) -> bool:
        with self.lock:
            if self.issued >= self.target or time.monotonic() >= self.deadline:
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(db_url: str, labellers: int, votes: int) -> int:
    """The admin, the labellers and a pairwise project of votes / k items they all belong to; its id."""
    engine = make_engine(db_url)
    init_db(engine)
    hasher = password_hasher(cheap=True)
    names = [f"labeller{i:03d}" for i in range(labellers)]
    items = [
        Candidate(f"Prompt {i}: say something about the number {i}.", [f"{i} is a number.", f"{i} is not."])
        for i in range(-(-votes // LABELS_PER_ITEM))
    ]
    with make_sessionmaker(engine)() as db:
        add_user(db, hasher, ADMIN, PASSWORD, is_admin=True)
        for name in names:
            add_user(db, hasher, name, PASSWORD)
        settings = Settings(name="load", kind="pairwise", labels_per_item=LABELS_PER_ITEM, ask_reason="off")
        project_id = create_project(db, settings, items, names).id
    engine.dispose()
    return project_id


def wait_a_little(attempt: int) -> None:
    time.sleep(min(0.05 * 2**attempt, 1.0))


def request_until_answered(
    client: httpx.Client, tally: Tally, method: str, url: str, **kwargs
) -> httpx.Response | None:
    """Sends until the server answers with something other than a 5xx (it may be down, being restarted);
    None at the deadline."""
    attempt = 0
    while not tally.past_deadline(f"{method} {url}"):
        try:
            response = client.request(method, url, **kwargs)
            if response.status_code < 500:
                return response
        except httpx.TransportError:
            pass
        attempt += 1
        wait_a_little(attempt)
    return None


def labeller(base: str, username: str, project_id: int, tally: Tally, seed_value: int) -> None:
    """One labeller: log in, then next -> answer until no ticket is left or the queue is empty."""
    rng = random.Random(seed_value)
    with httpx.Client(base_url=base, timeout=60) as client:
        response = request_until_answered(
            client, tally, "POST", "/api/login", json={"username": username, "password": PASSWORD}
        )
        if response is None:
            return
        if response.status_code != 200:
            tally.errors.append(f"{username}: login answered {response.status_code} {response.text}")
            return
        headers = {"X-CSRF-Token": response.json()["csrf_token"]}
        while tally.take_ticket():
            response = request_until_answered(client, tally, "GET", f"/api/projects/{project_id}/next")
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
                wait_a_little(attempt)


def check_export(base: str, project_id: int, tally: Tally) -> list[str]:
    """Problems found comparing the acknowledged answers with the admin's raw export and answer list."""
    with httpx.Client(base_url=base, timeout=120) as client:
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


def run_phase(name: str, args: argparse.Namespace, workdir: Path, kill_after: int | None) -> list[str]:
    db_url = f"sqlite:///{workdir / f'{name}.db'}"
    project_id = seed(db_url, args.labellers, args.votes)
    server = Server(db_url, args.port or free_port(), workdir / f"{name}-server.log")
    server.start()
    print(f"{name}: server started; {args.labellers} labellers start", flush=True)
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
        latencies_ms = sorted(1000 * s for s in tally.latencies)
        if len(latencies_ms) < 2:
            raise SystemExit(
                f"{name}: only {len(latencies_ms)} votes acknowledged; errors: {tally.errors[:5]}"
            )
        cuts = statistics.quantiles(latencies_ms, n=100)
        print(f"{name}: {args.labellers} labellers, {len(tally.acked)} votes acknowledged in {wall:.1f} s")
        print(
            f"  answer POST latency: p50 {cuts[49]:.1f} ms, p95 {cuts[94]:.1f} ms, max {latencies_ms[-1]:.1f} ms;"
            f" {len(tally.acked) / wall:.0f} votes/s"
        )
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
    print(f"  checks: {'OK' if not problems else 'FAILED'}")
    for problem, count in collections.Counter(problems).most_common(10):
        print(f"  - {problem}" + (f" (x{count})" if count > 1 else ""))
    return problems


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
    parser.add_argument("--phase", choices=("both", "load", "kill"), default="both")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--quick", action="store_true", help="a small run: 10 labellers, 200 votes")
    parser.add_argument("--keep", help="keep the databases and server logs in this folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take (default 600)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM (e.g. a CI timeout) ends the run through the finally blocks, which stop the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.labellers, args.votes = 10, 200
    kill_after = args.kill_after or args.votes // 2
    if not 0 < kill_after < args.votes:
        parser.error(f"--kill-after must be between 1 and --votes - 1, got {kill_after}")
    with tempfile.TemporaryDirectory(prefix="rlxf-label-load-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        problems = []
        if args.phase in ("both", "load"):
            problems += run_phase("load", args, workdir, kill_after=None)
        if args.phase in ("both", "kill"):
            problems += run_phase("kill", args, workdir, kill_after=kill_after)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
