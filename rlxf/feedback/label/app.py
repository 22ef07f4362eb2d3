"""The labelling web app: ``create_app(db_url) -> FastAPI`` with the JSON API and the pages of the contract.

The routes (the shared contract with the pages in ``static/``): login / logout / me; projects (a
labeller sees the ones they are a member of, an admin all); ``next`` (the labeller's queue: unanswered
items with fewer than k answers, fewest answers first, then a per-labeller pseudo-random order, the
responses shown in a per-labeller random permutation stored on first view); answers (committed in their
own transaction before the 201 goes out; a replayed ``client_id`` answers 200 with the first answer; a
second, different answer to the same item 409; a bad body 422 naming the field); and the admin-only
routes: everyone's answers, agreement, export, creating projects, users and memberships.

Every route checks who may call it (:mod:`rlxf.feedback.label.auth`): 401 without a session, 403 with
a missing or wrong CSRF header on a state-changing request, 403 for a labeller outside a project or on an
admin route, 404 for a project or item that does not exist. Endpoints are synchronous (FastAPI runs them
in its thread pool); each request has its own database session.

Left out: editing projects, removing members, password changes, pagination of long answer lists.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import argon2
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, and_, cast, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlxf.feedback.label.agreement import project_agreement
from rlxf.feedback.label.auth import (
    COOKIE,
    DB,
    SESSION_TTL,
    Admin,
    AdminProject,
    Caller,
    Checked,
    LoggedIn,
    MemberProject,
    current_user,
    is_member,
    open_session,
    password_hasher,
    verify_password,
)
from rlxf.feedback.label.db import (
    Answer,
    DisplayOrder,
    Item,
    LoginSession,
    Project,
    ProjectMember,
    User,
    init_db,
    make_engine,
    make_sessionmaker,
)
from rlxf.feedback.label.export import EXPORT_FORMATS, export_records
from rlxf.feedback.label.projects import add_member, add_user, create_project, find_user, user_json
from rlxf.feedback.label.schema import FieldError, Settings, check_candidates

STATIC = Path(__file__).with_name("static")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
# The per-labeller queue order: a multiplicative hash of (item, labeller), computed in SQL so the queue
# query stays one indexed statement on SQLite and PostgreSQL alike (both have 64-bit integer arithmetic).
_HASH_ITEM, _HASH_USER, _HASH_MOD = 2654435761, 40503, 1_000_003


# ------------------------------------------------------------------------------------------ request bodies


class LoginBody(BaseModel):
    username: str
    password: str


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently dropped

    client_id: str = Field(min_length=1, max_length=100)
    choice: Literal["A", "B", "tie", "both_bad"] | None = None
    ranking: list[int] | None = None
    ratings: list[dict[str, int]] | None = None
    reason: str | None = Field(default=None, max_length=10_000)


class UserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str
    password: str
    is_admin: bool = False


class MemberBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str


class ProjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["pairwise", "ranking", "rating"]
    guidelines: str = ""
    labels_per_item: int = 1
    aspects: list[str] | None = None
    scale: int = 5
    ask_reason: Literal["off", "optional", "required"] = "optional"
    items: list[Any]
    members: list[str] = []


def invalid(field: str | list[Any], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors: ``detail[0].loc`` names the field."""
    loc = ["body", *(field if isinstance(field, list) else [field])]
    return HTTPException(422, [{"loc": loc, "msg": message, "type": "value_error"}])


# ---------------------------------------------------------------------------------------- queue, progress


def answer_counts(project_id: int) -> Any:
    """A subquery: ``item_id`` -> number of answers, for the items of one project that have any."""
    return (
        select(Answer.item_id, func.count().label("n"))
        .where(Answer.project_id == project_id)
        .group_by(Answer.item_id)
        .subquery()
    )


def queue_query(project: Project, user_id: int) -> Any:
    """The labeller's queue, best first: items not answered by them whose answer count is below k, fewest
    answers first, then a per-labeller pseudo-random order (stable, so a reload shows the same item).

    Two labellers may both take an item that needs one more label; the item then gets k+1 labels, which
    export and agreement use like any other (better than a lock that a closed browser tab never frees).
    """
    counts = answer_counts(project.id)
    count = func.coalesce(counts.c.n, 0)
    mine = exists().where(and_(Answer.item_id == Item.id, Answer.user_id == user_id))
    return (
        select(Item)
        .outerjoin(counts, counts.c.item_id == Item.id)
        .where(Item.project_id == project.id, ~mine, count < project.labels_per_item)
        .order_by(count, (cast(Item.id, BigInteger) * _HASH_ITEM + user_id * _HASH_USER) % _HASH_MOD, Item.id)
    )


