"""Streaming `predict`: a file read, routed and written a chunk at a time gives the same output as
the one-shot path, a killed job resumes without redoing the chunks it wrote, and the readers give
the same rows as `read_table` for every format."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ea_core.batch_predict import PARTS_SUFFIX, PROGRESS_JSON, predict_file, prepare, route_split, run
from ea_core.bundle import export_bundle, load_bundle
from ea_core.data.stream import open_table_stream
from ea_core.errors import ConfigError, DataError, LMError
from ea_core.inputs import read_inputs, write_predictions
from ea_core.splits import Split
from ea_core.tuning import NEVER_TAKES
from tests.fruit import LABELS, item
from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"{fruit} {word} item {i}" for i, (fruit, word) in enumerate(
    (f, w) for w in ("fresh", "pie", "=SUM(A1)", "bowl, with comma", "line\nbreak") for f in ("apple", "banana", "cherry"))]


@pytest.fixture(scope="module")
def lm_bundle(fruit_run) -> tuple[Path, Path, ScriptedServer]:
    """The fruit run's bundle (tfidf -> assm:tfidf -> lm), its LM cache and its scripted server."""
    return fruit_run[1] / "bundle", fruit_run[0] / "lm_cache.sqlite", fruit_run[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "new.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, text in enumerate(TEXTS):
            w.writerow([text, LABELS[i % 3]])
    return path


def lm_options(srv: ScriptedServer) -> dict:
    return {"base_url": srv.url, "key_env": ""}


# ------------------------------------------------------------------ readers


def test_every_format_streams_the_rows_read_table_reads(tmp_path):
    rows = [{"text": t, "label": LABELS[i % 3], "n": i} for i, t in enumerate(TEXTS + ["007", "1.50", ""])]
    table = pa.table({k: [r[k] for r in rows] for k in ("text", "label", "n")})
    files = {"parquet": tmp_path / "x.parquet", "csv": tmp_path / "x.csv", "tsv": tmp_path / "x.tsv",
             "jsonl": tmp_path / "x.jsonl", "json": tmp_path / "x.json"}
    pq.write_table(table, files["parquet"], row_group_size=4)  # several row groups: skipping crosses them
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label", "n"]] + [[r["text"], r["label"], r["n"]] for r in rows])
    files["tsv"].write_text("text\tlabel\tn\n" + "".join(f"{r['text'].replace(chr(10), ' ')}\t{r['label']}\t{r['n']}\n"
                                                          for r in rows), encoding="utf-8")
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    files["json"].write_text(json.dumps(rows), encoding="utf-8")
    for fmt, path in files.items():
        whole, cols = read_inputs(str(path), labels=LABELS)
        stream = open_table_stream(str(path))
        assert stream.fmt == fmt
        for size, skip in ((1, 0), (4, 0), (5, 7), (100, 3)):
            chunks = list(stream.chunks([cols["text_col"], "label"], size, skip=skip))
            assert all(len(c["text"]) == size for c in chunks[:-1]) and 0 < len(chunks[-1]["text"]) <= size, fmt
            texts = [str(t) if t is not None else "" for c in chunks for t in c["text"]]
            assert texts == whole.texts[skip:], (fmt, size, skip)
        n, exact = stream.count_rows()
        assert exact == (fmt in ("parquet", "json")) and (n == len(rows) or (not exact and n >= len(rows)))
    assert whole.texts[len(TEXTS)] == "007"  # text stays as written (no number guessing)


def test_a_txt_file_is_one_input_per_non_empty_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("one\n\n  \ntwo\r\nthree\rfour\u2028five\n", encoding="utf-8")
    stream = open_table_stream(str(path))
    streamed = [t for c in stream.chunks(["text"], 2) for t in c["text"]]
    assert streamed == read_inputs(str(path))[0].texts == ["one", "two", "three", "four", "five"]


def test_a_malformed_csv_row_is_a_message_naming_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\n" + "".join(f"ok {i},a\n" for i in range(5)) + "too,many,fields\n")
    with pytest.raises(DataError, match="line 7 has 3 fields but the header has 2"):
        for _ in open_table_stream(str(path)).chunks(["text"], 2):
            pass


# ------------------------------------------------------------------ the same output as the one-shot path


def test_the_cascade_per_chunk_is_adaptedsystem_predict(lm_bundle, inputs):
    bundle, cache, srv = lm_bundle
    split, _ = read_inputs(str(inputs), labels=LABELS)
    system = load_bundle(bundle, cache_path=str(cache), **lm_options(srv))
    whole = system.predict(split)
    routed = route_split(system, split)
    assert np.array_equal(routed.pred, whole.pred) and np.array_equal(routed.answered_by, whole.answered_by)
    assert np.array_equal(routed.confidence, whole.confidence, equal_nan=True)
    # Each row's route: every stage up to the one that answered, nothing after it.
    reached = ~np.isnan(routed.stage_confidence)
    assert all(reached[i, : k + 1].all() and not reached[i, k + 1:].any() for i, k in enumerate(routed.answered_by))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_chunked_output_equals_the_one_shot_output(lm_bundle, inputs, tmp_path, suffix):
    bundle, cache, srv = lm_bundle
    split, _ = read_inputs(str(inputs), labels=LABELS)
    one_shot = tmp_path / f"one{suffix}"
    system = load_bundle(bundle, cache_path=str(cache), **lm_options(srv))
    expected_text = write_predictions(str(one_shot), split, system.predict(split), system.labels)
    outputs = {}
    for rows in (1, 4, 10_000):
        out = tmp_path / f"chunks{rows}{suffix}"
        summary = predict_file(str(bundle), str(inputs), str(out), chunk_rows=rows, route=False,
                               cache=str(cache), lm_options=lm_options(srv))
        assert summary.text() == expected_text.replace(str(one_shot), str(out))
        assert not Path(str(out) + PARTS_SUFFIX).exists()
        outputs[rows] = out
    if suffix == ".parquet":  # the one-shot path writes no Parquet: compare with its predictions
        tables = [pq.read_table(p) for p in outputs.values()]
        assert all(t.equals(tables[0]) for t in tables)
        assert tables[0].column_names == ["text", "prediction", "answered_by", "confidence"]
        whole = system.predict(split)
        assert tables[0].column("text").to_pylist() == TEXTS
        assert tables[0].column("prediction").to_pylist() == [LABELS[k] if k >= 0 else None for k in whole.pred]
        assert tables[0].column("answered_by").to_pylist() == [whole.stage_names[k] for k in whole.answered_by]
        assert np.allclose(tables[0].column("confidence").to_numpy(), whole.confidence, rtol=0, atol=0)
    else:
        assert all(p.read_bytes() == one_shot.read_bytes() for p in outputs.values())


def test_parquet_output_has_the_route_and_a_prediction_column(lm_bundle, inputs, tmp_path):
    bundle, cache, srv = lm_bundle
    out = tmp_path / "p.parquet"
    summary = predict_file(str(bundle), str(inputs), str(out), chunk_rows=4, cache=str(cache),
                           lm_options=lm_options(srv))
    table = pq.read_table(out)
    assert "prediction" in table.column_names and table.schema.field("confidence").type == pa.float64()
    for by, route in zip(table.column("answered_by").to_pylist(), table.column("route").to_pylist()):
        assert route.split(" > ")[-1].split(" ")[0] == by
    assert summary.rows == len(TEXTS) and sum(summary.answered) == len(TEXTS)


def test_a_bad_column_or_bundle_fails_before_anything_is_written(lm_bundle, inputs, tmp_path):
    bundle, cache, srv = lm_bundle
    out = tmp_path / "p.csv"
    with pytest.raises(DataError, match="no column 'nope'"):
        prepare(str(bundle), str(inputs), str(out), text_col="nope")
    broken = tmp_path / "broken"
    export_bundle(broken, labels=LABELS, stages=[{"name": "tfidf", "threshold": 0.0,
                                                   "folder": bundle / "models" / "00", "temperature": 1.0}])
    (broken / "models" / "00" / "model.json").write_text("{")
    job = prepare(str(broken), str(inputs), str(out))
    with pytest.raises(ConfigError, match="model.json"):
        run(job)
    assert not out.exists() and not Path(str(out) + PARTS_SUFFIX).exists()


# ------------------------------------------------------------------ resuming


def test_parts_of_another_job_are_not_reused(lm_bundle, inputs, tmp_path):
    bundle, cache, srv = lm_bundle
    out = tmp_path / "p.csv"
    parts = Path(str(out) + PARTS_SUFFIX)
    parts.mkdir()
    (parts / "part-000000.csv").write_text("stale,stale,stale,1\n")
    (parts / PROGRESS_JSON).write_text(json.dumps({"fingerprint": {"input": "other"},
                                                   "chunks": [{"rows": 1, "answered": [1, 0, 0], "known": 0,
                                                               "correct": 0}]}))
    events = []
    predict_file(str(bundle), str(inputs), str(out), chunk_rows=4, cache=str(cache), lm_options=lm_options(srv),
                 callback=events.append)
    assert "stale" not in out.read_text()
    assert any("starting afresh" in (e.message or "") for e in events)


@pytest.fixture
def slow_lm_bundle(lm_bundle, tmp_path):
    """The fruit bundle with every input sent to the LM, at a scripted server that answers slowly."""
    bundle, _, _ = lm_bundle
    folder = tmp_path / "all_lm"
    meta = json.loads((bundle / "bundle.json").read_text())
    import shutil

    shutil.copytree(bundle, folder)
    for stage in meta["stages"]:
        if not stage.get("lm"):
            stage["threshold"] = NEVER_TAKES
    (folder / "bundle.json").write_text(json.dumps(meta))
    srv = ScriptedServer(labels=LABELS, answer_fn=lambda req: "a", latency_s=0.05).start()
    yield folder, srv
    srv.close()


def test_a_killed_predict_resumes_without_redoing_written_chunks(slow_lm_bundle, tmp_path):
    folder, srv = slow_lm_bundle
    texts = [f"banana {i} item {i}" for i in range(120)]
    inputs = tmp_path / "many.csv"
    inputs.write_text("text\n" + "\n".join(texts) + "\n")
    out = tmp_path / "p.csv"
    progress = Path(str(out) + PARTS_SUFFIX) / PROGRESS_JSON
    cmd = [sys.executable, "-m", "ea_core", "predict", "--bundle", str(folder), "--input", str(inputs),
           "--output", str(out), "--chunk-rows", "10", "--lm-base-url", srv.url, "--lm-key-env", ""]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    written = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            written = len(json.loads(progress.read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            written = 0
        if written >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    written = len(json.loads(progress.read_text())["chunks"])
    assert 3 <= written < 12 and not out.exists()
    before = srv.count
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {written} chunk(s) ({10 * written:,} rows) already written" in res.stderr
    assert f"Predicted {len(texts)} inputs -> {out}" in res.stdout
    rows = list(csv.reader(out.open(newline="")))
    assert [r[0] for r in rows[1:]] == texts and {r[1] for r in rows[1:]} == {"a"}
    # The rows of the chunks written before the kill were never asked again; every row was asked,
    # and at most the requests in flight at the kill (the provider's concurrency) twice.
    again = [item(r.text) for r in srv.requests[before:]]
    assert min(again) >= 10 * written, "a written chunk was redone"
    per_item = Counter(item(r.text) for r in srv.requests)
    assert set(per_item) == set(range(len(texts))) and srv.count <= len(texts) + 16
    assert not Path(str(out) + PARTS_SUFFIX).exists()


# ------------------------------------------------------------------ the LM stage through the Batch API


@pytest.fixture
def batch_server(lm_bundle, tmp_path):
    """The fruit bundle with every input sent to the LM, and a scripted server with the Batch API
    whose answer is a fixed label per item."""
    bundle, _, _ = lm_bundle
    import shutil

    folder = tmp_path / "all_lm"
    shutil.copytree(bundle, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    for stage in meta["stages"]:
        if not stage.get("lm"):
            stage["threshold"] = NEVER_TAKES
    (folder / "bundle.json").write_text(json.dumps(meta))
    srv = ScriptedServer(labels=LABELS, answer_fn=lambda req: LABELS[item(req.text) % 3]).start()
    yield folder, srv
    srv.close()


def test_lm_batch_predict_submits_every_chunk_then_a_restart_polls_instead_of_paying(batch_server, inputs,
                                                                                     tmp_path):
    folder, srv = batch_server
    expected = tmp_path / "direct.csv"
    predict_file(str(folder), str(inputs), str(expected), chunk_rows=4, cache=str(tmp_path / "direct.sqlite"),
                 lm_options=lm_options(srv))
    direct_calls = srv.count
    out, cache = tmp_path / "batched.csv", str(tmp_path / "batched.sqlite")
    chunks = -(-len(TEXTS) // 4)
    srv.batch_api.polls = 3  # still running after the first pass and one more poll
    opts = dict(chunk_rows=4, cache=cache, lm_options=lm_options(srv), lm_batch=True, lm_batch_poll_s=0.01)
    events = []
    with pytest.raises(LMError, match="still running"):
        predict_file(str(folder), str(inputs), str(out), lm_batch_max_wait_s=0, callback=events.append, **opts)
    parts = Path(str(out) + PARTS_SUFFIX)
    assert srv.batch_api.created == chunks  # every chunk submitted before any is waited on
    assert len(list(parts.glob("lm_batch-*.json"))) == chunks and not out.exists()
    assert any("running at the provider" in (e.message or "") for e in events)
    summary = predict_file(str(folder), str(inputs), str(out), **opts)  # started again: polls, pays nothing twice
    assert srv.batch_api.created == chunks and out.read_bytes() == expected.read_bytes()
    assert summary.answered[-1] == len(TEXTS) and not parts.exists()
    again = predict_file(str(folder), str(inputs), str(tmp_path / "again.csv"), **opts)
    assert srv.batch_api.created == chunks and again.text().splitlines()[1:] == summary.text().splitlines()[1:]
    assert srv.count - direct_calls <= len(TEXTS)  # each batched row was answered once, then from the cache


def test_lm_batch_is_refused_on_ray_and_runs_from_the_cli(batch_server, inputs, tmp_path):
    folder, srv = batch_server
    job = prepare(str(folder), str(inputs), str(tmp_path / "p.csv"), lm_batch=True, lm_options=lm_options(srv))
    with pytest.raises(ConfigError, match="local engine only"):
        run(job, engine="ray")
    with pytest.raises(ConfigError, match="--lm-batch-poll"):
        prepare(str(folder), str(inputs), str(tmp_path / "p.csv"), lm_batch=True, lm_batch_poll_s=0)
    from ea_core.cli import main

    args = ["predict", "--bundle", str(folder), "--input", str(inputs), "--lm-base-url", srv.url, "--lm-key-env", "",
            "--lm-batch", "--lm-batch-poll", "0.01"]
    assert main(args + ["--output", str(tmp_path / "r.csv"), "--engine", "ray"]) == 2
    assert main(args + ["--output", str(tmp_path / "c.csv")]) == 0 and srv.batch_api.created == 1
