"""The labelling web app in a real browser: Playwright drives Debian's Chromium against the real server.

The first test, end to end: a labeller logs in, labels three pairs with the keyboard only (one with a
reason typed in the reason box, whose letters must not trigger shortcuts; one whose first POST is
committed by the server but its response lost, so the page must retry with the same client_id and the
vote must not be doubled), the progress text follows; screenshots of the labelling page at desktop
(1280x800) and phone (390x844) width, with the responses side by side and stacked; a fourth answer given
while the server is unreachable survives closing the tab and is sent on the next visit, which then says
"All done"; then an admin logs in, sees the project and downloads the preferences export, which must
hold the three judgements with the right chosen and rejected responses (the page shows each labeller a
random order, so the test reads which text is in slot A). The second test ranks and rates with the
keyboard. The server is ``rlxf label serve`` in a subprocess on a free port and a temporary SQLite file.

The tests after them, one concern each:

* the pages hold nothing the server's Content-Security-Policy blocks (a scan of static/, then every page
  in Chromium with the header checked and CSP console errors collected, and a deliberate violation to
  show the collector sees one); every browser test also fails on a CSP console error or a page error;
* ?next= on the login page never leaves this origin, whatever trick the link uses (tab, newline, "\",
  "//", "/./", other schemes), and a throttled login shows the server's Retry-After;
* the account page: signing out the other sessions and changing the password (field messages from the
  server's 422 next to the fields) end the other browser's session, which its open pages then say, keeps
  this one, and the old password stops working;
* the admin's accounts table: set a password (a form in the row), end sessions, disable (after a
  confirmation; the labeller's open page loses its session, their login fails), enable; the admin's own
  row has no Disable; removing a labeller from a project keeps their answers;
* rating aspects named "__proto__", "constructor" and "toString" are answered and exported under those
  names;
* a 4xx answer to a POST is never resent and leaves localStorage; a 5xx is resent with the same
  client_id and after five failures can be discarded; a 429 is resent after its Retry-After.

Screenshots go to pytest's temporary folder (the path is printed) and, when ``RLXF_ARTIFACTS`` is set, are
copied there too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker
from rlxf.feedback.label.projects import add_user, create_project
from rlxf.feedback.label.schema import Settings, check_candidates

LABELLER, ADMIN, PASSWORD = "lena", "ada", "correct horse 1"
NEW_PASSWORD = "violet tractor 47 lamp"  # long and uncommon enough for the server's password check
STATIC = Path(__file__).resolve().parents[1] / "rlxf" / "feedback" / "label" / "static"
# The server's Content-Security-Policy (the contract with the pages: no inline script or style at all).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
PROJECT = "browser-test"
ITEMS = [
    {
        "id": f"item-{i}",
        "prompt": f"Question {i}: what is {i} plus {i}?",
        "responses": [f"The answer is {2 * i}.", f"I think it is {2 * i + 1}, roughly."],
    }
    for i in range(4)
]
RANKED = [{"prompt": "Sort these fruits by sweetness.", "responses": ["mango", "lemon", "apple"]}] * 2
RATED = [{"prompt": "Say hello.", "responses": ["Hello!", "Go away."]}] * 2
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail("Chromium is not installed: run scripts/test.sh (it installs Debian's chromium package)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(db_url: str) -> dict[str, int]:
    """An admin, a labeller and three projects with the labeller as a member; their ids by kind. pairwise:
    4 items, k=1, optional reasons; ranking: 3 responses, no reasons; rating: 2 aspects on a 1..5 scale,
    a reason required."""
    engine = make_engine(db_url)
    init_db(engine)
    hasher = password_hasher(cheap=True)
    with make_sessionmaker(engine)() as db:
        add_user(db, hasher, ADMIN, PASSWORD, is_admin=True)
        add_user(db, hasher, LABELLER, PASSWORD)
        settings = Settings(
            name=PROJECT,
            kind="pairwise",
            guidelines="Prefer the correct answer.\nA tie is fine when both are equally good.",
            labels_per_item=1,
            ask_reason="optional",
        )
        ids = {"pairwise": create_project(db, settings, check_candidates(ITEMS, "pairwise"), [LABELLER]).id}
        settings = Settings(name="rank-test", kind="ranking", ask_reason="off")
        ids["ranking"] = create_project(db, settings, check_candidates(RANKED, "ranking"), [LABELLER]).id
        settings = Settings(
            name="rate-test", kind="rating", aspects=["helpful", "polite"], ask_reason="required"
        )
        ids["rating"] = create_project(db, settings, check_candidates(RATED, "rating"), [LABELLER]).id
    engine.dispose()
    return ids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """(base URL, project ids by kind) of ``rlxf label serve`` on a seeded temporary SQLite database."""
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    project_ids = seed(db_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "rlxf", "label", "serve", "--db", db_url, "--host", "127.0.0.1"]
    with open(log_path, "w") as log:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within 20 s:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield base, project_ids
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_in(page: Page, username: str, password: str = PASSWORD) -> None:
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("#login-button")).to_be_enabled()  # the page's script is ready
    page.locator("#username").fill("")
    page.locator("#username").press_sequentially(username)
    page.locator("#password").fill("")
    page.locator("#password").press_sequentially(password)
    page.keyboard.press("Enter")


def watch(page: Page, problems: list[str]) -> Page:
    """Collects the page's uncaught errors and its Content Security Policy console errors into problems."""
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"CSP ({message.type}) on {page.url}: {message.text}")

    page.on("console", console)
    return page


def watched_context(browser: Browser, problems: list[str], **options: object) -> BrowserContext:
    """A new context (desktop size, 5 s timeouts) whose every page is watched into problems."""
    context = browser.new_context(viewport=DESKTOP, **options)
    context.set_default_timeout(5000)
    context.on("page", lambda page: watch(page, problems))
    return context