def progress(db: Session, project: Project, user: User) -> dict[str, int]:
    """A labeller: their answers / (their answers + their queue). An admin: items with k labels / all items."""
    if user.is_admin:
        counts = answer_counts(project.id)
        done = db.scalar(
            select(func.count()).select_from(counts).where(counts.c.n >= project.labels_per_item)
        )
        total = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id))
        return {"done": done or 0, "total": total or 0}
    done = db.scalar(
        select(func.count())
        .select_from(Answer)
        .where(Answer.project_id == project.id, Answer.user_id == user.id)
    )
    waiting = db.scalar(
        select(func.count()).select_from(queue_query(project, user.id).order_by(None).subquery())
    )
    return {"done": done or 0, "total": (done or 0) + (waiting or 0)}


def project_json(db: Session, project: Project, user: User) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "kind": project.kind,
        "guidelines": project.guidelines,
        "aspects": project.aspects,
        "scale": project.scale,
        "labels_per_item": project.labels_per_item,
        "ask_reason": project.ask_reason,
        "progress": progress(db, project, user),
    }


def display_order(db: Session, item: Item, user_id: int) -> list[int]:
    """This labeller's permutation of the item's responses: drawn at random and stored on first view."""
    row = db.get(DisplayOrder, (item.id, user_id))
    if row is not None:
        return row.permutation
    permutation = list(range(len(item.responses)))
    random.SystemRandom().shuffle(permutation)
    db.add(DisplayOrder(item_id=item.id, user_id=user_id, permutation=permutation))
    try:
        db.commit()
    except IntegrityError:  # the same labeller in two tabs at once: the first stored order wins
        db.rollback()
        return db.get(DisplayOrder, (item.id, user_id)).permutation
    return permutation


def answer_json(answer: Answer, username: str | None = None) -> dict[str, Any]:
    out = {
        "answer_id": answer.id,
        "client_id": answer.client_id,
        "item_id": answer.item_id,
        "user_id": answer.user_id,
        **answer.raw,
        "display_order": answer.display_order,
        "value": answer.value,
        "reason": answer.reason,
        "created_at": answer.created_at.isoformat() + "Z",
    }
    if username is not None:
        out["username"] = username
    return out


