"""What the labelling app's API tests share: the app on a fresh database (``app`` fixture, on SQLite and
PostgreSQL through ``label_db``), accounts and projects made through the library, and :class:`Client`,
a logged-in browser that sends the CSRF header on writes."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from rlxf.feedback.label.app import create_app
from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.projects import Candidate, Settings, add_user, create_project

PASSWORD = "correct horse"


@pytest.fixture
def app(label_db):
    app = create_app(label_db, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"])
    yield app
    app.state.engine.dispose()


def make_user(app, name, admin=False):
    with app.state.sessionmaker() as db:
        return add_user(db, app.state.hasher, name, PASSWORD, admin).id


def make_project(app, name="p", kind="pairwise", items=None, members=(), **settings):
    items = items or [Candidate(f"q{i}", ["x", "y"]) for i in range(3)]
    with app.state.sessionmaker() as db:
        return create_project(db, Settings(name=name, kind=kind, **settings), items, list(members)).id


class Client:
    """A logged-in browser: TestClient with the session cookie, sending the CSRF header on writes."""

    def __init__(self, app, username, password=PASSWORD):
        self.http = TestClient(app)
        response = self.http.post("/api/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrf_token"]

    def get(self, url, **kw):
        return self.http.get(url, **kw)

    def send(self, method, url, body=None, **kw):
        return self.http.request(method, url, json=body, headers={"X-CSRF-Token": self.csrf}, **kw)

    def post(self, url, body=None, **kw):
        return self.send("POST", url, body, **kw)

    def next(self, pid):
        return self.get(f"/api/projects/{pid}/next")

    def answer(self, pid, item_id, client_id=None, **body):
        return self.post(
            f"/api/projects/{pid}/items/{item_id}/answers",
            {"client_id": client_id or str(uuid.uuid4()), **body},
        )
