"""Fair share and overload (contract: "Fair share and overload"), on real processes: gunicorn, a
Celery worker with two slots and the sweeper, the built-in engine taking ENGINE_DELAY_MS per reply
so that the slots, not the CPU, are the bound. Assertions are on order and outcomes read back from
Postgres (which reply was stored before which), never on wall-clock budgets.

The scheduler's decisions one claim at a time: tests/unit/test_scheduler.py."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import requests

from scripts.devstack import libpq_url
from tests.support import Api, Stack, Web, Worker, isolated_env, sample, sign_in, token, wait_until

DELAY_MS = 100


@pytest.fixture(scope="module")
def fair(stack_env) -> Iterator[SimpleNamespace]:
    env = isolated_env(stack_env, "fair", ENGINE_DELAY_MS=str(DELAY_MS), TIER_WEIGHTS="free=1,pro=4",
                       BATCH_AGE_SECONDS="2", MAX_QUEUED_PER_USER="500")
    running = Stack(env, "fair").start()
    with psycopg.connect(libpq_url(env["DATABASE_URL"]), autocommit=True) as db:
        yield SimpleNamespace(url=running.url, db=db, stack=running)
    running.stop()


def user(url: str, name: str | None = None, **claims: Any) -> Api:
    api = Api(url, name)
    api.http.headers["Authorization"] = f"Bearer {token(api.user, **claims)}"
    return api


def post_backlog(api: Api, conversations: int, each: int = 1, **body: Any) -> list[str]:
    """`each` messages in each of `conversations` new conversations, as fast as one client posts."""
    ids = []
    for number in range(conversations):
        response = api.post("/api/v1/chat", json={"message": f"add task {number}", **body})
        assert response.status_code == 202, response.text
        first = response.json()
        ids.append(first["message"]["id"])
        for later in range(1, each):
            ids.append(api.chat(f"add task {number}.{later}", first["conversation_id"])["message"]["id"])
    return ids


def in_parallel(*jobs) -> list[Any]:
    """Each job in a thread of its own; their results in order. A job's failure (an assert in
    post_backlog) fails the test, here in the test's own thread, not only in the thread's output."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def replies_in_order(db: psycopg.Connection, users: list[str]) -> list[str]:
    """Whose replies were stored, in the order they were stored."""
    rows = db.execute("SELECT user_id FROM messages WHERE role = 'assistant' AND user_id = ANY(%s) "
                      "ORDER BY created_at, seq", (users,)).fetchall()
    return [row[0] for row in rows]


def drained(db: psycopg.Connection, users: list[str], timeout: float = 60) -> None:
    wait_until(lambda: db.execute("SELECT count(*) FROM messages WHERE user_id = ANY(%s) AND status IN "
                                  "('queued', 'processing')", (users,)).fetchone()[0] == 0,
               timeout=timeout, interval=0.2, what="the backlog to drain")
    unanswered = db.execute("SELECT count(*) FROM messages WHERE user_id = ANY(%s) AND role = 'user' "
                            "AND status <> 'answered'", (users,)).fetchone()[0]
    assert unanswered == 0


def test_a_light_users_message_is_answered_before_a_heavy_backlog_drains(fair) -> None:
    heavy = [user(fair.url) for _ in range(2)]
    in_parallel(*(lambda api=api: post_backlog(api, 15, each=3) for api in heavy))  # 90 messages
    # What operators see meanwhile: how many users share the workers, and the busiest one's starts.
    scraped = requests.get(fair.url + "/metrics", timeout=10).text
    assert sample(scraped, "chatq_users_with_pending_work") >= 2
    assert sample(scraped, "chatq_busiest_users_starts", rank="1") >= 1
    light = user(fair.url)
    _, answered = light.ask("show my tasks")
    # The heavy replies stored between the light question's acceptance and its reply. FIFO would
    # answer it after the 30 conversations' first messages at least (and their later ones as they
    # come due); fair share answers it next to the generations already running.
    overtaken = fair.db.execute(
        "SELECT count(*) FROM messages WHERE role = 'assistant' AND user_id = ANY(%s) AND created_at > %s "
        "AND created_at < %s", ([api.user for api in heavy], answered["created_at"],
                                answered["reply"]["created_at"])).fetchone()[0]
    waiting = fair.db.execute("SELECT count(*) FROM messages WHERE user_id = ANY(%s) AND status = 'queued'",
                              ([api.user for api in heavy],)).fetchone()[0]
    assert overtaken <= 4 and waiting >= 30, (overtaken, waiting)
    drained(fair.db, [api.user for api in heavy])


