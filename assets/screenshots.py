"""Make the README's screenshots: the app on the offline default, as a newcomer sees it.

Starts the app on a temporary runs folder, presses Run with everything as it comes (demo tweets,
TF-IDF + frozen MiniLM head, the packaged local LM), waits for the run (about 4 minutes on 2
cores), then saves a 1280x800 view of every tab into assets/ (app-data.png ... app-results.png),
and of three places below the fold: a file of inputs predicted in Try it (app-batch.png), what EA
found (app-mined.png) and the past runs (app-runs.png); then a small summarization run
(app-summaries.png: the table and plot; app-summaries-run.png: status, log and training curves;
app-summaries-sliders.png: the thresholds). Needs Debian's chromium
(./install.sh --test). With ``--runs-dir DIR`` the runs (and the LM answer cache beside them) are
kept there, so a second attempt pays for no LM answer again.

    .venv/bin/python assets/screenshots.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
TABS = {"data": "1 · Data", "models": "2 · Small models", "lm": "3 · Large model", "train": "4 · Train & mine",
        "thresholds": "5 · Thresholds", "try": "6 · Try it", "results": "7 · Results & export",
        "summaries": "8 · Summaries"}


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from app import LAUNCH_OPTIONS, build_app
    from ea_core.process import configure_process

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", help="keep the runs and the LM answer cache here (default: a temporary folder)")
    args = parser.parse_args()
    configure_process()
    saved = []
    keep = contextlib.nullcontext(args.runs_dir) if args.runs_dir else tempfile.TemporaryDirectory()
    with keep as where, tempfile.TemporaryDirectory() as tmp:
        demo = build_app(Path(where) if args.runs_dir else Path(where) / "runs")
        demo.queue(default_concurrency_limit=4)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("EA_CHROMIUM", "/usr/bin/chromium"),
                                        args=FLAGS)
            page = browser.new_page(viewport=VIEWPORT)

            def tab(name: str) -> None:
                page.get_by_role("tab", name=TABS[name]).click()
                page.wait_for_timeout(1500)
                page.evaluate("window.scrollTo(0, 0)")

            def shot(name: str) -> None:
                page.wait_for_timeout(800)
                page.screenshot(path=str(HERE / f"app-{name}.png"))
                saved.append(f"app-{name}.png")

            page.goto(url)
            expect(page.locator("#data-message")).to_contain_text("Loaded", timeout=120_000)
            for name in ("data", "models", "lm"):
                tab(name)
                shot(name)
            tab("train")
            page.locator("#run-button").click()
            # ~4 min on an idle 2-core machine; far longer when other jobs share the cores
            expect(page.locator("#run-status")).to_contain_text("Run finished", timeout=3 * 3_600_000)
            page.wait_for_timeout(1500)
            shot("train")
            tab("thresholds")
            expect(page.locator("#thr-slider-0")).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)
            shot("thresholds")
            tab("try")
            page.locator("#try-text textarea").fill("Just got the new phone and I can't stop smiling, best upgrade ever")
            page.locator("#try-route").click()
            expect(page.locator("#try-trace")).to_contain_text("Answer:", timeout=120_000)
            shot("try")
            inputs = Path(tmp) / "new-tweets.csv"
            write_tweets(inputs)
            page.locator("#batch-file input[type=file]").set_input_files(str(inputs))
            expect(page.locator("#batch-progress")).to_contain_text("ready", timeout=30_000)
            page.locator("#batch-run").click()
            expect(page.locator("#batch-progress")).to_contain_text("Done:", timeout=300_000)
            page.locator("#batch-preview").scroll_into_view_if_needed()
            shot("batch")
            tab("results")
            expect(page.locator("#res-table")).to_contain_text("EA", timeout=60_000)
            shot("results")
            expect(page.locator("#res-mined-intro")).to_contain_text("Mining", timeout=60_000)
            page.locator("#res-mined-box").scroll_into_view_if_needed()
            shot("mined")
            page.locator("#res-runs").scroll_into_view_if_needed()
            shot("runs")
            # Summaries (ACLSum, offline) on small validation/test caps: the run, its plot and table
            tab("summaries")
            page.get_by_label("Validation examples (max)").fill("20")
            page.get_by_label("Test examples (max)").fill("20")
            page.locator("#sum-preview-btn").click()
            page.wait_for_timeout(3000)
            page.locator("#sum-run").click()
            expect(page.locator("#sum-results")).to_contain_text("specific_layer", timeout=3_600_000)
            page.locator("#sum-results").evaluate("e => e.scrollIntoView({block: 'start'})")
            shot("summaries")
            page.locator("#sum-status").evaluate("e => e.scrollIntoView({block: 'start'})")
            shot("summaries-run")  # the worker's status, its log and the small summarizers' training curves
            page.locator("#sum-point").evaluate("e => e.scrollIntoView({block: 'end'})")
            shot("summaries-sliders")  # a threshold per routed stage, validation and test at that point
            browser.close()
        demo.close()
    print("saved " + ", ".join(str(HERE / name) for name in saved))


def write_tweets(path: Path, n: int = 120) -> None:
    """`n` test tweets of the demo with their labels: a file of inputs to predict."""
    from ea_core.data import load_dataset

    task = load_dataset("demo:tweets")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for text, y in list(zip(task.test.texts, task.test.labels))[:n]:
            w.writerow([text, task.labels[int(y)]])


if __name__ == "__main__":
    main()
