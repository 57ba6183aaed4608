"""A newcomer's setup in real headless Chromium at 1280x800 (issue 17): a refused file leaves no
stale panel, the setup survives a reload field by field and comes back when a past run is opened,
every table shows all its columns, a Try it example row routes on a click, the event log follows
its newest line, and a model that needs a download says so offline. Screenshots go to
tests/artifacts/setup-*.png (look at them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fruit import LABELS, lm_answer
from tests.scripted_server import ScriptedServer
from tests.test_browser import ARTIFACTS, CHROMIUM, FLAGS, TABS, Page  # noqa: F401  (shared browser helpers)

pytestmark = pytest.mark.slow
KEY = "sk-SETUPTEST-9a8b7c6d5e4f3a2b1c0d"
WIDTH = 1280
#: Every table of the app, by element id, and the tab it is on.
SETUP_TABS = {"tab-data": TABS[0], "tab-models": TABS[1], "tab-lm": TABS[2]}


def long_task(path: Path, n: int = 360) -> dict[str, str]:
    """The fruit task with review-length texts (a long text column is what pushed columns off screen)."""
    filler = ("and the rest of this sentence goes on for a while about the weather, the shop, the price "
              "and what a friend said about it last week, as movie reviews do")
    gold, lines = {}, ["text,label,source"]
    for i in range(n):
        label = LABELS[i % 3]
        fruit = {"a": "apple", "b": "banana", "c": "cherry"}[LABELS[(i + 1) % 3] if i % 5 == 0 else label]
        text = f"{fruit} item {i} {filler}"
        gold[text] = label
        lines.append(f'"{text}",{label},shop-{i % 4}')
    path.write_text("\n".join(lines) + "\n")
    return gold


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium or set EA_CHROMIUM"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app import LAUNCH_OPTIONS, build_app

    root = tmp_path_factory.mktemp("browser_setup")
    data = root / "reviews.csv"
    srv = ScriptedServer(long_task(data), labels=LABELS, answer_fn=lm_answer).start()
    demo = build_app(root / "runs")
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield {"url": url, "demo": demo, "data": data, "srv": srv, "root": root}
    demo.close()
    srv.close()


def headers_in_view(page, table_id: str) -> list[str]:
    """The column headers of a table that are not wholly inside the 1280 px viewport (none: it fits)."""
    page.locator(f"#{table_id} th[role=columnheader]").first.wait_for(timeout=30_000)
    boxes = page.evaluate(f"""() => [...document.querySelectorAll('#{table_id} th[role=columnheader]')]
        .map(th => {{ const r = th.getBoundingClientRect(); return [th.title || th.innerText, r.left, r.right]; }})""")
    assert boxes, f"#{table_id} has no header"
    return [f"{name} ({left:.0f}-{right:.0f} px)" for name, left, right in boxes if left < -1 or right > WIDTH + 1]


def setup_values(p, tab_id: str) -> list:
    """What every field of a setup tab shows: text boxes, numbers, dropdowns, ticks (never the key)."""
    return p.evaluate(f"""() => [...document.querySelectorAll('#{tab_id} input, #{tab_id} textarea')]
        .filter(e => e.type !== 'password' && e.type !== 'file' && e.offsetParent !== null)
        .map(e => (e.getAttribute('aria-label') || (e.closest('label') || {{}}).innerText || '').slice(0, 30) + ' = '
                  + ((e.type === 'checkbox' || e.type === 'radio') ? (e.checked ? 'on' : 'off') : e.value))""")


def every_setup_field(d: Page) -> dict[str, list]:
    out = {}
    for tab_id, name in SETUP_TABS.items():
        d.tab(name)
        d.page.wait_for_timeout(400)
        out[tab_id] = setup_values(d.page, tab_id)
    return out


def test_a_refused_file_leaves_no_stale_panel_and_offline_models_say_so(browser, app, tmp_path):
    d = Page(browser, app["url"])
    p = d.page
    d.expect(p.locator("#data-summary")).to_contain_text("tweets")
    p.get_by_label("Upload a file").check()
    d.expect(p.locator("#data-summary")).not_to_contain_text("tweets", timeout=10_000)  # the demo's no more
    bad = tmp_path / "photos.zip"
    bad.write_bytes(b"PK\x03\x04 not a zip archive at all")
    p.locator("#data-upload input[type=file]").set_input_files(str(bad))
    d.expect(p.locator("#data-message")).to_contain_text("photos.zip", timeout=30_000)
    d.expect(p.locator("#data-message .ea-error")).to_be_visible()
    d.expect(p.locator("#data-preview")).to_be_hidden()  # no preview with headers "1 2 3"
    d.expect(p.locator("#data-summary")).to_have_text("")
    d.expect(p.locator("#data-counts")).to_contain_text("Load the data to see its classes")
    assert "duplicate" not in p.locator("#tab-data").inner_text().lower()  # the demo's warnings are gone
    for label in ("Text column", "Label column"):
        assert p.get_by_label(label).input_value() == "", label
    p.screenshot(path=str(ARTIFACTS / "setup-refused-zip.png"), full_page=True)

    # Offline, a model that needs a download says so in the list, a tick is warned about, and Run refuses it.
    d.tab(TABS[1])
    choices = p.locator("#ssm-choices")
    d.expect(choices.locator("label", has_text="head:distilbert")).to_contain_text("unavailable offline")
    choices.locator("label", has_text="head:distilbert").click()
    d.expect(p.locator("#ssm-note")).to_contain_text("Run will refuse", timeout=10_000)
    p.screenshot(path=str(ARTIFACTS / "setup-offline-model.png"), full_page=False)
    d.context.close()


def test_the_setup_survives_a_reload_and_a_reopen_and_every_table_fits(browser, app):
    d = Page(browser, app["url"])
    p = d.page
    assert not headers_in_view(p, "data-preview")

    # A newcomer's setup: their file, two folds, TF-IDF only, their endpoint, marked free, their prompt.
    d.tab(TABS[0])
    p.get_by_label("Upload a file").check()
    p.locator("#data-upload input[type=file]").set_input_files(str(app["data"]))
    d.expect(p.locator("#data-message")).to_contain_text("Columns detected", timeout=30_000)
    d.expect(p.locator("#data-summary")).not_to_contain_text("tweets")
    p.get_by_role("button", name="Load data").click()
    d.expect(p.locator("#data-message")).to_contain_text("Loaded: 360 examples", timeout=30_000)
    d.expect(p.locator("#data-summary")).to_contain_text("reviews")
    assert not headers_in_view(p, "data-preview"), headers_in_view(p, "data-preview")
    p.screenshot(path=str(ARTIFACTS / "setup-data.png"), full_page=True)
    d.tab(TABS[1])
    p.locator("#ssm-choices label", has_text="head:minilm").click()
    folds = p.get_by_label("number input for Out-of-fold mining folds (0 = off)")
    folds.fill("2")
    folds.press("Tab")
    assert not headers_in_view(p, "ssm-catalog"), headers_in_view(p, "ssm-catalog")
    d.tab(TABS[2])
    p.locator("#lm-preset input").click()
    p.get_by_role("option", name="Other OpenAI-compatible endpoint").click()
    p.get_by_label("Base URL").fill(app["srv"].url)
    p.get_by_label("Model", exact=True).fill("review-model")
    p.locator("#lm-free input").check()
    instruction = p.get_by_label("Instruction ({labels} = the label list)")
    instruction.fill("Which fruit is this review about? Answer with one of {labels}.")
    p.locator("#lm-api-key input").fill(KEY)
    p.wait_for_timeout(1500)  # the last edits reach the server's copy of the setup
    before = every_setup_field(d)

    # A reload: every setup field as it was (the key excepted), and the file is still the owner's.
    p.reload()
    d.expect(p.locator("#data-message")).to_contain_text("Loaded: 360 examples", timeout=90_000)
    d.tab(TABS[1])
    d.expect(p.locator("#ssm-choices label", has_text="tfidf")).to_contain_text("offline", timeout=30_000)
    p.wait_for_timeout(1500)
    after = every_setup_field(d)
    for tab_id in SETUP_TABS:
        assert after[tab_id] == before[tab_id], (tab_id, [(a, b) for a, b in zip(before[tab_id], after[tab_id])
                                                          if a != b])
    d.tab(TABS[2])
    assert p.get_by_label("Base URL").input_value() == app["srv"].url
    assert p.locator("#lm-api-key input").input_value() == ""  # the key lives in the page's memory only
    d.tab(TABS[0])
    d.expect(p.locator("#data-file input")).to_have_value(re.compile("reviews.csv"))
    p.screenshot(path=str(ARTIFACTS / "setup-after-reload.png"), full_page=True)

    # Run runs what the tabs show.
    d.tab(TABS[2])
    p.locator("#lm-api-key input").fill(KEY)
    d.run()
    d.expect(p.locator("#run-status")).to_contain_text("Run finished", timeout=180_000)
    status = p.locator("#run-status").inner_text()
    assert "EA kept" in status and "rule " not in status and "crossfit" not in status, status
    d.expect(p.locator("#run-counters")).to_contain_text("free (self-hosted)")
    log = p.locator("#run-log textarea")
    d.expect(log).to_have_value(re.compile("tfidf: val acc"))
    lines = [line[10:] for line in log.input_value().splitlines()]
    assert len(lines) == len(set(lines)), "a line of the event log is there twice"
    p.wait_for_timeout(800)
    gap = p.evaluate("(() => { const t = document.querySelector('#run-log textarea'); "
                     "return t.scrollHeight - t.clientHeight - t.scrollTop; })()")
    assert gap <= 2, f"the event log is {gap} px above its newest line"
    assert not headers_in_view(p, "run-models")
    (folder,) = [f for f in app["demo"].studio.runs_dir.iterdir() if (f / "status.json").is_file()]
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["lm_model"], saved["oof_folds"], saved["ssm"], saved["price_in"]) == ("review-model", 2, ["tfidf"], 0)
    assert "Which fruit is this review about?" in saved["prompt"]["instruction"] and KEY not in json.dumps(saved)

    # Try it: every column of the examples in view; a click on a row routes that example.
    d.tab(TABS[5])
    examples = p.locator("#try-examples")
    first = examples.get_by_role("gridcell", name=re.compile(r"item \d+")).first
    d.expect(first).to_be_visible(timeout=30_000)
    assert not headers_in_view(p, "try-examples"), headers_in_view(p, "try-examples")
    clicked = first.inner_text()
    first.click()
    d.expect(p.locator("#try-text textarea")).to_have_value(re.compile(re.escape(clicked[:40])), timeout=30_000)
    d.expect(p.locator("#try-trace")).to_contain_text("Answer:", timeout=60_000)
    d.expect(p.locator("#try-trace")).to_contain_text(re.compile(r"by (tfidf|assm:tfidf|lm)"))
    p.screenshot(path=str(ARTIFACTS / "setup-try-example.png"), full_page=True)

    # Results: the results table and the past runs, every column in view.
    d.tab(TABS[6])
    d.expect(p.locator("#res-table").get_by_role("gridcell", name=re.compile("EA")).first).to_be_visible(timeout=30_000)
    d.expect(p.locator("#res-mined").get_by_role("gridcell", name=re.compile("item")).first).to_be_visible(
        timeout=30_000)
    for table in ("res-table", "res-runs", "res-mined"):
        assert not headers_in_view(p, table), (table, headers_in_view(p, table))
    d.expect(p.locator("#res-summary")).to_contain_text("calls, free (self-hosted)")
    d.expect(p.locator("#res-summary")).not_to_contain_text("paid calls")
    p.screenshot(path=str(ARTIFACTS / "setup-results.png"), full_page=True)

    # Another setup, then Open the run again: the setup tabs show that run's settings once more.
    d.tab(TABS[0])
    p.get_by_label("Demo: tweet sentiment (text, bundled, offline)").check()
    d.tab(TABS[2])
    p.locator("#lm-preset input").click()
    p.get_by_role("option", name=re.compile("Local offline stand-in")).click()
    d.tab(TABS[6])
    p.locator("#res-open").click()
    d.tab(TABS[0])
    d.expect(p.get_by_label("Upload a file")).to_be_checked(timeout=30_000)
    d.expect(p.locator("#data-message")).to_contain_text("Loaded: 360 examples", timeout=60_000)
    d.expect(p.locator("#data-file input")).to_have_value(re.compile("reviews.csv"))
    d.tab(TABS[2])
    d.expect(p.get_by_label("Base URL")).to_have_value(app["srv"].url, timeout=20_000)
    d.expect(p.get_by_label("Model", exact=True)).to_have_value("review-model")
    d.expect(p.locator("#lm-free input")).to_be_checked()
    p.wait_for_timeout(1000)
    reopened = every_setup_field(d)
    for tab_id in ("tab-data", "tab-lm"):
        assert reopened[tab_id] == before[tab_id], (tab_id, [(a, b) for a, b in zip(before[tab_id],
                                                                                       reopened[tab_id]) if a != b])
    d.screenshots("setup")
    d.context.close()