def test_end_users_of_one_key_share_its_part_and_inventing_them_gains_nothing(fair) -> None:
    """Through OpenAI's SDK with one API key: an end user (`safety_identifier`) with one question
    is answered next to the generations running, not behind another end user's backlog of 40; and
    an app naming a new end user for each of 20 questions gets no more starts than another user
    with 20 plain ones."""
    import openai

    app = user(fair.url)
    key = app.post("/api/v1/keys", json={"name": "app"}).json()["key"]
    client = openai.OpenAI(base_url=fair.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def ask(text: str, end_user: str) -> str:
        return client.responses.create(model="chatq-assistant", input=text, background=True,
                                       safety_identifier=end_user).id.removeprefix("resp_")

    in_parallel(*(lambda n=n: [ask(f"add heavy {n}.{k}", "heavy") for k in range(10)] for n in range(4)))
    light = str(uuid.UUID(ask("show my tasks", "light")))
    answered = app.wait_answered(light, timeout=60)
    overtaken = fair.db.execute(
        "SELECT count(*) FROM messages WHERE role = 'assistant' AND user_id = %s AND reply_to_id <> %s "
        "AND created_at > %s AND created_at < %s",
        (app.user, light, answered["created_at"], answered["reply"]["created_at"])).fetchone()[0]
    waiting = fair.db.execute("SELECT count(*) FROM messages WHERE user_id = %s AND status = 'queued'",
                              (app.user,)).fetchone()[0]
    assert overtaken <= 4 and waiting >= 20, (overtaken, waiting)
    drained(fair.db, [app.user])

    other, since = user(fair.url), fair.db.execute("SELECT now()").fetchone()[0]
    in_parallel(lambda: [ask(f"add invented {n}", f"invented-{n}") for n in range(20)],
                lambda: post_backlog(other, 20))
    drained(fair.db, [app.user, other.user])
    order = fair.db.execute(
        "SELECT user_id FROM messages WHERE role = 'assistant' AND user_id = ANY(%s) AND created_at > %s "
        "ORDER BY created_at, seq", ([app.user, other.user], since)).fetchall()
    first_half = Counter(row[0] for row in order[:20])
    assert len(order) == 40 and abs(first_half[app.user] - first_half[other.user]) <= 4, first_half


def test_a_user_alone_keeps_every_worker_slot_busy(fair) -> None:
    alone = user(fair.url)
    post_backlog(alone, 12)
    running = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = dict(fair.db.execute("SELECT status::text, count(*) FROM messages WHERE user_id = %s AND "
                                      "role = 'user' GROUP BY status", (alone.user,)).fetchall())
        running.append(counts.get("processing", 0))
        if counts.get("answered", 0) == 12:
            break
        time.sleep(0.02)
    assert max(running) == 2  # both of the worker's slots, never more
    drained(fair.db, [alone.user])


def test_a_heavier_tier_gets_starts_in_proportion_to_its_weight(fair) -> None:
    pro, free = user(fair.url, tier="pro"), user(fair.url, tier="free")
    in_parallel(lambda: post_backlog(pro, 30), lambda: post_backlog(free, 30))
    drained(fair.db, [pro.user, free.user])
    first = Counter(replies_in_order(fair.db, [pro.user, free.user])[:25])
    # While both had a backlog: 4 to 1, give or take the moment the two backlogs arrived.
    assert 3.0 <= first[pro.user] / max(1, first[free.user]) <= 5.5, first
    # The queue's wait is told by lane and weight: the pro user's 30 waited at weight 4.
    worker = requests.get(f"http://127.0.0.1:{fair.stack.worker.metrics_port}/metrics", timeout=10).text
    assert sample(worker, "chatq_queue_wait_seconds_count", lane="interactive", weight="4") == 30


def test_batch_work_runs_only_on_slots_interactive_work_leaves_idle(fair) -> None:
    """Batch work posted *before* interactive work still waits for it (first in, first out would
    answer it first): two interactive messages take the two slots, then four batch ones are posted,
    then fourteen interactive ones."""
    person, nightly = user(fair.url), user(fair.url)
    post_backlog(person, 2)
    post_backlog(nightly, 4, priority="batch")
    post_backlog(person, 14)
    drained(fair.db, [person.user, nightly.user])
    order = replies_in_order(fair.db, [person.user, nightly.user])
    # First in, first out would answer all four batch messages before most of the fourteen; here at
    # most one per slot, started while a slot stood idle as the rest were posted, comes before.
    last_interactive = len(order) - 1 - order[::-1].index(person.user)
    assert order[:last_interactive].count(nightly.user) <= 2, order


def test_batch_work_is_never_starved_for_good(fair) -> None:
    people = [user(fair.url) for _ in range(3)]
    nightly = user(fair.url)
    post_backlog(nightly, 1, priority="batch")
    in_parallel(*(lambda api=api: post_backlog(api, 25) for api in people))  # ~4 s of interactive work
    drained(fair.db, [api.user for api in (*people, nightly)])
    order = replies_in_order(fair.db, [api.user for api in (*people, nightly)])
    # After BATCH_AGE_SECONDS (2) it joined the interactive lane: answered while much of it still waited.
    assert len(order) - 1 - order.index(nightly.user) >= 10, order


def started_in_order(db: psycopg.Connection, users: list[str]) -> list[str]:
    """The users' questions in the order their replies were stored: the order their generations
    started, with one worker slot."""
    rows = db.execute("SELECT q.id::text FROM messages q JOIN messages r ON r.reply_to_id = q.id "
                      "WHERE q.user_id = ANY(%s) ORDER BY r.created_at", (users,)).fetchall()
    return [row[0] for row in rows]


def test_a_queued_message_says_exactly_how_many_start_before_it(fair) -> None:
    """Backlogs at two weights (a pro user's at weight 4, two free users'), each message in a
    conversation of its own, posted while no worker runs; then a light user's one message. It says
    how many will start before it, and exactly that many do (one worker slot: the replies are stored
    in the order their generations started). Users who join at the same moment share a virtual start
    time: the claim and the count order such ties alike."""
    fair.stack.worker.stop()
    pro, free, other, light = user(fair.url, tier="pro"), user(fair.url), user(fair.url), user(fair.url)
    users = [pro.user, free.user, other.user, light.user]
    try:
        in_parallel(lambda: post_backlog(pro, 12), lambda: post_backlog(free, 8), lambda: post_backlog(other, 8))
        waiting = light.chat("show my tasks")["message"]
        ahead = waiting["queue"]["ahead"]
        assert light.get(f"/api/v1/messages/{waiting['id']}").json()["queue"]["ahead"] == ahead
        one_slot = Worker("fair-worker-one-slot", fair.stack.env, concurrency=1).start()
        try:
            drained(fair.db, users)
        finally:
            one_slot.stop()
    finally:
        fair.stack.worker = Worker("fair-worker", fair.stack.env).start()
    order = started_in_order(fair.db, users)
    assert order.index(waiting["id"]) == ahead, (ahead, order.index(waiting["id"]))
    assert 0 < ahead < 28  # placed among the backlogs by their tags, not behind them all
    assert light.wait_answered(waiting["id"])["queue"] is None  # answered: no place in any queue


def test_a_queued_messages_estimate_is_within_a_factor_of_two_of_its_wait(fair) -> None:
    """Two users' backlogs keep both slots busy; a few seconds in, one of them posts once more, behind
    its own backlog. Its eta_seconds is taken from the rate the workers start generations at now —
    the time they were idle before the backlog does not count — and its start comes within a factor
    of two of it (and a second)."""
    heavy = [user(fair.url) for _ in range(2)]
    users = [api.user for api in heavy]
    in_parallel(lambda: post_backlog(heavy[0], 40), lambda: post_backlog(heavy[1], 40))
    wait_until(lambda: fair.db.execute("SELECT count(*) FROM messages WHERE user_id = ANY(%s) AND role = 'user' "
                                       "AND status = 'answered'", (users,)).fetchone()[0] >= 20,
               timeout=30, what="the backlogs to be under way")
    posted_at = time.monotonic()
    waiting = heavy[0].chat("add task one more")["message"]
    wait_until(lambda: status_of(fair.db, waiting["id"]) != "queued", timeout=60, interval=0.02,
               what="the last message to start")
    waited = time.monotonic() - posted_at
    estimate = waiting["queue"]["eta_seconds"]
    print(f"eta: {waiting['queue']['ahead']} ahead, estimated {estimate} s, started after {waited:.1f} s")
    assert estimate is not None and estimate / 2 - 1 <= waited <= estimate * 2 + 1, (estimate, waited)
    drained(fair.db, users)


@pytest.fixture(scope="module")
def capped(stack_env) -> Iterator[SimpleNamespace]:
    env = isolated_env(stack_env, "caps", ENGINE_DELAY_MS="800", MAX_QUEUED_PER_USER="3",
                       MAX_GENERATIONS_PER_USER="1")
    running = Stack(env, "caps").start()
    with psycopg.connect(libpq_url(env["DATABASE_URL"]), autocommit=True) as db:
        yield SimpleNamespace(url=running.url, db=db, stack=running)
    running.stop()


def status_of(db: psycopg.Connection, message_id: str) -> str:
    return db.execute("SELECT status::text FROM messages WHERE id = %s", (message_id,)).fetchone()[0]


def test_a_user_with_too_many_messages_waiting_gets_429_and_nothing_is_stored(capped) -> None:
    flood = user(capped.url)
    first = flood.chat("add task 0")["message"]["id"]
    wait_until(lambda: status_of(capped.db, first) == "processing", what="the first to start")
    waiting = [flood.chat(f"add task {number}")["message"]["id"] for number in (1, 2, 3)]
    refused = flood.post("/api/v1/chat", json={"message": "one too many"})
    assert refused.status_code == 429 and refused.headers["Content-Type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1 and "waiting" in refused.json()["detail"]
    assert capped.db.execute("SELECT count(*) FROM messages WHERE user_id = %s", (flood.user,)).fetchone()[0] == 4
    assert capped.db.execute("SELECT count(*) FROM messages WHERE content = 'one too many'").fetchone()[0] == 0
    for message_id in (first, *waiting):
        assert flood.wait_answered(message_id, timeout=30)["status"] == "answered"


def test_a_full_queues_retry_after_is_about_when_its_first_waiting_message_starts(capped) -> None:
    """The 429's Retry-After is the wait of the user's first waiting message, from the messages
    ahead of it and the rate generations start at now: eight users' backlogs keep both slots busy
    (0.8 s a reply, one generation per user at a time), one of them posts past its cap, and its
    first waiting message starts within a factor of two (and a second) of what the header said."""
    others = [user(capped.url) for _ in range(8)]
    in_parallel(*(lambda api=api: post_backlog(api, 3) for api in others))
    users = [api.user for api in others]
    wait_until(lambda: capped.db.execute("SELECT count(*) FROM messages WHERE user_id = ANY(%s) AND role = 'user' "
                                         "AND status = 'answered'", (users,)).fetchone()[0] >= 10,
               timeout=30, what="the backlogs to be under way")
    # One of them posts until refused: its waiting messages take turns with the others' (fair share).
    flood = others[-1]
    for _ in range(4):
        refused = flood.post("/api/v1/chat", json={"message": "one too many"})
        if refused.status_code == 429:
            break
    asked_at = time.monotonic()
    waiting = [row[0] for row in capped.db.execute("SELECT id::text FROM messages WHERE user_id = %s AND "
                                                   "status = 'queued'", (flood.user,)).fetchall()]
    assert refused.status_code == 429 and len(waiting) == 3, refused.text
    told = int(refused.headers["Retry-After"])
    wait_until(lambda: any(status_of(capped.db, message_id) != "queued" for message_id in waiting), timeout=60,
               interval=0.05, what="the refused user's first waiting message to start")
    waited = time.monotonic() - asked_at
    print(f"retry-after: told {told} s, its first waiting message started after {waited:.1f} s")
    assert told / 2 - 1 <= waited <= told * 2 + 1, (told, waited)
    drained(capped.db, users)


def test_a_user_generates_at_most_their_cap_at_once_while_others_are_answered(capped) -> None:
    busy, other = user(capped.url), user(capped.url)
    ids = post_backlog(busy, 3)
    running = []
    _, answered = other.ask("show my tasks")  # the worker's other slot is free for someone else
    while any(status_of(capped.db, message_id) != "answered" for message_id in ids):
        running.append(capped.db.execute("SELECT count(*) FROM messages WHERE user_id = %s AND status = "
                                         "'processing'", (busy.user,)).fetchone()[0])
        time.sleep(0.02)
    assert max(running) == 1
    assert answered["status"] == "answered"


def test_an_expired_message_ends_expired_and_its_conversation_moves_on(capped) -> None:
    hurried = user(capped.url)
    hurried.chat("add task elsewhere")  # holds the user's one generation for 0.8 s
    first = hurried.chat("add buy milk")
    conversation = first["conversation_id"]
    late = hurried.post("/api/v1/chat", json={"message": "add too late", "conversation_id": conversation,
                                              "expires_in": 1}).json()["message"]
    after = hurried.chat("what did I just add?", conversation)["message"]
    expired = hurried.wait_answered(late["id"])
    assert expired["status"] == "expired" and expired["reply"] is None and expired["error"]
    answered = hurried.wait_answered(after["id"])
    assert answered["status"] == "answered" and "buy milk" in answered["reply"]["content"]
    assert not [task for task in hurried.tasks() if task["title"] == "too late"]  # never generated


@pytest.mark.browser
def test_the_page_says_where_a_waiting_question_stands(capped, browser) -> None:
    node = Web("caps-web-dev", {**capped.stack.env, "CHATQ_DEV": "1"}).start()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(node.url + "/")
        sign_in(page, f"queue-{uuid.uuid4().hex[:8]}")
        # The first takes the user's one generation for 0.8 s; the second waits behind it, in line.
        page.fill("#message", "Add task: first")
        page.press("#message", "Enter")
        page.wait_for_selector(".message.user >> text=Add task: first")
        page.fill("#message", "Add task: second")
        page.press("#message", "Enter")
        waiting = page.wait_for_selector(".status.pending >> text=/ahead of you|Next in line/", timeout=5000)
        assert "Stop" in waiting.inner_text()
        page.wait_for_selector(".message.assistant >> text=second", timeout=30000)

        # Three more behind one being answered: the last says 2 ahead, then moves up without a
        # reload, and says no time where the API has no estimate.
        page.fill("#message", "Add task: third")
        page.press("#message", "Enter")
        page.wait_for_selector(".status.pending >> text=Thinking", timeout=10000)
        for words in ("Add task: fourth", "Add task: fifth", "Add task: sixth"):
            page.fill("#message", words)
            page.press("#message", "Enter")
        page.wait_for_function("() => document.querySelectorAll('.message.user').length === 6")
        shown = page.evaluate("""() => new Promise((done) => {
            const seen = [];
            const look = () => {
              const sixth = [...document.querySelectorAll('.message.user')]
                .find((bubble) => bubble.textContent === 'Add task: sixth');
              const status = sixth && sixth.nextElementSibling;
              if (!status || !status.matches('.status.pending')) return done(seen);
              const last = status.firstChild.textContent;
              if (seen[seen.length - 1] !== last) seen.push(last);
              if (seen.length > 20) return done(seen);
              setTimeout(look, 50);
            };
            look();
        })""")
        # The places it said, each once: a new estimate alone changes the text, not the place.
        seen = [text.split(" · ")[0] for text in shown if "ahead" in text or "Next" in text]
        places = [place for index, place in enumerate(seen) if index == 0 or seen[index - 1] != place]
        assert places == ["2 ahead of you", "1 ahead of you", "Next in line"], shown
        assert not any("about 0 s" in text for text in shown), shown
    finally:
        page.close()
        node.stop()


# Last in the module: it leaves the caps stack's workers a backlog of minutes, stopped with it.
def test_an_erasure_starts_while_hundreds_of_replies_wait(capped) -> None:
    """Erasure jobs run from the housekeeping queue, which the workers take from turn about with
    the answer jobs: DELETE /me is carried out at a worker's next free slot, not after the ~240
    doorbells already queued (at 0.8 s a reply, two slots: minutes)."""
    erased = user(capped.url)
    erased.chat("Add task: forget me soon")
    with ThreadPoolExecutor(max_workers=8) as pool:  # three waiting messages each, the most one user may
        backlog = list(pool.map(lambda _: [user(capped.url).chat(f"add task {n}")["message"]["id"] for n in range(3)],
                                range(80)))
    assert len(backlog) == 80
    asked = erased.request("DELETE", "/api/v1/me")
    assert asked.status_code == 202
    finished = wait_until(lambda: (body := erased.get(asked.headers["Location"]).json())["status"] == "erased"
                          and body, timeout=30, what="the erasure to finish")
    waiting = capped.db.execute("SELECT count(*) FROM messages WHERE status = 'queued'").fetchone()[0]
    assert finished["erased"]["conversations"] == 1
    assert waiting >= 150, waiting  # it did not wait for the backlog to drain
