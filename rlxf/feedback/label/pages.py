"""The labelling app's HTML pages: each is a static file from ``static/`` behind a login check (a page
that needs a login redirects to ``/login?next=...``; the pages fetch their data from the JSON API).

``/login``, ``/`` (a labeller's projects; an admin goes to ``/admin``), ``/account``,
``/projects/{id}/label`` (404 for a project the labeller is not a member of, as for a missing one),
``/admin`` and ``/admin/projects/{id}`` (admins).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from rlxf.feedback.label.auth import DB, MAX_ID, Caller, current_user, is_member
from rlxf.feedback.label.db import Project

STATIC = Path(__file__).with_name("static")


_PLACEHOLDER = "<!doctype html><meta charset=utf-8><title>rlxf label</title><p>{what}: page not written yet."
_FORBIDDEN = (
    "<!doctype html><meta charset=utf-8><title>Forbidden</title><h1>403</h1><p>{why} <a href='/'>Home</a>"
)
_NOT_FOUND = _FORBIDDEN.replace("403", "404").replace("Forbidden", "Not found")


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
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def page_routes(app: FastAPI) -> None:
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

    @app.get("/account", include_in_schema=False)
    def account_page(request: Request, db: DB) -> Response:
        if _page_caller(request, db) is None:
            return _to_login(request)
        return page("account.html")

    @app.get("/projects/{pid}/label", include_in_schema=False)
    def label_page(pid: int, request: Request, db: DB) -> Response:
        caller = _page_caller(request, db)
        if caller is None:
            return _to_login(request)
        visible = 1 <= pid <= MAX_ID and db.get(Project, pid) is not None
        if visible and not caller.user.is_admin:
            visible = is_member(db, pid, caller.user.id)  # a labeller cannot tell others' projects exist
        if not visible:
            return HTMLResponse(_NOT_FOUND.format(why="No such project."), status_code=404)
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
