"""Tests of the image small models (``head:ARCH``, ``finetune:ARCH`` on image architectures).

Real data: scikit-learn's bundled 8x8 digits, encoded as PNG like an uploaded image folder. The
tiny CNN (random init) trains in seconds; ``head:efficientnet_lite0`` uses the real packaged
ImageNet weights at a small input size on a subset. Everything runs offline on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ea_core.errors import Cancelled, ConfigError, ModelError
from ea_core.events import CancelToken, ProgressEvent
from ea_core.imaging import encode_png
from ea_core.models import (
    ImageFineTuneModel,
    ImageHeadModel,
    check_spec_for_data,
    load_model,
    make_model,
    parse_spec,
    spec_kind,
    spec_modality,
)
from ea_core.models.base import registered_kinds
from ea_core.models.catalog import CATALOG, catalog_entry, model_choices
from ea_core.splits import Split

LABELS = [str(i) for i in range(10)]


def _digits_split(index: np.ndarray, images: list[bytes], y: np.ndarray) -> Split:
    return Split([f"digit-{i}.png" for i in index], y[index], None, [images[i] for i in index])


@pytest.fixture(scope="module")
def digits() -> tuple[Split, Split, Split]:
    """Digits as PNG bytes (0-16 scaled to 0-255), split 900 / 300 / rest with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [encode_png((x * (255 / 16)).round().astype(np.uint8)) for x in data.images]
    order = np.random.default_rng(0).permutation(len(images))
    y = data.target.astype(np.int64)
    return (_digits_split(order[:900], images, y), _digits_split(order[900:1200], images, y),
            _digits_split(order[1200:], images, y))


def _acc(model, split: Split) -> float:
    return float((model.predict(split) == split.labels).mean())


@pytest.fixture(scope="module")
def tiny_finetuned(digits) -> ImageFineTuneModel:
    train, val, _ = digits
    model = make_model("finetune:tiny_cnn", image_size=16, epochs=5, lr=3e-3, augment="none")
    events: list[ProgressEvent] = []
    model.fit(train, val, LABELS, callback=events.append)
    model.events = events  # type: ignore[attr-defined]
    return model


# ---------------------------------------------------------------------------- specs and catalog


def test_specs_dispatch_on_the_models_modality():
    assert parse_spec("head:efficientnet_lite0") == ("head", "efficientnet_lite0")
    assert spec_modality("head:efficientnet_lite0") == "image"
    assert spec_modality("finetune:resnet34") == "image"
    assert spec_modality("head:minilm") == "text" and spec_modality("tfidf") == "text"
    assert spec_modality("finetune:some-org/some-model") == "text"  # hub ids stay text
    assert spec_kind("head:mobilenet_v2") == "image_head" and spec_kind("finetune:squeezenet1_0") == "image_finetune"
    assert spec_kind("head:minilm") == "head"
    assert {"image_head", "image_finetune"} <= set(registered_kinds())
    assert isinstance(make_model("head:efficientnet_lite0"), ImageHeadModel)
    model = make_model("finetune:tiny_cnn", labels=LABELS, epochs=2)
    assert isinstance(model, ImageFineTuneModel) and model.spec == "finetune:tiny_cnn" and model.epochs == 2
    with pytest.raises(ConfigError, match="max_length"):
        make_model("head:efficientnet_lite0", max_length=64)  # a text setting, named as unknown
    with pytest.raises(ModelError, match="augment"):
        make_model("finetune:tiny_cnn", augment="rotate")
    with pytest.raises(ModelError, match="image_size"):
        make_model("head:resnet18", image_size=8)


def test_a_text_model_on_images_and_the_reverse_are_clear_errors():
    check_spec_for_data("head:efficientnet_lite0", "image")
    check_spec_for_data("tfidf", "pair")
    with pytest.raises(ConfigError, match="text model but the data holds images"):
        check_spec_for_data("head:minilm", "image")
    with pytest.raises(ConfigError, match="image model but the data holds texts"):
        check_spec_for_data("finetune:resnet34", "text")
    model = make_model("head:tiny_cnn")
    with pytest.raises(ModelError, match="holds texts"):
        model.fit(Split(["a", "b"], np.array([0, 1])), None, ["x", "y"])


def test_catalog_lists_the_image_architectures_with_their_modality():
    names = {e.name: e for e in CATALOG}
    assert {"efficientnet_lite0", "mobilenet_v2", "resnet34", "squeezenet1_0", "resnet18", "tiny_cnn"} <= set(names)
    assert names["efficientnet_lite0"].offline_available is True  # packaged ImageNet weights
    assert names["tiny_cnn"].offline_available is True
    assert catalog_entry("minilm").modality == "text"
    image = model_choices("image")
    assert image and all(c.modality == "image" for c in image)
    assert "head:efficientnet_lite0" in [c.spec for c in image] and "tfidf" not in [c.spec for c in image]
    text = [c.spec for c in model_choices("text")]
    assert "tfidf" in text and "head:minilm" in text and "head:resnet34" not in text
    assert {c.spec for c in model_choices()} == {c.spec for c in image} | set(text)
    assert image[0].to_dict()["modality"] == "image"


def test_the_estimate_knows_the_image_models():
    from ea_core.models.estimate import estimate_seconds

    fast = estimate_seconds("head:efficientnet_lite0", 1000, 500)
    big = estimate_seconds("head:efficientnet_lite0", 1000, 500, settings={"image_size": 224})
    slow = estimate_seconds("finetune:resnet34", 1000, 500, settings={"image_size": 224})
    assert 0 < fast.low <= fast.seconds <= fast.high and big.seconds > 2 * fast.seconds
    assert slow.seconds > big.seconds and "px" in slow.basis


