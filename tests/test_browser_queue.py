"""A shared server in real headless Chromium: several people press Run on a server that runs one
at a time.

More Runs than the limit queue and start in order, each page shows its own place ("Queued: 2nd"),
Cancel takes a run out of the queue, no page is told of another's runs, and a restarted server
(same runs folder, same port) keeps the queue: the reopened pages re-attach to their queued and
running runs. The LM is a scripted OpenAI-compatible server on 127.0.0.1 whose latency keeps the
first run busy while the others wait.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from ea_core.runqueue import QueueSettings
from tests.scripted_server import ScriptedServer

CHROMIUM = os.environ.get("EA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("EA_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
TRAIN = "4 · Train & mine"

pytestmark = pytest.mark.slow  # real browsers and real runs


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium or set EA_CHROMIUM"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def lm():
    """The scripted LM: a fixed label for every tweet (the run's LM stage has something to answer)."""
    srv = ScriptedServer({}, labels=["negative", "neutral", "positive"], answer_fn=lambda req: "neutral").start()
    yield srv
    srv.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(runs_dir: Path, port: int, max_running: int = 1):
    from app import LAUNCH_OPTIONS, build_app

    demo = build_app(runs_dir, queue=QueueSettings(max_running=max_running))
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=port, **LAUNCH_OPTIONS)
    return demo, url


class User:
    """One person: a browser context on the app, recording what the server sent it."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.bodies: list[str] = []
        self.page.on("response", self._record)
        self.page.goto(url)
        self.expect(self.page.locator("#data-message")).to_contain_text("Loaded", timeout=120_000)

    def _record(self, response) -> None:
        try:
            self.bodies.append(response.text())
        except Exception:  # noqa: BLE001  (binary or aborted responses)
            pass

    @staticmethod
    def expect(locator):
        from playwright.sync_api import expect

        return expect(locator)

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def reopen(self) -> None:
        """Reload the page after a server restart. Gradio's own page polls a lost server every 2 s and
        reloads itself once it answers, so that reload may abort ours ("net::ERR_ABORTED"): either
        one brings the page back, and the wait below is for whichever came last."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            self.page.reload()
        except PlaywrightError as e:
            if "ERR_ABORTED" not in str(e) and "frame was detached" not in str(e):
                raise
        self.page.wait_for_load_state("load")
        self.expect(self.page.get_by_role("tab", name=TRAIN)).to_be_visible(timeout=120_000)

    def setup(self, server: ScriptedServer) -> None:
        """The demo tweets cut to 300 / 100 / 100, TF-IDF only, the scripted LM one request at a time."""
        p = self.page
        self.tab("1 · Data")
        p.get_by_role("button", name="Splits and sizes").click()
        for label, n in (("Max train examples (0 = all)", 300), ("Max validation", 100), ("Max test", 100)):
            box = p.get_by_label(label)
            box.fill(str(n))
            box.press("Tab")
        p.get_by_role("button", name="Load data").click()
        self.expect(p.locator("#data-message")).to_contain_text("Loaded: 500 examples", timeout=60_000)
        self.tab("2 · Small models")
        head = p.locator("#ssm-choices label", has_text="head:minilm")
        if head.locator("input").is_checked():
            head.click()
        self.tab("3 · Large model")
        p.locator("#lm-preset input").click()
        p.get_by_role("option", name="Other OpenAI-compatible endpoint").click()
        p.get_by_label("Base URL").fill(server.url)
        p.get_by_label("Model", exact=True).fill("test-model")
        p.locator("#lm-api-key input").fill("sk-queue-test")
        parallel = p.get_by_label("number input for Parallel requests")
        parallel.fill("1")
        parallel.press("Tab")

    def run(self) -> None:
        self.tab(TRAIN)
        self.page.locator("#run-button").click()

    @property
    def status(self):
        return self.page.locator("#run-status")


