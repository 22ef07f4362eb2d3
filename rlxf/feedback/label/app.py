"""The labelling web app: ``create_app(db_url) -> FastAPI`` with the JSON API and the pages of the contract.

The routes (the shared contract with the pages in ``static/``; bodies and responses in
:mod:`rlxf.feedback.label.api_schema`): login / logout / me, the caller's password and other sessions;
projects (a labeller sees the ones they are a member of, an admin all); ``next`` (the labeller's queue:
unanswered items still short of k labels counting the items leased to other labellers, fewest first,
then a per-labeller pseudo-random order; the responses shown in a per-labeller random permutation stored
on first view); answers (committed in their own transaction before the 201 goes out; a replayed
``client_id`` answers 200 with the first answer; a second, different answer to the same item 409; an
answer to an item that has its k labels 409; a bad body 422 naming the field); and the admin-only
routes: everyone's answers, agreement, export, creating projects, users (create, disable, set a password,
end sessions) and memberships (add, remove).

Every route checks who may call it (:mod:`rlxf.feedback.label.auth`): 401 without a session, 403 with
a missing or wrong CSRF header on a state-changing request, 403 for a labeller on an admin route, 404 for
a project that does not exist or that the labeller is not a member of. In front of the routes
(:mod:`rlxf.feedback.label.guard`): the Host check, body limits (413) and security headers. Endpoints are
synchronous (FastAPI runs them in its thread pool); each request has its own database session, which
reads without taking SQLite's write lock and writes only in short write transactions
(:func:`rlxf.feedback.label.db.begin_write`).

The queue and its over-labelling bound: :mod:`rlxf.feedback.label.queue`; the pages: :mod:`rlxf.feedback.label.pages`.

Left out: editing projects, deleting accounts (they are disabled), pagination of long answer lists.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import argon2
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import Scope

from rlxf.feedback.label.agreement import project_agreement
from rlxf.feedback.label.api_schema import (
    Agreement,
    AnswerAck,
    AnswerBody,
    AnswerOut,
    LoginBody,
    LoginOut,
    MemberAdded,
    MemberBody,
    NextItem,
    OwnPasswordBody,
    PasswordBody,
    ProjectBody,
    ProjectOut,
    Revoked,
    UserBody,
    UserOut,
    UserPatchBody,
    UserRow,
    errors,
)
from rlxf.feedback.label.auth import (
    COOKIE,
    DB,
    MAX_ID,
    SESSION_TTL,
    Admin,
    AdminProject,
    Checked,
    LoggedIn,
    LoginThrottle,
    MemberProject,
    active_sessions,
    hash_token,
    log_in,
    password_hasher,
    revoke_sessions,
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
    begin_write,
    init_db,
    lock_item,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from rlxf.feedback.label.export import EXPORT_FORMATS, export_records
from rlxf.feedback.label.guard import AsciiJSONResponse, BodyLimit, SecurityHeaders
from rlxf.feedback.label.pages import STATIC, page_routes
from rlxf.feedback.label.projects import (
    add_member,
    add_user,
    create_project,
    remove_member,
    set_disabled,
    set_password,
    user_json,
)
from rlxf.feedback.label.queue import assign_next, held_item, progress
from rlxf.feedback.label.schema import FieldError, Settings, check_candidates

PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
MAX_BODY_BYTES = 256 * 1024  # any request but an admin's new project: an answer is well under 10 KiB
MAX_PROJECT_BYTES = 64 * 1024 * 1024  # an admin's POST /api/projects: 20,000 items of ~3 KiB each
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")

ItemId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="an item's id")]
UserId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a user's id")]


def invalid(field: str | list[Any], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors: ``detail[0].loc`` names the field."""
    loc = ["body", *(field if isinstance(field, list) else [field])]
    return HTTPException(422, [{"loc": loc, "msg": message, "type": "value_error"}])


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


def attachment(filename: str) -> str:
    """A Content-Disposition for any file name: an ASCII fallback and the UTF-8 name (RFC 6266 / 5987);
    control characters (a CR/LF would split the header) and quotes are dropped."""
    clean = "".join(c for c in filename if c.isprintable() and c not in '"\\')
    fallback = clean.encode("ascii", "replace").decode().replace("?", "_") or "export.jsonl"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(clean, safe='')}"


# ------------------------------------------------------------------------------------------------- app


THREADS = 256  # anyio's thread pool for the sync endpoints (see create_app)


