"""Make the README's screenshots: the app on the offline default, as a newcomer sees it.

Starts the app on a temporary runs folder, presses Run with everything as it comes (demo tweets,
TF-IDF + frozen MiniLM head, the packaged local LM), waits for the run, and saves 1280x800 views
of the Train & mine and Thresholds tabs into assets/. Needs Debian's chromium (./install.sh --test).

    .venv/bin/python assets/screenshots.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from app import LAUNCH_OPTIONS, build_app
    from ea_core.process import configure_process

    configure_process()
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_app(Path(tmp) / "runs")
        demo.queue(default_concurrency_limit=4)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("EA_CHROMIUM", "/usr/bin/chromium"),
                                        args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            expect(page.locator("#data-message")).to_contain_text("Loaded", timeout=120_000)
            page.get_by_role("tab", name="4 · Train & mine").click()
            page.locator("#run-button").click()
            expect(page.locator("#run-status")).to_contain_text("Run finished", timeout=1_800_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(HERE / "app-train.png"))
            page.get_by_role("tab", name="5 · Thresholds").click()
            expect(page.locator("#thr-slider-0")).to_be_visible(timeout=60_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(HERE / "app-thresholds.png"))
            browser.close()
        demo.close()
    print(f"saved {HERE / 'app-train.png'} and {HERE / 'app-thresholds.png'}")


if __name__ == "__main__":
    main()
