"""The labelling app's JSON API under generated input (Schemathesis over the app's own OpenAPI schema).

Every operation of ``app.openapi()`` (the app serves no ``/openapi.json``) is driven in-process (ASGI)
with Schemathesis' generated requests, valid and invalid, as three callers: anonymous, a labeller who is
a member of three projects (pairwise, ranking, rating) but not of a fourth, and an admin. The logged-in
callers send their ``rlxf_session`` cookie, and the CSRF token as ``X-CSRF-Token`` on every non-GET
request, so the handlers run past the session and CSRF checks.

Inputs beyond what the schema alone gives (Schemathesis hooks, half of the examples each):

* path parameters from the seeded ids: a project, one of its items (``pid`` and ``item_id`` of the same
  project), a user, and one id of each that does not exist, so the handlers run past their 404s; every
  item was already shown to both logged-in callers (a display order is stored), so answers reach their
  validation; the export's ``format`` from the real formats;
* JSON bodies with one string (a value or a key) given a lone surrogate, or one integer made huge
  (past 64 bits): any client can send ``"\\ud800"`` in JSON, but Schemathesis generates only
  UTF-8-encodable text and Hypothesis rarely draws such integers;
* well-formed bodies (plain or with such an edge value) for the routes whose generated bodies almost
  never pass validation (projects, accounts, members, passwords, answers), and answers valid for the
  seeded project in the path, with client_ids that repeat, so answers are stored, replayed and refused.

A request that ends a caller's session or changes its account (logout, a password change, disabling,
removing the labeller from a project) is followed by a restore of the seeded state and new logins, so the
next examples run logged in again. The login throttle's limits are lifted for this app: every generated
login comes from one address.

Checks on every response: no 5xx (an exception in a handler fails the test with its traceback), and a
response with a documented status code conforms to the documented schema.

Bounded for CI: ``RLXF_FUZZ_EXAMPLES`` generated examples per operation and caller (default 30; besides
them Schemathesis' coverage phase sends a fixed set of boundary, wrong-type and wrong-method cases; the
whole file takes 1-2 minutes on a 2-core machine), Hypothesis derandomized (the same inputs on every
run), without an example database and with its caches in a temporary folder (nothing is written to the
repository).

    RLXF_FUZZ_EXAMPLES=200 pytest tests/test_label_fuzz.py     # a longer fuzz
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import insert, select

from rlxf.feedback.label.app import create_app
from rlxf.feedback.label.auth import COOKIE, CSRF_HEADER, LoginThrottle, password_hasher
from rlxf.feedback.label.db import DisplayOrder, Item, Project
from rlxf.feedback.label.projects import (
    Candidate,
    Settings,
    add_member,
    add_user,
    create_project,
    find_user,
    set_disabled,
    set_password,
)

EXAMPLES = int(os.environ.get("RLXF_FUZZ_EXAMPLES", "30"))
PASSWORD = "fuzz correct horse"
CALLERS = ("anonymous", "labeller", "admin")
EXPORT_FORMATS = ("preferences", "ratings", "raw")
ITEMS_PER_PROJECT = 40  # more than the valid answers one caller can post to a project in one run
HUGE_INTS = (2**63, -(2**63) - 1, 2**64, 10**30)  # past SQLite's and PostgreSQL's 64-bit integers
# Routes whose success can end a caller's session, disable its account, change its password or take the
# labeller out of a project: the seeded state is restored after each 2xx from one of them.
RESTORE_AFTER = (
    "/api/logout",
    "/api/me/password",
    "/api/users/{uid}",
    "/api/users/{uid}/password",
    "/api/users/{uid}/sessions",
    "/api/projects/{pid}/members/{uid}",
)

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    # Hypothesis' caches (source constants, unicode data) go to a temporary folder, not ``.hypothesis/`` in
    # the working directory; the example database is off (``database=None`` below).
    _storage = tempfile.mkdtemp(prefix="rlxf-fuzz-hypothesis-")
    atexit.register(shutil.rmtree, _storage, ignore_errors=True)
    set_hypothesis_home_dir(_storage)


def make_app(db_url: str) -> Any:
    """The app as the tests drive it: cheap hashes, TestClient's Host, no effective login throttle."""
    throttle = LoginThrottle(per_address="1000000/minute", per_username="1000000/minute")
    return create_app(
        db_url, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"], throttle=throttle
    )


def _spec() -> dict[str, Any]:
    """The app's OpenAPI document (the same for every database)."""
    with tempfile.TemporaryDirectory(prefix="rlxf-fuzz-spec-") as tmp:
        app = make_app(f"sqlite:///{tmp}/spec.db")
        try:
            return app.openapi()
        finally:
            app.state.engine.dispose()