def create_app(
    db_url: str,
    *,
    hasher: argon2.PasswordHasher | None = None,
    secure_cookie: bool = False,
    allowed_hosts: list[str] | tuple[str, ...] = LOOPBACK_HOSTS,
    throttle: LoginThrottle | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_project_bytes: int = MAX_PROJECT_BYTES,
) -> FastAPI:
    """The app on the database at ``db_url`` (migrated to the newest schema and checked first:
    :class:`~rlxf.feedback.label.db.DatabaseError` when it is damaged or not writable).

    ``hasher``: argon2 parameters (argon2-cffi's defaults when unset); ``secure_cookie``: mark the cookie
    Secure and send HSTS (set it when the app is served over HTTPS); ``allowed_hosts``: the Host header
    values to answer (``["*"]``: any); ``throttle``: failed-login limits (:class:`LoginThrottle`'s
    defaults); ``max_body_bytes`` / ``max_project_bytes``: request body limits (module
    :mod:`~rlxf.feedback.label.guard`).
    """
    engine = make_engine(db_url)
    init_db(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync endpoints and dependencies run in anyio's thread pool (40 threads by default). A request
        # waiting for SQLite's write lock holds a thread; more threads than the concurrent requests we
        # serve keep the others moving.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    app = FastAPI(
        title="rlxf label",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the schema is app.openapi() (tests/test_label_fuzz.py); not served to strangers
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.hasher = hasher or password_hasher()
    app.state.throttle = throttle or LoginThrottle()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler, with JSON that can hold whatever input the error echoes.
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    async def admin_session(scope: Scope) -> bool:
        token = Request(scope).cookies.get(COOKIE)
        return bool(token) and await anyio.to_thread.run_sync(_is_admin_token, app, token)

    # Outermost last: the Host check first, then headers on every answer (413s included), then the limit.
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        large_route=("POST", "/api/projects"),
        large_bytes=max_project_bytes,
        allow_large=admin_session,
    )
    app.add_middleware(SecurityHeaders, https=secure_cookie)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    _session_routes(app, secure_cookie)
    _labelling_routes(app)
    _admin_routes(app)
    page_routes(app)
    return app


def _is_admin_token(app: FastAPI, token: str) -> bool:
    """Whether a session cookie belongs to an unexpired session of an enabled admin (a read)."""
    with app.state.sessionmaker() as db:
        row = db.execute(
            select(User.is_admin, User.disabled, LoginSession.expires_at)
            .join(LoginSession, LoginSession.user_id == User.id)
            .where(LoginSession.token_hash == hash_token(token))
        ).first()
    return row is not None and row.is_admin and not row.disabled and row.expires_at > utcnow()


def _client_address(request: Request) -> str:
    # uvicorn puts the X-Forwarded-For address here for the proxies named in --forwarded-allow-ips.
    return request.client.host if request.client else "unknown"


def _session_routes(app: FastAPI, secure_cookie: bool) -> None:
    @app.post("/api/login", response_model=LoginOut, responses=errors(401, 413, 422, 429, 503))
    async def login(body: LoginBody, request: Request, response: Response) -> dict[str, Any]:
        # async: the throttle's 429 (and its tarpit) costs no worker thread; the check runs in one.
        throttle: LoginThrottle = app.state.throttle
        try:
            with throttle.attempt(_client_address(request), body.username):
                token, row, user = await anyio.to_thread.run_sync(
                    log_in, app.state.sessionmaker, app.state.hasher, body.username, body.password
                )
        except HTTPException as exc:
            if exc.status_code == 429:
                await throttle.tarpit()
            raise
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

    @app.post("/api/logout", status_code=204, responses=errors(401, 403))
    def logout(caller: Checked, db: DB) -> Response:
        begin_write(db)
        row = db.get(LoginSession, caller.session.id)
        if row is not None:
            db.delete(row)
        db.commit()
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookie)
        return response

    @app.get("/api/me", response_model=LoginOut, responses=errors(401))
    def me(caller: LoggedIn) -> dict[str, Any]:
        return {"user": user_json(caller.user), "csrf_token": caller.session.csrf_token}

    @app.put("/api/me/password", status_code=204, responses=errors(401, 403, 422, 503))
    def change_own_password(body: OwnPasswordBody, caller: Checked, db: DB) -> Response:
        """A new password for the caller; their other sessions end, this one stays."""
        if not verify_password(app.state.hasher, caller.user, body.current_password):
            raise invalid("current_password", "this is not your current password")
        try:
            set_password(
                db,
                app.state.hasher,
                caller.user,
                body.new_password,
                "new_password",
                keep_session=caller.session.id,
            )
        except FieldError as exc:
            db.rollback()
            raise invalid(exc.field, exc.message) from None
        return Response(status_code=204)

    @app.delete("/api/me/sessions", response_model=Revoked, responses=errors(401, 403))
    def end_other_sessions(caller: Checked, db: DB) -> dict[str, int]:
        """Log the caller out everywhere else (other browsers, other devices)."""
        begin_write(db)
        revoked = revoke_sessions(db, caller.user.id, keep=caller.session.id)
        db.commit()
        return {"revoked": revoked}


