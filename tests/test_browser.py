"""The app in real headless Chromium (Playwright driving Debian's chromium), as people use it.

Upload a file, run on it against a scripted OpenAI-compatible server, move a threshold and check
that the plotted point is what the engine computes, route one input, reload the page mid-run and
see it re-attach, cancel a run; two browser contexts with two keys never see each other's runs or
key. A screenshot of every tab is saved under tests/artifacts/ (look at them).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from ea_core.explore import Explorer
from ea_core.pipeline import open_run
from tests.fruit import LABELS, lm_answer, make_task
from tests.scripted_server import ScriptedServer

CHROMIUM = os.environ.get("EA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("EA_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY_A = "sk-BROWSERA-5e4d3c2b1a0f9e8d7c6b"
KEY_B = "sk-BROWSERB-a1b2c3d4e5f60718293a"
TABS = ["1 · Data", "2 · Small models", "3 · Large model", "4 · Train & mine", "5 · Thresholds", "6 · Try it",
        "7 · Results & export"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), (f"{CHROMIUM} is missing: install Debian's chromium "
                                      "(apt-get install chromium; .ci/run does) or set EA_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from app import LAUNCH_OPTIONS, build_app

    root = tmp_path_factory.mktemp("browser")
    data = root / "fruit.csv"
    gold = make_task(data)
    fast = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    slow = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer, latency_s=0.25).start()
    demo = build_app(root / "runs")
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield {"url": url, "demo": demo, "data": data, "fast": fast, "slow": slow}
    demo.close()
    fast.close()
    slow.close()


class Page:
    """A browser tab on the app that records every response body it receives."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.bodies: list[str] = []
        self.page.on("response", self._record)
        self.page.goto(url)
        self.expect(self.page.locator("#data-message")).to_contain_text("Loaded: 3,000 examples", timeout=90_000)

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

    def setup_run(self, data: Path, server: ScriptedServer, key: str, concurrency: int = 8) -> None:
        """Upload the fruit task, load it, keep only TF-IDF, point the LM at `server` with `key`."""
        p = self.page
        self.tab(TABS[0])
        p.get_by_label("Upload a file").check()
        p.locator("#data-upload input[type=file]").set_input_files(str(data))
        self.expect(p.locator("#data-message")).to_contain_text("Columns detected", timeout=30_000)
        p.get_by_role("button", name="Load data").click()
        self.expect(p.locator("#data-message")).to_contain_text("Loaded: 360 examples", timeout=30_000)
        self.tab(TABS[1])
        p.locator("#ssm-choices label", has_text="head:minilm").click()
        self.tab(TABS[2])
        p.locator("#lm-preset input").click()
        p.get_by_role("option", name="Other OpenAI-compatible endpoint").click()
        p.get_by_label("Base URL").fill(server.url)
        p.get_by_label("Model", exact=True).fill("test-model")
        p.locator("#lm-api-key input").fill(key)
        parallel = p.get_by_label("number input for Parallel requests")
        parallel.fill(str(concurrency))
        parallel.press("Tab")

    def run(self) -> None:
        self.tab(TABS[3])
        self.page.locator("#run-button").click()

    def screenshots(self, prefix: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(TABS):
            self.tab(name)
            self.page.wait_for_timeout(800)
            self.page.screenshot(path=str(ARTIFACTS / f"{prefix}-tab{k + 1}.png"), full_page=True)
            width = self.page.evaluate("document.documentElement.scrollWidth")
            assert width <= 1280, f"{name}: the page scrolls sideways at 1280 px ({width} px wide)"

    def plotted_current(self) -> tuple[float, float]:
        """(LM calls %, accuracy %) of the 'current (validation)' marker as Plotly drew it."""
        return tuple(self.page.evaluate("""() => {
            const gd = document.querySelector('#thr-routing .js-plotly-plot');
            const t = gd.data.find(t => t.name === 'current (validation)');
            return [t.x[0], t.y[0]];
        }"""))


def test_upload_run_threshold_try_and_two_users_in_real_chromium(browser, app_url):
    url, demo = app_url["url"], app_url["demo"]
    a = Page(browser, url)
    a.setup_run(app_url["data"], app_url["fast"], KEY_A)
    a.run()
    a.expect(a.page.locator("#run-status")).to_contain_text("Run finished", timeout=180_000)
    a.expect(a.page.locator("#run-log textarea")).to_have_value(re.compile("tfidf: val acc"))

    # Thresholds: type a threshold in the first slider's box; the plotted point becomes the engine's.
    a.tab(TABS[4])
    a.expect(a.page.locator("#thr-slider-0")).to_be_visible(timeout=30_000)
    (run_a,) = _run_ids(demo)
    run_id = run_a
    ex = Explorer.build(open_run(demo.studio.manager.folder(run_id)), "ea")
    second = float(a.page.locator("#thr-slider-1 input[type=number]").input_value())
    box = a.page.locator("#thr-slider-0 input[type=number]")
    box.fill("0.95")
    box.press("Tab")
    val, _ = ex.evaluate(ex.thresholds([0.95, second]))
    want = (100 * val.lm_call_rate, 100 * val.accuracy)
    deadline = time.time() + 20
    while time.time() < deadline and a.plotted_current() != pytest.approx(want):
        time.sleep(0.1)
    assert a.plotted_current() == pytest.approx(want)

    # Try it: route one input through the real models at these thresholds.
    a.tab(TABS[5])
    a.page.locator("#try-text textarea").fill("banana fresh bowl juice item 999")
    a.page.locator("#try-route").click()
    a.expect(a.page.locator("#try-trace")).to_contain_text("Answer:", timeout=60_000)
    a.expect(a.page.locator("#try-trace")).to_contain_text("tfidf")
    a.screenshots("main")

    # A second person, another key: runs of their own, nothing of the first one's.
    b = Page(browser, url)
    b.tab(TABS[6])
    b.expect(b.page.locator("#res-runs")).not_to_contain_text("fruit.csv")
    b.setup_run(app_url["data"], app_url["fast"], KEY_B)
    b.run()
    b.expect(b.page.locator("#run-status")).to_contain_text("Run finished", timeout=180_000)
    (run_b,) = _run_ids(demo) - {run_a}
    for page in (a, b):
        page.tab(TABS[6])
        page.page.get_by_role("button", name="Refresh list").click()
        page.expect(page.page.locator("#res-runs tbody tr")).to_have_count(1)
    status_a, status_b = (demo.studio.manager.status(r) for r in (run_a, run_b))
    assert status_a.owner != status_b.owner  # two browsers, two owners
    # Each page was told about its own run only, and was never sent the other's key (nor its own back).
    for page, run in ((a, run_a), (b, run_b)):  # a streamed body is recorded when its stream closes
        for _ in range(100):
            if any(run in body for body in page.bodies):
                break
            page.page.wait_for_timeout(200)
    assert any(run_a in body for body in a.bodies) and any(run_b in body for body in b.bodies)
    assert not any(run_a in body for body in b.bodies) and not any(run_b in body for body in a.bodies)
    for key in (KEY_A, KEY_B):
        assert not any(key in body for body in a.bodies + b.bodies)
    assert any(r.headers.get("authorization") == f"Bearer {KEY_B}" for r in app_url["fast"].requests)
    a.context.close()
    b.context.close()


def test_reload_mid_run_reattaches_and_cancel_stops_it(browser, app_url):
    c = Page(browser, app_url["url"])
    c.setup_run(app_url["data"], app_url["slow"], KEY_A, concurrency=1)  # ~40 s of LM calls
    c.run()
    c.expect(c.page.locator("#run-log textarea")).to_have_value(re.compile("Mining"), timeout=120_000)
    c.page.reload()
    c.tab(TABS[3])
    c.expect(c.page.locator("#run-status")).to_contain_text("Running", timeout=60_000)
    c.expect(c.page.locator("#run-log textarea")).to_have_value(re.compile("tfidf: val acc"), timeout=20_000)
    c.expect(c.page.locator("#run-stepper")).to_contain_text("Small models")
    c.page.screenshot(path=str(ARTIFACTS / "reattached-train.png"), full_page=True)
    c.page.locator("#cancel-button").click()
    c.expect(c.page.locator("#run-status")).to_contain_text("Run cancelled", timeout=60_000)
    c.expect(c.page.locator("#resume-button")).to_be_visible()
    c.context.close()


def _run_ids(demo) -> set[str]:
    return {path.name for path in demo.studio.runs_dir.iterdir() if (path / "status.json").is_file()}
