"""The chat page in a real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support import ARTIFACTS, Web, sign_in, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dev_web(stack, stack_env):
    """A web node in explicit dev mode: the page's sign-in can mint tokens."""
    node = Web("web-dev", {**stack_env, "CHATQ_DEV": "1"}).start()
    yield node
    node.stop()


def test_sign_in_chat_reload_and_recall(dev_web: Web, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(dev_web.url + "/")

    sign_in(page, f"browser-{uuid.uuid4().hex[:8]}")

    page.fill("#message", "Add task: buy milk")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.user >> text=Add task: buy milk")
    page.wait_for_selector(".message.assistant >> text=buy milk")
    page.wait_for_selector("#task-list li >> text=buy milk")

    page.reload()
    page.wait_for_selector(".message.assistant >> text=buy milk")
    page.wait_for_selector("#task-list li >> text=buy milk")
    assert "#c=" in page.url

    page.fill("#message", "What did I just add?")
    page.press("#message", "Enter")
    answer = page.wait_for_selector(".message.assistant >> nth=1")
    page.locator(".message.assistant").nth(1).wait_for()
    assert "buy milk" in answer.inner_text()
    assert page.locator(".typing").count() == 0
    page.fill("#message", "remind me to water the plants")
    page.press("#message", "Enter")
    page.wait_for_selector("#task-list li >> text=water the plants")

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "screenshots").mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshots" / "chat.png"))
    assert errors == []


_GEOMETRY = """() => {
    const box = (selector) => { const r = document.querySelector(selector).getBoundingClientRect();
                                return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
    const list = document.querySelector('#messages');
    return {width: innerWidth, height: innerHeight,
            pageHeight: document.documentElement.scrollHeight, pageWidth: document.documentElement.scrollWidth,
            header: box('.chat-header'), composer: box('.composer'),
            listScrolls: list.scrollHeight > list.clientHeight,
            tasksWidth: document.querySelector('.tasks').scrollWidth};
}"""


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}],
                         ids=["desktop", "phone"])
def test_the_layout_holds_one_screen_at_a_time_and_only_the_message_list_scrolls(
        dev_web: Web, browser, viewport: dict[str, int]) -> None:
    page = browser.new_page(viewport=viewport)
    page.goto(dev_web.url + "/")
    page.wait_for_selector("#sign-in-form")
    assert not page.is_visible("#app")  # the sign-in screen alone
    sign_in(page, f"layout-{uuid.uuid4().hex[:8]}")
    assert not page.is_visible("#sign-in")  # the app alone
    # Enough to overflow the list, and a task title without spaces, which may not widen anything.
    page.fill("#message", "Add task: " + "x" * 120)
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant")
    for number in range(7):
        page.fill("#message", f"line {number}\n" * 4 + "help")
        page.press("#message", "Enter")
        page.locator(".message.assistant").nth(number + 1).wait_for()
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"layout-{viewport['width']}.png"))
    shape = page.evaluate(_GEOMETRY)
    assert shape["pageHeight"] <= shape["height"] and shape["pageWidth"] <= shape["width"], shape
    assert shape["listScrolls"], shape  # the list scrolls, not the page
    for part in ("header", "composer"):  # both stay on screen
        assert shape[part]["top"] >= 0 and shape[part]["bottom"] <= shape["height"], (part, shape)
        assert shape[part]["left"] >= 0 and shape[part]["right"] <= shape["width"], (part, shape)
    if viewport["width"] < 900:
        assert page.is_visible("#open-menu")
        menu = page.locator("#open-menu").bounding_box()
        assert menu is not None and menu["x"] >= 0 and menu["x"] + menu["width"] <= viewport["width"]
        page.click("#open-tasks")
    page.wait_for_selector("#task-list li")
    tasks = page.evaluate("() => [document.querySelector('.tasks').scrollWidth, "
                          "document.querySelector('.tasks').clientWidth]")
    assert tasks[0] <= tasks[1], tasks  # the long title wraps inside the panel
    if viewport["width"] < 900:
        page.click("#close-tasks")
        page.click("#open-menu")
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert not page.is_visible("#app")  # nothing of the app drawn under the sign-in screen


