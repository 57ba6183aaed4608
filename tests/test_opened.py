"""An opened run as plain data: what the app's tabs ask of a run, without reading its folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ea_core.opened import OpenedRun, past_runs
from ea_core.router import route
from ea_core.runfolder import read_json, write_json
from ea_core.runs import RunManager, owner_hash

RUN_ID = "fruit-run-0123456789abcdef"


@pytest.fixture
def opened(tmp_path, fruit_run):
    """The finished fruit run, copied under a runs folder as a run of owner "alice"."""
    runs = tmp_path / "runs"
    shutil.copytree(fruit_run[1], runs / RUN_ID)
    status = read_json(runs / RUN_ID / "status.json")
    write_json(runs / RUN_ID / "status.json", {**status, "run_id": RUN_ID, "owner": owner_hash("alice")})
    return RunManager(runs)


def test_only_its_owner_opens_a_run_and_lists_it(opened):
    assert OpenedRun.of_owner(opened, RUN_ID, "bob") is None
    assert OpenedRun.of_owner(opened, None, "alice") is None
    assert OpenedRun.of_owner(opened, RUN_ID, "alice") is not None
    assert [r.run_id for r in past_runs(opened, "alice")] == [RUN_ID] and past_runs(opened, "bob") == []


def test_a_finished_run_as_plain_data(opened, tmp_path):
    run = OpenedRun.of_owner(opened, RUN_ID, "alice")
    status = run.status()
    assert status.state == "done" and not run.can_resume(status)
    assert run.steps()[:2] == ["data", "ssm"] and run.steps()[-1] == "export"
    assert not run.lm_is_local() and not run.lm_needs_key()  # the scripted LM is on 127.0.0.1

    feed = run.feed()
    assert feed.poll() and not feed.poll()  # the whole log, then nothing new
    p = feed.progress
    assert p.final_state == "done" and all(p.step_state(s) == "done" for s in p.steps)
    rows = run.model_rows(p)
    state = run.state()
    assert [r.name for r in rows] == [r.name for r in state.ssms + state.assms]
    assert all(r.test_accuracy is not None and r.val_accuracy is not None for r in rows)

    ex = run.explorer("ea", True)
    assert run.explorer("ea", True) is ex and run.orders()[0] == "ea"
    sliders = [0.9, 0.8] + [0.5] * 6
    thresholds = run.thresholds("ea", True, sliders)
    assert thresholds == ex.thresholds(sliders)
    assert run.examples("ea", True, sliders, k=3)

    # The system at the sliders without its LM answers as the cached routing of its small models.
    system = run.system("ea", True, sliders, use_lm=False)
    small = route(state.stage_outputs("test", ("ssm", "assm")), thresholds[:len(system.stages)])
    assert np.array_equal(system.predict(state.task.test).pred, small.pred)
    assert run.system("ea", True, sliders, use_lm=False) is system  # models load once

    assert {r["system"] for r in run.results()} >= {"ea", "lm"}
    calls, usd = run.lm_spend()
    assert calls > 0 and usd > 0
    files = run.copy_results(tmp_path / "downloads")
    assert set(files) == {"results.csv", "results.json"} and all(f.parent == tmp_path / "downloads"
                                                                  for f in files.values())
    zip_path = run.bundle_zip(tmp_path / "bundle", "ea", True, sliders)
    assert zip_path.is_file() and zip_path.suffix == ".zip"


def test_an_old_event_log_still_replays_with_its_models_test_accuracies(opened):
    """A run folder from before events were typed: the same picture, test accuracies from the models."""
    path = opened.folder(RUN_ID) / "events.jsonl"
    typed = ("kind", "step_name", "state", "model", "fold", "folds", "lm_stage", "test_accuracy")
    old = [{k: v for k, v in json.loads(line).items() if k not in typed} for line in path.read_text().splitlines()]
    new = OpenedRun(opened, RUN_ID).feed()
    new.poll()
    path.write_text("".join(json.dumps(e) + "\n" for e in old))
    run = OpenedRun(opened, RUN_ID)
    replay = run.feed()
    replay.poll()
    assert (replay.progress.curves, replay.progress.done_steps, replay.progress.log) == (
        new.progress.curves, new.progress.done_steps, new.progress.log)
    assert [(r.name, r.test_accuracy) for r in run.model_rows(replay.progress)] == [
        (r.name, r.test_accuracy) for r in run.model_rows(new.progress)]