def api_client(base: str, username: str, password: str = PASSWORD) -> httpx.Client:
    """An HTTP client logged in as username, sending the CSRF header: for setting up and for reading what
    the server stored."""
    client = httpx.Client(base_url=base, timeout=10)
    response = client.post("/api/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def user_row(admin: httpx.Client, username: str) -> dict:
    """The GET /api/users row of username."""
    rows = admin.get("/api/users").json()
    return next(row for row in rows if row["username"] == username)


def pending_keys(page: Page) -> list[str]:
    """The unsent answers the labelling page keeps in localStorage (their keys)."""
    return page.evaluate("Object.keys(localStorage).filter((key) => key.startsWith('rlxf.pending.'))")


def wait_until(page: Page, condition, what: str, timeout: float = 8.0) -> None:
    """Polls condition with page.wait_for_timeout, not time.sleep: Playwright runs route handlers and
    event listeners only while one of its calls is waiting."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


def no_sideways_scroll(page: Page) -> None:
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"


def slot_texts(page: Page) -> tuple[str, str, str]:
    """(prompt, text in slot A, text in slot B) of the item on screen."""
    return (
        page.locator("#prompt-text").inner_text(),
        page.locator('#responses .response[data-slot="0"] .response-text').inner_text(),
        page.locator('#responses .response[data-slot="1"] .response-text').inner_text(),
    )


def save_screenshot(page: Page, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("RLXF_ARTIFACTS"):
        target = Path(os.environ["RLXF_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])


class AnswerRoute:
    """One route on the page's answer POSTs for the page's whole life; tests swap what it does.

    Routing is installed once and never removed. A CI run once saw an answer that the test routed to
    ``abort`` reach the server anyway, after the page's last ``unroute`` had switched request
    interception off and the next ``route`` on again; Playwright tracks races between switching
    interception and a request in Chromium (microsoft/playwright#42254). With interception on
    throughout there is no such window. ``handler`` None lets each request through unchanged.
    """

    def __init__(self, page: Page) -> None:
        self.handler: Callable[[Route], None] | None = None
        page.route("**/items/*/answers", self._route)

    def _route(self, route: Route) -> None:
        if self.handler is None:
            route.continue_()
        else:
            self.handler(route)


def test_label_three_pairs_by_keyboard_then_export_as_admin(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, project_ids = server
    project_id = project_ids["pairwise"]
    label_url = f"{base}/projects/{project_id}/label"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    expected: dict[str, tuple[str, str]] = {}  # prompt -> (chosen, rejected)
    posted_client_ids: list[str] = []

    with sync_playwright() as playwright:
        browser = launch(playwright)
        context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
        context.set_default_timeout(5000)
        page = context.new_page()
        errors: list[str] = []
        watch(page, errors)
        answers = AnswerRoute(page)

        # Not logged in: the labelling page sends us to the login page and back.
        page.goto(label_url)
        log_in(page, LABELLER)
        expect(page).to_have_url(label_url)
        expect(page.locator("#project-name")).to_have_text(PROJECT)
        expect(page.locator("#progress-text")).to_have_text("0 of 4")
        # The guidelines are open on the first visit; g closes them.
        expect(page.locator("#guidelines")).to_have_attribute("open", "")
        page.keyboard.press("g")
        expect(page.locator("#guidelines")).not_to_have_attribute("open", "")
        # Every pairwise button is a real button that shows its shortcut.
        expect(page.get_by_role("button", name=re.compile(r"^A better"))).to_contain_text("1")
        expect(page.get_by_role("button", name=re.compile(r"^Both bad"))).to_contain_text("x")

        # Pair 1: key 1 = A better.
        prompt, slot_a, slot_b = slot_texts(page)
        page.keyboard.press("1")
        expected[prompt] = (slot_a, slot_b)
        expect(page.locator("#progress-text")).to_have_text("1 of 4")
        expect(page.locator("#prompt-text")).not_to_have_text(prompt)

        # Pair 2: the server commits the first POST but its answer never reaches the page (connection
        # reset). The page must keep the item on screen, say so, and resend the same client_id.
        lost = {"done": False}

        def lose_first_response(route: Route) -> None:
            posted_client_ids.append(route.request.post_data_json["client_id"])
            if lost["done"]:
                route.continue_()
                return
            lost["done"] = True
            route.fetch()  # reaches the server, which commits the answer
            route.abort("connectionreset")

        answers.handler = lose_first_response
        prompt, slot_a, slot_b = slot_texts(page)
        page.keyboard.press("b")
        expect(page.locator("#message")).to_contain_text("not saved yet")
        expect(page.locator("#prompt-text")).to_have_text(prompt)
        expect(page.locator("#progress-text")).to_have_text("1 of 4")
        expect(page.locator("#progress-text")).to_have_text("2 of 4", timeout=8000)  # the automatic retry
        expect(page.locator("#message")).to_contain_text("saved")
        expected[prompt] = (slot_b, slot_a)
        assert len(posted_client_ids) == 2 and posted_client_ids[0] == posted_client_ids[1], posted_client_ids
        answers.handler = None

        # Pair 3: r opens the reason box; what is typed there (it has an "a" and a "b") is no shortcut;
        # Esc leaves the box, then 2 = B better.
        prompt, slot_a, slot_b = slot_texts(page)
        page.keyboard.press("r")
        expect(page.locator("#reason")).to_be_focused()
        page.keyboard.type("a bit clearer")
        expect(page.locator("#progress-text")).to_have_text("2 of 4")
        page.keyboard.press("Escape")
        expect(page.locator("#reason")).not_to_be_focused()
        page.keyboard.press("2")
        expect(page.locator("#progress-text")).to_have_text("3 of 4")
        expected[prompt] = (slot_b, slot_a)
        expect(page.locator("#reason")).to_have_value("")
        expect(page.locator("#message")).to_be_hidden()  # the "saved" note of pair 2 is gone

        # Screenshots of the fourth item: side by side on a desktop, stacked on a phone.
        box_a = page.locator('.response[data-slot="0"]').bounding_box()
        box_b = page.locator('.response[data-slot="1"]').bounding_box()
        assert box_b["x"] > box_a["x"] + box_a["width"] - 1 and abs(box_a["y"] - box_b["y"]) < 1
        desktop_shot = save_screenshot(page, shots, "label-desktop-1280x800.png")
        page.set_viewport_size(PHONE)
        box_a = page.locator('.response[data-slot="0"]').bounding_box()
        box_b = page.locator('.response[data-slot="1"]').bounding_box()
        assert box_b["y"] >= box_a["y"] + box_a["height"] and box_a["x"] + box_a["width"] <= PHONE["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
        phone_shot = save_screenshot(page, shots, "label-phone-390x844.png")
        print(f"\nscreenshots: {desktop_shot} {phone_shot}")
        page.set_viewport_size(DESKTOP)

        # Pair 4, x = both bad, while the server cannot be reached at all: the answer waits in the page and
        # the labeller closes the tab. Back later, the page first sends the kept answer with the same
        # client_id, and then nothing is left: "All done".
        late_client_ids: list[str] = []

        def unreachable(route: Route) -> None:
            late_client_ids.append(route.request.post_data_json["client_id"])
            route.abort("internetdisconnected")

        def reachable(route: Route) -> None:
            late_client_ids.append(route.request.post_data_json["client_id"])
            route.continue_()

        answers.handler = unreachable
        page.keyboard.press("x")
        expect(page.locator("#message")).to_contain_text("not saved yet")
        page.close()
        page = watch(context.new_page(), errors)
        AnswerRoute(page).handler = reachable
        page.goto(label_url)
        expect(page.get_by_role("heading", name="All done")).to_be_visible()
        expect(page.locator("#progress-text")).to_have_text("4 of 4")
        assert len(late_client_ids) >= 2 and len(set(late_client_ids)) == 1, late_client_ids

        # The home page lists the project with the labeller's progress.
        page.get_by_role("link", name="Back to your projects").click()
        expect(page).to_have_url(f"{base}/")
        expect(page.locator("#projects li").filter(has_text=PROJECT)).to_contain_text("4 of 4")

        # Log out; log in as admin, who lands on /admin (not on the labeller's home page seen before).
        page.get_by_role("button", name="Log out").click()
        log_in(page, ADMIN)
        expect(page).to_have_url(f"{base}/admin")
        row = page.locator(f'#projects tr[data-project="{project_id}"]')
        expect(row).to_contain_text(PROJECT)
        expect(row).to_contain_text("4 of 4")
        with page.expect_download() as download_info:
            row.locator('a[data-format="preferences"]').click()
        exported = [json.loads(line) for line in Path(download_info.value.path()).read_text().splitlines()]
        assert {r["prompt"]: (r["chosen"], r["rejected"]) for r in exported} == expected

        # The raw export: four answers (both bad is no preference), each retried one once, the reason kept.
        raw_text = context.request.get(f"{base}/api/projects/{project_id}/export?format=raw").text()
        raw = [json.loads(line) for line in raw_text.splitlines()]
        assert len(raw) == 4
        assert [r["reason"] for r in raw if r["reason"]] == ["a bit clearer"]
        assert {posted_client_ids[0], late_client_ids[0]} <= {r["client_id"] for r in raw}
        assert [r["answer"] for r in raw if r["client_id"] == late_client_ids[0]] == [{"choice": "both_bad"}]

        # The project's admin page lists the four answers.
        row.get_by_role("link", name=PROJECT).click()
        expect(page.locator("#answers-count")).to_have_text("4 answers")
        expect(page.locator("#answers tr")).to_have_count(4)

        # The admin forms: a new labeller, added to a new project made from a candidates JSONL file.
        page.get_by_role("link", name="All projects").click()
        form = page.locator("#user-form")
        form.get_by_label("Username").fill("newbie")
        form.get_by_label("Password").fill(PASSWORD)
        form.get_by_role("button", name="Create account").click()
        expect(page.locator("#message")).to_have_text('Account "newbie" created.')
        expect(page.locator("#users")).to_contain_text("newbie")
        form = page.locator("#project-form")
        form.get_by_label("Name", exact=True).fill("from-the-form")
        form.get_by_label("Kind").select_option("ranking")
        candidates = "".join(json.dumps(record) + "\n" for record in RANKED)
        form.locator("input[type=file]").set_input_files(
            files=[{"name": "items.jsonl", "mimeType": "application/x-ndjson", "buffer": candidates.encode()}]
        )
        form.get_by_role("button", name="Create project").click()
        expect(page.locator("#message")).to_contain_text('Project "from-the-form" created with 2 items')
        expect(page.locator("#projects tr").filter(has_text="from-the-form")).to_contain_text("0 of 2")
        form = page.locator("#member-form")
        form.get_by_label("Project").select_option(label="from-the-form")
        form.get_by_label("Username").fill("newbie")
        form.get_by_role("button", name="Add to project").click()
        expect(page.locator("#message")).to_have_text('"newbie" can now label "from-the-form".')
        assert errors == [], errors
        browser.close()


def test_rank_and_rate_by_keyboard(server: tuple[str, dict[str, int]]) -> None:
    base, project_ids = server
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(5000)
        errors: list[str] = []
        watch(page, errors)
        page.goto(f"{base}/projects/{project_ids['ranking']}/label")
        log_in(page, LABELLER)

        # Ranking: slot numbers best first as shown, Backspace undoes, Enter places the last one and submits.
        expect(page.locator("#progress-text")).to_have_text("0 of 2")
        texts = page.locator("#responses .response-text").all_inner_texts()
        page.keyboard.press("3")
        page.keyboard.press("1")
        page.keyboard.press("Backspace")
        page.keyboard.press("2")
        expect(page.locator("#ranking-order")).to_contain_text("3 › 2 › …")
        expect(page.locator('.response[data-slot="2"] .rank-badge')).to_have_text("#1")
        page.keyboard.press("Enter")
        expect(page.locator("#progress-text")).to_have_text("1 of 2")
        mine = page.request.get(f"{base}/api/projects/{project_ids['ranking']}/answers/mine").json()
        assert mine[0]["ranking"] == [2, 1, 0]
        original = RANKED[0]["responses"]
        assert mine[0]["value"]["ranking"] == [
            original.index(texts[2]),
            original.index(texts[1]),
            original.index(texts[0]),
        ]

        # Rating: a digit rates the focused row and moves on; Shift+Tab and arrows change a rating; the
        # reason is required: Enter asks for it, Ctrl+Enter in the box submits.
        page.goto(f"{base}/projects/{project_ids['rating']}/label")
        expect(page.locator("#progress-text")).to_have_text("0 of 2")
        texts = page.locator("#responses .response-text").all_inner_texts()
        page.keyboard.press("4")  # response 1, helpful
        page.keyboard.press("Shift+Tab")  # back to it
        page.keyboard.press("ArrowRight")  # 4 -> 5
        page.keyboard.press("Tab")
        page.keyboard.press("2")  # response 1, polite
        page.keyboard.press("1")  # response 2, helpful
        page.keyboard.press("3")  # response 2, polite
        expect(page.locator("#submit")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("reason")
        expect(page.locator("#reason")).to_be_focused()
        page.keyboard.type("2 was rude")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#progress-text")).to_have_text("1 of 2")
        mine = page.request.get(f"{base}/api/projects/{project_ids['rating']}/answers/mine").json()
        assert mine[0]["ratings"] == [{"helpful": 5, "polite": 2}, {"helpful": 1, "polite": 3}]
        assert mine[0]["reason"] == "2 was rude"
        by_text = dict(zip(texts, mine[0]["ratings"]))
        assert mine[0]["value"]["ratings"] == [by_text[text] for text in RATED[0]["responses"]]
        assert errors == [], errors
        browser.close()


# ------------------------------------------------------------------------------ Content-Security-Policy


def test_static_pages_hold_nothing_the_csp_blocks() -> None:
    """No inline script, style element, style attribute or inline handler in the HTML; no innerHTML,
    style attribute or string-to-code in the scripts (the policy has no 'unsafe-inline' or 'unsafe-eval')."""
    pages = sorted(STATIC.glob("*.html"))
    scripts = sorted(STATIC.glob("*.js"))
    assert {p.name for p in pages} >= {"account.html", "admin.html", "label.html", "login.html"}
    found = []
    for path in pages:
        html = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            if "src=" not in tag:
                found.append(f"{path.name}: inline script {tag}")
        if re.search(r"<style\b", html):
            found.append(f"{path.name}: <style> element")
        found += [f"{path.name}: attribute {m}" for m in re.findall(r"\s(style|on[a-z]+)\s*=", html)]
        found += [f"{path.name}: javascript: URL" for _ in re.findall(r"javascript:", html, re.I)]
    for path in scripts:
        js = path.read_text()
        for pattern in (
            r"\.innerHTML\b",
            r"\.outerHTML\s*=",
            r"insertAdjacentHTML",
            r"document\.write",
            r"setAttribute\(\s*[\"']style",
            r"\beval\(",
            r"new Function\(",
            r"\.cssText\s*=",
        ):
            found += [f"{path.name}: {m}" for m in re.findall(pattern, js)]
    assert found == []


def test_every_page_keeps_to_the_csp(server: tuple[str, dict[str, int]]) -> None:
    base, project_ids = server
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for username, paths in (
            (LABELLER, ["/", f"/projects/{project_ids['rating']}/label", "/account"]),
            (ADMIN, ["/admin", f"/admin/projects/{project_ids['pairwise']}", "/account"]),
        ):
            context = watched_context(browser, problems)
            page = context.new_page()
            response = page.goto(f"{base}/login")
            assert response.headers.get("content-security-policy") == CSP
            log_in(page, username)
            expect(page).not_to_have_url(re.compile(r"/login"))
            for path in paths:
                response = page.goto(f"{base}{path}")
                assert response.status == 200, path
                assert response.headers.get("content-security-policy") == CSP, path
                expect(page.locator("#user-bar")).to_contain_text(username)  # its script ran
                expect(page.locator("#message.error")).to_have_count(0)
            # The scripts and the stylesheet come with the header too, and the API.
            for path in ("/static/app.css", "/static/page.js", "/api/me"):
                assert context.request.get(f"{base}{path}").headers.get("content-security-policy") == CSP
            context.close()
        assert problems == []

        # The collector sees a violation when there is one: a style attribute is refused and reported.
        context = watched_context(browser, problems)
        page = context.new_page()
        page.goto(f"{base}/login")
        page.evaluate("document.body.setAttribute('style', 'background: red')")
        page.wait_for_timeout(200)
        assert len(problems) == 1 and "style" in problems[0], problems
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
        browser.close()


# ------------------------------------------------------------------------------------------- login page


# ?next= values as they stand in a crafted link (percent-encoded where the trick needs it) and where the
# login must then land: "/" is the labeller's home, i.e. the target was refused.
OFF_ORIGIN_NEXT = [
    ("/%09/evil.example/phish", "/"),  # a tab, which URL parsers drop: //evil.example/phish
    ("/%0a/evil.example", "/"),  # a newline, likewise
    ("/%0d%5Cevil.example", "/"),  # a carriage return, then "\" which parsers read as "/"
    ("//evil.example", "/"),
    (quote("/\\evil.example", safe=""), "/"),
    (quote("/\\\\evil.example", safe=""), "/"),
    (quote("\\/evil.example", safe=""), "/"),
    ("https://evil.example", "/"),
    (quote("https://evil.example/", safe=""), "/"),
    ("https:evil.example", "/"),  # a special scheme without slashes still names a host
    (quote(" //evil.example", safe=""), "/"),  # leading spaces are trimmed
    ("javascript:alert(1)", "/"),
    (quote("javascript:alert(document.domain)//", safe=""), "/"),
    ("/.//evil.example", "/evil.example"),  # parses to the path //evil.example: kept here, one slash
    ("/..//evil.example", "/evil.example"),
]


def test_login_next_never_leaves_this_origin(server: tuple[str, dict[str, int]]) -> None:
    base, project_ids = server
    problems: list[str] = []
    off_origin: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        context = watched_context(browser, problems)
        # Any request to another host is recorded and never made.
        context.on("request", lambda r: off_origin.append(r.url) if "127.0.0.1" not in r.url else None)
        context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route: route.abort())
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

        for raw, landing in OFF_ORIGIN_NEXT:
            page.goto(f"{base}/login?next={raw}")
            log_in(page, LABELLER)
            try:
                page.wait_for_url(lambda url: "/login" not in url)
            except PlaywrightError as error:  # the navigation hit the route that blocks other hosts
                pytest.fail(f"next={raw}: the login went off this origin ({off_origin}): {error.message}")
            page.wait_for_load_state()
            assert page.url.startswith(f"{base}/"), (raw, page.url)
            assert urlsplit(page.url).path == landing, (raw, page.url)
            assert "evil" not in urlsplit(page.url).netloc
        assert off_origin == [] and dialogs == [], (off_origin, dialogs)

        # A path on this site is kept whole: path, query and fragment.
        target = f"/projects/{project_ids['pairwise']}/label?from=mail#item"
        page.goto(f"{base}/login?next={quote(target, safe='')}")
        log_in(page, LABELLER)
        expect(page).to_have_url(f"{base}{target}")
        expect(page.locator("#project-name")).to_have_text(PROJECT)
        # An admin whose next is refused lands on /admin.
        page.goto(f"{base}/login?next=//evil.example")
        log_in(page, ADMIN)
        expect(page).to_have_url(f"{base}/admin")
        assert off_origin == [] and dialogs == [] and problems == [], (off_origin, dialogs, problems)
        browser.close()


def test_throttled_login_says_when_to_try_again(server: tuple[str, dict[str, int]]) -> None:
    base, _ = server
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = watched_context(browser, problems).new_page()
        # The page reads Retry-After (here from a stand-in answer, so the figure is known).
        page.route(
            "**/api/login",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": "42"},
                json={"detail": "too many failed logins for this account or address; try again in 42 s"},
            ),
        )
        page.goto(f"{base}/login")
        log_in(page, LABELLER)
        expect(page.locator("#message")).to_have_text("Too many failed attempts; try again in 42 s.")
        expect(page.locator("#login-button")).to_be_enabled()
        page.unroute("**/api/login")

        # The real server: wrong passwords until it throttles, then the page shows the server's wait.
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(40):
                answer = client.post("/api/login", json={"username": LABELLER, "password": "not it at all"})
                if answer.status_code == 429:
                    break
                assert answer.status_code == 401, answer.text
            assert answer.status_code == 429, "the server never throttled failed logins"
            wait = int(answer.headers["Retry-After"])
        page.locator("#login-button").click()
        expect(page.locator("#message")).to_have_text(
            re.compile(r"^Too many failed attempts; try again in \d+ s\.$")
        )
        shown = int(re.search(r"in (\d+) s", page.locator("#message").inner_text()).group(1))
        assert 0 < shown <= wait
        assert problems == []
        browser.close()


# ----------------------------------------------------------------------------------------- account page


def test_account_page_changes_password_and_signs_out_other_sessions(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, project_ids = server
    label_url = f"{base}/projects/{project_ids['pairwise']}/label"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []
    admin = api_client(base, ADMIN)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        # "The phone": the labeller's other browser, with the labelling page and the account page open.
        phone = watched_context(browser, problems)
        labelling = phone.new_page()
        labelling.goto(label_url)
        log_in(labelling, LABELLER)
        expect(labelling.locator("#progress-text")).to_have_text("0 of 4")
        phone_account = phone.new_page()
        phone_account.goto(f"{base}/account")
        expect(phone_account.get_by_role("button", name="Sign out my other sessions")).to_be_enabled()

        # This browser: the Account link in the top bar leads to the account page.
        page = watched_context(browser, problems).new_page()
        page.goto(f"{base}/")
        log_in(page, LABELLER)
        expect(page).to_have_url(f"{base}/")
        page.locator("#user-bar").get_by_role("link", name="Account").click()
        expect(page).to_have_url(f"{base}/account")
        expect(page.get_by_role("heading", name="Your account")).to_be_visible()
        expect(page.locator("#account-link")).to_have_attribute("aria-current", "page")
        expect(page.locator("#who")).to_contain_text(LABELLER)
        assert user_row(admin, LABELLER)["active_sessions"] == 2

        # Sign out the other sessions: the count is shown; the phone's pages learn it at their next request.
        page.get_by_role("button", name="Sign out my other sessions").click()
        expect(page.locator("#message")).to_have_text("Signed out 1 other session; this one stays.")
        assert user_row(admin, LABELLER)["active_sessions"] == 1
        labelling.keyboard.press("1")
        expect(labelling.locator("#message")).to_contain_text("Your session has ended")
        expect(labelling.locator("#message").get_by_role("link", name="Log in")).to_be_visible()
        assert len(pending_keys(labelling)) == 1  # the answer waits in the browser
        phone_account.get_by_role("button", name="Sign out my other sessions").click()
        expect(phone_account.locator("#message")).to_contain_text("Your session has ended")
        page.get_by_role("button", name="Sign out my other sessions").click()
        expect(page.locator("#message")).to_have_text("There was no other session; this one stays.")
        # Back on the phone: logging in again sends the kept answer.
        labelling.locator("#message").get_by_role("link", name="Log in").click()
        log_in(labelling, LABELLER)
        expect(labelling).to_have_url(label_url)
        expect(labelling.locator("#progress-text")).to_have_text("1 of 4")
        assert len(admin.get(f"/api/projects/{project_ids['pairwise']}/answers").json()) == 1

        # Change the password. The two new ones differ: said next to the field, nothing is sent.
        password_calls: list[str] = []
        page.on(
            "request",
            lambda r: password_calls.append(r.method) if r.url.endswith("/api/me/password") else None,
        )
        form = page.locator("#password-form")
        form.get_by_label("Current password").fill(PASSWORD)
        form.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        form.get_by_label("New password again").fill(NEW_PASSWORD + "!")
        form.get_by_role("button", name="Change password").click()
        expect(page.locator("#password-form-repeat_password-error")).to_have_text(
            "The two new passwords differ."
        )
        expect(form.get_by_label("New password again")).to_have_attribute("aria-invalid", "true")
        expect(form.get_by_label("New password again")).to_be_focused()
        assert password_calls == []
        # A wrong current password: the server's 422 names current_password; the message stands beside it.
        form.get_by_label("Current password").fill("not my password at all")
        form.get_by_label("New password again").fill(NEW_PASSWORD)
        form.get_by_role("button", name="Change password").click()
        current_error = page.locator("#password-form-current_password-error")
        expect(current_error).to_be_visible()
        expect(current_error).not_to_have_text("")
        expect(form.get_by_label("Current password")).to_have_attribute("aria-invalid", "true")
        expect(form.get_by_label("Current password")).to_be_focused()
        expect(page.locator("#password-form-repeat_password-error")).to_be_hidden()
        expect(page.locator("#message")).to_have_text("Please correct the fields marked below.")
        # A guessable new password: the 422 names new_password.
        form.get_by_label("Current password").fill(PASSWORD)
        form.get_by_label("New password", exact=True).fill("password")
        form.get_by_label("New password again").fill("password")
        form.get_by_role("button", name="Change password").click()
        new_error = page.locator("#password-form-new_password-error")
        expect(new_error).to_be_visible()
        expect(new_error).not_to_have_text("")
        expect(current_error).to_be_hidden()
        expect(form.get_by_label("New password", exact=True)).to_have_attribute(
            "aria-describedby", re.compile(r"password-form-new_password-error")
        )
        assert password_calls == ["PUT", "PUT"]
        desktop_shot = save_screenshot(page, shots, "account-desktop-1280x800.png")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        phone_shot = save_screenshot(page, shots, "account-phone-390x844.png")
        print(f"\nscreenshots: {desktop_shot} {phone_shot}")
        page.set_viewport_size(DESKTOP)
        # Now right: done; the fields are emptied; this session stays, the phone's ends.
        form.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        form.get_by_label("New password again").fill(NEW_PASSWORD)
        form.get_by_role("button", name="Change password").click()
        expect(page.locator("#message")).to_have_text(
            "Your password was changed. Your other sessions were signed out; this one stays."
        )
        expect(form.get_by_label("Current password")).to_have_value("")
        expect(new_error).to_be_hidden()
        page.reload()
        expect(page).to_have_url(f"{base}/account")
        expect(page.locator("#who")).to_contain_text(LABELLER)
        labelling.keyboard.press("2")
        expect(labelling.locator("#message")).to_contain_text("Your session has ended")
        # The old password fails, the new one works (and the kept answer goes out).
        labelling.locator("#message").get_by_role("link", name="Log in").click()
        log_in(labelling, LABELLER)
        expect(labelling.locator("#message")).to_have_text("Wrong username or password.")
        log_in(labelling, LABELLER, NEW_PASSWORD)
        expect(labelling).to_have_url(label_url)
        expect(labelling.locator("#progress-text")).to_have_text("2 of 4")
        assert (
            httpx.post(f"{base}/api/login", json={"username": LABELLER, "password": PASSWORD}).status_code
            == 401
        )
        assert len(admin.get(f"/api/projects/{project_ids['pairwise']}/answers").json()) == 2
        assert problems == []
        browser.close()
    admin.close()


# ----------------------------------------------------------------------------------------- admin pages


def test_admin_manages_accounts_and_members(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, project_ids = server
    pid = project_ids["pairwise"]
    label_url = f"{base}/projects/{pid}/label"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []
    admin = api_client(base, ADMIN)
    # A second labeller, disabled, so the table shows both states.
    mo = admin.post("/api/users", json={"username": "mo", "password": PASSWORD}).json()
    assert admin.patch(f"/api/users/{mo['id']}", json={"disabled": True}).json()["disabled"] is True
    with sync_playwright() as playwright:
        browser = launch(playwright)
        labeller = watched_context(browser, problems).new_page()
        labeller.goto(label_url)
        log_in(labeller, LABELLER)
        expect(labeller.locator("#progress-text")).to_have_text("0 of 4")

        page = watched_context(browser, problems).new_page()
        page.goto(f"{base}/admin")
        log_in(page, ADMIN)
        expect(page).to_have_url(f"{base}/admin")
        users = page.locator("#users")

        def row_of(name: str):
            return users.locator("tr[data-user]").filter(
                has=page.locator("td.user-cell").get_by_text(name, exact=True)
            )

        own, lena, mo_row = row_of(ADMIN), row_of(LABELLER), row_of("mo")
        expect(users.locator("tr")).to_have_count(3)
        expect(own).to_contain_text("active")
        expect(own.get_by_role("button")).to_have_count(0)  # no Disable (nor anything ending this session)
        expect(own.get_by_role("link", name="your account page")).to_have_attribute("href", "/account")
        expect(lena.locator(".status")).to_have_text("active")
        expect(lena.locator('td[data-label="Sessions"]')).to_have_text("1")
        for name in ("Disable", "Set password", "End sessions"):
            expect(lena.get_by_role("button", name=f"{name}: {LABELLER}")).to_be_visible()
        expect(mo_row.locator(".status")).to_have_text("disabled")
        expect(mo_row.get_by_role("button", name="Enable: mo")).to_be_visible()
        expect(page.locator("#usernames option")).to_have_count(1)  # disabled "mo" is no member candidate

        # Set password: a form in the table; a guessable one gets the server's message beside the field.
        lena.get_by_role("button", name=f"Set password: {LABELLER}").click()
        password_form = users.locator("tr.inline-form-row form")
        password_input = password_form.get_by_label(f"New password for {LABELLER}")
        expect(password_input).to_be_focused()
        expect(lena.get_by_role("button", name=f"Set password: {LABELLER}")).to_have_attribute(
            "aria-expanded", "true"
        )
        password_input.fill("12345678")
        password_input.press("Enter")
        field_error = password_form.locator(".field-error")
        expect(field_error).to_be_visible()
        expect(field_error).not_to_have_text("")
        expect(password_input).to_have_attribute("aria-invalid", "true")
        section = page.locator("section[aria-labelledby=users-title]")
        section.scroll_into_view_if_needed()
        desktop_shot = save_screenshot(page, shots, "admin-users-desktop-1280x800.png")
        page.set_viewport_size(PHONE)
        no_sideways_scroll(page)
        phone_shot = save_screenshot(page, shots, "admin-users-phone-390x844.png")
        print(f"\nscreenshots: {desktop_shot} {phone_shot}")
        page.set_viewport_size(DESKTOP)
        # Escape closes the form and gives the focus back; then a good password is set.
        password_input.press("Escape")
        expect(password_form).to_have_count(0)
        expect(lena.get_by_role("button", name=f"Set password: {LABELLER}")).to_be_focused()
        page.keyboard.press("Enter")  # the focused button opens it again
        password_input = users.locator("tr.inline-form-row form").get_by_label(f"New password for {LABELLER}")
        password_input.fill(NEW_PASSWORD)
        password_input.press("Enter")
        expect(page.locator("#message")).to_have_text(
            f'The password of "{LABELLER}" is set; their sessions were ended.'
        )
        expect(users.locator("tr.inline-form-row")).to_have_count(0)
        expect(lena.locator('td[data-label="Sessions"]')).to_have_text("0")
        # The labeller's open page finds its session gone; the old password fails, the new one works.
        labeller.keyboard.press("1")
        expect(labeller.locator("#message")).to_contain_text("Your session has ended")
        labeller.locator("#message").get_by_role("link", name="Log in").click()
        log_in(labeller, LABELLER)
        expect(labeller.locator("#message")).to_have_text("Wrong username or password.")
        log_in(labeller, LABELLER, NEW_PASSWORD)
        expect(labeller.locator("#progress-text")).to_have_text("1 of 4")  # the kept answer went out

        # End sessions: the count is shown; the labeller's page loses its session.
        page.reload()
        expect(lena.locator('td[data-label="Sessions"]')).to_have_text("1")
        lena.get_by_role("button", name=f"End sessions: {LABELLER}").click()
        expect(page.locator("#message")).to_have_text(f'Ended 1 session of "{LABELLER}".')
        expect(lena.locator('td[data-label="Sessions"]')).to_have_text("0")
        expect(lena.get_by_role("button", name=f"End sessions: {LABELLER}")).to_be_focused()
        labeller.keyboard.press("1")
        expect(labeller.locator("#message")).to_contain_text("Your session has ended")
        labeller.locator("#message").get_by_role("link", name="Log in").click()
        log_in(labeller, LABELLER, NEW_PASSWORD)
        expect(labeller.locator("#progress-text")).to_have_text("2 of 4")

        # Disable asks first: "no" changes nothing.
        questions: list[str] = []
        page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        lena.get_by_role("button", name=f"Disable: {LABELLER}").click()
        expect(lena.locator(".status")).to_have_text("active")
        assert len(questions) == 1 and LABELLER in questions[0], questions
        assert user_row(admin, LABELLER)["disabled"] is False
        # "Yes": disabled, signed out, unable to log in (told like a wrong password).
        page.once("dialog", lambda dialog: dialog.accept())
        lena.get_by_role("button", name=f"Disable: {LABELLER}").click()
        expect(page.locator("#message")).to_contain_text(f'"{LABELLER}" is disabled')
        expect(lena.locator(".status")).to_have_text("disabled")
        expect(lena.get_by_role("button", name=f"Enable: {LABELLER}")).to_be_focused()
        row = user_row(admin, LABELLER)
        assert row["disabled"] is True and row["active_sessions"] == 0, row
        labeller.keyboard.press("3")
        expect(labeller.locator("#message")).to_contain_text("Your session has ended")
        labeller.locator("#message").get_by_role("link", name="Log in").click()
        log_in(labeller, LABELLER, NEW_PASSWORD)
        expect(labeller.locator("#message")).to_have_text("Wrong username or password.")
        # Enable: no question; the labeller can log in again.
        lena.get_by_role("button", name=f"Enable: {LABELLER}").click()
        expect(page.locator("#message")).to_have_text(f'"{LABELLER}" is enabled and can log in again.')
        expect(lena.locator(".status")).to_have_text("active")
        assert user_row(admin, LABELLER)["disabled"] is False
        log_in(labeller, LABELLER, NEW_PASSWORD)
        expect(labeller.locator("#progress-text")).to_have_text("3 of 4")

        # Remove the labeller from the project (after a question); their three answers stay.
        page.goto(f"{base}/admin/projects/{pid}")
        members = page.locator("#members")
        expect(members.locator("li")).to_have_count(1)
        remove = members.get_by_role("button", name=f"Remove {LABELLER} from this project")
        page.once("dialog", lambda dialog: dialog.dismiss())
        remove.click()
        expect(members.locator("li")).to_have_count(1)
        assert [m["username"] for m in admin.get(f"/api/projects/{pid}/members").json()] == [LABELLER]
        page.once("dialog", lambda dialog: dialog.accept())
        remove.click()
        expect(page.locator("#message")).to_have_text(
            f'"{LABELLER}" was removed from this project; their answers stay.'
        )
        expect(members).to_have_text("none yet")
        expect(page.locator("#member-form input[name=username]")).to_be_focused()
        expect(page.locator("#usernames option")).to_have_count(1)  # lena can be added again; mo is disabled
        assert admin.get(f"/api/projects/{pid}/members").json() == []
        assert len(admin.get(f"/api/projects/{pid}/answers").json()) == 3
        expect(page.locator("#answers tr")).to_have_count(3)
        labeller.goto(f"{base}/")
        expect(labeller.locator("#projects li")).to_have_count(2)  # the ranking and rating projects
        expect(labeller.locator("#projects li").filter(has_text=PROJECT)).to_have_count(0)
        assert problems == []
        browser.close()
    admin.close()


# ------------------------------------------------------------------------------------- the labelling page


def test_rating_aspects_named_like_object_properties(server: tuple[str, dict[str, int]]) -> None:
    """Aspects "__proto__", "constructor" and "toString": on a plain JS object the first cannot be set and
    the other two read as already rated; the page must send and the export hold all three."""
    base, _ = server
    aspects = ["__proto__", "constructor", "toString"]
    admin = api_client(base, ADMIN)
    created = admin.post(
        "/api/projects",
        json={
            "name": "proto-test",
            "kind": "rating",
            "aspects": aspects,
            "scale": 3,
            "ask_reason": "off",
            "items": RATED[:1],
            "members": [LABELLER],
        },
    )
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = watched_context(browser, problems).new_page()
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/answers") else None)
        page.goto(f"{base}/projects/{pid}/label")
        log_in(page, LABELLER)
        expect(page.locator("#progress-text")).to_have_text("0 of 1")
        expect(page.locator("fieldset.rating legend")).to_have_text([f"{a} (1–3)" for a in aspects] * 2)
        texts = page.locator("#responses .response-text").all_inner_texts()
        # Enter before rating anything: the page names the first missing aspect, which is "__proto__".
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("missing: response 1, __proto__")
        for key in "312":  # response 1
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("missing: response 2, __proto__")
        for key in "231":  # response 2
            page.keyboard.press(key)
        expect(page.locator("#submit")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="All done")).to_be_visible()
        given = [dict(zip(aspects, (3, 1, 2))), dict(zip(aspects, (2, 3, 1)))]
        assert [body["ratings"] for body in sent] == [given]
        mine = page.request.get(f"{base}/api/projects/{pid}/answers/mine").json()
        assert mine[0]["ratings"] == given
        by_text = dict(zip(texts, given))
        records = [
            json.loads(line)
            for line in admin.get(f"/api/projects/{pid}/export?format=ratings").text.splitlines()
        ]
        assert {(r["completion"], r["aspect"]): r["rating"] for r in records} == {
            (text, aspect): by_text[text][aspect] for text in texts for aspect in aspects
        }
        assert problems == []
        browser.close()
    admin.close()


def test_refused_answer_is_dropped_failing_answer_can_be_discarded(
    server: tuple[str, dict[str, int]],
) -> None:
    base, project_ids = server
    pid = project_ids["pairwise"]
    admin = api_client(base, ADMIN)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = watched_context(browser, problems).new_page()
        answers = AnswerRoute(page)
        page.goto(f"{base}/projects/{pid}/label")
        log_in(page, LABELLER)
        page.keyboard.press("g")  # close the guidelines
        expect(page.locator("#progress-text")).to_have_text("0 of 4")
        prompt = page.locator("#prompt-text").inner_text()
        posts: list[dict] = []

        # A 422: shown, not resent, gone from localStorage; the item stays for another choice.
        def refuse(route: Route) -> None:
            posts.append(route.request.post_data_json)
            detail = [{"loc": ["body", "choice"], "msg": "not accepted today", "type": "value_error"}]
            route.fulfill(status=422, json={"detail": detail})

        answers.handler = refuse
        page.keyboard.press("1")
        expect(page.locator("#message")).to_have_text(
            "The server did not accept this answer: choice: not accepted today"
        )
        expect(page.locator("#prompt-text")).to_have_text(prompt)
        expect(page.get_by_role("button", name=re.compile(r"^A better"))).to_be_enabled()
        assert pending_keys(page) == []
        page.wait_for_timeout(2500)  # longer than the first two back-off delays together
        assert len(posts) == 1
        # Another 4xx (403 twice: after the CSRF refresh too) is final as well, and the page moves on.
        answers.handler = lambda r: (
            posts.append(r.request.post_data_json),
            r.fulfill(status=403, json={"detail": "no"}),
        )
        page.keyboard.press("1")
        expect(page.locator("#message")).to_have_text("The answer was refused (403): no")
        assert len(posts) == 3 and posts[1]["client_id"] == posts[2]["client_id"]
        assert pending_keys(page) == []
        page.wait_for_timeout(1500)
        assert len(posts) == 3
        answers.handler = None

        # A 500 every time: resent (automatically, then with "Retry now") with one client_id, kept in
        # localStorage; after five failures "Discard this answer" is offered, and it really discards.
        posts.clear()
        answers.handler = lambda r: (
            posts.append(r.request.post_data_json),
            r.fulfill(status=500, json={"detail": "boom"}),
        )
        prompt = page.locator("#prompt-text").inner_text()
        page.keyboard.press("2")
        expect(page.locator("#message")).to_contain_text("not saved yet")
        expect(page.locator("#message")).to_contain_text("Trying again in 1 s")
        expect(page.get_by_role("button", name="Discard this answer")).to_have_count(0)
        assert len(pending_keys(page)) == 1
        wait_until(page, lambda: len(posts) >= 2, "the automatic resend")
        while len(posts) < 5:
            count = len(posts)
            page.get_by_role("button", name="Retry now").click()
            wait_until(page, lambda count=count: len(posts) > count, "a resend")
        expect(page.locator("#message")).to_contain_text("It failed 5 times")
        assert len({body["client_id"] for body in posts}) == 1
        assert len(pending_keys(page)) == 1
        expect(page.locator("#prompt-text")).to_have_text(prompt)
        page.get_by_role("button", name="Discard this answer").click()
        expect(page.locator("#message")).to_have_text(
            "The answer was discarded: the server never confirmed it."
        )
        assert pending_keys(page) == []
        expect(page.get_by_role("button", name=re.compile(r"^A better"))).to_be_enabled()
        sent = len(posts)
        page.wait_for_timeout(2500)
        assert len(posts) == sent  # no resend is still scheduled
        assert admin.get(f"/api/projects/{pid}/answers").json() == []
        answers.handler = None

        # A 429 with Retry-After: 2 is resent after 2 s (not the first back-off's 1 s), and then saved.
        posts.clear()
        throttled = {"done": False}

        def throttle_once(route: Route) -> None:
            posts.append(route.request.post_data_json)
            if throttled["done"]:
                route.continue_()
                return
            throttled["done"] = True
            route.fulfill(status=429, headers={"Retry-After": "2"}, json={"detail": "slow down"})

        answers.handler = throttle_once
        page.keyboard.press("1")
        expect(page.locator("#message")).to_contain_text("Trying again in 2 s")
        started = time.monotonic()
        expect(page.locator("#progress-text")).to_have_text("1 of 4", timeout=8000)
        assert time.monotonic() - started > 1.2
        assert len(posts) == 2 and posts[0]["client_id"] == posts[1]["client_id"]
        assert len(admin.get(f"/api/projects/{pid}/answers").json()) == 1
        assert pending_keys(page) == []
        assert problems == []
        browser.close()
    admin.close()
