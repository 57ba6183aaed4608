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
from ea_core.runstate import open_run
from tests.fruit import FRUIT, LABELS, chance_answer, lm_answer, make_task
from tests.scripted_server import ScriptedServer

CHROMIUM = os.environ.get("EA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("EA_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY_A = "sk-BROWSERA-5e4d3c2b1a0f9e8d7c6b"
KEY_B = "sk-BROWSERB-a1b2c3d4e5f60718293a"
TABS = ["1 · Data", "2 · Small models", "3 · Large model", "4 · Train & mine", "5 · Thresholds", "6 · Try it",
        "7 · Results & export"]

pytestmark = pytest.mark.slow  # a real browser: the quick check is pytest -m "not slow"


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
    chance = ScriptedServer(gold, labels=LABELS, answer_fn=chance_answer).start()  # an LM at chance level
    demo = build_app(root / "runs")
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield {"url": url, "demo": demo, "data": data, "fast": fast, "slow": slow, "chance": chance}
    demo.close()
    fast.close()
    slow.close()
    chance.close()


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


DIGITS = "Demo: handwritten digits (images, bundled, offline)"


def _digit_png(path: Path, index: int = 10) -> str:
    """One of scikit-learn's 8x8 digits (0-16 scaled to 0-255) as a 64x64 grayscale PNG; its label.

    Upscaled bilinearly, as the models resize their inputs: a blocky (nearest-neighbour) upscale is
    an input unlike any the tiny CNN trained on, and it misreads most of them."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from ea_core.imaging import encode_png

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images[index] * 255.0 / 16.0), 0, 255).astype(np.uint8)
    big = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR)
    path.write_bytes(encode_png(np.asarray(big)))
    return str(int(digits.target[index]))


def test_image_path(browser, app_url, tmp_path):
    """Digits demo: gallery and summary, image models listed, a run with finetune:tiny_cnn and the
    default local LM (local:image-knn for images), then Try it on a test example and an uploaded PNG."""
    d = Page(browser, app_url["url"])
    p = d.page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # Data: pick the digits demo, load it; the gallery shows sample images, the summary says images.
    d.tab(TABS[0])
    p.get_by_label(DIGITS).check()
    p.get_by_role("button", name="Splits and sizes").click()  # a smaller sample: fewer calls to the LM stand-in
    for label, n in (("Max train examples (0 = all)", 300), ("Max validation", 100), ("Max test", 100)):
        box = p.get_by_label(label)
        d.expect(box).to_have_value("0")  # the digits demo's own caps (all) came first
        box.fill(str(n))
        box.press("Tab")
    p.get_by_role("button", name="Load data").click()
    d.expect(p.locator("#data-message")).to_contain_text("Loaded: 500 examples", timeout=60_000)
    d.expect(p.locator("#data-summary")).to_contain_text("images")
    gallery = p.locator("#data-gallery img")
    d.expect(gallery.first).to_be_visible(timeout=30_000)
    decoded = "() => [...document.querySelectorAll('#data-gallery img')].filter(i => i.complete && i.naturalWidth > 0).length"
    p.wait_for_function(f"({decoded})() >= 40", timeout=30_000)  # 4 per class, each one a real picture
    assert gallery.count() >= 10, f"the gallery shows {gallery.count()} images"
    p.wait_for_timeout(500)
    p.screenshot(path=str(ARTIFACTS / "image_data.png"), full_page=True)
    width = p.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, f"the Data tab scrolls sideways at 1280 px ({width} px wide)"

    # Small models: image architectures (not tfidf), the image defaults ticked; keep only tiny_cnn.
    d.tab(TABS[1])
    choices = p.locator("#ssm-choices")
    d.expect(choices.locator("label", has_text="finetune:tiny_cnn")).to_be_visible(timeout=30_000)
    d.expect(choices).to_contain_text("head:efficientnet_lite0")
    d.expect(choices).not_to_contain_text("tfidf")
    d.expect(choices).not_to_contain_text("minilm")
    ticked = choices.locator("input[type=checkbox]:checked")
    d.expect(ticked).to_have_count(2)
    d.expect(choices.locator("label", has_text="finetune:tiny_cnn").locator("input")).to_be_checked()
    d.expect(choices.locator("label", has_text="head:efficientnet_lite0").locator("input")).to_be_checked()
    choices.locator("label", has_text="head:efficientnet_lite0").click()
    d.expect(choices.locator("label", has_text="head:efficientnet_lite0").locator("input")).not_to_be_checked()
    d.expect(ticked).to_have_count(1)

    # Large model: left at its default, the local model (the offline image stand-in for images).
    d.tab(TABS[2])
    d.expect(p.locator("#lm-prompt-preview")).to_contain_text("[the input image]", timeout=15_000)
    p.screenshot(path=str(ARTIFACTS / "image_lm.png"), full_page=True)
    d.run()
    d.expect(p.locator("#run-status")).to_contain_text("Run finished", timeout=180_000)
    log = p.locator("#run-log textarea")
    d.expect(log).to_have_value(re.compile("tiny_cnn"))
    d.expect(log).to_have_value(re.compile("image-knn"))

    # Try it: the image input replaces the text box; a clicked test example is shown and routed.
    d.tab(TABS[5])
    image = p.locator("#try-image")
    d.expect(image).to_be_visible(timeout=30_000)
    d.expect(p.locator("#try-text")).to_be_hidden()
    trace = p.locator("#try-trace")
    example = p.locator("#try-examples").get_by_role("gridcell", name=re.compile(r"\.png$")).first
    d.expect(example).to_be_visible(timeout=30_000)
    example.click()
    d.expect(image.locator("img")).to_be_visible(timeout=30_000)
    answered = re.compile(r"Answer: \S+ — by ((assm:)?finetune:tiny_cnn|lm),")  # the stage that answered
    d.expect(trace).to_contain_text(answered, timeout=60_000)
    clicked = trace.inner_text()

    # Upload a PNG: it is routed on upload, and again with the button.
    png = tmp_path / "digit.png"
    gold = _digit_png(png)
    image.locator("input[type=file]").set_input_files(str(png))
    d.expect(image.locator("img")).to_have_attribute("src", re.compile("digit"), timeout=30_000)
    deadline = time.time() + 60
    while time.time() < deadline and trace.inner_text() == clicked:
        time.sleep(0.2)
    assert trace.inner_text() != clicked, "the upload was not routed"
    d.expect(trace).to_contain_text(answered)
    p.locator("#try-route").click()
    d.expect(trace).to_contain_text(answered, timeout=60_000)
    said = re.search(r"Answer: (\S+)", trace.inner_text()).group(1)
    assert said == gold, f"answered {said!r} for a clear {gold}"  # a 0: every run so far reads it with ~1.0
    p.wait_for_timeout(500)
    p.screenshot(path=str(ARTIFACTS / "image_try.png"), full_page=True)
    print(f"example trace: {clicked!r}\nupload (gold {gold}) trace: {trace.inner_text()!r}")
    d.context.close()


def _wait_new_run(demo, known: set[str], timeout: float = 240.0) -> str:
    """The id of the run started after `known`, once it is done (read on the server)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = _run_ids(demo) - known
        if new and demo.studio.manager.status(next(iter(new))).state == "done":
            return next(iter(new))
        time.sleep(0.5)
    raise AssertionError(f"no new run finished in {timeout:.0f} s: {_run_ids(demo) - known}")


def _slider_values(page, n: int = 2) -> list[str]:
    return [page.locator(f"#thr-slider-{k} input[type=number]").input_value() for k in range(n)]


def _set_slider(page, k: int, value: str) -> None:
    box = page.locator(f"#thr-slider-{k} input[type=number]")
    box.fill(value)
    box.press("Tab")


def _inputs_csv(path: Path, n: int, start: int, server: ScriptedServer) -> Path:
    """Texts the run never saw (so the LM is really asked), with their labels, which `server` knows."""
    gold = {f"{FRUIT[LABELS[i % 3]]} brand new basket item {start + i}": LABELS[i % 3] for i in range(n)}
    server.learn(gold)
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in gold.items()))
    return path


