"""The run queue of a runs folder: limits, first come first served, memory admission, Cancel while
queued, a restarted manager keeping the queue, lower CPU priority, disk quotas.

The admission rules are tested on queue entries held by live stand-in processes (fast); the
rest with real worker processes (``python -m ea_core.worker``) on the fruit task, against a
scripted OpenAI-compatible server on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ea_core import runqueue
from ea_core.errors import ConfigError, RunBusy
from ea_core.quotas import DiskQuota
from ea_core.runconfig import RunConfig
from ea_core.runqueue import (Entry, Place, QueueSettings, RunQueue, autogroup_nice, default_max_running,
                              estimate_memory_mb)
from ea_core.runs import RunManager, owner_hash
from tests.fruit import LABELS, lm_answer, make_task
from tests.scripted_server import ScriptedServer


@pytest.fixture
def sleepers():
    """Live stand-in processes (a queue entry needs a live pid)."""
    procs = []

    def start() -> tuple[int, float]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        procs.append(proc)
        return proc.pid, psutil.Process(proc.pid).create_time()

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _entry(queue: RunQueue, run_id: str, owner: str, pid_of, *, at: float, state: str = "queued", mb: float = 100,
           seconds: float = 120) -> Entry:
    pid, started = pid_of()
    entry = Entry(run_id, owner, at, state, pid, started, mb, seconds, at if state == "running" else None)
    queue._write(entry)
    return entry


def test_the_default_limit_follows_the_cores_and_memory():
    assert default_max_running(cpus=2, free_mb=20_000) == 1
    assert default_max_running(cpus=16, free_mb=64_000) == 8
    assert default_max_running(cpus=16, free_mb=4_000) == 2  # memory for two typical runs
    assert default_max_running(cpus=1, free_mb=500) == 1  # never none
    s = QueueSettings(max_running=4).resolved()
    assert (s.max_running, s.max_running_per_owner) == (4, 2)


def test_first_come_first_served_within_the_global_and_per_owner_limits(tmp_path, sleepers):
    q = RunQueue(tmp_path, QueueSettings(max_running=2, max_running_per_owner=1))
    _entry(q, "a-running-run-000001", "alice", sleepers, at=1.0, state="running")
    _entry(q, "a-queued-run-0000002", "alice", sleepers, at=2.0)
    _entry(q, "b-queued-run-0000003", "bob", sleepers, at=3.0)
    _entry(q, "c-queued-run-0000004", "carol", sleepers, at=4.0)
    # alice is at her limit: bob's run, though later, takes the free place; carol's waits for it.
    turn = q.try_admit("a-queued-run-0000002")
    assert not turn.admitted and turn.why == "your other run first"
    assert not q.try_admit("c-queued-run-0000004").admitted
    assert q.try_admit("b-queued-run-0000003").admitted
    assert not q.try_admit("c-queued-run-0000004").admitted  # both places taken now
    place = q.place("c-queued-run-0000004")
    assert isinstance(place, Place) and place.position == 2 and place.text().startswith("queued: 2nd, ~")
    assert q.place("a-queued-run-0000002").position == 1
    assert q.place("b-queued-run-0000003") is None  # running, not queued
    # An entry whose process is gone leaves the queue when seen.
    (tmp_path / ".queue" / "runs" / "dead-run-00000000005.json").write_text(
        '{"run_id": "dead-run-00000000005", "owner": "dave", "queued_at": 0.5, "pid": 999999999}')
    assert "dead-run-00000000005" not in {e.run_id for e in q.entries()}


def test_the_wait_estimate_counts_the_running_and_earlier_runs(tmp_path, sleepers):
    q = RunQueue(tmp_path, QueueSettings(max_running=1))
    now = time.time()
    _entry(q, "running-run-00000001", "alice", sleepers, at=now - 60, state="running", seconds=180)
    _entry(q, "queued-run-000000002", "bob", sleepers, at=now - 30, seconds=120)
    _entry(q, "queued-run-000000003", "carol", sleepers, at=now - 10, seconds=120)
    first, second = q.place("queued-run-000000002"), q.place("queued-run-000000003")
    assert first.position == 1 and first.wait_s == pytest.approx(120, abs=5)  # 180 s, 60 s done
    assert second.position == 2 and second.wait_s == pytest.approx(240, abs=5)
    assert second.text() == "queued: 2nd, ~4 min"


def test_admission_waits_for_memory_and_refuses_what_cannot_fit(tmp_path, sleepers, monkeypatch):
    q = RunQueue(tmp_path, QueueSettings(max_running=2, max_running_per_owner=2, memory_margin_mb=0))
    monkeypatch.setattr(runqueue, "available_mb", lambda: 3000.0)
    _entry(q, "running-run-00000001", "alice", sleepers, at=1.0, state="running", mb=2500)
    _entry(q, "big-queued-run-00002", "bob", sleepers, at=2.0, mb=2000)
    # The running worker will still grow to ~2.5 GB: 2 GB more does not fit in 3 GB free; it waits.
    turn = q.try_admit("big-queued-run-00002")
    assert not turn.admitted and turn.refused is None and "memory" in turn.why
    assert "memory" in q.place("big-queued-run-00002").text()
    # Nothing running and still too little free memory: refused with the sizes, not left to the kernel.
    q.remove("running-run-00000001")
    monkeypatch.setattr(runqueue, "available_mb", lambda: 1500.0)
    turn = q.try_admit("big-queued-run-00002")
    assert turn.refused and "needs about 2.0 GB" in turn.refused and "1.5 GB is free" in turn.refused
    # A run bigger than the whole machine is refused when it is submitted.
    with pytest.raises(ConfigError, match="in all"):
        q.enqueue("huge-run-00000000003", "bob", memory_mb=10**9)


def test_an_owner_may_keep_only_so_many_runs_waiting(tmp_path):
    q = RunQueue(tmp_path, QueueSettings(max_running=1, max_queued_per_owner=2))
    q.enqueue("waiting-run-00000001", "alice")
    q.enqueue("waiting-run-00000002", "alice")
    with pytest.raises(ConfigError, match="2 runs waiting"):
        q.enqueue("waiting-run-00000003", "alice")
    q.enqueue("waiting-run-00000004", "bob")  # another owner's limit is their own


def test_estimates_come_from_what_the_same_settings_took(tmp_path):
    q = RunQueue(tmp_path)
    assert q.estimates("abc", 1234.0) == (runqueue.DEFAULT_RUN_S, 1234.0)
    q.record("abc", "done", 100.0, 900.0)
    q.record("abc", "done", 140.0, 1100.0)
    q.record("other", "done", 1000.0, 5000.0)
    q.record("abc", "failed", 5.0, 300.0)
    seconds, mb = q.estimates("abc", 1234.0)
    assert seconds == 120.0 and mb == pytest.approx(1.1 * 1000.0)
    cfg = RunConfig(data="x.csv", ssm=["tfidf", "head:minilm"], lm="local")
    assert 1200 < estimate_memory_mb(cfg) < 3000  # the offline demo measures 1.8-1.9 GB
    assert estimate_memory_mb(RunConfig(data="x.csv", ssm=["finetune:roberta"], lm="openai")) > 2500


def test_the_command_line_takes_its_turn_in_the_same_queue(tmp_path, sleepers):
    """`run --out runs/x` waits while an app's run holds the only slot of runs/, says where it stands,
    then runs; its entry leaves the queue and its time joins the history. Ctrl-C while waiting leaves."""
    import threading

    queue = RunQueue(tmp_path / "runs", QueueSettings(max_running=1))
    pid, started = sleepers()
    _entry(queue, "app-run", owner_hash("alice"), lambda: (pid, started), at=time.time(), state="running")
    said, entered = [], threading.Event()
    cfg = RunConfig(data="demo:tweets", ssm=["tfidf"])

    def cli_run():
        with runqueue.turn_in_queue(tmp_path / "runs" / "cli-run", cfg, on_wait=said.append):
            entered.set()
            assert [e.state for e in queue.entries() if e.run_id == "cli-run"] == ["running"]

    worker = threading.Thread(target=cli_run)
    worker.start()
    time.sleep(2.0)
    assert not entered.is_set() and said and said[0].startswith("queued: 1st")
    assert [e.owner for e in queue.entries() if e.run_id == "cli-run"] == [runqueue.cli_owner()]
    psutil.Process(pid).kill()  # the app's run ends: the command line's turn
    worker.join(timeout=10)
    assert entered.is_set() and not worker.is_alive()
    assert [e.run_id for e in queue.entries()] == []

    def interrupted():
        raise KeyboardInterrupt

    pid, started = sleepers()
    _entry(queue, "app-run-2", owner_hash("alice"), lambda: (pid, started), at=time.time(), state="running")
    with pytest.raises(KeyboardInterrupt):
        with runqueue.turn_in_queue(tmp_path / "runs" / "cli-run-2", cfg, on_wait=lambda _: interrupted()):
            pass
    assert [e.run_id for e in queue.entries()] == ["app-run-2"]


# -- real workers ---------------------------------------------------------------------------------

@pytest.fixture
def fruit(tmp_path):
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    yield data, srv
    srv.close()


def _config(data: Path, srv: ScriptedServer) -> RunConfig:
    return RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                     oof_folds=2, concurrency=1, max_lm_rate=0.5)


def _wait(manager: RunManager, run_id: str, until, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = manager.status(run_id)
        if until(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {manager.status(run_id)}")


@pytest.mark.slow
def test_runs_over_the_limit_queue_start_in_order_and_cancel_while_queued(tmp_path, fruit):
    data, srv = fruit
    srv.latency_s = 0.2  # the first run's LM calls keep it running while the others queue
    manager = RunManager(tmp_path / "runs", queue=QueueSettings(max_running=1))
    first = manager.launch(_config(data, srv), "alice", "sk-a")
    _wait(manager, first, lambda s: s.state == "running")
    second = manager.launch(_config(data, srv), "bob", "sk-b")
    third = manager.launch(_config(data, srv), "carol", "sk-c")
    fourth = manager.launch(_config(data, srv), "bob", "sk-b")
    statuses = [manager.status(r) for r in (second, third, fourth)]
    assert [s.state for s in statuses] == ["queued"] * 3
    assert [s.message.split(",")[0] for s in statuses] == ["queued: 1st", "queued: 2nd", "queued: 3rd"]
    # Each owner's list holds their runs only; the message says where theirs stand, nothing of others'.
    assert {s.run_id for s in manager.runs("carol")} == {third}
    # A queued worker waits at a lower CPU priority than this process, and costs little memory.
    waiting = psutil.Process(manager.status(third).pid)
    assert waiting.nice() > psutil.Process().nice()
    # Where the kernel shares the CPU by session (both groups readable), the worker's session is niced too.
    group, mine = autogroup_nice(waiting.pid), autogroup_nice(os.getpid())
    assert group is None or mine is None or group > mine
    assert waiting.memory_info().rss < 150 * 2**20

    # Cancel while queued: the worker leaves the queue, the run says so, and the others move up.
    manager.cancel(third, "carol")
    status = _wait(manager, third, lambda s: not s.active, timeout=30)
    assert status.state == "cancelled" and "queued" in status.message
    assert not psutil.pid_exists(waiting.pid) or waiting.status() == psutil.STATUS_ZOMBIE
    assert manager.status(fourth).message.startswith("queued: 2nd")

    srv.latency_s = 0.0
    done = [_wait(manager, r, lambda s: not s.active) for r in (first, second, fourth)]
    assert [s.state for s in done] == ["done"] * 3, [s.message for s in done]
    starts = [s.started for s in done]
    assert starts == sorted(starts)  # first come, first served
    for a, b in zip(done, done[1:]):  # one at a time: each started after the one before ended
        assert b.started >= a.ended - 1.0
    # Resume puts a cancelled-while-queued run back in the queue, and it runs.
    manager.start(third, "carol", "sk-c")
    assert _wait(manager, third, lambda s: not s.active).state == "done"


@pytest.mark.slow
def test_a_restarted_manager_keeps_the_queue(tmp_path, fruit):
    data, srv = fruit
    srv.latency_s = 0.2
    runs = tmp_path / "runs"
    before = RunManager(runs, queue=QueueSettings(max_running=1))
    first = before.launch(_config(data, srv), "alice", "sk-a")
    _wait(before, first, lambda s: s.state == "running")
    second = before.launch(_config(data, srv), "bob", "sk-b")
    del before  # the server goes away; its workers (waiting or running) do not

    after = RunManager(runs)  # a new server on the same folder: the queue's settings are the folder's
    assert after.queue.settings().max_running == 1
    assert after.status(first).state == "running"
    queued = after.status(second)
    assert queued.state == "queued" and queued.message.startswith("queued: 1st")
    srv.latency_s = 0.0
    a, b = (_wait(after, r, lambda s: not s.active) for r in (first, second))
    assert (a.state, b.state) == ("done", "done") and b.started >= a.ended - 1.0
    # bob's key travelled with his waiting worker: his run called the LM with it.
    assert any(r.headers.get("authorization") == "Bearer sk-b" for r in srv.requests)


@pytest.mark.slow
def test_disk_quota_refuses_new_runs_until_old_ones_are_removed_and_old_runs_expire(tmp_path, fruit):
    data, srv = fruit
    manager = RunManager(tmp_path / "runs", quota=DiskQuota(per_owner_mb=0.05))
    run_id = manager.launch(_config(data, srv), "alice", "sk-a")
    assert _wait(manager, run_id, lambda s: not s.active).state == "done"
    assert manager.disk_use("alice") > 0.05 * 2**20 and manager.disk_use("bob") == 0
    with pytest.raises(ConfigError, match="remove old runs"):
        manager.create(_config(data, srv), "alice")
    manager.create(_config(data, srv), "bob")  # another owner's quota is their own
    with pytest.raises(ConfigError, match="No such run"):
        manager.remove(run_id, "bob")
    manager.remove(run_id, "alice")
    assert not manager.folder(run_id).exists()
    manager.create(_config(data, srv), "alice")

    aged = RunManager(tmp_path / "runs", quota=DiskQuota(max_age_days=1))
    old = aged.launch(_config(data, srv), "carol", "sk-c")
    assert _wait(aged, old, lambda s: not s.active).state == "done"
    assert old in aged.expire(now=time.time() + 2 * 86400, every_s=0)
    assert not aged.folder(old).exists()


def test_a_queued_run_cannot_be_removed_or_started_twice(tmp_path, fruit):
    data, srv = fruit
    manager = RunManager(tmp_path / "runs", queue=QueueSettings(max_running=1))
    run_id = manager.create(_config(data, srv), "alice")
    manager.queue.enqueue(run_id, owner_hash("alice"))  # as `start` does, without a worker yet
    with pytest.raises(RunBusy):
        manager.remove(run_id, "alice")
    manager.queue.remove(run_id)
    assert os.path.isdir(manager.folder(run_id))


def test_the_cli_queues_where_a_queue_is_and_when_asked(tmp_path, fruit, monkeypatch):
    """`run --out runs/x`: in a plain folder nothing queue-like is written (auto); `--queue always`
    takes a turn (and records what the run took); then auto finds the queue and takes a turn too."""
    from ea_core.cli import main

    data, srv = fruit
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli")
    args = ["run", "--data", str(data), "--ssm", "tfidf", "--lm", "openai", "--lm-model", "test-model",
            "--lm-base-url", srv.url, "--oof-folds", "2", "--price-in", "0.15", "--price-out", "0.6"]
    runs = tmp_path / "runs"
    assert main(args + ["--out", str(runs / "plain")]) == 0
    assert not (runs / ".queue").exists()
    assert main(args + ["--out", str(runs / "queued"), "--queue", "always"]) == 0
    assert main(args + ["--out", str(runs / "found")]) == 0
    history = (runs / ".queue" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2 and all('"state": "done"' in line for line in history)
    assert RunQueue(runs).entries() == []
