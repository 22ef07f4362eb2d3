"""The labelling app under hostile traffic and bad input, one test (or more) per point of issue 12, on
SQLite and PostgreSQL where the database matters:

1. failed logins are throttled (429 + Retry-After) per address and per username, and a failed login
   holds no database lock; 2. bodies over the limit get 413 (by Content-Length and chunked), a large
   project only from an admin; 4. the Secure cookie, security headers, no-store on the API, the Host
   check and serve's defaults and warnings; 5. an export or agreement is a read: it runs while a writer
   holds the lock; 6. bad input is a 4xx, never a 5xx (Unicode and CR/LF project names export; lone
   surrogates, NUL, overlong names and ids, huge integers); 7. accounts: disable, remove a member, change
   a password, end other sessions, weak passwords and look-alike usernames refused; 8. a damaged database
   stops ``rlxf label serve`` with the reason; 9. k concurrent labellers never give an item more than k
   labels (one server and two servers on one database); 10. the dependency floors are above the CVE
   fixes; 11. a ``__proto__`` aspect is answerable, expired sessions are purged.
(3, the open redirect, is a page's check: tests/test_label_browser.py drives it in Chromium.)
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import tomllib
from fastapi.testclient import TestClient
from label_client import PASSWORD, Client, make_project, make_user
from packaging.version import Version
from sqlalchemy import func, select, update

from rlxf.cli import main
from rlxf.feedback.label.app import create_app, deployment
from rlxf.feedback.label.auth import LoginThrottle, password_hasher
from rlxf.feedback.label.db import Answer, DisplayOrder, LoginSession, begin_write, utcnow
from rlxf.feedback.label.projects import Candidate

ROOT = Path(__file__).parents[1]


def loc(response) -> list:
    return response.json()["detail"][0]["loc"]


# ------------------------------------------------------------------------------- 1. failed-login floods


def test_failed_logins_are_throttled_per_address_and_per_username(label_db):
    app = create_app(
        label_db,
        hasher=password_hasher(cheap=True),
        allowed_hosts=["testserver"],
        throttle=LoginThrottle(per_address="5/minute", per_username="3/minute"),
    )
    make_user(app, "alice")
    make_user(app, "bob")
    http = TestClient(app)
    wrong = {"username": "alice", "password": "not her password"}
    assert [http.post("/api/login", json=wrong).status_code for _ in range(3)] == [401, 401, 401]
    throttled = http.post("/api/login", json=wrong)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert f"try again in {throttled.headers['Retry-After']} s" in throttled.json()["detail"]
    # the right password does not get through either while alice's window is full (no oracle) ...
    assert http.post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 429
    # ... but bob, from the same address, logs in: 3 failures are under the address's 5
    assert http.post("/api/login", json={"username": "bob", "password": PASSWORD}).status_code == 200
    # two more failures on other names fill the address's window: everyone from it waits
    for name in ("carol", "dave"):
        assert http.post("/api/login", json={"username": name, "password": "x" * 9}).status_code == 401
    assert http.post("/api/login", json={"username": "bob", "password": PASSWORD}).status_code == 429
    app.state.engine.dispose()


def _at_once(app, bodies):
    """POST each body to /api/login from its own thread, all at the same moment; the statuses."""
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def attempt(body) -> None:
        client = TestClient(app)
        barrier.wait()
        statuses.append(client.post("/api/login", json=body).status_code)

    threads = [threading.Thread(target=attempt, args=(body,)) for body in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(statuses)


def test_concurrent_failed_logins_cannot_slip_past_the_throttle(label_db):
    """After a first failure, attempts still being checked count: 8 wrong passwords at once against a
    limit of 4 give three more full checks (401) and five 429s, not eight hashes that all passed the
    check before any of them failed. A room of labellers logging in at once is not limited."""
    app = create_app(
        label_db,
        allowed_hosts=["testserver"],  # argon2's default cost: each check takes long enough to overlap
        throttle=LoginThrottle(per_address="4/minute", per_username="100/minute"),
    )
    names = [f"l{i}" for i in range(6)]
    for name in names:
        make_user(app, name)
    assert _at_once(app, [{"username": n, "password": PASSWORD} for n in names]) == [200] * 6
    assert (
        TestClient(app).post("/api/login", json={"username": "x", "password": "wrong-guess"}).status_code
        == 401
    )
    wrong = [{"username": f"u{i}", "password": "wrong-guess"} for i in range(8)]
    assert _at_once(app, wrong) == [401] * 3 + [429] * 5
    app.state.engine.dispose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_passwords_are_hashed_in_low_priority_threads():
    from rlxf.feedback.label import auth

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert (
        auth._HASHING.submit(priority).result() >= priority() + auth.HASH_NICE - 1
    )  # the request's is lower


def test_a_failed_login_holds_no_database_lock(label_db):
    """The password is checked with no transaction open: a slow hash while a writer holds the lock."""
    app = create_app(label_db, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"])
    make_user(app, "alice")
    with app.state.sessionmaker() as writer:
        begin_write(writer)  # another request's write transaction, open for the whole login below
        writer.execute(select(func.count()).select_from(LoginSession))
        started = time.monotonic()
        response = TestClient(app).post(
            "/api/login", json={"username": "alice", "password": "wrong password"}
        )
        assert response.status_code == 401
        assert time.monotonic() - started < 5  # waiting for the lock would take the 30 s busy timeout
        writer.rollback()
    app.state.engine.dispose()


# -------------------------------------------------------------------------------------- 2. body sizes


def test_bodies_over_the_limit_get_413_before_they_are_read(label_db):
    app = create_app(
        label_db,
        hasher=password_hasher(cheap=True),
        allowed_hosts=["testserver"],
        max_body_bytes=10_000,
        max_project_bytes=200_000,
    )
    make_user(app, "admin", admin=True)
    make_user(app, "alice")
    stranger = TestClient(app)
    big = b'{"username": "a", "password": "' + b"x" * 20_000 + b'"}'
    response = stranger.post("/api/login", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "10000 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b" " * 1000

    response = stranger.post("/api/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413

    items = [{"prompt": f"q{i} " + "w" * 500, "responses": ["a", "b"]} for i in range(100)]  # ~55 kB
    project = {"name": "big", "kind": "pairwise", "items": items}
    assert stranger.post("/api/projects", json=project).status_code == 413  # not 401: never read
    alice = Client(app, "alice")
    assert alice.post("/api/projects", project).status_code == 413  # a labeller's session is not enough
    admin = Client(app, "admin")
    assert admin.post("/api/projects", project).status_code == 201
    project["items"] = items * 4  # ~220 kB: over the admin's limit too
    project["name"] = "bigger"
    assert admin.post("/api/projects", project).status_code == 413
    app.state.engine.dispose()


def test_a_deeply_nested_body_is_a_4xx(app):
    response = TestClient(app).post(
        "/api/login", content=b"[" * 50_000 + b"]" * 50_000, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)


# ----------------------------------------------------------------------- 4. cookies, headers, hosts


def test_cookie_headers_and_host_check(label_db):
    app = create_app(
        label_db, hasher=password_hasher(cheap=True), secure_cookie=True, allowed_hosts=["testserver"]
    )
    make_user(app, "alice")
    http = TestClient(app, base_url="https://testserver")
    login = http.post("/api/login", json={"username": "alice", "password": PASSWORD})
    cookie = login.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert login.headers["cache-control"] == "no-store"  # API answers depend on who asks
    assert http.get("/api/me").headers["cache-control"] == "no-store"
    page = http.get("/login")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["strict-transport-security"].startswith("max-age=")
    # a DNS-rebinding page sends its own name as Host
    assert TestClient(app, base_url="http://evil.example").get("/api/me").status_code == 400
    app.state.engine.dispose()


def test_serve_defaults_follow_the_address():
    local = deployment("127.0.0.1")
    assert not local.secure_cookie and local.warnings == [] and "localhost" in local.allowed_hosts
    public = deployment("192.0.2.10")
    assert public.secure_cookie and "192.0.2.10" in public.allowed_hosts
    assert any("without TLS" in w for w in public.warnings)
    assert not any("without TLS" in w for w in deployment("192.0.2.10", tls=True).warnings)
    everywhere = deployment("0.0.0.0")
    assert everywhere.secure_cookie and "0.0.0.0" not in everywhere.allowed_hosts
    assert any("--allowed-hosts" in w for w in everywhere.warnings)
    named = deployment("0.0.0.0", allowed_hosts=["labels.example.org"])
    assert named.allowed_hosts == ["labels.example.org"]
    assert any("plain HTTP" in w for w in deployment("192.0.2.10", secure_cookie=False).warnings)


# ------------------------------------------------------------------- 5. admin reads take no write lock


def test_export_and_agreement_run_while_a_writer_holds_the_lock(app):
    make_user(app, "admin", admin=True)
    pid = make_project(app)
    admin = Client(app, "admin")
    with app.state.sessionmaker() as writer:
        begin_write(writer)
        writer.execute(select(func.count()).select_from(Answer))
        started = time.monotonic()
        for path in ("export?format=raw", "agreement", "answers", ""):
            assert admin.get(f"/api/projects/{pid}/{path}".rstrip("/")).status_code == 200, path
        assert admin.get("/api/projects").status_code == 200
        assert time.monotonic() - started < 5  # a read waiting for the lock would take 30 s
        writer.rollback()


# ------------------------------------------------------------------------ 6. bad input: 4xx, not 5xx


def test_unicode_and_control_characters_in_project_names_export(app):
    make_user(app, "admin", admin=True)
    admin = Client(app, "admin")
    body = {"kind": "pairwise", "items": [{"prompt": "q", "responses": ["a", "b"]}]}
    response = admin.post("/api/projects", {"name": "Отзывы – 評価 ✓", **body})
    assert response.status_code == 201
    export = admin.get(f"/api/projects/{response.json()['id']}/export?format=raw")
    assert export.status_code == 200
    disposition = export.headers["content-disposition"]
    assert "filename*=UTF-8''%D0%9E%D1%82%D0%B7%D1%8B%D0%B2%D1%8B" in disposition
    assert 'filename="' in disposition and disposition.isascii()
    # a CR/LF in a name is refused when the project is made, so no header can be split by one
    for name in ("two\r\nlines", "tab\there", "bidi\u202eevil", "zero\u200bwidth", " padded "):
        response = admin.post("/api/projects", {"name": name, **body})
        assert response.status_code == 422 and loc(response) == ["body", "name"], repr(name)


def test_lone_surrogates_nul_and_oversized_values_are_422(app):
    make_user(app, "admin", admin=True)
    make_user(app, "alice")
    pid = make_project(app, members=["alice"], ask_reason="optional")
    stranger = TestClient(app)
    surrogate = '"\\ud800"'  # JSON's escape for a lone surrogate: valid JSON, not storable text

    def raw(client, url, text, headers=None):
        return client.post(
            url, content=text.encode(), headers={"Content-Type": "application/json", **(headers or {})}
        )

    for text in (
        '{"username": ' + surrogate + ', "password": "x"}',
        '{"username": "alice", "password": ' + surrogate + "}",
        '{"username": "alice\\u0000", "password": "x"}',
    ):
        response = raw(stranger, "/api/login", text)
        assert response.status_code == 422, text
        assert response.content.isascii()  # the echoed input is escaped JSON
    alice = Client(app, "alice")
    item = alice.get(f"/api/projects/{pid}/next").json()["item_id"]
    url = f"/api/projects/{pid}/items/{item}/answers"
    csrf = {"X-CSRF-Token": alice.csrf}
    for reason in (surrogate, '"nul \\u0000 inside"'):
        text = '{"client_id": "c1", "choice": "A", "reason": ' + reason + "}"
        response = raw(alice.http, url, text, csrf)
        assert response.status_code == 422 and loc(response) == ["body", "reason"], reason
    assert alice.answer(pid, item, choice="A", reason="fine").status_code == 201

    admin = Client(app, "admin")
    good_item = {"prompt": "q", "responses": ["a", "b"]}
    project = {"name": "n", "kind": "pairwise", "items": [good_item]}
    cases = [
        ({"name": "x" * 201}, ["body", "name"]),
        ({"items": [{**good_item, "id": "i" * 201}]}, ["body", "items", 0, "id"]),
        (None, ["body", "items", 0, "prompt"]),  # a lone surrogate in a prompt, sent as JSON's escape
        ({"items": [{**good_item, "meta": {"k": "nul\x00"}}]}, ["body", "items", 0, "meta.k"]),
        ({"labels_per_item": 2**63}, ["body", "labels_per_item"]),
        ({"scale": 2**63}, ["body", "scale"]),
        ({"guidelines": "nul\x00"}, ["body", "guidelines"]),
    ]
    for change, where in cases:
        if change is None:
            text = (
                '{"name": "s", "kind": "pairwise", "items": [{"prompt": '
                + surrogate
                + ', "responses": ["a", "b"]}]}'
            )
            response = raw(admin.http, "/api/projects", text, {"X-CSRF-Token": admin.csrf})
            assert response.status_code == 422 and loc(response) == where
            continue
        response = admin.post("/api/projects", {**project, **change})
        assert response.status_code == 422, (change, response.text)
        assert loc(response) == where, (change, response.json())
    for path in (f"/api/projects/{2**31}", "/api/projects/12345678901234567890", "/api/projects/0"):
        assert admin.get(path).status_code == 422, path
    assert admin.get(f"/api/projects/{pid}/items/1/answers").status_code == 405
    response = admin.post(f"/api/projects/{pid}/items/{2**63}/answers", {"client_id": "c", "choice": "A"})
    assert response.status_code == 422
    assert admin.send("PATCH", f"/api/users/{2**40}", {"disabled": True}).status_code == 422


# ----------------------------------------------------------------------------------------- 7. accounts


def test_disabling_an_account_ends_its_sessions_and_its_logins(app):
    admin_id = make_user(app, "admin", admin=True)
    alice_id = make_user(app, "alice")
    admin, alice = Client(app, "admin"), Client(app, "alice")
    assert alice.get("/api/me").status_code == 200
    users = {u["username"]: u for u in admin.get("/api/users").json()}
    assert users["alice"]["active_sessions"] == 1 and users["alice"]["disabled"] is False
    response = admin.send("PATCH", f"/api/users/{alice_id}", {"disabled": True})
    assert response.status_code == 200 and response.json()["disabled"] is True
    assert alice.get("/api/me").status_code == 401  # at once, not when the session expires
    assert (
        TestClient(app).post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code
        == 401
    )
    assert admin.send("PATCH", f"/api/users/{admin_id}", {"disabled": True}).status_code == 409
    assert admin.send("PATCH", f"/api/users/{alice_id}", {"disabled": False}).json()["disabled"] is False
    assert Client(app, "alice").get("/api/me").status_code == 200
    assert admin.send("PATCH", "/api/users/999", {"disabled": True}).status_code == 404


def test_removing_a_member_keeps_their_answers(app):
    make_user(app, "admin", admin=True)
    alice_id = make_user(app, "alice")
    pid = make_project(app, members=["alice"])
    admin, alice = Client(app, "admin"), Client(app, "alice")
    item = alice.get(f"/api/projects/{pid}/next").json()["item_id"]
    assert alice.answer(pid, item, choice="B").status_code == 201
    assert admin.send("DELETE", f"/api/projects/{pid}/members/{alice_id}").status_code == 204
    assert admin.send("DELETE", f"/api/projects/{pid}/members/{alice_id}").status_code == 404
    assert alice.get(f"/api/projects/{pid}").status_code == 404
    assert alice.get("/api/projects").json() == []
    assert len(admin.get(f"/api/projects/{pid}/answers").json()) == 1


def test_password_changes_end_the_other_sessions(app):
    make_user(app, "admin", admin=True)
    alice_id = make_user(app, "alice")
    laptop, phone = Client(app, "alice"), Client(app, "alice")
    wrong = laptop.send(
        "PUT", "/api/me/password", {"current_password": "nope-nope", "new_password": "tulip-harbour-88"}
    )
    assert wrong.status_code == 422 and loc(wrong) == ["body", "current_password"]
    weak = laptop.send("PUT", "/api/me/password", {"current_password": PASSWORD, "new_password": "password"})
    assert weak.status_code == 422 and loc(weak) == ["body", "new_password"]
    ok = laptop.send(
        "PUT", "/api/me/password", {"current_password": PASSWORD, "new_password": "tulip-harbour-88"}
    )
    assert ok.status_code == 204
    assert laptop.get("/api/me").status_code == 200 and phone.get("/api/me").status_code == 401
    assert (
        TestClient(app).post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code
        == 401
    )
    tablet = Client(app, "alice", "tulip-harbour-88")
    assert laptop.send("DELETE", "/api/me/sessions").json() == {"revoked": 1}
    assert tablet.get("/api/me").status_code == 401 and laptop.get("/api/me").status_code == 200

    admin = Client(app, "admin")
    assert admin.send("PUT", f"/api/users/{alice_id}/password", {"password": "12345678"}).status_code == 422
    assert (
        admin.send("PUT", f"/api/users/{alice_id}/password", {"password": "meadow-violin-27"}).status_code
        == 204
    )
    assert laptop.get("/api/me").status_code == 401  # an admin's reset ends every session
    Client(app, "alice", "meadow-violin-27")
    assert admin.send("DELETE", f"/api/users/{alice_id}/sessions").json() == {"revoked": 1}


@pytest.mark.parametrize("password", ["12345678", "password", "        ", "qwertyuiop", "alice1234"])
def test_guessable_passwords_are_refused(app, password):
    make_user(app, "admin", admin=True)
    response = Client(app, "admin").post("/api/users", {"username": "alice", "password": password})
    assert response.status_code == 422 and loc(response) == ["body", "password"]


@pytest.mark.parametrize(
    "username",
    [
        "tab\tname",
        "new\nline",
        "rtl\u202eevil",
        "zero\u200bwidth",
        "\u0430dmin",
        "ad min",
        " alice",
        "é" * 3,
        "",
    ],
)
def test_usernames_with_invisible_or_look_alike_characters_are_refused(app, username):
    make_user(app, "admin", admin=True)
    response = Client(app, "admin").post("/api/users", {"username": username, "password": "tulip-harbour-88"})
    assert response.status_code == 422 and loc(response) == ["body", "username"], username


def test_usernames_are_unique_regardless_of_case(app):
    make_user(app, "admin", admin=True)
    admin = Client(app, "admin")
    assert admin.post("/api/users", {"username": "Alice", "password": "tulip-harbour-88"}).status_code == 201
    assert admin.post("/api/users", {"username": "alice", "password": "tulip-harbour-88"}).status_code == 409


def test_account_commands(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    pw = tmp_path / "pw"
    pw.write_text("harbour-tulip-88\n")
    assert (
        main(["label", "user", "add", "-q", "--db", db, "--username", "ann", "--password-file", str(pw)]) == 0
    )
    pw.write_text("12345678\n")
    assert (
        main(["label", "user", "password", "-q", "--db", db, "--username", "ann", "--password-file", str(pw)])
        == 2
    )
    assert "password:" in capsys.readouterr().err
    pw.write_text("violin-meadow-27\n")
    assert (
        main(["label", "user", "password", "-q", "--db", db, "--username", "ann", "--password-file", str(pw)])
        == 0
    )
    app = create_app(db, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"])
    Client(app, "ann", "violin-meadow-27")
    assert main(["label", "user", "logout", "--db", db, "--username", "ann"]) == 0
    assert "ended 1 session(s)" in capsys.readouterr().err
    assert main(["label", "user", "disable", "-q", "--db", db, "--username", "ann"]) == 0
    login = {"username": "ann", "password": "violin-meadow-27"}
    assert TestClient(app).post("/api/login", json=login).status_code == 401
    assert main(["label", "user", "enable", "-q", "--db", db, "--username", "ann"]) == 0
    assert TestClient(app).post("/api/login", json=login).status_code == 200
    make_project(app, name="p")
    assert main(["label", "member", "add", "-q", "--db", db, "--username", "ann", "--project", "p"]) == 0
    assert main(["label", "member", "remove", "-q", "--db", db, "--username", "ann", "--project", "p"]) == 0
    assert main(["label", "member", "remove", "-q", "--db", db, "--username", "ann", "--project", "p"]) == 2
    assert "not a member" in capsys.readouterr().err
    assert main(["label", "user", "disable", "-q", "--db", db, "--username", "nobody"]) == 2
    assert "no account 'nobody'" in capsys.readouterr().err
    app.state.engine.dispose()


# ------------------------------------------------------------------------------------------- 8. startup


def test_serve_refuses_a_damaged_database_with_the_reason(tmp_path, capsys):
    damaged = tmp_path / "labels.db"
    damaged.write_bytes(b"not a database " * 500)
    assert main(["label", "serve", "--db", str(damaged), "--port", "8765"]) == 2
    err = capsys.readouterr().err
    assert "labels.db: cannot use this database: file is not a database" in err


# ----------------------------------------------------------------------------------- 9. over-labelling


def _label_concurrently(apps, pid, names, k, items):
    """Every labeller (one thread each, round-robin over ``apps``) labels until their queue is empty."""
    errors: list[str] = []
    barrier = threading.Barrier(len(names))

    def work(app, name):
        try:
            client = Client(app, name)
            barrier.wait()
            while True:
                response = client.get(f"/api/projects/{pid}/next")
                if response.status_code == 204:
                    return
                assert response.status_code == 200, response.text
                answer = client.answer(pid, response.json()["item_id"], choice="A")
                assert answer.status_code in (201, 409), answer.text
        except Exception as exc:  # reported below
            errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=work, args=(apps[i % len(apps)], n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("servers, k", [(1, 1), (2, 2)])
def test_concurrent_labellers_never_exceed_k_labels_per_item(label_db, servers, k):
    apps = [
        create_app(label_db, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"])
        for _ in range(servers)
    ]
    names = [f"l{i}" for i in range(8)]
    for name in names:
        make_user(apps[0], name)
    items = 24
    pid = make_project(
        apps[0],
        items=[Candidate(f"q{i}", ["x", "y"]) for i in range(items)],
        members=names,
        labels_per_item=k,
    )
    assert _label_concurrently(apps, pid, names, k, items) == []
    with apps[0].state.sessionmaker() as db:
        per_item = dict(
            db.execute(
                select(Answer.item_id, func.count()).where(Answer.project_id == pid).group_by(Answer.item_id)
            ).all()
        )
    assert max(per_item.values()) <= k  # never more than k (before: up to k + labellers - 1)
    assert len(per_item) == items and sum(per_item.values()) == items * k  # and every item got its k
    for app in apps:
        app.state.engine.dispose()


def test_an_expired_lease_frees_the_item_and_a_late_answer_past_k_is_refused(app):
    names = ["ann", "bob"]
    for name in names:
        make_user(app, name)
    pid = make_project(app, items=[Candidate("q", ["x", "y"])], members=names, labels_per_item=1)
    ann, bob = Client(app, "ann"), Client(app, "bob")
    item = ann.get(f"/api/projects/{pid}/next").json()["item_id"]
    assert bob.get(f"/api/projects/{pid}/next").status_code == 204  # leased to ann: nothing for bob
    assert ann.get(f"/api/projects/{pid}/next").json()["item_id"] == item  # a reload: the same item
    with app.state.sessionmaker() as db:  # ann walks away past her lease
        begin_write(db)
        db.execute(update(DisplayOrder).values(leased_until=utcnow() - dt.timedelta(seconds=1)))
        db.commit()
    assert bob.get(f"/api/projects/{pid}/next").json()["item_id"] == item
    assert bob.answer(pid, item, choice="B").status_code == 201
    late = ann.answer(pid, item, choice="A")
    assert late.status_code == 409 and "label(s) already" in late.json()["detail"]


# ------------------------------------------------------------------------------ 10. dependency floors


def test_dependency_floors_are_above_the_known_cves():
    label = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["label"]
    floors = {spec.split(">=")[0]: Version(spec.split(">=")[1]) for spec in label if ">=" in spec}
    assert floors["starlette"] >= Version("0.49.1")  # CVE-2025-62727: Range header DoS in FileResponse
    assert floors["h11"] >= Version("0.16")  # CVE-2025-43859: chunked-body request smuggling
    for name in ("starlette", "h11"):
        assert Version(importlib.metadata.version(name)) >= floors[name]


# ---------------------------------------------------------------------------------------- 11. the rest


def test_a_proto_aspect_is_answered_and_exported(app):
    make_user(app, "admin", admin=True)
    make_user(app, "alice")
    pid = make_project(
        app,
        kind="rating",
        items=[Candidate("q", ["x"])],
        members=["alice"],
        aspects=["__proto__", "constructor"],
    )
    alice = Client(app, "alice")
    item = alice.get(f"/api/projects/{pid}/next").json()["item_id"]
    assert alice.answer(pid, item, ratings=[{"__proto__": 4, "constructor": 2}]).status_code == 201
    lines = Client(app, "admin").get(f"/api/projects/{pid}/export?format=ratings").text.splitlines()
    assert len(lines) == 2 and '"aspect":"__proto__"' in lines[0].replace(" ", "")


def test_expired_sessions_are_purged_at_the_next_login(app):
    make_user(app, "alice")
    Client(app, "alice")
    with app.state.sessionmaker() as db:
        begin_write(db)
        for row in db.scalars(select(LoginSession)):
            row.expires_at = utcnow() - dt.timedelta(minutes=1)
        db.commit()
    Client(app, "alice")
    with app.state.sessionmaker() as db:
        assert db.scalar(select(func.count()).select_from(LoginSession)) == 1  # only the new one