# ---------------------------------------------------------------------------- training


@pytest.mark.slow
def test_tiny_cnn_finetuned_on_digits_beats_chance(digits, tiny_finetuned):
    _, _, test = digits
    assert _acc(tiny_finetuned, test) > 0.6  # chance is 0.1
    events = tiny_finetuned.events
    assert events and all(e.stage == "train:finetune:tiny_cnn" for e in events)
    assert any(e.val_accuracy is not None for e in events) and tiny_finetuned.best_val_accuracy_ > 0.6
    probs = tiny_finetuned.predict_proba(test)
    assert probs.shape == (len(test), 10) and np.allclose(probs.sum(axis=1), 1)
    assert tiny_finetuned.get_config()["pretrained"] is False


@pytest.mark.slow
def test_finetune_round_trip_gives_identical_probabilities(digits, tiny_finetuned, tmp_path):
    _, _, test = digits
    tiny_finetuned.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["kind"] == "image_finetune" and meta["spec"] == "finetune:tiny_cnn"
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, ImageFineTuneModel)
    assert np.array_equal(loaded.predict_proba(test), tiny_finetuned.predict_proba(test))
    loaded = load_model(tmp_path / "m", root=tmp_path)  # as from a bundle: same answer
    assert np.array_equal(loaded.predict_proba(test), tiny_finetuned.predict_proba(test))


@pytest.mark.slow
def test_warm_start_class_weights_augment_and_cancel(digits):
    train, val, test = digits
    model = make_model("finetune:tiny_cnn", image_size=16, epochs=2, augment="crop+flip", class_weight="balanced",
                       warm_start_epochs=1)
    model.fit(train, val, LABELS)
    before = model.predict_proba(test)
    model.fit(train.subset(range(200)), None, LABELS, warm_start=True)
    assert not np.array_equal(before, model.predict_proba(test))
    with pytest.raises(ModelError, match="same labels"):
        model.fit(train, None, LABELS[::-1], warm_start=True)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        make_model("finetune:tiny_cnn", image_size=16).fit(train, val, LABELS, cancel=token)


def test_seeded_fits_are_reproducible_and_leave_the_global_rng_alone(digits):
    import torch

    from ea_core.process import deterministic_gpu

    deterministic_gpu()  # what every entry point does; on a CPU-only machine it does nothing
    train, val, test = digits
    small = train.subset(range(300))
    state = torch.random.get_rng_state()
    a = make_model("finetune:tiny_cnn", image_size=12, epochs=1, seed=3).fit(small, None, LABELS)
    assert torch.equal(state, torch.random.get_rng_state())
    b = make_model("finetune:tiny_cnn", image_size=12, epochs=1, seed=3).fit(small, None, LABELS)
    assert np.array_equal(a.predict_proba(test), b.predict_proba(test))


@pytest.mark.slow
def test_head_on_tiny_cnn_round_trips_with_its_random_backbone(digits, tmp_path):
    train, val, test = digits
    model = make_model("head:tiny_cnn", image_size=16, width=8, epochs=30).fit(train, val, LABELS)
    assert _acc(model, test) > 0.3  # random conv features + a linear head
    calls = model.backbone_calls_
    model.predict_proba(train)  # features kept in memory: no backbone pass
    assert model.backbone_calls_ == calls
    model.save(tmp_path / "h")
    assert (tmp_path / "h" / "backbone.safetensors").is_file()
    assert np.array_equal(load_model(tmp_path / "h").predict_proba(test), model.predict_proba(test))


@pytest.mark.slow
def test_head_efficientnet_lite0_beats_chance_on_a_digits_subset(digits, tmp_path):
    train, val, test = digits
    events: list[ProgressEvent] = []
    model = make_model("head:efficientnet_lite0", image_size=32, epochs=40)
    model.fit(train.subset(range(400)), val.subset(range(150)), LABELS, callback=events.append)
    sub = test.subset(range(200))
    assert _acc(model, sub) > 0.6
    assert model.get_config()["pretrained"] is True
    assert any(e.stage.endswith(":features") for e in events)
    model.save(tmp_path / "e")
    assert not (tmp_path / "e" / "backbone.safetensors").exists()  # the packaged weights are reloaded
    assert np.array_equal(load_model(tmp_path / "e").predict_proba(sub), model.predict_proba(sub))


# ---------------------------------------------------------------------------- damaged folders


@pytest.mark.slow
def test_damaged_weights_are_model_errors(tiny_finetuned, tmp_path):
    folder = tiny_finetuned.save(tmp_path / "m")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(folder)

    from safetensors.torch import load_file, save_file

    weights.write_bytes(good)
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("fc.weight"))
    bad = dict(tensors)
    bad[name] = tensors[name].clone()
    bad[name][0, 0] = float("nan")
    save_file(bad, str(weights))
    with pytest.raises(ModelError, match="non-finite"):
        load_model(folder)
    bad[name] = tensors[name][:3]
    save_file(bad, str(weights))
    with pytest.raises(ModelError, match="shape"):
        load_model(folder)
    del bad[name]
    save_file(bad, str(weights))
    with pytest.raises(ModelError, match="do not match"):
        load_model(folder)

    weights.write_bytes(good)
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["model"] = "../../etc/passwd"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="Unknown image architecture"):
        load_model(folder)
