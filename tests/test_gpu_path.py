"""The GPU path, checked on whatever device is present (CPU here, CUDA on a GPU machine).

Every image model crashed on CUDA: the uint8 batch was normalised on the CPU with mean/std already
on the GPU. The meta device (shapes only, no data) reproduces "two devices" on a machine without a
GPU, so the device-moving code is tested here through it. Also: GPU peak memory in the results
(absent on a CPU, and old runs still load), deterministic pooling, and the deterministic set-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ea_core.imaging import encode_png
from ea_core.models import make_model
from ea_core.models.hf_common import pick_device
from ea_core.models.vision import _mean_std, _normalise, _to_input
from ea_core.models.vision_backbones import build_backbone, build_net, deterministic_pooling
from ea_core.report import format_table, routed_row, ssm_rows
from ea_core.resources import ResourceMeter
from ea_core.runstate import StageRecord
from ea_core.splits import Split

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")
LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits() -> Split:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [encode_png((x * (255 / 16)).round().astype(np.uint8)) for x in data.images[:240]]
    return Split([f"d{i}.png" for i in range(240)], data.target[:240], None, images)


def test_a_batch_is_moved_to_the_device_before_it_is_normalised():
    pixels = np.zeros((3, 16, 16, 3), np.uint8)
    mean, std = _mean_std("tiny_cnn", META)
    with pytest.raises(RuntimeError, match="device"):  # the crash: normalised where the batch was
        _normalise(torch.from_numpy(pixels), mean, std, False)
    x = _to_input(pixels, mean, std, META, False)
    assert x.device == META and x.dtype == torch.float32 and tuple(x.shape) == (3, 3, 16, 16)
    for arch, size in (("tiny_cnn", 16), ("resnet18", 32), ("squeezenet1_0", 32)):
        net = build_net(arch, 10, size, False)[0].to(META).eval()
        m, s = _mean_std(arch, META)
        assert tuple(net(_to_input(np.zeros((2, size, size, 3), np.uint8), m, s, META, True)).shape) == (2, 10)


@pytest.mark.parametrize("augment", ["none", "crop+flip"])
def test_a_training_batch_lands_on_the_device(augment):
    model = make_model("finetune:tiny_cnn", image_size=16, augment=augment)
    mean, std = _mean_std("tiny_cnn", META)
    x = model._train_input(np.zeros((4, 16, 16, 3), np.uint8), mean, std, META, False, torch.Generator().manual_seed(0))
    assert x.device == META and tuple(x.shape) == (4, 3, 16, 16)


def test_the_image_path_runs_on_the_device_present(digits):
    """Fit and predict through the same code on CPU here and on CUDA where there is one."""
    train, test = digits.subset(range(200)), digits.subset(range(200, 240))
    device = pick_device("auto")
    for spec, kw in (("finetune:tiny_cnn", {"augment": "none"}), ("finetune:tiny_cnn", {"augment": "crop"}),
                     ("head:tiny_cnn", {"epochs": 3})):
        with ResourceMeter() as meter:
            model = make_model(spec, image_size=16, width=4, seed=0, **{"epochs": 1, **kw}).fit(train, None, LABELS)
            proba = model.predict_proba(test)
        assert proba.shape == (40, 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
        if device.type == "cuda":
            assert meter.peak_gpu_mb is not None and meter.peak_gpu_mb > 0
        else:
            assert meter.peak_gpu_mb is None


def test_no_adaptive_pooling_is_left_and_the_values_are_the_same():
    import torchvision.models as tvm

    torch.manual_seed(0)
    original = tvm.resnet18(weights=None).eval()
    swapped = deterministic_pooling(tvm.resnet18(weights=None))
    swapped.load_state_dict(original.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original(x), swapped.eval()(x), atol=1e-6)
    for arch in ("resnet18", "resnet34", "mobilenet_v3_small", "mobilenet_v2", "squeezenet1_0", "efficientnet_lite0"):
        backbone = build_backbone(arch, 32, False)[0]
        assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in backbone.modules()), arch


def test_gpu_memory_is_a_results_column_only_where_measured(tmp_path):
    def record(name, gpu):
        folder = tmp_path / name
        folder.mkdir()
        np.savez(folder / "outputs.npz", test=np.eye(3)[[0, 1, 2, 0]], val=np.eye(3)[[0, 1, 2, 0]])
        info = {"name": name, "val_accuracy": 1.0, "test_accuracy": 1.0, "train_time_s": 1.0, "peak_rss_mb": 500.0,
                "trained_on": 4}
        if gpu is not None:
            info["peak_gpu_mb"] = gpu
        (folder / "info.json").write_text(json.dumps(info))
        return StageRecord(folder=folder, **json.loads((folder / "info.json").read_text()))  # as a run reloads it

    y = np.array([0, 1, 2, 0])
    old = record("old", None)  # a run from before the field (or on a CPU) loads, without the column
    assert old.peak_gpu_mb is None and "GPU MB" not in format_table(ssm_rows([old], y))
    rows = ssm_rows([old, record("gpu", 1432.0)], y)
    table = format_table(rows)
    assert "GPU MB" in table and "1432" in table and "peak_gpu_mb" not in rows[0]
    from ea_core.router import StageOutput

    stages = [StageOutput("gpu", y, np.ones(4))]
    assert routed_row("ea", stages, stages, y, y, [0.0], [old, record("gpu2", 900.0)])["peak_gpu_mb"] == 900.0


def test_deterministic_training_mode_runs_and_repeats_a_seeded_fit():
    """The process-wide deterministic set-up (on by itself on a GPU machine), forced on here in a
    fresh process: a seeded fit trains under it without any op refusing or warning, twice alike."""
    code = """
import warnings, numpy as np, torch
from sklearn.datasets import load_digits
from ea_core.process import configure_process
configure_process(threads=1, deterministic=True)
assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
import os; assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
from ea_core.imaging import encode_png
from ea_core.models import make_model
from ea_core.splits import Split
d = load_digits()
s = Split([str(i) for i in range(150)], d.target[:150], None,
          [encode_png((x * 15).astype(np.uint8)) for x in d.images[:150]])
warnings.simplefilter("error")
p = [make_model("finetune:tiny_cnn", image_size=12, width=4, epochs=1, seed=1, augment="crop").fit(
     s, None, [str(i) for i in range(10)]).predict_proba(s) for _ in range(2)]
assert np.array_equal(p[0], p[1])
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_squeezenet_from_random_weights_warms_up_and_others_do_not():
    from ea_core.errors import ModelError

    scratch = make_model("finetune:squeezenet1_0", pretrained=False)
    assert scratch._warmup(warm=False, loaded_now=False) == 2.0  # its catalog recipe (measured, README)
    assert scratch._warmup(warm=False, loaded_now=True) == 0.0  # ImageNet weights: no warm-up
    assert scratch._warmup(warm=True, loaded_now=False) == 0.0  # a warm start continues training
    assert make_model("finetune:squeezenet1_0", warmup_epochs=0)._warmup(False, False) == 0.0
    assert make_model("finetune:resnet18", pretrained=False)._warmup(False, False) == 0.0
    with pytest.raises(ModelError, match="warmup_epochs"):
        make_model("finetune:tiny_cnn", epochs=2, warmup_epochs=2)
    # A warm-up shorter than training runs, and early stopping never cuts it.
    model = make_model("finetune:tiny_cnn", image_size=8, width=2, epochs=3, warmup_epochs=1.5, patience=1,
                       augment="none")
    assert model.get_params()["warmup_epochs"] == 1.5
