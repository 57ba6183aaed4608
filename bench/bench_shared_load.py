"""A shared server under load, measured in real headless Chromium (Debian's chromium, Playwright).

Two parts (both by default); every size is a flag, and the bench prints what it ran:

* ``load``: one person moves a threshold slider and routes inputs in Try it while 0, 2 and 4
  other people have runs submitted (each presses Run on the offline default in their own browser;
  the server's queue runs as many at once as its limit allows, the rest wait). Slider -> routing
  figure redrawn (only a ``plotly_afterplot`` whose figure data is new counts: Gradio calls
  Plotly.react then Plotly.Plots.resize, two afterplots per update), p50 / p95; Try it -> trace
  shown, p50 / p95. Targets: slider p95 <= 300 ms, Try it p95 <= 300 ms under load. Also: the
  workers' CPU priority, and whether any worker was killed (a run ``failed``/``interrupted``).
  On a machine others load too, the levels differ in more than these runs; so at each level with
  a run going, alternating blocks with its worker stopped, at nice 10 (this server) and at nice 0
  (as before) compare under the same background load (``--ab-rounds``).
* ``sessions``: N browser sessions open the app, open a finished run in Thresholds and Try it
  (models loaded), and close; the app's RSS before and after (target: back within 10% of its
  start once the sessions are gone), with the server's live sessions counted.

    .venv/bin/python bench/bench_shared_load.py [--part load|sessions|both] [--others 0,2,4] [--moves 40]
        [--routes 20] [--n-val 2000] [--sessions 20] [--max-running 0 (default: from the cores)]
        [--finish (then wait for the others' runs: their throughput)] [--keep-other-pages]

The others' pages are closed once their runs are submitted (their browsers would be elsewhere;
the server still serves their runs); ``--keep-other-pages`` keeps them in this machine's browser.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_app_feel import CHROMIUM, FLAGS, MOVE_JS, pct, scripted_lm, set_number  # noqa: E402
from ea_core.runqueue import autogroup_nice  # noqa: E402

#: Route the Try it input and time until the trace shows a new answer.
ROUTE_JS = """async (text) => {
  const trace = document.querySelector('#try-trace');
  const before = trace.innerText;
  const box = document.querySelector('#try-text textarea');
  box.value = text;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, 50));
  const t0 = performance.now();
  document.querySelector('#try-route').click();
  while (trace.innerText === before || !trace.innerText.includes('Answer')) {
    await new Promise(r => requestAnimationFrame(r));
    if (performance.now() - t0 > 30000) return NaN;
  }
  return performance.now() - t0;
}"""


def rss_mb(pid: int | None = None) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def stop_workers(manager, grace_s: float = 15.0) -> None:
    """End every worker of the runs folder (the bench's runs must not outlive it)."""
    pids = []
    for path in manager.runs_dir.iterdir():
        if (path / "status.json").is_file():
            status = manager.status(path.name)
            if status.active and status.pid:
                pids.append(status.pid)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                             for p in pids):
            time.sleep(0.2)


def launch_app(runs_dir: Path, max_running: int):
    from app import LAUNCH_OPTIONS, build_app
    from ea_core.process import configure_process
    from ea_core.runqueue import QueueSettings

    configure_process()
    demo = build_app(runs_dir, queue=QueueSettings(max_running=max_running))
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    return demo, url


def new_page(context, url: str):
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(url)
    expect(page.locator("#data-message")).to_contain_text("Loaded", timeout=180_000)
    return page