def to_original(
    project: Project, body: AnswerBody, order: list[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check an answer against its project and map display slots to original indices: (raw, value)."""
    fields = {"choice": body.choice, "ranking": body.ranking, "ratings": body.ratings}
    wanted = {"pairwise": "choice", "ranking": "ranking", "rating": "ratings"}[project.kind]
    for name, given in fields.items():
        if name != wanted and given is not None:
            raise invalid(name, f"a {project.kind} project takes {wanted!r}, not {name!r}")
    if fields[wanted] is None:
        raise invalid(wanted, f"field required: a {project.kind} project's answer gives {wanted!r}")
    slots = len(order)
    if project.kind == "pairwise":
        choice = body.choice
        value: Any = order[PAIRWISE_CHOICES.index(choice)] if choice in ("A", "B") else choice
        return {"choice": choice}, {"choice": value}
    if project.kind == "ranking":
        if sorted(body.ranking) != list(range(slots)):
            raise invalid(
                "ranking", f"must list every slot 0..{slots - 1} once, best first; got {body.ranking}"
            )
        return {"ranking": body.ranking}, {"ranking": [order[slot] for slot in body.ranking]}
    if len(body.ratings) != slots:
        raise invalid("ratings", f"expected one dict per response ({slots}), got {len(body.ratings)}")
    for slot, given in enumerate(body.ratings):
        if set(given) != set(project.aspects):
            raise invalid(
                ["ratings", slot], f"rate exactly the aspects {project.aspects}; got {sorted(given)}"
            )
        for aspect, rating in given.items():
            if not 1 <= rating <= project.scale:
                raise invalid(["ratings", slot, aspect], f"must be 1..{project.scale}, got {rating}")
    original: list[dict[str, int]] = [{} for _ in range(slots)]
    for slot, given in enumerate(body.ratings):
        original[order[slot]] = dict(given)
    return {"ratings": body.ratings}, {"ratings": original}


def check_reason(project: Project, reason: str | None) -> str | None:
    reason = reason.strip() if reason else None
    if project.ask_reason == "required" and not reason:
        raise invalid("reason", "this project asks for a reason with every answer")
    if project.ask_reason == "off" and reason:
        raise invalid("reason", "this project does not take reasons")
    return reason


# ------------------------------------------------------------------------------------------------- app


THREADS = 256  # anyio's thread pool for the sync endpoints (see create_app)


def create_app(
    db_url: str, *, hasher: argon2.PasswordHasher | None = None, secure_cookie: bool = False
) -> FastAPI:
    """The app on the database at ``db_url`` (migrated to the newest schema first).

    ``hasher``: argon2 parameters (argon2-cffi's defaults when unset); ``secure_cookie``: mark the cookie
    Secure (set it when the app is served over HTTPS).
    """
    engine = make_engine(db_url)
    init_db(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync endpoints and dependencies run in anyio's thread pool (40 threads by default). A request
        # whose dependency holds SQLite's write lock must always find a thread for its next step, or the
        # threads waiting on that lock starve it (a stall at ~40 concurrent requests): more threads than
        # the concurrent requests we serve.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    app = FastAPI(title="rlxf label", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.hasher = hasher or password_hasher()
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    _api_routes(app, secure_cookie)
    _page_routes(app)
    return app


def _api_routes(app: FastAPI, secure_cookie: bool) -> None:
    @app.post("/api/login")
    def login(body: LoginBody, response: Response, db: DB) -> dict[str, Any]:
        user = find_user(db, body.username)
        if not verify_password(app.state.hasher, user, body.password):
            raise HTTPException(401, "wrong username or password")
        token, row = open_session(db, user)
        db.commit()
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(SESSION_TTL.total_seconds()),
            httponly=True,
            samesite="lax",
            secure=secure_cookie,
            path="/",
        )
        return {"user": user_json(user), "csrf_token": row.csrf_token}

    @app.post("/api/logout", status_code=204)
    def logout(caller: Checked, db: DB) -> Response:
        row = db.get(LoginSession, caller.session.id)
        if row is not None:
            db.delete(row)
            db.commit()
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookie)
        return response

    @app.get("/api/me")
    def me(caller: LoggedIn) -> dict[str, Any]:
        return {"user": user_json(caller.user), "csrf_token": caller.session.csrf_token}

    @app.get("/api/projects")
    def list_projects(caller: LoggedIn, db: DB) -> list[dict[str, Any]]:
        query = select(Project).order_by(Project.id)
        if not caller.user.is_admin:
            query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
                ProjectMember.user_id == caller.user.id
            )
        return [project_json(db, p, caller.user) for p in db.scalars(query)]

    @app.get("/api/projects/{pid}")
    def get_project(
        project: MemberProject,
        caller: LoggedIn,
        db: DB,
    ) -> dict[str, Any]:
        return project_json(db, project, caller.user)

    @app.get("/api/projects/{pid}/next", response_model=None)
    def next_item(
        project: MemberProject,
        caller: LoggedIn,
        db: DB,
    ) -> dict[str, Any] | Response:
        item = db.scalars(queue_query(project, caller.user.id).limit(1)).first()
        if item is None:
            return Response(status_code=204)
        order = display_order(db, item, caller.user.id)
        return {
            "item_id": item.id,
            "prompt": item.prompt,
            "responses": [{"slot": slot, "text": item.responses[index]} for slot, index in enumerate(order)],
            "progress": progress(db, project, caller.user),
        }

    @app.post("/api/projects/{pid}/items/{item_id}/answers", status_code=201, response_model=None)
    def post_answer(
        item_id: int,
        body: AnswerBody,
        project: MemberProject,
        caller: Checked,
        db: DB,
    ) -> dict[str, Any] | JSONResponse:
        user = caller.user
        replay = _replayed(db, body.client_id, user, item_id, project)
        if replay is not None:
            return replay
        item = db.get(Item, item_id)
        if item is None or item.project_id != project.id:
            raise HTTPException(404, f"no item {item_id} in project {project.id}")
        if (
            db.scalar(select(Answer.id).where(Answer.item_id == item.id, Answer.user_id == user.id))
            is not None
        ):
            raise HTTPException(409, "you have already answered this item")
        order_row = db.get(DisplayOrder, (item.id, user.id))
        if order_row is None:
            raise HTTPException(409, "this item was never shown to you: fetch it with GET .../next first")
        raw, value = to_original(project, body, order_row.permutation)
        answer = Answer(
            client_id=body.client_id,
            project_id=project.id,
            item_id=item.id,
            user_id=user.id,
            display_order=order_row.permutation,
            raw=raw,
            value=value,
            reason=check_reason(project, body.reason),
        )
        db.add(answer)
        try:
            db.commit()  # the 201 below goes out only after this commit returned
        except IntegrityError:
            # A concurrent request with the same client_id (a retry racing its original) or a second
            # answer to the same item won the unique constraint: answer as if it had come first.
            db.rollback()
            replay = _replayed(db, body.client_id, user, item_id, project)
            if replay is not None:
                return replay
            raise HTTPException(409, "you have already answered this item") from None
        return {"answer_id": answer.id, "progress": progress(db, project, user)}

    def _replayed(
        db: Session, client_id: str, user: User, item_id: int, project: Project
    ) -> JSONResponse | None:
        """200 with the stored answer when ``client_id`` was seen before for this very item and labeller;
        409 when it belongs to another answer; None when it is new."""
        earlier = db.scalar(select(Answer).where(Answer.client_id == client_id))
        if earlier is None:
            return None
        if earlier.user_id != user.id or earlier.item_id != item_id:
            raise HTTPException(409, "client_id was already used for another answer")
        return JSONResponse(
            {"answer_id": earlier.id, "progress": progress(db, project, user)}, status_code=200
        )

    @app.get("/api/projects/{pid}/answers/mine")
    def my_answers(
        project: MemberProject,
        caller: LoggedIn,
        db: DB,
    ) -> list[dict[str, Any]]:
        query = select(Answer).where(Answer.project_id == project.id, Answer.user_id == caller.user.id)
        return [answer_json(a) for a in db.scalars(query.order_by(Answer.id))]

    @app.get("/api/projects/{pid}/answers")
    def all_answers(project: AdminProject, db: DB) -> list[dict[str, Any]]:
        query = select(Answer, User.username).join(User, User.id == Answer.user_id)
        rows = db.execute(query.where(Answer.project_id == project.id).order_by(Answer.id))
        return [answer_json(answer, username) for answer, username in rows]

    @app.get("/api/projects/{pid}/agreement")
    def agreement(project: AdminProject, db: DB) -> dict[str, Any]:
        return project_agreement(db, project)

    @app.get("/api/projects/{pid}/export")
    def export(
        format: Annotated[str, Query(description="preferences, ratings or raw")],
        project: AdminProject,
        db: DB,
        min_labels: Annotated[
            int | None, Query(ge=1, description="fewest labels an item needs; default k")
        ] = None,
    ) -> Response:
        if format not in EXPORT_FORMATS:
            raise HTTPException(
                422, [{"loc": ["query", "format"], "msg": f"one of {EXPORT_FORMATS}", "type": "value_error"}]
            )
        try:
            records = export_records(db, project, format, min_labels=min_labels)
        except ValueError as exc:
            raise HTTPException(
                422, [{"loc": ["query", "format"], "msg": str(exc), "type": "value_error"}]
            ) from None
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        filename = f"{project.name}-{format}.jsonl".replace('"', "")
        return Response(
            text,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.post("/api/projects", status_code=201)
    def post_project(
        body: ProjectBody,
        caller: Admin,
        db: DB,
    ) -> dict[str, Any]:
        settings = Settings(
            name=body.name,
            kind=body.kind,
            guidelines=body.guidelines,
            labels_per_item=body.labels_per_item,
            aspects=body.aspects,
            scale=body.scale,
            ask_reason=body.ask_reason,
        )
        try:
            candidates = check_candidates(body.items, body.kind)
            project = create_project(db, settings, candidates, body.members)
        except FieldError as exc:
            db.rollback()
            loc = (
                ["items", exc.index, *exc.field.replace("]", "").split("[")]
                if exc.index is not None
                else [exc.field]
            )
            status = 409 if exc.field == "name" and "exists" in exc.message else 422
            if status == 409:
                raise HTTPException(409, exc.message) from None
            raise invalid(
                [int(p) if isinstance(p, str) and p.isdigit() else p for p in loc], exc.message
            ) from None
        return project_json(db, project, caller.user)

    @app.get("/api/users")
    def list_users(caller: Admin, db: DB) -> list[dict[str, Any]]:
        return [user_json(u) for u in db.scalars(select(User).order_by(User.id))]

    @app.post("/api/users", status_code=201)
    def post_user(body: UserBody, caller: Admin, db: DB) -> dict[str, Any]:
        try:
            user = add_user(db, app.state.hasher, body.username, body.password, body.is_admin)
        except FieldError as exc:
            db.rollback()
            if "taken" in exc.message:
                raise HTTPException(409, exc.message) from None
            raise invalid(exc.field, exc.message) from None
        return user_json(user)

    @app.get("/api/projects/{pid}/members")
    def list_members(project: AdminProject, db: DB) -> list[dict[str, Any]]:
        query = select(User).join(ProjectMember, ProjectMember.user_id == User.id)
        return [
            user_json(u)
            for u in db.scalars(query.where(ProjectMember.project_id == project.id).order_by(User.id))
        ]

    @app.post("/api/projects/{pid}/members", status_code=201)
    def post_member(
        body: MemberBody,
        project: AdminProject,
        db: DB,
    ) -> dict[str, Any]:
        try:
            user = add_member(db, project, body.username)
        except LookupError as exc:
            raise HTTPException(404, str(exc).strip("'\"")) from None
        return {"project_id": project.id, "user": user_json(user)}


# ---------------------------------------------------------------------------------------------- pages

_PLACEHOLDER = "<!doctype html><meta charset=utf-8><title>rlxf label</title><p>{what}: page not written yet."
_FORBIDDEN = (
    "<!doctype html><meta charset=utf-8><title>Forbidden</title><h1>403</h1><p>{why} <a href='/'>Home</a>"
)


NO_STORE = {"Cache-Control": "no-store"}  # pages depend on who is logged in: a browser must not reuse them


def page(name: str) -> Response:
    """``static/NAME``, or a placeholder while the page does not exist yet."""
    path = STATIC / name
    if path.is_file():
        return FileResponse(path, media_type="text/html", headers=NO_STORE)
    return HTMLResponse(_PLACEHOLDER.format(what=name), headers=NO_STORE)


def _page_caller(request: Request, db: Session) -> Caller | None:
    try:
        return current_user(request, db)
    except HTTPException:
        return None


def _to_login(request: Request) -> RedirectResponse:
    from urllib.parse import quote

    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def _page_routes(app: FastAPI) -> None:
    @app.get("/login", include_in_schema=False)
    def login_page() -> Response:
        return page("login.html")

    @app.get("/", include_in_schema=False)
    def home(request: Request, db: DB) -> Response:
        caller = _page_caller(request, db)
        if caller is None:
            return _to_login(request)
        if caller.user.is_admin:
            return RedirectResponse("/admin", status_code=303)
        return page("home.html")

    @app.get("/projects/{pid}/label", include_in_schema=False)
    def label_page(pid: int, request: Request, db: DB) -> Response:
        caller = _page_caller(request, db)
        if caller is None:
            return _to_login(request)
        if db.get(Project, pid) is None:
            return HTMLResponse(
                _FORBIDDEN.replace("403", "404").format(why="No such project."), status_code=404
            )
        if not caller.user.is_admin and not is_member(db, pid, caller.user.id):
            return HTMLResponse(
                _FORBIDDEN.format(why="You are not a member of this project."), status_code=403
            )
        return page("label.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page(request: Request, db: DB) -> Response:
        return _admin_page(request, db, "admin.html")

    @app.get("/admin/projects/{pid}", include_in_schema=False)
    def admin_project_page(pid: int, request: Request, db: DB) -> Response:
        return _admin_page(request, db, "admin_project.html")


def _admin_page(request: Request, db: Session, name: str) -> Response:
    caller = _page_caller(request, db)
    if caller is None:
        return _to_login(request)
    if not caller.user.is_admin:
        return HTMLResponse(_FORBIDDEN.format(why="This page is for admins."), status_code=403)
    return page(name)


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Migrate the database and serve the app at ``db_url`` on ``host:port`` with uvicorn."""
    import uvicorn

    uvicorn.run(create_app(db_url), host=host, port=port)
