"""The local label-scoring provider with the packaged SmolLM2 (loaded once for the module)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ea_core.errors import LMError
from ea_core.events import CancelToken
from ea_core.llm import AnswerCache, make_provider
from ea_core.llm.base import FAILED
from ea_core.llm.local_hf import LocalHFProvider, default_model_location

LABELS = ["negative", "neutral", "positive"]
TWEETS = [
    ("I absolutely love my new self-driving car, best thing ever!", None),
    ("Driverless cars will kill people. Terrible idea.", None),
    ("Google is testing autonomous vehicles in Mountain View today.", None),
    ("So happy with the ride, smooth and safe :)", None),
    ("Worst commute of my life, the robot car got lost twice.", None),
]

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def loaded() -> LocalHFProvider:
    p = LocalHFProvider(calibrate=False)
    p._load()  # once per process: every provider below shares it
    return p


def _scores(answer) -> list[float]:
    data = json.loads(answer.raw)["scores"]
    return [data[lab] for lab in LABELS]


def test_packaged_model_is_found() -> None:
    folder, name = default_model_location()
    assert name.endswith(".gguf")


@pytest.mark.slow
def test_scores_labels_and_caches(loaded: LocalHFProvider, tmp_path) -> None:
    cache = AnswerCache(tmp_path / "local.sqlite")
    p = LocalHFProvider(cache=cache, calibrate=False)
    events = []
    answers, usage = p.classify(TWEETS, LABELS, callback=events.append)
    assert len(answers) == len(TWEETS)
    for a in answers:
        assert a.label in (0, 1, 2) and not a.cached
        assert 0.0 <= a.confidence <= 1.0
        s = _scores(a)
        assert all(v < 0 for v in s) and a.label == int(np.argmax(s))
    assert usage.calls == len(TWEETS) and usage.failures == 0 and usage.cost_usd == 0
    assert events[-1].step == len(TWEETS)
    assert "offline stand-in" in p.describe()["note"]
    assert p.gives_confidence

    t0 = time.perf_counter()
    again, usage2 = LocalHFProvider(cache=cache, calibrate=False).classify(TWEETS, LABELS)
    assert time.perf_counter() - t0 < 5
    assert usage2.cache_hits == len(TWEETS) and usage2.calls == 0
    assert all(b.cached for b in again)
    assert [b.label for b in again] == [a.label for a in answers]
    assert np.allclose([_scores(b) for b in again], [_scores(a) for a in answers], atol=1e-3)


@pytest.mark.slow
def test_calibration_subtracts_label_means(loaded: LocalHFProvider, tmp_path) -> None:
    cache = AnswerCache(tmp_path / "cal.sqlite")
    raw, _ = LocalHFProvider(calibrate=False, cache=cache).classify(TWEETS, LABELS)
    p = LocalHFProvider(calibrate=True, cache=cache)
    offsets = p.calibrate_on(TWEETS * 2, LABELS)  # (10 inputs >= 8: their mean)
    assert offsets.shape == (3,)
    assert np.allclose(offsets, np.mean([_scores(a) for a in raw], axis=0), atol=1e-3)
    cal, _ = p.classify(TWEETS, LABELS)
    for a, r in zip(cal, raw):
        z = np.array(_scores(r)) - offsets
        assert a.label == int(np.argmax(z))
        assert a.confidence == pytest.approx(float(np.exp(z.max()) / np.exp(z).sum()), abs=1e-3)
    # automatic: offsets frozen from content-free inputs for a tiny first batch, and saved
    auto = LocalHFProvider(calibrate=True, cache=AnswerCache(tmp_path / "auto.sqlite"))
    auto.classify(TWEETS[:2], LABELS)
    assert tuple(LABELS) in auto._offsets


@pytest.mark.slow
def test_multi_token_labels_and_pairs(loaded: LocalHFProvider) -> None:
    labels = ["very negative", "neutral statement", "positive"]
    p = LocalHFProvider(calibrate=False)
    answers, _ = p.classify(TWEETS[:3], labels)
    assert all(a.label in (0, 1, 2) and 0 <= a.confidence <= 1 for a in answers)
    pairs, _ = p.classify([("A man is sleeping.", "A person rests.")], ["entailment", "contradiction"])
    assert pairs[0].label in (0, 1)


@pytest.mark.slow
def test_shared_prefix_reuse_matches_full_prompts(loaded: LocalHFProvider) -> None:
    a, _ = LocalHFProvider(calibrate=False, reuse_prefix=True).classify(TWEETS[:3], LABELS)
    b, _ = LocalHFProvider(calibrate=False, reuse_prefix=False).classify(TWEETS[:3], LABELS)
    assert np.allclose([_scores(x) for x in a], [_scores(x) for x in b], atol=1e-2)


@pytest.mark.slow
def test_cancelled_before_start(loaded: LocalHFProvider) -> None:
    token = CancelToken()
    token.cancel()
    answers, usage = LocalHFProvider(calibrate=False).classify(TWEETS, LABELS, cancel=token)
    assert all(a.label == FAILED and a.error == "cancelled" for a in answers)
    assert usage.failures == len(TWEETS)


@pytest.mark.slow
def test_callback_may_cancel_by_raising(loaded: LocalHFProvider) -> None:
    from ea_core.errors import Cancelled

    def stop_after_first_batch(event) -> None:
        if event.step >= 2:
            raise Cancelled()

    p = LocalHFProvider(calibrate=False, batch_size=2)
    answers, _ = p.classify(TWEETS, LABELS, callback=stop_after_first_batch)
    assert sum(a.ok for a in answers) == 2
    assert all(a.error == "cancelled" for a in answers if not a.ok)


def test_make_provider_local_specs() -> None:
    p = make_provider("local")
    assert isinstance(p, LocalHFProvider) and p.is_default
    bad = make_provider("local:/no/such/model/folder")
    with pytest.raises(LMError, match="Cannot load the local LM"):
        bad.classify(TWEETS[:1], LABELS)


@pytest.mark.slow
def test_the_kept_dequantized_copy_scores_like_the_gguf_model(loaded: LocalHFProvider, tmp_path, monkeypatch) -> None:
    """The first load keeps a de-quantized copy (later loads take seconds); it holds the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    from ea_core.llm.local_hf import _keep_converted, converted_gguf_folder

    model, tokenizer = loaded._load()
    monkeypatch.setenv("EA_CACHE_DIR", str(tmp_path))
    folder = converted_gguf_folder(loaded.model_id, loaded.gguf_file, "float32")
    assert str(tmp_path) in str(folder) and not folder.exists()
    _keep_converted(model, tokenizer, folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob("*.tmp"))  # written aside, then renamed
    copy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer("Driverless cars will kill people.", return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**ids).logits, copy(**ids).logits)


@pytest.mark.slow
def test_a_full_cache_disk_does_not_stop_local_scoring(loaded: LocalHFProvider, tmp_path, monkeypatch) -> None:
    """Local answers cost nothing: a cache that cannot be written is a warning, not a failed stage."""
    import sqlite3

    from ea_core.llm.cache import AnswerCache

    cache = AnswerCache(tmp_path / "lm.sqlite")

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cache, "put", full)
    provider = LocalHFProvider(calibrate=False, cache=cache)  # shares the loaded weights
    answers, usage = provider.classify(TWEETS[:4], LABELS)
    assert len(answers) == 4 and all(a.label >= 0 for a in answers)
    assert len(cache) == 0