SPEC = _spec()
schema = schemathesis.openapi.from_dict(SPEC)

# The seeded ids the generated path parameters are drawn from, filled in by the ``world`` fixture before
# the first example is drawn: project ids, (project id, item id) pairs and user ids; each list ends with
# an id that does not exist.
KNOWN: dict[str, list[Any]] = {"pids": [], "pairs": [], "uids": []}


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy:
    """Half the time the generated parameters, half the time seeded ids: a project (and one of its
    items), a user."""
    names = set(path_parameters) if isinstance(path_parameters, dict) else set()
    if not names & {"pid", "item_id", "uid"} or not KNOWN["pids"]:
        return st.just(path_parameters)
    real = st.just(dict(path_parameters))
    if "item_id" in names:
        real = st.sampled_from(KNOWN["pairs"]).map(
            lambda pair: {**path_parameters, "pid": pair[0], "item_id": pair[1]}
        )
    elif "pid" in names:
        real = st.sampled_from(KNOWN["pids"]).map(lambda pid: {**path_parameters, "pid": pid})
    if "uid" in names:
        real = st.tuples(real, st.sampled_from(KNOWN["uids"])).map(lambda t: {**t[0], "uid": t[1]})
    return st.one_of(st.just(path_parameters), real)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any]) -> st.SearchStrategy:
    """The export's ``format``: half the time a real one."""
    if not isinstance(query, dict) or "format" not in query:
        return st.just(query)
    return st.one_of(st.just(query), st.sampled_from(EXPORT_FORMATS).map(lambda f: {**query, "format": f}))


