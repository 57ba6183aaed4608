"""`predict --engine ray`: the same output as the local engine (a local Ray, 2 CPUs, started once).

Slow: a local Ray takes seconds to start and each dataset seconds to plan on 2 cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ea_core.batch_predict import predict_file, prepare
from ea_core.errors import ConfigError
from tests.fruit import LABELS

ray = pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install '.[ray]'")
pytestmark = pytest.mark.slow

TEXTS = [f"{fruit} {word} item {i}" for i, (fruit, word) in enumerate(
    (f, w) for w in ("fresh", "pie", "=SUM(A1)", "bowl, with comma", "juice") for f in ("apple", "banana", "cherry"))]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray_inputs")
    rows = [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)]
    files = {"csv": root / "in.csv", "parquet": root / "in.parquet", "jsonl": root / "in.jsonl"}
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"]] + [[r["text"], r["label"]] for r in rows])
    pq.write_table(pa.table({"text": TEXTS, "label": [r["label"] for r in rows]}), files["parquet"], row_group_size=4)
    files["jsonl"].write_text("".join(json.dumps(r) + "\n\n" for r in rows), encoding="utf-8")
    return files


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_ray_writes_what_the_local_engine_writes(fruit_run, inputs, tmp_path, fmt):
    """The fruit bundle (tfidf -> assm:tfidf -> lm): two small-model actor pools and the LM actor."""
    _, run, srv = fruit_run
    options = dict(chunk_rows=4, route=True, cache=str(run.parent / "lm_cache.sqlite"),
                   lm_options={"base_url": srv.url, "key_env": ""})
    out = {}
    for engine in ("local", "ray"):
        out[engine] = tmp_path / f"{engine}.parquet"
        summary = predict_file(str(run / "bundle"), str(inputs[fmt]), str(out[engine]), engine=engine, **options)
        assert summary.rows == len(TEXTS) and summary.engine == engine
    local, remote = pq.read_table(out["local"]), pq.read_table(out["ray"])
    assert local.equals(remote), (local.to_pandas().compare(remote.to_pandas()))
    assert local.column("text").to_pylist() == TEXTS
    assert "lm" in set(local.column("answered_by").to_pylist())  # the LM stage was reached


def test_ray_skips_the_rows_already_written(fruit_run, inputs):
    from ea_core.ray_predict import ray_chunks

    _, run, srv = fruit_run
    job = prepare(str(run / "bundle"), str(inputs["parquet"]), chunk_rows=4, use_lm=False)
    chunks = list(ray_chunks(job, skip_rows=6))
    texts = [t for c in chunks for t in c.split.texts]
    assert texts == TEXTS[6:]
    assert np.concatenate([c.gold for c in chunks]).tolist() == [i % 3 for i in range(6, len(TEXTS))]


def test_a_text_file_is_for_the_local_engine(fruit_run, tmp_path):
    _, run, _ = fruit_run
    path = tmp_path / "x.txt"
    path.write_text("apple pie\n")
    with pytest.raises(ConfigError, match="--engine local"):
        predict_file(str(run / "bundle"), str(path), str(tmp_path / "p.csv"), engine="ray", use_lm=False)


def test_a_learned_router_bundle_predicts_the_same_on_both_engines_from_the_cli(fruit_full_run, tmp_path):
    """The fixed surface: ``predict --bundle DIR --input X.parquet --output Y.parquet --engine local|ray``
    with the learned router's stage (its scorer and every small model in one actor) before the LM."""
    from ea_core.bundle import export_run_bundle
    from ea_core.cli import main
    from ea_core.runstate import LEARNED_STAGE, open_run

    folder, srv = fruit_full_run
    state = open_run(folder)
    bundle = export_run_bundle(state, state.rows, tmp_path / "bundle", system="ea_learned")
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": list(state.task.test.texts)}), data, row_group_size=16)
    args = ["predict", "--bundle", str(bundle), "--input", str(data), "--lm-base-url", srv.url, "--lm-key-env", "",
            "--cache", str(tmp_path / "cache.sqlite"), "--chunk-rows", "16"]
    out = {}
    for engine in ("local", "ray"):
        out[engine] = tmp_path / f"{engine}.parquet"
        assert main(args + ["--output", str(out[engine]), "--engine", engine]) == 0
    local, remote = pq.read_table(out["local"]), pq.read_table(out["ray"])
    assert local.equals(remote), (local.to_pandas().compare(remote.to_pandas()))
    assert {"label", "prediction", "predicted_label"} & set(local.column_names)
    assert set(local.column("answered_by").to_pylist()) <= {LEARNED_STAGE, "lm"}
    assert LEARNED_STAGE in set(local.column("answered_by").to_pylist())
