"""The Summaries tab in real headless Chromium: Run starts a background worker (queued under the
server's limits like any run), the page follows it by its timer, and a reload finds the run again
with its log and results; another browser sees none of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ea_core.data.summaries import load_aclsum
from tests.scripted_server import ScriptedServer

CHROMIUM = os.environ.get("EA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow  # a real browser and a worker process


def test_a_summarization_run_survives_a_reload_and_stays_its_owners(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from app import LAUNCH_OPTIONS, build_app

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium or set EA_CHROMIUM"
    task = load_aclsum()
    gold = dict(zip(task.train.sources + task.val.sources + task.test.sources,
                    task.train.references + task.val.references + task.test.references))
    demo = build_app(tmp_path / "runs")
    demo.queue(default_concurrency_limit=4)
    with ScriptedServer(gold) as srv, sync_playwright() as p:
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(url)
            tab = page.locator("#tab-summaries")
            page.get_by_role("tab", name="8 · Summaries").click()
            tab.get_by_label("OpenAI-compatible endpoint").check()
            tab.get_by_label("Base URL").fill(srv.url)
            tab.get_by_label("Model", exact=True).fill("m")
            tab.get_by_label("extractive: sentence scorer over frozen MiniLM (seconds on CPU)").uncheck()
            for name in ("Validation examples (max)", "Test examples (max)"):
                tab.get_by_label(name).fill("12")
            page.locator("#sum-run").click()
            expect(page.locator("#sum-status")).to_contain_text("Run finished", timeout=300_000)
            expect(page.locator("#sum-results")).to_contain_text("specific_layer")
            assert "train lead" in page.locator("#sum-log textarea").input_value()
            assert len(srv.requests) > 0  # the worker called the scripted LM
            expect(page.locator("#sum-thr0")).to_be_visible()  # a threshold slider per routed stage
            expect(page.locator("#sum-point")).to_contain_text("Validation")

            page.reload()  # the page forgets everything but this browser's run id: the run is found again
            page.get_by_role("tab", name="8 · Summaries").click()
            expect(page.locator("#sum-results")).to_contain_text("specific_layer", timeout=60_000)
            expect(page.locator("#sum-status")).to_contain_text("Run finished")
            assert "train lead" in page.locator("#sum-log textarea").input_value()
            page.locator("#tab-summaries").get_by_label("Text to summarise").fill(task.test.sources[0])
            page.locator("#tab-summaries").get_by_role("button", name="Summarise", exact=True).click()
            expect(page.locator("#tab-summaries")).to_contain_text("answered", timeout=60_000)

            other = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            other.goto(url)
            other.get_by_role("tab", name="8 · Summaries").click()
            other.wait_for_timeout(3_000)
            assert "specific_layer" not in other.locator("#sum-results").inner_text()
            assert "Run finished" not in other.locator("#sum-status").inner_text()
        finally:
            browser.close()
            demo.close()