_KEY = object()  # the last element of a leaf path that names a dict key, not its value


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to the strings, integers and dict keys inside a JSON value."""
    if isinstance(value, dict):
        out = []
        for key, inner in value.items():
            out.append((*path, key, _KEY))
            out += _leaves(inner, (*path, key))
        return out
    if isinstance(value, list):
        return [leaf for i, inner in enumerate(value) for leaf in _leaves(inner, (*path, i))]
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return [path]
    return []


def _replace(value: Any, path: tuple, new: Any) -> Any:
    """``value`` with the leaf at ``path`` replaced by ``new(old)`` (a dict key renamed)."""
    if len(path) == 2 and path[1] is _KEY and isinstance(value, dict):
        return {(new(k) if k == path[0] else k): v for k, v in value.items()}
    if not path:
        return new(value)
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_replace(v, rest, new) if k == head else v) for k, v in value.items()}
    return [(_replace(v, rest, new) if i == head else v) for i, v in enumerate(value)]


@st.composite
def _edge_value(draw: Any, body: Any) -> Any:
    """``body`` with one string (value or key) given a lone surrogate, or one integer made huge."""
    leaves = _leaves(body)
    if not leaves:
        return body
    path = draw(st.sampled_from(leaves))
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    huge = draw(st.sampled_from(HUGE_INTS))
    return _replace(body, path, lambda old: old + surrogate if isinstance(old, str) else huge)


def _well_formed_bodies() -> dict[tuple[str, str], st.SearchStrategy]:
    """Bodies of the right shape for the routes whose generated bodies almost never pass validation, so
    the handlers' own checks run too: answers of each kind (with client_ids that repeat: replays and
    conflicts), projects, accounts, members, passwords."""
    text = st.text(max_size=30)
    word = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)
    names = st.sampled_from(["labeller", "admin", "nobody"]) | st.from_regex(
        r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,70}", fullmatch=True
    )
    passwords = st.sampled_from([PASSWORD, "short", "password1", "another correct horse"]) | text
    slot = st.integers(-1, 4)
    rating = st.integers(0, 8)
    answer = st.one_of(
        st.fixed_dictionaries({"choice": st.sampled_from(["A", "B", "tie", "both_bad"])}),
        st.fixed_dictionaries({"ranking": st.permutations([0, 1, 2]) | st.lists(slot, max_size=4)}),
        st.fixed_dictionaries(
            {
                "ratings": st.lists(
                    st.fixed_dictionaries({"helpful": rating, "honest": rating})
                    | st.dictionaries(st.sampled_from(["helpful", "honest", "x"]), slot),
                    min_size=1,
                    max_size=3,
                )
            }
        ),
    )
    answers = st.tuples(
        answer,
        st.sampled_from(["replayed-1", "replayed-2"]) | st.uuids().map(str),
        st.none() | st.sampled_from(["", "  ", "because"]) | text,
    ).map(lambda t: {**t[0], "client_id": t[1], **({} if t[2] is None else {"reason": t[2]})})
    item = st.fixed_dictionaries(
        {"prompt": word, "responses": st.lists(word, min_size=1, max_size=3)},
        optional={
            "id": st.none() | text,
            "meta": st.none() | st.dictionaries(text, st.integers() | text, max_size=2),
        },
    )
    project = st.fixed_dictionaries(
        {
            "name": st.sampled_from(["pairwise", "new"]) | word,
            "kind": st.sampled_from(["pairwise", "ranking", "rating"]),
            "items": st.lists(item, min_size=1, max_size=3),
        },
        optional={
            "guidelines": text,
            "labels_per_item": st.integers(-1, 5),
            "aspects": st.none() | st.lists(word, max_size=3),
            "scale": st.integers(0, 120),
            "ask_reason": st.sampled_from(["off", "optional", "required"]),
            "members": st.lists(names, max_size=3),
        },
    )
    return {
        ("POST", "/api/projects/{pid}/items/{item_id}/answers"): answers,
        ("POST", "/api/projects"): project,
        ("POST", "/api/users"): st.fixed_dictionaries(
            {"username": names, "password": passwords}, optional={"is_admin": st.booleans()}
        ),
        ("POST", "/api/projects/{pid}/members"): st.fixed_dictionaries({"username": names}),
        ("PUT", "/api/users/{uid}/password"): st.fixed_dictionaries({"password": passwords}),
        ("PUT", "/api/me/password"): st.fixed_dictionaries(
            {"current_password": st.just(PASSWORD) | text, "new_password": passwords}
        ),
    }


WELL_FORMED = _well_formed_bodies()


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    """The generated body, or that body with a lone surrogate or a huge integer in it; for the routes of
    :func:`_well_formed_bodies` also a well-formed body, plain or with such an edge value."""
    options = [st.just(body), _edge_value(body)]
    operation = context.operation
    well_formed = WELL_FORMED.get((operation.method.upper(), operation.path)) if operation else None
    if well_formed is not None:
        options += [well_formed, well_formed.flatmap(_edge_value)]
    return st.one_of(*options)


ANSWERS = "/api/projects/{pid}/items/{item_id}/answers"
# The seeded projects' kinds (filled in by the ``world`` fixture) and answers valid for each: the slots of
# the seeded items (2, 3 and 2 responses), the rating project's aspects and scale, and its reason rules.
KIND_OF: dict[int, str] = {}
_CLIENT_IDS = st.sampled_from(["replayed-1", "replayed-2"]) | st.uuids().map(str)
VALID_ANSWERS = {
    "pairwise": st.fixed_dictionaries(
        {"client_id": _CLIENT_IDS, "choice": st.sampled_from(["A", "B", "tie", "both_bad"])}
    ),
    "ranking": st.fixed_dictionaries(
        {"client_id": _CLIENT_IDS, "ranking": st.permutations([0, 1, 2])},
        optional={"reason": st.text(max_size=20)},
    ),
    "rating": st.fixed_dictionaries(
        {
            "client_id": _CLIENT_IDS,
            "ratings": st.lists(
                st.fixed_dictionaries({"helpful": st.integers(1, 7), "honest": st.integers(1, 7)}),
                min_size=2,
                max_size=2,
            ),
            "reason": st.text(min_size=1, max_size=20),
        }
    ),
}


@schema.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy:
    """An answer to a seeded project: half the time a body valid for its kind, so answers are stored,
    replayed (a repeated client_id) and refused as second answers. (No edge values here: Schemathesis
    revalidates a body changed by a case hook, and its validator cannot take a lone surrogate.)"""
    operation = context.operation
    if operation is None or operation.path != ANSWERS or not isinstance(case.path_parameters, dict):
        return st.just(case)
    kind = KIND_OF.get(case.path_parameters.get("pid"))
    if kind is None:
        return st.just(case)

    def with_body(body: Any) -> Any:
        case.body = body
        return case

    return st.one_of(st.just(case), VALID_ANSWERS[kind].map(with_body))


@dataclass
class Caller:
    """Who sends a request: nobody (anonymous) or a logged-in account with its cookie and CSRF token."""

    username: str | None
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None

    def log_in(self, app: Any) -> None:
        if self.username is None:
            return
        with TestClient(app) as http:
            response = http.post("/api/login", json={"username": self.username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        self.cookies = {COOKIE: response.cookies[COOKIE]}
        self.csrf = response.json()["csrf_token"]

    def headers(self, method: str) -> dict[str, str]:
        if self.csrf is None or method.upper() in ("GET", "HEAD", "OPTIONS"):
            return {}
        return {CSRF_HEADER: self.csrf}


@dataclass
class World:
    app: Any
    callers: dict[str, Caller]
    member_of: list[int]  # the labeller's projects

    def restore(self) -> None:
        """Both accounts enabled with their password, the labeller in its projects, new sessions."""
        app = self.app
        with app.state.sessionmaker() as db:
            for name in ("admin", "labeller"):
                user = find_user(db, name)
                if user.disabled:
                    set_disabled(db, user, False)
                try:
                    app.state.hasher.verify(user.password_hash, PASSWORD)
                except Exception:
                    set_password(db, app.state.hasher, user, PASSWORD)
            for pid in self.member_of:
                add_member(db, db.get(Project, pid), "labeller")
        for caller in self.callers.values():
            caller.log_in(app)


def _seed(app: Any) -> list[int]:
    """An admin, a labeller, three projects the labeller is a member of (their ids are returned) and one
    it is not; every item shown to both (a stored display order, reversed, so answers are mapped back)."""
    hasher = app.state.hasher
    with app.state.sessionmaker() as db:
        users = [
            add_user(db, hasher, "admin", PASSWORD, True).id,
            add_user(db, hasher, "labeller", PASSWORD).id,
        ]
    projects = [
        ("pairwise", {"labels_per_item": 2, "ask_reason": "off"}, 2, ["labeller"]),
        ("ranking", {"ask_reason": "optional"}, 3, ["labeller"]),
        ("rating", {"aspects": ["helpful", "honest"], "scale": 7, "ask_reason": "required"}, 2, ["labeller"]),
        ("pairwise", {"name": "not-a-member"}, 2, []),
    ]
    pids = []
    for kind, options, responses, members in projects:
        items = [
            Candidate(
                f"{kind} prompt {i}", [f"response {j} to {i}" for j in range(responses)], id=f"{kind}-{i}"
            )
            for i in range(ITEMS_PER_PROJECT)
        ]
        with app.state.sessionmaker() as db:
            project = create_project(db, Settings(**{"name": kind, "kind": kind, **options}), items, members)
            pids.append(project.id)
    with app.state.engine.begin() as connection:
        items = connection.execute(select(Item.id, Item.project_id, Item.responses)).all()
        connection.execute(
            insert(DisplayOrder.__table__),
            [
                {"item_id": item_id, "user_id": user, "permutation": list(range(len(responses)))[::-1]}
                for item_id, _, responses in items
                for user in users
            ],
        )
    KIND_OF.update({pid: kind for pid, (kind, *_) in zip(pids, projects)})
    KNOWN["pids"] = pids + [max(pids) + 1000]
    KNOWN["pairs"] = [(pid, item_id) for item_id, pid, _ in items] + [
        (pids[0], max(i for i, _, _ in items) + 1)
    ]
    KNOWN["uids"] = users + [max(users) + 1000]
    return pids[:3]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/label.db")
    member_of = _seed(app)
    callers = {"anonymous": Caller(None), "labeller": Caller("labeller"), "admin": Caller("admin")}
    for caller in callers.values():
        caller.log_in(app)
    yield World(app, callers, member_of)
    app.state.engine.dispose()


@pytest.mark.parametrize("who", CALLERS)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case, who, world):
    caller = world.callers[who]
    response = case.call(app=world.app, headers=caller.headers(case.method), cookies=caller.cookies)
    if case.operation.path in RESTORE_AFTER and 200 <= response.status_code < 300:
        world.restore()  # e.g. the session is gone: the next examples need a new one
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])


def _api_routes(app: Any) -> set[tuple[str, str]]:
    out = set()
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/api"):
            methods = getattr(route, "methods", None)
            assert methods, f"{path}: a route under /api without methods (a mount?) escapes the fuzzing"
            out |= {(method, path) for method in methods if method != "HEAD"}
    return out


def test_the_schema_lists_every_api_route(tmp_path):
    """A route left out of the schema (``include_in_schema=False``, a mount) would never be fuzzed."""
    app = make_app(f"sqlite:///{tmp_path}/label.db")
    try:
        routes = _api_routes(app)
        documented = {
            (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
        }
    finally:
        app.state.engine.dispose()
    fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert len(routes) >= 15
    assert routes == documented, {"not in the schema": routes - documented, "not routes": documented - routes}
    assert fuzzed == documented
    for path in SPEC["paths"]:
        assert path.startswith("/api/"), f"{path}: a page in the schema"