def make_run(page, srv, n_val: int, ssm_head: bool = False) -> float:
    """A run made through the page: demo tweets (3,000 / n_val / 1,000), TF-IDF (and the MiniLM head
    if asked), the scripted LM. Seconds it took."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="1 · Data").click()
    page.get_by_text("Splits and sizes").click()
    set_number(page, "Max train examples (0 = all)", 3000)
    set_number(page, "Max validation", n_val)
    set_number(page, "Max test", 1000)
    page.get_by_role("button", name="Load data").click()
    expect(page.locator("#data-message")).to_contain_text("Loaded", timeout=120_000)
    if not ssm_head:
        page.get_by_role("tab", name="2 · Small models").click()
        page.locator("#ssm-choices label", has_text="head:minilm").click()
    page.get_by_role("tab", name="3 · Large model").click()
    page.locator("#lm-preset input").click()
    page.get_by_role("option", name="Other OpenAI-compatible endpoint").click()
    page.get_by_label("Base URL").fill(srv.url)
    page.get_by_label("Model", exact=True).fill("scripted")
    set_number(page, "number input for Parallel requests", 16)
    page.get_by_role("tab", name="4 · Train & mine").click()
    t0 = time.time()
    page.locator("#run-button").click()
    expect(page.locator("#run-status")).to_contain_text("Run finished", timeout=1_800_000)
    return time.time() - t0


def measure(page, moves: int, routes: int, rng: random.Random, warm: int = 3) -> tuple[list[float], list[float]]:
    """Slider moves and Try it routes, interleaved (the person at the page does both)."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="5 · Thresholds").click()
    expect(page.locator("#thr-slider-0")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(1000)
    sliders = [t for t in [page.evaluate(MOVE_JS, round(rng.uniform(0.4, 1.0), 3)) for _ in range(moves + warm)]
               [warm:] if t == t]  # NaN: no new figure within 30 s
    page.get_by_role("tab", name="6 · Try it").click()
    expect(page.locator("#try-text")).to_be_visible(timeout=60_000)
    texts = [f"tweet {i}: {rng.choice(['great day', 'awful service', 'meh', 'love it', 'so bad'])} {i}"
             for i in range(routes + 2)]
    routed = [page.evaluate(ROUTE_JS, t) for t in texts][min(warm, 2):]
    return sliders, [r for r in routed if r == r]


def set_priority(pids: list[int], nice: int) -> None:
    """Every thread of the workers `pids` (and their scheduling groups) at `nice`; raising a
    priority back needs root, which this bench's A/B comparison uses to show the workers as they
    ran before the queue lowered them."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            except OSError:
                pass
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        except OSError:
            pass


def compare(page, pids: list[int], rounds: int, moves: int, routes: int, rng: random.Random) -> dict[str, tuple]:
    """The same person's slider and Try it times with the running workers stopped (SIGSTOP), at
    this server's nice (+10, in their own scheduling group too) and at nice 0 (as before the queue),
    in alternating blocks: the other load on the machine is the same for all three."""
    got: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("stopped", "nice 10", "nice 0")}
    for _ in range(rounds):
        for condition in got:
            if condition == "stopped":
                for pid in pids:
                    os.killpg(pid, signal.SIGSTOP)
            else:
                set_priority(pids, 10 if condition == "nice 10" else 0)
            try:
                sliders, routed = measure(page, moves, routes, rng, warm=1)
            finally:
                for pid in pids:
                    os.killpg(pid, signal.SIGCONT)
                set_priority(pids, 10)
            got[condition][0].extend(sliders)
            got[condition][1].extend(routed)
    return got


def summary(values: list[float]) -> str:
    if not values:
        return "no measurement"
    return f"p50 {statistics.median(values):.0f} ms, p95 {pct(values, 0.95):.0f} ms, max {max(values):.0f} ms"


def part_load(browser, levels: list[int], moves: int, routes: int, n_val: int, max_running: int,
              keep_pages: bool = False, finish: bool = False, ab_rounds: int = 0) -> None:
    srv = scripted_lm(n_val)
    with tempfile.TemporaryDirectory() as tmp:
        demo, url = launch_app(Path(tmp) / "runs", max_running)
        manager = demo.studio.manager
        try:
            _load_levels(browser, demo, url, srv, levels, moves, routes, n_val, keep_pages, finish, ab_rounds)
        finally:
            stop_workers(manager)
            demo.close()
    srv.close()


def _load_levels(browser, demo, url, srv, levels, moves, routes, n_val, keep_pages, finish, ab_rounds) -> None:
    from playwright.sync_api import expect

    manager = demo.studio.manager
    limits = manager.queue.settings()
    print(f"queue: {limits.max_running} run(s) at once ({limits.max_running_per_owner} per browser), workers "
          f"nice +{limits.worker_nice}; slider user's run: 3,000 / {n_val:,} / 1,000 tweets, TF-IDF, scripted LM")
    me = browser.new_context(viewport={"width": 1280, "height": 800})
    page = new_page(me, url)
    print(f"slider user's run made through the page in {make_run(page, srv, n_val):.0f} s", flush=True)
    mine = {p.name for p in manager.runs_dir.iterdir() if (p / "status.json").is_file()}
    others: list = []
    rng = random.Random(1)
    submitted = None

    def other_runs():
        return [manager.status(p.name) for p in manager.runs_dir.iterdir()
                if (p / "status.json").is_file() and p.name not in mine]

    for level in levels:
        while len(others) < level:  # another person presses Run on the offline default
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            other = new_page(ctx, url)
            other.get_by_role("tab", name="4 · Train & mine").click()
            other.locator("#run-button").click()
            expect(other.locator("#run-status")).to_contain_text(re.compile("Running|Queued"), timeout=60_000)
            submitted = submitted or time.time()
            if not keep_pages:  # their browsers are on their own machines: only the server's work is here
                other.close()
            others.append(ctx)
        if level:  # measure while a run is in its heavy part (models training, the local LM)
            page.wait_for_timeout(20_000)
        runs = other_runs()
        states = {s: sum(1 for r in runs if r.state == s) for s in ("running", "queued")}
        nice = [(psutil.Process(r.pid).nice(), autogroup_nice(r.pid)) for r in runs
                if r.state == "running" and r.pid and psutil.pid_exists(r.pid)]
        sliders, routed = measure(page, moves, routes, rng)
        print(f"{level} other users with runs submitted ({states['running']} running, {states['queued']} queued"
              f"{', worker (nice, group nice) ' + str(nice) if nice else ''}; load average "
              f"{os.getloadavg()[0]:.1f}): slider -> redrawn ({len(sliders)} moves) "
              f"{summary(sliders)}; Try it ({len(routed)} routes) {summary(routed)}", flush=True)
        pids = [r.pid for r in runs if r.state == "running" and r.pid and psutil.pid_exists(r.pid)]
        if ab_rounds and pids:
            for condition, (sl, ro) in compare(page, pids, ab_rounds, max(moves // 4, 5), max(routes // 4, 3),
                                               rng).items():
                print(f"  A/B, running worker {condition:8s}: slider {summary(sl)} ({len(sl)}); Try it {summary(ro)} "
                      f"({len(ro)}); load average {os.getloadavg()[0]:.1f}", flush=True)
    if finish and submitted is not None:  # throughput: the others' runs, first submitted to last finished
        while any(r.active for r in other_runs()):
            time.sleep(5)
        runs = other_runs()
        took = time.time() - submitted
        done = sum(1 for r in runs if r.state == "done")
        each = [r.elapsed_s for r in runs if r.elapsed_s]
        print(f"the others' {len(runs)} runs: {done} done in {took / 60:.1f} min from the first Run "
              f"({took / 60 / max(done, 1):.1f} min per run; each ran {min(each) / 60:.1f}-{max(each) / 60:.1f} min)")
    killed = [r for r in other_runs() if r.state in ("failed", "interrupted")]
    print(f"runs failed or interrupted (a worker killed?): {len(killed)}"
          + "".join(f"\n  {r.state}: {r.message}" for r in killed))
    for ctx in others:
        ctx.close()
    me.close()


def part_sessions(browser, sessions: int, n_val: int, max_running: int) -> None:
    """N sessions of one browser (one owner): each opens the finished run, Thresholds, routes an
    input in Try it (the run's models loaded for that session), and closes."""
    from playwright.sync_api import expect

    srv = scripted_lm(n_val)
    with tempfile.TemporaryDirectory() as tmp:
        demo, url = launch_app(Path(tmp) / "runs", max_running)
        studio = demo.studio
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        first = new_page(ctx, url)
        took = make_run(first, srv, n_val, ssm_head=True)
        print(f"run (TF-IDF + MiniLM head, scripted LM) made through the page in {took:.0f} s", flush=True)
        first.close()

        def settle(seconds: float = 20.0) -> float:
            deadline = time.time() + seconds
            while time.time() < deadline and studio.n_sessions:
                time.sleep(0.5)
            gc.collect()
            time.sleep(1.0)
            return rss_mb()

        def one_session(k: int) -> None:
            page = new_page(ctx, url)
            page.get_by_role("tab", name="5 · Thresholds").click()
            expect(page.locator("#thr-slider-0")).to_be_visible(timeout=60_000)
            page.evaluate(MOVE_JS, 0.5 + k / (4 * sessions))
            page.get_by_role("tab", name="6 · Try it").click()
            page.evaluate(ROUTE_JS, f"session {k}: what a lovely day")
            page.close()

        one_session(-1)  # warm-up: libraries, models and code paths loaded once for the process
        start = settle()
        print(f"app RSS after one session came and went: {start:.0f} MB", flush=True)
        peak = start
        for k in range(sessions):
            one_session(k)
            peak = max(peak, rss_mb())
        end = settle(60.0)
        print(f"{sessions} sessions opened and closed: app RSS {start:.0f} -> peak {peak:.0f} -> {end:.0f} MB "
              f"({100 * (end - start) / start:+.1f}%; target within 10%); live sessions left: {studio.n_sessions}")
        ctx.close()
        demo.close()
    srv.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("load", "sessions", "both"), default="both")
    ap.add_argument("--others", default="0,2,4", help="other users with runs submitted, per measurement")
    ap.add_argument("--moves", type=int, default=40)
    ap.add_argument("--routes", type=int, default=20)
    ap.add_argument("--n-val", type=int, default=2000, help="validation examples of the slider user's run")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--max-running", type=int, default=0, help="runs at once (0: the server's default)")
    ap.add_argument("--ab-rounds", type=int, default=3,
                    help="under load, rounds of blocks with the running worker stopped / at nice 10 / at nice 0 "
                         "(the same background load for all three; 0: none)")
    ap.add_argument("--finish", action="store_true",
                    help="after measuring, wait for the others' runs and report their throughput (long)")
    ap.add_argument("--keep-other-pages", action="store_true",
                    help="keep the other users' pages open in this machine's browser (default: closed once their "
                         "runs are submitted; their browsers would be elsewhere)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GB; chromium {CHROMIUM}; "
          f"{vars(args)}", flush=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        if args.part in ("sessions", "both"):
            part_sessions(browser, args.sessions, args.n_val, args.max_running)
        if args.part in ("load", "both"):
            part_load(browser, [int(x) for x in args.others.split(",")], args.moves, args.routes, args.n_val,
                      args.max_running, args.keep_other_pages, args.finish, args.ab_rounds)
        browser.close()


if __name__ == "__main__":
    main()
