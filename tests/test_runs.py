"""Runs in the background: worker processes, status files, cancel, kill, resume, owners, the lock.

Real worker processes (``python -m ea_core.worker``) run the fruit task against a scripted
OpenAI-compatible server on 127.0.0.1; the key goes to them through a pipe only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ea_core.errors import ConfigError, RunBusy
from ea_core.runconfig import RunConfig
from ea_core.runfolder import RunFolder
from ea_core.runs import RunManager, execute_run, read_status
from ea_core.runstate import open_run
from tests.fruit import LABELS, calls_per_item, lm_answer, make_task
from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-RUNSECRET-91c2f7a0b3d4e5f6a7b8"


@pytest.fixture
def fruit(tmp_path):
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    servers = []

    def start(**options) -> ScriptedServer:
        srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer, **options).start()
        servers.append(srv)
        return srv

    yield data, start
    for srv in servers:
        srv.close()


def config(data: Path, srv: ScriptedServer, **kw) -> RunConfig:
    base = dict(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                oof_folds=3, concurrency=2, max_lm_rate=0.5)
    base.update(kw)
    return RunConfig(**base)


def wait(manager: RunManager, run_id: str, until, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = manager.status(run_id)
        if until(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {manager.status(run_id)}")


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_background_run_finishes_keeps_the_key_in_memory_and_reopens_without_it(tmp_path, fruit):
    data, start = fruit
    srv = start(latency_s=0.05)
    manager = RunManager(tmp_path / "runs")
    run_id = manager.launch(config(data, srv), owner="alice", api_key=SECRET, title="fruit")
    assert len(run_id) >= 20 and manager.runs("alice")[0].run_id == run_id

    status = wait(manager, run_id, lambda s: s.state == "running")
    proc = psutil.Process(status.pid)
    assert SECRET not in " ".join(proc.cmdline())  # not on the command line
    assert all(SECRET not in v for v in proc.environ().values())  # nor in the environment
    status = wait(manager, run_id, lambda s: not s.active)
    assert status.state == "done", status.message

    folder = manager.folder(run_id)
    assert events(folder)[-1]["stage"] == "status" and events(folder)[-1]["message"].startswith("done")
    # The key reached the endpoint (as a Bearer token) ...
    assert any(r.headers.get("authorization") == f"Bearer {SECRET}" for r in srv.requests)
    # ... and no file of the run, nor the shared answer cache, holds it.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # Reopened without a key: the results, the mining and the LM answers are all there.
    state = open_run(folder)
    assert {r["system"] for r in state.rows} >= {"tfidf", "lm", "ea", "specific_layer"}
    assert state.mining is not None and state.lm_answers["test"]["label"].shape == (len(state.task.test),)
    assert state.tuning["ea"]["stages"] == [s.name for s in state.stage_outputs("val")]


@pytest.mark.slow
def test_cancel_stops_the_worker_keeps_what_was_paid_and_resume_finishes(tmp_path, fruit):
    data, start = fruit
    srv = start(latency_s=0.3)  # slow answers: mining takes a while
    manager = RunManager(tmp_path / "runs")
    run_id = manager.launch(config(data, srv, concurrency=1), owner="alice", api_key=SECRET)
    folder = manager.folder(run_id)
    wait(manager, run_id, lambda s: any(e["stage"] == "lm:mine" and e.get("calls") for e in events(folder))
         if (folder / "events.jsonl").exists() else False)
    pid = manager.status(run_id).pid
    status = manager.kill(run_id, "alice", grace_s=30)
    assert status.state == "cancelled"
    deadline = time.time() + 20
    while psutil.pid_exists(pid) and time.time() < deadline:  # the worker exits after writing its status
        manager.status(run_id)  # (and is reaped by the manager that started it)
        time.sleep(0.1)
    assert not psutil.pid_exists(pid)
    assert events(folder)[-1]["message"].startswith("cancelled")
    paid_before = srv.count
    assert paid_before > 0

    srv.latency_s = 0.0  # the rest of the run need not be slow
    manager.start(run_id, "alice", SECRET)
    status = wait(manager, run_id, lambda s: not s.active)
    assert status.state == "done", status.message
    # What the cancelled run was answered came from the cache: at most the one request in flight at the
    # cancel (concurrency 1) was asked again.
    assert sum(n - 1 for n in calls_per_item(srv).values()) <= 1


@pytest.mark.slow
def test_a_killed_worker_is_reported_interrupted_with_a_terminal_event(tmp_path, fruit):
    data, start = fruit
    srv = start(latency_s=0.3)
    manager = RunManager(tmp_path / "runs")
    run_id = manager.launch(config(data, srv, concurrency=1), owner="alice", api_key=SECRET)
    status = wait(manager, run_id, lambda s: s.state == "running")
    os.killpg(status.pid, signal.SIGKILL)
    status = wait(manager, run_id, lambda s: not s.active, timeout=30)
    assert status.state == "interrupted" and "Resume" in status.message
    assert events(manager.folder(run_id))[-1]["message"].startswith("interrupted")
    assert not RunFolder(manager.folder(run_id)).is_locked()  # the kernel released the dead worker's lock


def test_a_session_sees_and_touches_only_its_own_runs(tmp_path, fruit):
    data, start = fruit
    srv = start()
    manager = RunManager(tmp_path / "runs")
    run_id = manager.create(config(data, srv), owner="alice")
    assert [s.run_id for s in manager.runs("alice")] == [run_id]
    assert manager.runs("bob") == [] and manager.runs("") == []
    assert manager.owns(run_id, "alice") and not manager.owns(run_id, "bob")
    for call in (lambda: manager.start(run_id, "bob"), lambda: manager.cancel(run_id, "bob"),
                 lambda: manager.check_owner(run_id, "bob")):
        with pytest.raises(ConfigError, match="No such run"):
            call()
    for bad in ("../x", "a/b", "", "short", "x" * 100):
        with pytest.raises(ConfigError):
            manager.folder(bad)
    # The status file records a hash of the owner, not the owner token itself.
    assert "alice" not in (manager.folder(run_id) / "status.json").read_text()


@pytest.mark.slow
def test_one_writer_per_run_folder(tmp_path, fruit):
    data, start = fruit
    srv = start()
    out = tmp_path / "runs" / "one"
    holder = RunFolder(out)
    holder.lock()
    with pytest.raises(RunBusy, match="another run"):
        execute_run(config(data, srv), out, api_key=SECRET)
    assert read_status(out) is None  # the busy folder's status is its writer's, left alone
    # The CLI says so too, with exit code 2 and no traceback.
    res = subprocess.run([sys.executable, "-m", "ea_core", "train", "--data", str(data), "--ssm", "tfidf", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "being written by another run" in res.stderr and "Traceback" not in res.stderr
    holder.unlock()
    state = execute_run(config(data, srv, lm=None), out)
    assert read_status(out).state == "done" and state.rows