def _labelling_routes(app: FastAPI) -> None:
    @app.get("/api/projects", response_model=list[ProjectOut], responses=errors(401))
    def list_projects(caller: LoggedIn, db: DB) -> list[dict[str, Any]]:
        query = select(Project).order_by(Project.id)
        if not caller.user.is_admin:
            query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
                ProjectMember.user_id == caller.user.id
            )
        return [project_json(db, p, caller.user) for p in db.scalars(query)]

    @app.get("/api/projects/{pid}", response_model=ProjectOut, responses=errors(401, 404, 422))
    def get_project(project: MemberProject, caller: LoggedIn, db: DB) -> dict[str, Any]:
        return project_json(db, project, caller.user)

    @app.get(
        "/api/projects/{pid}/next",
        response_model=NextItem,
        responses={204: {"description": "nothing left to label"}, **errors(401, 404, 422)},
    )
    def next_item(project: MemberProject, caller: LoggedIn, db: DB) -> Any:
        user_id = caller.user.id
        item = held_item(db, project, user_id, utcnow()) or assign_next(db, project, user_id)
        if item is None:
            return Response(status_code=204)
        order = db.get(DisplayOrder, (item.id, user_id)).permutation
        return {
            "item_id": item.id,
            "prompt": item.prompt,
            "responses": [{"slot": slot, "text": item.responses[index]} for slot, index in enumerate(order)],
            "progress": progress(db, project, caller.user),
        }

    @app.post(
        "/api/projects/{pid}/items/{item_id}/answers",
        status_code=201,
        response_model=AnswerAck,
        responses={
            200: {"model": AnswerAck, "description": "a replayed client_id"},
            **errors(401, 403, 404, 409, 413, 422),
        },
    )
    def post_answer(
        item_id: ItemId, body: AnswerBody, project: MemberProject, caller: Checked, db: DB
    ) -> Any:
        user = caller.user
        replay = _replayed(db, body.client_id, user, item_id, project)
        if replay is not None:
            return replay
        item = db.get(Item, item_id)
        if item is None or item.project_id != project.id:
            raise HTTPException(404, f"no item {item_id} in project {project.id}")
        order_row = db.get(DisplayOrder, (item.id, user.id))
        if order_row is None:
            raise HTTPException(409, "this item was never shown to you: fetch it with GET .../next first")
        raw, value = to_original(project, body, order_row.permutation)
        reason = check_reason(project, body.reason)
        begin_write(db)
        lock_item(db, item.id)  # the count below and the insert: one step, for every server
        answered, mine = db.execute(
            select(
                func.count(), func.coalesce(func.sum(case((Answer.user_id == user.id, 1), else_=0)), 0)
            ).where(Answer.item_id == item.id)
        ).one()
        if mine:
            db.rollback()
            raise HTTPException(409, "you have already answered this item")
        if answered >= project.labels_per_item:
            db.rollback()
            raise HTTPException(
                409,
                f"this item has its {project.labels_per_item} label(s) already (your turn on it had ended)",
            )
        answer = Answer(
            client_id=body.client_id,
            project_id=project.id,
            item_id=item.id,
            user_id=user.id,
            display_order=order_row.permutation,
            raw=raw,
            value=value,
            reason=reason,
        )
        db.add(answer)
        db.get(DisplayOrder, (item.id, user.id)).leased_until = None  # answered: no longer holds a slot
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
    ) -> AsciiJSONResponse | None:
        """200 with the stored answer when ``client_id`` was seen before for this very item and labeller;
        409 when it belongs to another answer; None when it is new."""
        earlier = db.scalar(select(Answer).where(Answer.client_id == client_id))
        if earlier is None:
            return None
        if earlier.user_id != user.id or earlier.item_id != item_id:
            raise HTTPException(409, "client_id was already used for another answer")
        return AsciiJSONResponse(
            {"answer_id": earlier.id, "progress": progress(db, project, user)}, status_code=200
        )

    @app.get(
        "/api/projects/{pid}/answers/mine", response_model=list[AnswerOut], responses=errors(401, 404, 422)
    )
    def my_answers(project: MemberProject, caller: LoggedIn, db: DB) -> list[dict[str, Any]]:
        query = select(Answer).where(Answer.project_id == project.id, Answer.user_id == caller.user.id)
        return [answer_json(a) for a in db.scalars(query.order_by(Answer.id))]