def test_thresholds_memory_mined_examples_batch_predict_compare_and_the_first_run_note(browser, app_url, tmp_path):
    """What a person clicks after a run: auto-tune, look at the other router order and come back (the
    auto-tuned sliders are kept); a slider at 1 reads "never" (also in Try it); what EA found,
    filtered and downloaded; a file of inputs predicted with a route per row, and a bigger one
    cancelled half-way; a second run against an LM at chance explains what a real LM would change
    and one click opens the Large model tab; the two runs side by side."""
    import csv

    demo = app_url["demo"]
    d = Page(browser, app_url["url"])
    p = d.page
    d.setup_run(app_url["data"], app_url["slow"], KEY_A)
    before = _run_ids(demo)
    d.run()
    d.expect(p.locator("#run-status")).to_contain_text("Run finished", timeout=180_000)
    (first,) = _run_ids(demo) - before

    # Thresholds: auto-tune for 10% LM calls, switch to the LM-first order and back: the values stay.
    d.tab(TABS[4])
    d.expect(p.locator("#thr-slider-1")).to_be_visible(timeout=30_000)
    tuned = _slider_values(p)
    assert all(len(v.partition(".")[2]) <= 3 for v in tuned), tuned  # 3 decimals at most, never cut off
    budget = p.get_by_label("at most")
    budget.fill("10")
    budget.press("Tab")
    p.locator("#thr-autotune").click()
    d.expect(p.locator("#thr-tune-msg")).to_contain_text("Auto-tuned", timeout=20_000)
    auto = _slider_values(p)
    assert auto != tuned, (auto, tuned)
    p.locator("#thr-order label", has_text="LM confidence decides").click()
    d.expect(p.locator("#thr-slider-0 label").first).to_contain_text("1. tfidf", timeout=20_000)
    d.expect(p.locator("#thr-slider-1").get_by_text("2. lm")).to_be_visible(timeout=20_000)
    p.locator("#thr-order label", has_text="SSMs → ASSMs → LM").click()
    d.expect(p.locator("#thr-slider-1").get_by_text("assm:tfidf")).to_be_visible(timeout=20_000)
    d.expect(p.locator("#thr-slider-0 input[type=number]")).to_have_value(auto[0], timeout=20_000)
    assert _slider_values(p) == auto

    # A slider at 1 never answers, and says so here and in Try it's trace.
    _set_slider(p, 1, "1")
    _set_slider(p, 0, "1")
    d.expect(p.locator("#thr-route")).to_contain_text("tfidf never answers", timeout=20_000)
    d.expect(p.locator("#thr-route")).to_contain_text("assm:tfidf never answers")
    plot_text = p.locator("#thr-routing").inner_text()
    for label in ("LM alone:", "best SSM (tfidf):", "LM budget on the least sure"):
        assert label in plot_text, f"{label!r} is not written on the plot"
    p.screenshot(path=str(ARTIFACTS / "thresholds-never.png"), full_page=True)
    d.tab(TABS[5])
    p.locator("#try-text textarea").fill("apple fresh juice item 7")
    p.locator("#try-route").click()
    d.expect(p.locator("#try-trace")).to_contain_text("never (passes every input on)", timeout=60_000)
    assert "1.010" not in p.locator("#try-trace").inner_text()

    # What EA found: the mined examples, filtered, and downloaded as CSV.
    d.tab(TABS[6])
    mined = p.locator("#res-mined")
    d.expect(p.locator("#res-mined-intro")).to_contain_text("the LM fixed", timeout=30_000)
    d.expect(mined).to_contain_text("the LM fixed it")
    p.locator("#res-mined-filter label", has_text="underfit only").click()
    d.expect(mined).not_to_contain_text("the LM fixed it", timeout=20_000)
    d.expect(mined).to_contain_text("underfit (LM wrong too)")
    p.locator("#res-mined-box").scroll_into_view_if_needed()
    p.screenshot(path=str(ARTIFACTS / "results-mined.png"), full_page=False)
    with p.expect_download() as download:
        p.locator("#res-mined-csv").click()
    with open(download.value.path(), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["outcome"] for r in rows} == {"underfit"} and {"text", "gold", "tfidf", "lm"} <= set(rows[0])

    # Serve it: the command is shown; a local server of the system at the current sliders answers an
    # OpenAI client with the key the page shows; Stop stops it.
    import openai

    p.locator("#res-serve-box").get_by_text("Serve it").click()
    d.expect(p.locator("#res-serve-cmd")).to_contain_text("python -m ea_core serve --bundle ea-bundle-")
    port = p.get_by_label("port on 127.0.0.1 (0: any free port)")
    port.fill("0")
    port.press("Tab")
    p.locator("#res-serve-start").click()
    d.expect(p.locator("#res-serve-status")).to_contain_text("Serving at http://127.0.0.1:", timeout=60_000)
    status = p.locator("#res-serve-status").inner_text()
    url, key = re.search(r"(http://127\.0\.0\.1:\d+/v1)", status).group(1), re.search(r"Key: (\S+)", status).group(1)
    assert KEY_A not in status
    reply = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30).chat.completions.create(
        model="ea", messages=[{"role": "user", "content": "apple fresh juice item 7"}])
    assert reply.choices[0].message.content in LABELS
    p.locator("#res-serve-start").scroll_into_view_if_needed()
    p.screenshot(path=str(ARTIFACTS / "results-serve.png"), full_page=False)
    p.locator("#res-serve-stop").click()
    d.expect(p.locator("#res-serve-status")).to_contain_text("stopped", timeout=20_000)

    # Batch prediction at the current sliders (both at 1: every input goes to the LM).
    d.tab(TABS[5])
    upload = p.locator("#batch-file input[type=file]")
    upload.set_input_files(str(_inputs_csv(tmp_path / "few.csv", 24, 7000, app_url["slow"])))
    d.expect(p.locator("#batch-progress")).to_contain_text("ready", timeout=20_000)
    p.locator("#batch-run").click()
    d.expect(p.locator("#batch-progress")).to_contain_text("Done: 24 inputs", timeout=90_000)
    d.expect(p.locator("#batch-preview")).to_contain_text("tfidf")
    p.screenshot(path=str(ARTIFACTS / "try-batch.png"), full_page=True)
    with p.expect_download() as download:
        p.locator("#batch-download").click()
    with open(download.value.path(), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["answered_by"] for r in rows} == {"lm"} and all(r["stage"] == "3" for r in rows)
    assert all(r["route"].startswith("tfidf ") and " → assm:tfidf " in r["route"] and " → lm " in r["route"]
               for r in rows)
    assert all(r["prediction"] == r["gold"] and r["right"] == "true" and r["confidence"] for r in rows)
    d.expect(p.locator("#batch-progress")).to_contain_text("accuracy on the 24 labelled rows: 100.0%")

    # A bigger file, cancelled after its first chunks: the file holds the rows done.
    upload.set_input_files(str(_inputs_csv(tmp_path / "many.csv", 600, 9000, app_url["slow"])))
    d.expect(p.locator("#batch-progress")).to_contain_text("ready", timeout=20_000)
    p.locator("#batch-run").click()
    d.expect(p.locator("#batch-progress")).to_contain_text(re.compile(r"[1-9][0-9]* done"), timeout=60_000)
    d.expect(p.locator("#batch-cancel")).to_be_enabled()
    p.locator("#batch-cancel").click()
    d.expect(p.locator("#batch-progress")).to_contain_text("Cancelled after", timeout=30_000)
    done = int(re.search(r"Cancelled after ([\d,]+) of 600", p.locator("#batch-progress").inner_text())
               .group(1).replace(",", ""))
    assert 0 < done < 600
    with p.expect_download() as download:
        p.locator("#batch-download").click()
    with open(download.value.path(), newline="") as f:
        assert len(list(csv.DictReader(f))) == done
    d.expect(p.locator("#batch-run")).to_be_enabled()

    # A run against an LM at chance, as the offline default's: it keeps the small model alone, says
    # what a real LM would change, and one click opens the Large model tab.
    d.tab(TABS[2])  # the same data and small models (the setup is kept), another LM
    p.get_by_label("Base URL").fill(app_url["chance"].url)
    p.get_by_label("Base URL").press("Tab")
    d.run()
    second = _wait_new_run(demo, before | {first})  # the status still reads the first run's "Run finished"
    d.expect(p.locator("#run-status")).to_contain_text("Run finished", timeout=60_000)
    d.tab(TABS[4])
    headroom = p.locator("#thr-headroom")
    d.expect(headroom).to_contain_text("kept the best small model alone", timeout=30_000)
    d.expect(headroom).to_contain_text("With a real LM")
    p.screenshot(path=str(ARTIFACTS / "thresholds-first-run.png"), full_page=False)
    p.locator("#thr-connect").click()
    d.expect(p.get_by_role("tab", name=TABS[2])).to_have_attribute("aria-selected", "true", timeout=10_000)
    d.tab(TABS[6])
    d.expect(p.locator("#res-headroom")).to_contain_text("kept the best small model alone", timeout=30_000)
    p.locator("#res-connect").click()
    d.expect(p.get_by_role("tab", name=TABS[2])).to_have_attribute("aria-selected", "true", timeout=10_000)

    # The two runs side by side.
    d.tab(TABS[6])
    p.get_by_role("button", name="Refresh list").click()
    d.expect(p.locator("#res-runs")).to_contain_text("164", timeout=20_000)  # the first run's LM calls
    d.expect(p.locator("#res-runs")).to_contain_text("test-model")
    picker = p.locator("#res-compare-pick input")
    for run_id in (first, second):
        picker.click()
        picker.fill(run_id[:6])  # the options are filtered by what is typed
        p.get_by_role("option", name=re.compile(re.escape(run_id[:6]))).click()
    picker.press("Escape")
    p.locator("#res-compare").click(position={"x": 5, "y": 5})  # away from the picker: its list closes
    table = p.locator("#res-compare")
    d.expect(table).to_contain_text("EA, test (95% CI)")
    d.expect(table).to_contain_text("LM alone, test")
    d.expect(table.locator("thead th")).to_have_count(3)  # the figure, then one column per run
    for k in (1, 2):  # each run's column is on screen, not scrolled out of the table
        header = table.locator("thead th", has_text=f"{k}. fruit")
        box, frame = header.bounding_box(), table.bounding_box()
        assert box and box["width"] > 80 and box["x"] + box["width"] <= frame["x"] + frame["width"] + 1, (k, box, frame)
    p.locator("#res-compare").scroll_into_view_if_needed()
    p.screenshot(path=str(ARTIFACTS / "results-compare.png"), full_page=False)
    d.screenshots("features")

    # A local server started from this page stops when the page closes (its session ends).
    d.tab(TABS[6])
    if not p.locator("#res-serve-start").is_visible():
        p.locator("#res-serve-box").get_by_text("Serve it").click()
    p.locator("#res-serve-start").click()
    d.expect(p.locator("#res-serve-status")).to_contain_text("Serving at http://127.0.0.1:", timeout=60_000)
    assert len(demo.studio.servers) == 1
    d.context.close()
    deadline = time.monotonic() + 90
    while len(demo.studio.servers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(demo.studio.servers) == 0, "the local server outlived the page that started it"
