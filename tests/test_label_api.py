"""The labelling app's JSON API and pages through FastAPI's TestClient, on SQLite and PostgreSQL: login,
sessions and CSRF; every permission rule (401 / 403 / 404 on every route); the queue (each item once per
labeller, k labels per item); per-labeller display orders mapped back to original indices; idempotent
answers; 409 and 422; and a real uvicorn server killed with SIGKILL keeps every acknowledged answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from label_client import PASSWORD, Client, make_project, make_user

from rlxf.feedback.label.app import create_app
from rlxf.feedback.label.projects import Candidate


def api_routes(app):
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/api/") and route.path != "/api/login":
            for method in route.methods:
                yield method, route.path.replace("{pid}", "1").replace("{item_id}", "1").replace("{uid}", "1")


# ------------------------------------------------------------------------------------- sessions, CSRF


def test_login_me_logout(app):
    make_user(app, "alice")
    http = TestClient(app)
    assert http.post("/api/login", json={"username": "alice", "password": "wrong pass"}).status_code == 401
    assert http.post("/api/login", json={"username": "nobody", "password": PASSWORD}).status_code == 401
    response = http.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == {"id": 1, "username": "alice", "is_admin": False, "disabled": False}
    cookie = response.headers["set-cookie"]
    assert "rlxf_session=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    me = http.get("/api/me").json()
    assert me["csrf_token"] == body["csrf_token"] and me["user"]["username"] == "alice"
    assert http.post("/api/logout").status_code == 403  # no CSRF header
    assert http.post("/api/logout", headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    assert http.get("/api/me").status_code == 401
    # the old cookie is dead server-side too, not only dropped by the browser
    http.cookies.set("rlxf_session", cookie.split(";")[0].split("=", 1)[1])
    assert http.get("/api/me").status_code == 401


def test_every_api_route_answers_401_without_a_session(app):
    make_user(app, "admin", admin=True)
    make_project(app)
    http = TestClient(app)
    routes = list(api_routes(app))
    assert len(routes) >= 15
    for method, path in routes:
        response = http.request(method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        assert "detail" in response.json()
    http.cookies.set("rlxf_session", "forged-token")
    for method, path in routes:
        assert http.request(method, path).status_code == 401, (method, path)


def test_every_state_changing_route_needs_the_csrf_token(app):
    make_user(app, "admin", admin=True)
    make_project(app)
    admin = Client(app, "admin")
    writes = [(m, p) for m, p in api_routes(app) if m not in ("GET", "HEAD")]
    assert len(writes) >= 5
    for method, path in writes:
        assert admin.http.request(method, path, json={}).status_code == 403, (method, path)
        wrong = {"X-CSRF-Token": admin.csrf[:-1] + "x"}
        assert admin.http.request(method, path, json={}, headers=wrong).status_code == 403, (method, path)


def test_pages_redirect_to_login_and_keep_labellers_out_of_admin(app):
    make_user(app, "admin", admin=True)
    make_user(app, "alice")
    pid = make_project(app, members=["alice"])
    other = make_project(app, name="other")
    anonymous = TestClient(app)
    for path in ("/", "/admin", f"/projects/{pid}/label", f"/admin/projects/{pid}"):
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
    assert anonymous.get("/admin/projects/1", follow_redirects=False).headers["location"] == (
        "/login?next=/admin/projects/1"
    )
    assert anonymous.get("/login").status_code == 200
    alice = Client(app, "alice")
    assert alice.get("/", follow_redirects=False).status_code == 200
    assert alice.get(f"/projects/{pid}/label").status_code == 200
    # another project's page answers as a missing one does: a labeller cannot tell which ids exist
    assert alice.get(f"/projects/{other}/label").status_code == 404
    assert alice.get("/projects/999/label").status_code == 404
    assert alice.get("/admin").status_code == 403
    assert alice.get(f"/admin/projects/{pid}").status_code == 403
    admin = Client(app, "admin")
    home = admin.get("/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/admin"
    assert admin.get("/admin").status_code == 200


# -------------------------------------------------------------------------------------- permissions


def test_a_labeller_sees_only_their_projects_and_answers(app):
    make_user(app, "admin", admin=True)
    make_user(app, "alice")
    make_user(app, "bob")
    mine = make_project(app, name="mine", members=["alice", "bob"])
    theirs = make_project(app, name="theirs", members=["bob"])
    alice, bob = Client(app, "alice"), Client(app, "bob")

    assert [p["name"] for p in alice.get("/api/projects").json()] == ["mine"]
    assert {p["name"] for p in bob.get("/api/projects").json()} == {"mine", "theirs"}
    assert alice.get(f"/api/projects/{mine}").status_code == 200
    # another project answers exactly as one that does not exist (404, same text), so a labeller cannot
    # tell which project ids exist; admin routes are 403 for a labeller whether the project exists or not
    bob_item = bob.next(theirs).json()["item_id"]
    for path in ("", "/next", "/answers/mine"):
        response = alice.get(f"/api/projects/{theirs}{path}")
        assert response.status_code == 404 and response.json() == {"detail": f"no project {theirs}"}, path
        assert alice.get(f"/api/projects/999{path}").json() == {"detail": "no project 999"}
    for path in ("/answers", "/agreement", "/export?format=raw", "/members"):
        assert alice.get(f"/api/projects/{theirs}{path}").status_code == 403, path
        assert alice.get(f"/api/projects/999{path}").status_code == 403, path
    assert alice.answer(theirs, bob_item, choice="A").status_code == 404

    # bob's answers are not alice's to read: her own list holds hers only; everyone's list is admin-only
    item = bob.next(mine).json()["item_id"]
    assert bob.answer(mine, item, choice="A", reason="clearer").status_code == 201
    assert alice.get(f"/api/projects/{mine}/answers/mine").json() == []
    assert alice.get(f"/api/projects/{mine}/answers").status_code == 403
    assert alice.get(f"/api/projects/{mine}/agreement").status_code == 403
    assert alice.get(f"/api/projects/{mine}/export?format=preferences").status_code == 403
    # ... and she cannot make herself an admin, a project or a member
    assert alice.get("/api/users").status_code == 403
    assert (
        alice.post("/api/users", {"username": "eve", "password": PASSWORD, "is_admin": True}).status_code
        == 403
    )
    body = {"name": "x", "kind": "pairwise", "items": [{"prompt": "q", "responses": ["a", "b"]}]}
    assert alice.post("/api/projects", body).status_code == 403
    assert alice.post(f"/api/projects/{theirs}/members", {"username": "alice"}).status_code == 403
    assert [p["name"] for p in alice.get("/api/projects").json()] == ["mine"]

    admin = Client(app, "admin")
    everyone = admin.get(f"/api/projects/{mine}/answers").json()
    assert [(a["username"], a["reason"]) for a in everyone] == [("bob", "clearer")]
    assert admin.get("/api/projects/999/answers").status_code == 404


def test_admin_creates_users_projects_and_members(app):
    make_user(app, "admin", admin=True)
    admin = Client(app, "admin")
    assert admin.post("/api/users", {"username": "carol", "password": PASSWORD}).status_code == 201
    assert admin.post("/api/users", {"username": "carol", "password": PASSWORD}).status_code == 409
    short = admin.post("/api/users", {"username": "dave", "password": "short"})
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "password"]
    assert [u["username"] for u in admin.get("/api/users").json()] == ["admin", "carol"]

    items = [{"prompt": "q", "responses": ["a", "b", "c"]}, {"prompt": "r", "responses": ["a"]}]
    body = {"name": "rank", "kind": "ranking", "labels_per_item": 2, "items": items}
    bad = admin.post("/api/projects", body)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "items", 1, "responses"]
    items[1]["responses"] = ["a", "b"]
    created = admin.post("/api/projects", body)
    assert created.status_code == 201, created.text
    project = created.json()
    assert project["kind"] == "ranking" and project["labels_per_item"] == 2
    assert project["progress"] == {"done": 0, "total": 2}
    assert admin.post("/api/projects", body).status_code == 409  # the name is taken
    wrong_kind = admin.post("/api/projects", {**body, "name": "z", "kind": "vote"})
    assert wrong_kind.status_code == 422 and wrong_kind.json()["detail"][0]["loc"] == ["body", "kind"]

    assert admin.post(f"/api/projects/{project['id']}/members", {"username": "nobody"}).status_code == 404
    assert admin.post(f"/api/projects/{project['id']}/members", {"username": "carol"}).status_code == 201
    carol = Client(app, "carol")
    assert [p["name"] for p in carol.get("/api/projects").json()] == ["rank"]


# ------------------------------------------------------------------------------------ queue, answers


def test_the_queue_serves_each_item_once_per_labeller_and_honours_k(app):
    for name in ("a", "b", "c"):
        make_user(app, name)
    make_user(app, "admin", admin=True)
    pid = make_project(app, labels_per_item=2, members=["a", "b", "c"])
    a, b, c = (Client(app, n) for n in "abc")

    seen = []
    while (response := a.next(pid)).status_code == 200:
        item = response.json()
        assert item["item_id"] not in seen
        seen.append(item["item_id"])
        assert a.answer(pid, item["item_id"], choice="A").status_code == 201
        assert len(seen) <= 3
    assert response.status_code == 204 and len(seen) == 3
    assert a.get(f"/api/projects/{pid}").json()["progress"] == {"done": 3, "total": 3}

    # b takes one item; c's queue then puts the two items with fewer answers first
    first = b.next(pid).json()["item_id"]
    assert b.answer(pid, first, choice="B").status_code == 201
    assert c.next(pid).json()["item_id"] != first
    assert c.get(f"/api/projects/{pid}").json()["progress"] == {"done": 0, "total": 2}  # one item is full
    for labeller in (b, c):
        while (response := labeller.next(pid)).status_code == 200:
            labeller.answer(pid, response.json()["item_id"], choice="tie")
    # every item has its k=2 labels: a from a, the rest split between b and c, no item labelled 3 times
    admin = Client(app, "admin")
    counts = {}
    for answer in admin.get(f"/api/projects/{pid}/answers").json():
        counts[answer["item_id"]] = counts.get(answer["item_id"], 0) + 1
    assert sorted(counts.values()) == [2, 2, 2]
    assert admin.get(f"/api/projects/{pid}").json()["progress"] == {"done": 3, "total": 3}
    done = [x.get(f"/api/projects/{pid}").json()["progress"] for x in (b, c)]
    assert done[0]["done"] + done[1]["done"] == 3 and all(p["done"] == p["total"] for p in done)


def test_display_order_is_random_per_labeller_stored_and_mapped_back(app):
    names = [f"l{i}" for i in range(6)]
    for name in names:
        make_user(app, name)
    texts = [f"response {i}" for i in range(5)]
    pid = make_project(app, kind="ranking", items=[Candidate("q", texts)], members=names, labels_per_item=6)
    orders = []
    for name in names:
        labeller = Client(app, name)
        item = labeller.next(pid).json()
        shown = [r["text"] for r in item["responses"]]
        assert [r["slot"] for r in item["responses"]] == list(range(5))
        assert labeller.next(pid).json()["responses"] == item["responses"]  # stored, not redrawn
        orders.append(shown)
        # rank by the original order (response 0 best): the slots of "response 0", "response 1", ...
        ranking = [shown.index(text) for text in texts]
        assert labeller.answer(pid, item["item_id"], ranking=ranking).status_code == 201
        (answer,) = labeller.get(f"/api/projects/{pid}/answers/mine").json()
        assert answer["value"] == {"ranking": [0, 1, 2, 3, 4]}
        assert answer["ranking"] == ranking
        assert [texts[i] for i in answer["display_order"]] == shown
    assert len({tuple(o) for o in orders}) > 1  # six identical shuffles of 5 items: p = 120**-5


def test_pairwise_choices_and_ratings_map_back_to_original_responses(app):
    names = [f"l{i}" for i in range(4)]
    for name in names:
        make_user(app, name)
    pair = make_project(
        app, name="pair", items=[Candidate("q", ["good", "bad"])], members=names, labels_per_item=4
    )
    rate = make_project(
        app,
        name="rate",
        kind="rating",
        items=[Candidate("q", ["one", "two", "three"])],
        members=names,
        aspects=["helpful", "safe"],
        scale=7,
        labels_per_item=4,
    )
    for name in names:
        labeller = Client(app, name)
        item = labeller.next(pair).json()
        slot = [r["text"] for r in item["responses"]].index("good")
        assert labeller.answer(pair, item["item_id"], choice="AB"[slot]).status_code == 201
        item = labeller.next(rate).json()
        ratings = [{"helpful": len(r["text"]), "safe": 1} for r in item["responses"]]
        assert labeller.answer(rate, item["item_id"], ratings=ratings).status_code == 201
        assert labeller.get(f"/api/projects/{pair}/answers/mine").json()[0]["value"] == {"choice": 0}
        value = labeller.get(f"/api/projects/{rate}/answers/mine").json()[0]["value"]
        assert value == {
            "ratings": [{"helpful": 3, "safe": 1}, {"helpful": 3, "safe": 1}, {"helpful": 5, "safe": 1}]
        }


def test_answers_are_idempotent_by_client_id_and_unique_per_item(app):
    make_user(app, "alice")
    make_user(app, "admin", admin=True)
    pid = make_project(app, members=["alice"])
    alice = Client(app, "alice")
    first = alice.next(pid).json()["item_id"]
    key = str(uuid.uuid4())
    created = alice.answer(pid, first, client_id=key, choice="A")
    assert created.status_code == 201
    replay = alice.answer(pid, first, client_id=key, choice="A")
    assert replay.status_code == 200 and replay.json()["answer_id"] == created.json()["answer_id"]
    assert (
        alice.answer(pid, first, client_id=key, choice="B").json()["answer_id"] == created.json()["answer_id"]
    )
    assert alice.answer(pid, first, choice="B").status_code == 409  # a second, different answer
    second = alice.next(pid).json()["item_id"]
    assert second != first
    assert alice.answer(pid, second, client_id=key, choice="A").status_code == 409  # key of another answer
    assert alice.answer(pid, 999, choice="A").status_code == 404
    admin = Client(app, "admin")
    assert len(admin.get(f"/api/projects/{pid}/answers").json()) == 1
    # an item never shown to the labeller has no display order to map the slots back with
    third = [i for i in (1, 2, 3) if i not in (first, second)][0]
    assert alice.answer(pid, third, choice="A").status_code == 409


def test_invalid_answers_are_422_naming_the_field(app):
    make_user(app, "alice")
    pair = make_project(app, name="pair", members=["alice"], ask_reason="required")
    rank = make_project(
        app, name="rank", kind="ranking", items=[Candidate("q", ["a", "b", "c"])], members=["alice"]
    )
    rate = make_project(
        app, name="rate", kind="rating", items=[Candidate("q", ["a"])], members=["alice"], scale=5
    )
    alice = Client(app, "alice")
    ids = {pid: alice.next(pid).json()["item_id"] for pid in (pair, rank, rate)}

    def loc(pid, body):
        response = alice.post(f"/api/projects/{pid}/items/{ids[pid]}/answers", body)
        assert response.status_code == 422, response.text
        return response.json()["detail"][0]["loc"]

    key = {"client_id": "k1"}
    assert loc(pair, {"choice": "A", "reason": "x"}) == ["body", "client_id"]
    assert loc(pair, {**key, "choice": "C", "reason": "x"}) == ["body", "choice"]
    assert loc(pair, {**key, "choise": "A", "reason": "x"}) == ["body", "choise"]
    assert loc(pair, {**key, "choice": "A"}) == ["body", "reason"]  # this project requires a reason
    assert loc(pair, {**key, "ranking": [0, 1], "reason": "x"}) == ["body", "ranking"]
    assert loc(rank, {**key, "ranking": [0, 0, 1]}) == ["body", "ranking"]
    assert loc(rank, {**key, "ranking": [0, 1]}) == ["body", "ranking"]
    assert loc(rank, {**key}) == ["body", "ranking"]
    assert loc(rate, {**key, "ratings": [{"overall": 6}]}) == ["body", "ratings", 0, "overall"]
    assert loc(rate, {**key, "ratings": [{"style": 3}]}) == ["body", "ratings", 0]
    assert loc(rate, {**key, "ratings": [{"overall": "good"}]})[:3] == ["body", "ratings", 0]
    assert alice.get(f"/api/projects/{rate}/answers/mine").json() == []  # nothing was stored
    ok = alice.post(f"/api/projects/{rate}/items/{ids[rate]}/answers", {**key, "ratings": [{"overall": 5}]})
    assert ok.status_code == 201


def test_agreement_and_export_through_the_api(app, tmp_path):
    from rlxf.data import read_data

    names = ["a", "b", "c"]
    for name in names:
        make_user(app, name)
    make_user(app, "admin", admin=True)
    pid = make_project(
        app, labels_per_item=3, members=names, items=[Candidate(f"q{i}", ["x", "y"]) for i in range(2)]
    )
    # item q0: everyone prefers "x"; item q1: x, x, y
    votes = {"q0": ["x", "x", "x"], "q1": ["x", "x", "y"]}
    for i, name in enumerate(names):
        labeller = Client(app, name)
        while (response := labeller.next(pid)).status_code == 200:
            item = response.json()
            want = votes[item["prompt"]][i]
            slot = [r["text"] for r in item["responses"]].index(want)
            labeller.answer(pid, item["item_id"], choice="AB"[slot])
    admin = Client(app, "admin")
    agreement = admin.get(f"/api/projects/{pid}/agreement").json()
    # pairs: q0 3 of 3 agree, q1 1 of 3; alpha by hand: o_xx = 3*2/2 + 2/2 = 4, o_xy = o_yx = 2/2 = 1,
    # n = 6, n_x = 5, n_y = 1: D_o = 2/6, D_e = 2*5*1/(6*5) = 1/3 -> alpha = 0
    assert agreement == {
        "items_with_2plus": 2,
        "percent_agreement": pytest.approx(4 / 6),
        "krippendorff_alpha": pytest.approx(0.0, abs=1e-12),
        "labels": 6,
        "labellers": 3,
    }
    response = admin.get(f"/api/projects/{pid}/export?format=preferences")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in response.text.splitlines()]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in records] == [
        ("q0", "x", "y"),
        ("q1", "x", "y"),
    ]
    assert [r["margin"] for r in records] == [pytest.approx(1.0), pytest.approx(1 / 3)]
    (tmp_path / "prefs.jsonl").write_text(response.text)
    assert read_data(tmp_path / "prefs.jsonl", kind="preferences").kind == "preferences"
    assert admin.get(f"/api/projects/{pid}/export?format=ratings").status_code == 422  # a pairwise project
    assert admin.get(f"/api/projects/{pid}/export?format=csv").status_code == 422
    raw = admin.get(f"/api/projects/{pid}/export?format=raw").text.splitlines()
    assert len(raw) == 6 and {json.loads(line)["labeller"] for line in raw} == set(names)


# ------------------------------------------------------------------------------------------ durability


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(db_url, port):
    code = f"from rlxf.feedback.label.app import serve; serve({db_url!r}, '127.0.0.1', {port})"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return process
        except httpx.TransportError:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stderr.read().decode()}") from None
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not start in 60 s")


def test_acknowledged_answers_survive_a_killed_server(tmp_path):
    db_url = f"sqlite:///{tmp_path}/label.db"
    setup = create_app(db_url)  # argon2's default cost: the server below checks the password with it
    make_user(setup, "alice")
    pid = make_project(setup, members=["alice"], items=[Candidate(f"q{i}", ["x", "y"]) for i in range(20)])
    setup.state.engine.dispose()

    port = _free_port()
    server = _start_server(db_url, port)
    acknowledged = {}
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        csrf = http.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["csrf_token"]
        for _ in range(20):
            item = http.get(f"/api/projects/{pid}/next").json()
            client_id = str(uuid.uuid4())
            response = http.post(
                f"/api/projects/{pid}/items/{item['item_id']}/answers",
                json={"client_id": client_id, "choice": "A"},
                headers={"X-CSRF-Token": csrf},
            )
            assert response.status_code == 201
            acknowledged[client_id] = response.json()["answer_id"]
    finally:
        os.kill(server.pid, signal.SIGKILL)  # no shutdown, no flush: the process is gone
        server.wait()
    assert server.returncode == -signal.SIGKILL

    server = _start_server(db_url, port)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        csrf = http.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["csrf_token"]
        stored = http.get(f"/api/projects/{pid}/answers/mine").json()
        assert {a["client_id"]: a["answer_id"] for a in stored} == acknowledged
        assert http.get(f"/api/projects/{pid}/next").status_code == 204
    finally:
        server.kill()
        server.wait()