def _admin_routes(app: FastAPI) -> None:
    admin_errors = errors(401, 403, 404, 422)

    @app.get("/api/projects/{pid}/answers", response_model=list[AnswerOut], responses=admin_errors)
    def all_answers(project: AdminProject, db: DB) -> list[dict[str, Any]]:
        query = select(Answer, User.username).join(User, User.id == Answer.user_id)
        rows = db.execute(query.where(Answer.project_id == project.id).order_by(Answer.id))
        return [answer_json(answer, username) for answer, username in rows]

    @app.get("/api/projects/{pid}/agreement", response_model=Agreement, responses=admin_errors)
    def agreement(project: AdminProject, db: DB) -> dict[str, Any]:
        return project_agreement(db, project)

    @app.get(
        "/api/projects/{pid}/export",
        response_class=Response,
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "JSONL"}, **admin_errors},
    )
    def export(
        format: Annotated[str, Query(description="preferences, ratings or raw")],
        project: AdminProject,
        db: DB,
        min_labels: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="fewest labels an item needs; default k")
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
        return Response(
            text,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": attachment(f"{project.name}-{format}.jsonl")},
        )

    @app.post(
        "/api/projects", status_code=201, response_model=ProjectOut, responses=errors(401, 403, 409, 413, 422)
    )
    def post_project(body: ProjectBody, caller: Admin, db: DB) -> dict[str, Any]:
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
            candidates = check_candidates(body.items, body.kind)  # before the write lock
            project = create_project(db, settings, candidates, body.members)
        except FieldError as exc:
            db.rollback()
            loc = (
                ["items", exc.index, *exc.field.replace("]", "").split("[")]
                if exc.index is not None
                else [exc.field]
            )
            if exc.field == "name" and "exists" in exc.message:
                raise HTTPException(409, exc.message) from None
            raise invalid(
                [int(p) if isinstance(p, str) and p.isdigit() else p for p in loc], exc.message
            ) from None
        return project_json(db, project, caller.user)

    @app.get("/api/users", response_model=list[UserRow], responses=errors(401, 403))
    def list_users(caller: Admin, db: DB) -> list[dict[str, Any]]:
        sessions = active_sessions(db)
        return [
            {**user_json(u), "active_sessions": sessions.get(u.id, 0)}
            for u in db.scalars(select(User).order_by(User.id))
        ]

    @app.post(
        "/api/users", status_code=201, response_model=UserOut, responses=errors(401, 403, 409, 422, 503)
    )
    def post_user(body: UserBody, caller: Admin, db: DB) -> dict[str, Any]:
        try:
            user = add_user(db, app.state.hasher, body.username, body.password, body.is_admin)
        except FieldError as exc:
            db.rollback()
            if "taken" in exc.message:
                raise HTTPException(409, exc.message) from None
            raise invalid(exc.field, exc.message) from None
        return user_json(user)

    def _user(db: Session, uid: int) -> User:
        user = db.get(User, uid)
        if user is None:
            raise HTTPException(404, f"no user {uid}")
        return user

    @app.patch("/api/users/{uid}", response_model=UserOut, responses=errors(401, 403, 404, 409, 422))
    def patch_user(uid: UserId, body: UserPatchBody, caller: Admin, db: DB) -> dict[str, Any]:
        """Disable an account (it cannot log in, its sessions end at once) or enable it again."""
        user = _user(db, uid)
        if body.disabled and user.id == caller.user.id:
            raise HTTPException(409, "you cannot disable your own account")
        return user_json(set_disabled(db, user, body.disabled))

    @app.put("/api/users/{uid}/password", status_code=204, responses=errors(401, 403, 404, 422, 503))
    def put_user_password(uid: UserId, body: PasswordBody, caller: Admin, db: DB) -> Response:
        """Give an account a new password; every session of theirs ends."""
        user = _user(db, uid)
        try:
            set_password(db, app.state.hasher, user, body.password)
        except FieldError as exc:
            db.rollback()
            raise invalid(exc.field, exc.message) from None
        return Response(status_code=204)

    @app.delete("/api/users/{uid}/sessions", response_model=Revoked, responses=errors(401, 403, 404, 422))
    def delete_user_sessions(uid: UserId, caller: Admin, db: DB) -> dict[str, int]:
        """Log an account out everywhere."""
        user = _user(db, uid)
        begin_write(db)
        revoked = revoke_sessions(db, user.id)
        db.commit()
        return {"revoked": revoked}

    @app.get("/api/projects/{pid}/members", response_model=list[UserOut], responses=admin_errors)
    def list_members(project: AdminProject, db: DB) -> list[dict[str, Any]]:
        query = select(User).join(ProjectMember, ProjectMember.user_id == User.id)
        return [
            user_json(u)
            for u in db.scalars(query.where(ProjectMember.project_id == project.id).order_by(User.id))
        ]

    @app.post(
        "/api/projects/{pid}/members", status_code=201, response_model=MemberAdded, responses=admin_errors
    )
    def post_member(body: MemberBody, project: AdminProject, db: DB) -> dict[str, Any]:
        try:
            user = add_member(db, project, body.username)
        except LookupError as exc:
            raise HTTPException(404, str(exc).strip("'\"")) from None
        return {"project_id": project.id, "user": user_json(user)}

    @app.delete("/api/projects/{pid}/members/{uid}", status_code=204, responses=admin_errors)
    def delete_member(uid: UserId, project: AdminProject, db: DB) -> Response:
        """Stop a labeller from working on the project; their answers stay."""
        if not remove_member(db, project, uid):
            raise HTTPException(404, f"user {uid} is not a member of project {project.id}")
        return Response(status_code=204)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Deployment:
    """How ``serve`` runs the app for a ``host`` (:func:`deployment`): cookie flag, Host names, warnings."""

    secure_cookie: bool
    allowed_hosts: list[str]
    warnings: list[str]


