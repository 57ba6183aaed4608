"""`python -m ea_core demo` end to end on a small sample: the README's main job, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # the demo end to end (minutes): the quick check is pytest -m "not slow"


def test_demo_runs_end_to_end_offline(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "EA_CACHE_DIR": str(tmp_path / "emb"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "ea_core", "demo", "--out", str(out), "--max-train", "240",
                          "--max-val", "45", "--max-test", "45"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["system"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {"tfidf", "head:minilm", "lm", "specific_layer", "oracle"} <= set(rows)
    for name in ("tfidf", "head:minilm"):
        assert rows[name]["test_accuracy"] > 0.4  # above the 3-class chance level on real tweets
    assert rows["oracle"]["test_accuracy"] >= max(r["test_accuracy"] for r in rows.values() if r["system"] != "oracle")
    assert (out / "results.csv").is_file() and (out / "bundle" / "bundle.json").is_file()
    exported = json.loads((out / "bundle" / "bundle.json").read_text())["metrics"]["system"]
    assert exported == "ea" and f"Exported the adapted system (ea) to {out / 'bundle'}" in res.stderr
    assert "test acc" in res.stdout  # the printed table
    summary = json.loads((out / "summary.json").read_text())
    assert "stand-in" in json.dumps(summary["lm"]).lower()
