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


def test_what_mining_found_filtered_and_as_a_csv(opened, tmp_path):
    import csv

    run = OpenedRun.of_owner(opened, RUN_ID, "alice")
    counts = run.mined_counts()
    every = run.mined("all")
    underfit, fixed = run.mined("underfit"), run.mined("lm_fixed")
    assert len(every) == counts["sent"] > 0 and len(underfit) == counts["underfit"] and len(fixed) == counts["lm_fixed"]
    assert {r["outcome"] for r in underfit} == {"underfit"} and all(r["lm"] == r["gold"] for r in fixed)
    assert all(r["tfidf"] != r["gold"] for r in every)  # mined: every small model wrong (out of fold)
    path = run.mined_csv("underfit", tmp_path / "dl")
    with open(path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert path.parent == tmp_path / "dl" and len(saved) == len(underfit)
    assert list(saved[0]) == ["row", "text", "gold", "tfidf", "lm", "outcome"]
    with pytest.raises(Exception, match="Unknown filter"):
        run.mined("everything")


def test_past_runs_carry_what_a_comparison_shows(opened):
    (past,) = past_runs(opened, "alice")
    assert past.run_id == RUN_ID and past.state == "done" and past.data == "fruit" and past.models == ["tfidf"]
    assert past.lm.startswith("test-model @ 127.0.0.1") and not past.lm_free and past.max_lm_rate == 0.5
    assert past.sizes == {"train": 252, "val": 54, "test": 54}
    acc, ci = past.accuracy("ea")
    assert acc is not None and ci[0] <= acc <= ci[1]
    assert past.best_ssm == "tfidf" and past.accuracy("best_ssm")[0] == past.rows["tfidf"]["test_accuracy"]
    assert past.accuracy("lm")[0] is not None and past.accuracy("nothing") == (None, None)
    assert past.lm_calls == 164 and past.lm_cost_usd > 0  # mining 56 + validation 54 + test 54


def _inputs_file(path, n, start=5000):
    """A CSV of texts the run never saw (so the LM is really called), with gold labels; every third
    names no fruit (the small model is unsure of it)."""
    from tests.fruit import FRUIT, LABELS

    lines = ["text,label"] + [f"{FRUIT[LABELS[i % 3]] if i % 3 else 'plain'} new basket item {start + i},{LABELS[i % 3]}"
                              for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_file_of_inputs_is_predicted_with_a_route_per_row_and_can_be_cancelled(opened, tmp_path, fruit_run):
    import csv

    from ea_core.opened import BatchPrediction, read_batch_inputs

    run = OpenedRun.of_owner(opened, RUN_ID, "alice")
    task = run.state().task
    inputs, warnings = read_batch_inputs(_inputs_file(tmp_path / "in.csv", 30), labels=task.labels,
                                         text_col=task.text_col)
    assert len(inputs) == 30 and warnings == [] and (inputs.labels >= 0).all()
    sliders = [0.9, 1.0]  # the augmented model never answers: what tfidf is unsure of goes to the LM
    system = run.system("ea", True, sliders, use_lm=True, own=True)
    assert system is not run.system("ea", True, [0.5, 0.5], use_lm=True)  # a slider move does not reach it
    assert [s.threshold for s in system.stages] == run.thresholds("ea", True, sliders)
    asked = fruit_run[2].count
    job = BatchPrediction(system, inputs, tmp_path / "out" / "p.csv", chunk_rows=8)
    steps = list(job.chunks())
    assert job.state == "done" and job.done == 30 and len(steps) == 1 + 4 + 1  # start, 4 chunks, end
    with open(job.out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and list(rows[0]) == ["text", "prediction", "answered_by", "stage", "confidence", "route",
                                                 "gold", "right"]
    for row in rows:
        assert row["answered_by"] in ("tfidf", "lm") and row["route"].split(" → ")[-1].startswith(row["answered_by"])
        assert row["stage"] == ("1" if row["answered_by"] == "tfidf" else "3")
        assert row["route"].startswith("tfidf ") and "assm:tfidf" in row["route"] if row["answered_by"] == "lm" else True
    by_lm = sum(r["answered_by"] == "lm" for r in rows)
    assert by_lm > 0 and fruit_run[2].count - asked == by_lm  # the LM answered what reached it, and only that
    assert job.shares() == {"tfidf": 30 - by_lm, "assm:tfidf": 0, "lm": by_lm} and job.known == 30
    assert job.correct == sum(r["right"] == "true" for r in rows) and len(job.preview) == 30

    # Cancelled after its first chunk: the file holds the rows done, nothing more is predicted.
    job = BatchPrediction(system, inputs, tmp_path / "out" / "q.csv", chunk_rows=10)
    steps = job.chunks()
    next(steps), next(steps)
    job.cancel()
    assert job.state == "cancelled" and job.done == 10
    assert [s.state for s in steps] == ["cancelled"]  # resumed, it stops at once
    with open(job.out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 10


def test_the_learned_router_is_an_order_to_explore_and_to_try(tmp_path, fruit_full_run):
    runs = tmp_path / "runs"
    shutil.copytree(fruit_full_run[0], runs / RUN_ID)
    status = read_json(runs / RUN_ID / "status.json")
    write_json(runs / RUN_ID / "status.json", {**status, "run_id": RUN_ID, "owner": owner_hash("alice")})
    run = OpenedRun.of_owner(RunManager(runs), RUN_ID, "alice")
    assert run.orders() == ["ea", "ea_lm_first", "ea_full", "ea_learned"]
    assert run.examples("ea_learned", True, [0.5], k=2)
    ea = next(r for r in run.state().rows if r["system"] == "ea")  # the Thresholds plot shows the cascade to beat
    ref = next(r for r in run.explorer("ea_learned", True).references if r.name.startswith("EA cascade"))
    assert (ref.val_accuracy, ref.test_accuracy) == (ea["val_accuracy"], ea["test_accuracy"])
    assert not any(r.name.startswith("EA cascade") for r in run.explorer("ea", True).references)
    learned = run.system("ea_learned", True, [0.5], use_lm=False)  # Try it routes with the learned router
    assert [s.name for s in learned.stages] == ["learned_router"] and learned.route_one("apple pie").prediction
    system = run.system("ea_full", True, [0.9, 0.9], use_lm=False)
    assert [s.name for s in system.stages] == ["tfidf", "assm_full:tfidf"]
