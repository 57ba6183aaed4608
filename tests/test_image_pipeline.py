"""Images end to end through the engine and the CLI: the fixed surface (`train --data demo:digits`),
a run whose LM stage is a vision model behind the scripted OpenAI-compatible server (the request
carries the image, a rerun pays nothing), the offline stand-in, and clear refusals when a model
does not fit the data."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ea_core.data import load_dataset
from tests.scripted_server import ScriptedRequest, ScriptedServer

KEY_ENV = "EA_TEST_VISION_KEY"
SIZES = {"max_train": 300, "max_val": 150, "max_test": 150}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ea_core", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**__import__("os").environ, KEY_ENV: "sk-test"})


@pytest.mark.slow
def test_train_on_the_digits_demo_writes_results_like_text(tmp_path: Path) -> None:
    """The fixed surface: `train --data demo:digits --ssm head:efficientnet_lite0 --out DIR`."""
    repo = Path(__file__).resolve().parents[1]
    proc = _cli("train", "--data", "demo:digits", "--ssm", "head:efficientnet_lite0", "--out", str(tmp_path / "run"),
                cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    row = next(r for r in rows if r["system"] == "head:efficientnet_lite0")
    assert row["test_accuracy"] >= 0.85  # real ImageNet features; chance is 10%
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_text_model_on_images_is_refused_before_training(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    proc = _cli("train", "--data", "demo:digits", "--ssm", "tfidf", "--out", str(tmp_path / "run"), cwd=repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'tfidf' is a text model" in proc.stderr and "head:efficientnet_lite0" in proc.stderr


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L")).tobytes()


def _answer_by_pixels(gold: dict[bytes, str]):
    """An answer_fn: the gold label of the image the request carries (looked up by its pixels)."""

    def answer(req: ScriptedRequest):
        user = [m for m in req.body["messages"] if m["role"] == "user"][-1]
        parts = user["content"] if isinstance(user["content"], list) else []
        urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        return gold.get(_pixels(base64.b64decode(urls[0].split(",", 1)[1]))) if urls else None

    return answer


@pytest.mark.slow
def test_a_vision_lm_run_sends_images_and_a_rerun_pays_nothing(tmp_path: Path, monkeypatch) -> None:
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig

    monkeypatch.setenv(KEY_ENV, "sk-test")
    task = load_dataset("demo:digits", **SIZES)
    gold = {_pixels(img): task.labels[int(y)] for split in (task.train, task.val, task.test)
            for img, y in zip(split.images, split.labels)}
    with ScriptedServer(labels=task.labels, answer_fn=_answer_by_pixels(gold)) as srv:
        cfg = RunConfig(data="demo:digits", ssm=["finetune:tiny_cnn"], lm="openai", lm_model="test-vision",
                        lm_base_url=srv.url, lm_key_env=KEY_ENV, oof_folds=0, concurrency=4, few_shot=1, **SIZES)
        state = Pipeline(cfg, tmp_path / "run").run()
        first = srv.count
        assert first > len(task.val) + len(task.test)  # mining, validation and test were asked
        bodies = [r.body for r in srv.requests if r.body.get("messages")]
        assert all(any(isinstance(m["content"], list) for m in b["messages"]) for b in bodies)
        lm_row = next(r for r in state.rows if r["system"] == "lm")
        assert lm_row["test_accuracy"] >= 0.95  # the scripted LM answered from the pixels it was sent
        assert state.lm_few_shot and isinstance(state.lm_few_shot[0][0], dict)  # images saved as JSON
        Pipeline(cfg, tmp_path / "run").run()
        assert srv.count == first  # the same images are found in the cache: nothing is bought twice


@pytest.mark.slow
def test_the_offline_default_lm_is_the_image_stand_in(tmp_path: Path) -> None:
    from ea_core.llm import IMAGE_KNN_SPEC
    from ea_core.pipeline import IMAGE_KNN_FEW_SHOT, Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runstate import open_run

    cfg = RunConfig(data="demo:digits", ssm=["finetune:tiny_cnn"], lm="local", oof_folds=0, **SIZES)
    Pipeline(cfg, tmp_path / "run").run()
    state = open_run(tmp_path / "run")
    assert state.config.lm == IMAGE_KNN_SPEC and state.config.few_shot == IMAGE_KNN_FEW_SHOT
    lm_row = next(r for r in state.rows if r["system"] == "lm")
    assert lm_row["test_accuracy"] > 0.3  # few-shot nearest neighbours: weak, but far above 10% chance

    # The exported bundle classifies a folder of images (class folders named like labels are scored)
    from ea_core.cli import main

    folder = tmp_path / "inputs"
    for i in range(12):
        label = state.task.labels[int(state.task.test.labels[i])]
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"img{i}.png").write_bytes(state.task.test.images[i])
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--bundle", str(tmp_path / "run" / "bundle"), "--input", str(folder),
                 "--output", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("image,prediction") and len(rows) == 13  # the broken file skipped
    # A ZIP whose member climbs out is refused before any model loads
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.png", state.task.test.images[0])
    assert main(["predict", "--bundle", str(tmp_path / "run" / "bundle"), "--input", str(evil)]) == 2
    assert not (tmp_path / "escaped.png").exists()


@pytest.mark.parametrize("spec", ["finetune:tiny_cnn"])
def test_an_image_model_on_text_is_refused(tmp_path: Path, spec: str) -> None:
    from ea_core.errors import ConfigError
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig

    cfg = RunConfig(data="demo:tweets", ssm=[spec], max_train=100, max_val=50, max_test=50)
    with pytest.raises(ConfigError, match="image model but the data holds texts"):
        Pipeline(cfg, tmp_path / "run").run()