def _run_ids(runs_dir: Path) -> set[str]:
    return {p.name for p in runs_dir.iterdir() if (p / "status.json").is_file()}


def _newest(runs_dir: Path, known: set[str]) -> str:
    (new,) = _run_ids(runs_dir) - known
    known.add(new)
    return new


def test_runs_queue_in_order_each_page_sees_its_own_place_and_cancel_while_queued(browser, lm, tmp_path):
    runs = tmp_path / "runs"
    demo, url = launch(runs, _free_port())
    manager = demo.studio.manager
    users = [User(browser, url) for _ in range(3)]
    a, b, c = users
    for u in users:
        u.setup(lm)
    lm.latency_s = 0.3  # the first run keeps the one place busy
    known: set[str] = set()
    a.run()
    a.expect(a.status).to_contain_text("Running", timeout=120_000)
    run_a = _newest(runs, known)
    b.run()
    b.expect(b.status).to_contain_text(re.compile(r"Queued: 1st, ~\d"), timeout=60_000)
    run_b = _newest(runs, known)
    c.run()
    c.expect(c.status).to_contain_text(re.compile(r"Queued: 2nd, ~\d"), timeout=60_000)
    run_c = _newest(runs, known)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    c.page.screenshot(path=str(ARTIFACTS / "queue-train.png"), full_page=True)

    # Cancel while queued: b's run leaves the queue, and c moves up.
    b.page.locator("#cancel-button").click()
    b.expect(b.status).to_contain_text("Run cancelled", timeout=60_000)
    b.expect(b.page.locator("#resume-button")).to_be_visible()
    c.expect(c.status).to_contain_text("Queued: 1st", timeout=60_000)

    lm.latency_s = 0.0
    a.expect(a.status).to_contain_text("Run finished", timeout=240_000)
    c.expect(c.status).to_contain_text("Run finished", timeout=240_000)
    sa, sb, sc = (manager.status(r) for r in (run_a, run_b, run_c))
    assert (sa.state, sb.state, sc.state) == ("done", "cancelled", "done")
    assert sb.started is None  # it never ran
    assert sa.started < sc.started and sc.started >= sa.ended - 1.0  # one at a time, in order

    # No page was told of another's runs (nor shown another's place: each saw its own status only).
    for u, mine in ((a, run_a), (b, run_b), (c, run_c)):
        others = {run_a, run_b, run_c} - {mine}
        assert u.bodies and not any(o in body for body in u.bodies for o in others)
    for u in users:
        u.context.close()
    demo.close()


def test_a_restarted_server_keeps_the_queue_and_pages_re_attach(browser, lm, tmp_path):
    runs, port = tmp_path / "runs", _free_port()
    demo, url = launch(runs, port)
    a, b = User(browser, url), User(browser, url)
    for u in (a, b):
        u.setup(lm)
    lm.latency_s = 0.3
    known: set[str] = set()
    a.run()
    a.expect(a.status).to_contain_text("Running", timeout=120_000)
    run_a = _newest(runs, known)
    b.run()
    b.expect(b.status).to_contain_text("Queued: 1st", timeout=60_000)
    run_b = _newest(runs, known)

    demo.close()  # the server goes; the running worker and the waiting one stay
    demo, url2 = launch(runs, port)
    assert url2 == url
    for u in (a, b):
        u.reopen()
        u.tab(TRAIN)
    a.expect(a.status).to_contain_text("Running", timeout=120_000)
    b.expect(b.status).to_contain_text("Queued: 1st", timeout=120_000)
    lm.latency_s = 0.0
    a.expect(a.status).to_contain_text("Run finished", timeout=240_000)
    b.expect(b.status).to_contain_text("Run finished", timeout=240_000)
    manager = demo.studio.manager
    sa, sb = manager.status(run_a), manager.status(run_b)
    assert (sa.state, sb.state) == ("done", "done") and sb.started >= sa.ended - 1.0
    for u in (a, b):
        u.context.close()
    demo.close()
