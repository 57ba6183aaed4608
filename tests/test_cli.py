"""The fixed CLI surface: help, exit codes, messages, and the results.json shape of `train`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "ea_core", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.parametrize("sub", [[], ["train"], ["run"], ["demo"], ["predict"]])
def test_help_documents_every_option(sub):
    res = cli(*sub, "--help")
    assert res.returncode == 0
    for flag in {"train": ["--data", "--text-col", "--text-pair-col", "--label-col", "--ssm", "--out"],
                 "run": ["--lm", "--lm-model", "--lm-base-url", "--lm-key-env", "--budget-usd", "--concurrency",
                         "--cache", "--ea-full", "--oof-folds", "--price-in", "--price-out"],
                 "demo": ["--out"], "predict": ["--bundle", "--input"]}.get(sub[0] if sub else "", []):
        assert flag in res.stdout
    if not sub:
        for name in ("train", "run", "demo", "predict"):
            assert name in res.stdout


def small_csv(path: Path, n_per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    words = {"pos": ["great", "love", "excellent", "happy", "wonderful"],
             "neg": ["awful", "hate", "terrible", "sad", "horrible"]}
    lines = ["text,label"]
    for label, ws in words.items():
        for i in range(n_per_class):
            w = rng.choice(ws, 3)
            lines.append(f"the film was {w[0]} and {w[1]} really {w[2]} number {i},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_train_writes_the_results_table(tmp_path):
    data = small_csv(tmp_path / "reviews.csv")
    out = tmp_path / "run"
    res = cli("train", "--data", str(data), "--ssm", "tfidf", "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["tfidf"]
    row = rows[0]
    for key in ("val_accuracy", "test_accuracy", "train_time_s", "peak_rss_mb"):
        assert key in row
    assert row["test_accuracy"] > 0.9  # the words separate the classes
    assert "tfidf" in res.stdout and "test acc" in res.stdout
    assert (out / "ssm").is_dir() and any((out / "ssm").rglob("model.json"))


@pytest.mark.parametrize("args, message", [
    (["--data", "does/not/exist.csv", "--ssm", "tfidf"], "not found"),
    (["--data", "{csv}", "--ssm", "nonsense:thing:x"], "SPEC"),
    (["--data", "{csv}", "--ssm", "tfidf", "--label-col", "nope"], "label"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, args, message):
    data = small_csv(tmp_path / "d.csv")
    args = [a.replace("{csv}", str(data)) for a in args]
    res = cli("train", *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert message.lower() in res.stderr.lower()
    assert "\nerror: " in "\n" + res.stderr


def test_run_refuses_a_key_on_the_command_line():
    res = cli("run", "--data", "x.csv", "--ssm", "tfidf", "--lm", "openai", "--api-key", "sk-secret")
    assert res.returncode == 2
    assert "unrecognized arguments" in res.stderr