def deployment(
    host: str, secure_cookie: bool | None = None, allowed_hosts: list[str] | None = None, tls: bool = False
) -> Deployment:
    """The settings ``serve`` uses on ``host``: ``secure_cookie`` defaults to on for a non-loopback address
    (a deployment is served over HTTPS, by a reverse proxy or ``tls``); ``allowed_hosts`` to the loopback
    names plus ``host``; and the warnings to print about it."""
    loopback = is_loopback(host)
    secure = (not loopback) if secure_cookie is None else secure_cookie
    every_interface = host in ("0.0.0.0", "::")
    hosts = list(allowed_hosts) if allowed_hosts else [*LOOPBACK_HOSTS, *([] if every_interface else [host])]
    warnings = []
    if not loopback and not tls:
        warnings.append(
            f"serving on {host}, not a loopback address, without TLS: passwords and session cookies cross the "
            "network in clear unless a reverse proxy with TLS is in front (docs/labelling.md, Deployment)"
        )
    if not loopback and not secure:
        warnings.append(
            "--no-secure-cookie on a network address: the session cookie also travels over plain HTTP"
        )
    if every_interface and not allowed_hosts:
        warnings.append(
            f"serving on every interface: only requests for {', '.join(hosts)} are answered; give the name "
            "users type with --allowed-hosts NAME (the Host check stops DNS-rebinding pages)"
        )
    return Deployment(secure, hosts, warnings)


def serve(
    db_url: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    secure_cookie: bool | None = None,
    allowed_hosts: list[str] | None = None,
    forwarded_allow_ips: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Migrate and check the database, then serve the app on ``host:port`` with uvicorn (settings from
    :func:`deployment`). ``forwarded_allow_ips``: the reverse proxies whose X-Forwarded-For / -Proto
    uvicorn trusts, so that the login throttle sees the client's address, not the proxy's."""
    import logging

    import uvicorn

    setup = deployment(host, secure_cookie, allowed_hosts, tls=ssl_certfile is not None)
    for warning in setup.warnings:
        logging.getLogger(__name__).warning(warning)
    app = create_app(db_url, secure_cookie=setup.secure_cookie, allowed_hosts=setup.allowed_hosts)
    uvicorn.run(
        app,
        host=host,
        port=port,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        server_header=False,
    )