def test_an_edited_question_is_answered_from_its_new_words_on_the_page(dev_web: Web, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(dev_web.url + "/")
    sign_in(page, f"editor-{uuid.uuid4().hex[:8]}")
    page.fill("#message", "Add task: walk the dog")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant >> text=walk the dog")
    page.click(".question-actions .edit")
    page.fill(".edit-box", "Add task: walk the cat")
    page.click(".save-edit")
    page.wait_for_selector(".message.assistant >> text=Added “walk the cat”", timeout=20000)
    page.wait_for_selector("#task-list li >> text=walk the cat")
    assert page.locator("#task-list li").all_inner_texts() == ["walk the dog", "walk the cat"]


def _token_of(node: Web, name: str) -> str:
    import requests

    return requests.post(node.url + "/dev/token", json={"user": name}, timeout=10).json()["token"]


def test_conversations_and_the_account_are_deleted_from_the_page_and_it_says_what_happened(
        dev_web: Web, browser) -> None:
    import requests

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
    page.goto(dev_web.url + "/")
    page.click("#sign-in-form button[type=submit]")  # no name: the page says what to do
    assert page.locator("#sign-in-error").inner_text() == "Type a name to sign in with."
    name = f"deleter-{uuid.uuid4().hex[:8]}"
    sign_in(page, name)
    auth = {"Authorization": f"Bearer {_token_of(dev_web, name)}"}

    # Delete the open conversation.
    page.fill("#message", "Add task: delete this conversation")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant")
    first = page.url.split("#c=")[1]
    page.click("#delete-conversation")
    page.wait_for_selector("#notice >> text=The conversation was deleted.")
    assert page.locator("#conversations li").count() == 0 and page.locator(".message").count() == 0
    assert requests.get(f"{dev_web.url}/api/v1/conversations/{first}", headers=auth, timeout=10).status_code == 404

    # Deleted elsewhere (the account erased through the API): the next send says so, keeps the text.
    page.fill("#message", "Add task: soon gone")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant")
    erased = requests.delete(f"{dev_web.url}/api/v1/me", headers=auth, timeout=10)
    assert erased.status_code == 202
    status_url = dev_web.url + erased.headers["Location"]
    wait_until(lambda: requests.get(status_url, headers=auth, timeout=10).json()["status"] == "erased",
               what="the erasure")
    page.fill("#message", "show my tasks")
    page.press("#message", "Enter")
    page.wait_for_selector("#notice >> text=/no longer exists/")
    assert page.input_value("#message") == "show my tasks" and page.locator(".message").count() == 0

    # Delete the account from the page: signed out, told what happens.
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant")
    page.click("#delete-me")
    page.wait_for_selector("#signed-out-notice >> text=/being erased/")
    assert page.is_visible("#sign-in-form") and not page.is_visible("#app")
    wait_until(lambda: requests.get(f"{dev_web.url}/api/v1/conversations", headers=auth,
                                    timeout=10).json()["items"] == [], what="the second erasure")
    assert errors == []


def test_search_marks_the_right_letters_after_emoji_and_closes_when_a_hit_opens(dev_web: Web, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.goto(dev_web.url + "/")
    sign_in(page, f"emoji-{uuid.uuid4().hex[:8]}")
    page.fill("#message", "Add task: bring 😀😀 the 🎉 apricot jam")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant")
    page.fill("#search", "apricot")
    page.press("#search", "Enter")
    page.wait_for_selector("#search-results .hit")
    assert set(page.locator("#search-results mark").all_inner_texts()) == {"apricot"}
    page.locator("#search-results .hit").first.click()
    page.wait_for_selector(".message.found")
    assert not page.is_visible("#search-results")
    with page.expect_download():
        page.click("#export")
    page.wait_for_selector("#export-status >> text=Export saved as chatq-export.ndjson.")


def test_on_a_phone_the_composer_shows_its_whole_placeholder(dev_web: Web, browser) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(dev_web.url + "/")
    sign_in(page, f"narrow-{uuid.uuid4().hex[:8]}")
    fits = page.evaluate("""() => {
        const box = document.querySelector('#message'), style = getComputedStyle(box);
        const context = document.createElement('canvas').getContext('2d');
        context.font = `${style.fontSize} ${style.fontFamily}`;
        const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return [context.measureText(box.placeholder).width, room];
    }""")
    assert fits[0] <= fits[1], fits


def test_the_page_sends_security_headers_and_no_inline_script(dev_web: Web) -> None:
    import requests

    response = requests.get(dev_web.url + "/", timeout=10)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in response.text and "onclick" not in response.text


def test_dev_token_endpoint_is_off_unless_dev_mode(stack, dev_web: Web) -> None:
    import requests

    assert requests.post(stack.url + "/dev/token", json={"user": "x"}, timeout=10).status_code == 404
    minted = requests.post(dev_web.url + "/dev/token", json={"user": "x"}, timeout=10)
    assert minted.status_code == 200 and minted.json()["token"]
    assert requests.post(dev_web.url + "/dev/token", json={"user": "bad name!"}, timeout=10).status_code == 422


def test_the_page_puts_only_an_id_from_its_link_into_a_request_path(dev_web: Web, browser) -> None:
    # A link anyone can write: the fragment must not choose where the page's requests go.
    page = browser.new_page()
    paths: list[str] = []
    page.on("request", lambda request: paths.append(request.url.split("://", 1)[1].split("/", 1)[1]))
    page.goto(dev_web.url + "/")
    sign_in(page, f"browser-{uuid.uuid4().hex[:8]}")
    for fragment in ("not-an-id", "..%2F..%2F..%2Flivez%3F"):  # a made-up id, and a walk out of the API
        page.goto(f"{dev_web.url}/#c={fragment}")
        page.reload()
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_load_state("networkidle")
    ids = [path.split("/")[3].split("?")[0] for path in paths if path.startswith("api/v1/conversations/")]
    assert all(len(ident) == 36 and ident.count("-") == 4 for ident in ids), paths
    assert not any(path.startswith("livez") for path in paths), paths


def test_on_a_phone_the_menu_searches_exports_and_signs_out_and_the_tasks_are_a_tap_away(
        dev_web: Web, browser) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(dev_web.url + "/")
    name = f"phone-{uuid.uuid4().hex[:8]}"
    sign_in(page, name)

    page.fill("#message", "remind me to water the ficus")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant >> text=water the ficus")
    # One conversation fills the screen: the menu and the tasks are closed, each a button away.
    assert not page.is_visible("#conversations") and not page.is_visible("#task-list")
    assert page.is_visible("#open-menu") and page.is_visible("#open-tasks")
    box = page.locator(".chat").bounding_box()
    assert box is not None and box["width"] <= 390

    page.click("#open-tasks")
    page.wait_for_selector("#task-list li >> text=water the ficus")
    page.click("#close-tasks")
    assert not page.is_visible("#task-list")

    page.click("#open-menu")  # a new conversation, then back to the first through search
    page.click("#new-conversation")
    assert not page.is_visible("#conversations")
    page.fill("#message", "Add task: buy bread")
    page.press("#message", "Enter")
    page.wait_for_selector(".message.assistant >> text=buy bread")
    page.click("#open-menu")
    for selector in ("#conversations li", "#search", "#export", "#sign-out"):
        assert page.is_visible(selector), selector
    assert page.locator("#conversations li").count() == 2
    page.fill("#search", "ficus")
    page.press("#search", "Enter")
    page.wait_for_selector("#search-results .hit")
    hits = page.locator("#search-results .hit")  # the question, and the reply that repeats it, newest first
    assert hits.count() == 2 and hits.nth(1).inner_text().startswith("remind me to water the ficus")
    assert page.locator("#search-results mark").all_inner_texts() == ["ficus", "ficus"]
    hits.nth(1).click()
    page.wait_for_selector(".message.user.found >> text=remind me to water the ficus")
    assert not page.is_visible("#search-results")  # the menu closed on the way

    page.click("#open-menu")
    with page.expect_download() as download:
        page.click("#export")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert '"type":"export"' in lines[0] and name in lines[0] and '"type":"end"' in lines[-1]
    assert any("buy bread" in line for line in lines)

    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert errors == []
