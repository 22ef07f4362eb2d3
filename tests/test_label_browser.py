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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright

from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker
from rlxf.feedback.label.projects import add_user, create_project
from rlxf.feedback.label.schema import Settings, check_candidates

LABELLER, ADMIN, PASSWORD = "lena", "ada", "correct horse 1"
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


def log_in(page: Page, username: str) -> None:
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("#login-button")).to_be_enabled()  # the page's script is ready
    page.locator("#username").press_sequentially(username)
    page.locator("#password").press_sequentially(PASSWORD)
    page.keyboard.press("Enter")


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
        page.on("pageerror", lambda error: errors.append(str(error)))

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

        page.route("**/items/*/answers", lose_first_response)
        prompt, slot_a, slot_b = slot_texts(page)
        page.keyboard.press("b")
        expect(page.locator("#message")).to_contain_text("not saved yet")
        expect(page.locator("#prompt-text")).to_have_text(prompt)
        expect(page.locator("#progress-text")).to_have_text("1 of 4")
        expect(page.locator("#progress-text")).to_have_text("2 of 4", timeout=8000)  # the automatic retry
        expect(page.locator("#message")).to_contain_text("saved")
        expected[prompt] = (slot_b, slot_a)
        assert len(posted_client_ids) == 2 and posted_client_ids[0] == posted_client_ids[1], posted_client_ids
        page.unroute("**/items/*/answers")

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

        page.route("**/items/*/answers", unreachable)
        page.keyboard.press("x")
        expect(page.locator("#message")).to_contain_text("not saved yet")
        page.close()
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route("**/items/*/answers", reachable)
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
        page.on("pageerror", lambda error: errors.append(str(error)))
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
