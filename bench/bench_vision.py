"""Image small models on a CPU: digits end to end, and training / evaluation throughput.

1. Digits (scikit-learn's bundled 1,797 8x8 images, PNG-encoded, seeded 60/20/20 split): for
   each model, wall time of fit (features or training, early stopping on validation) + predicting
   the test split, and test accuracy. ``head:efficientnet_lite0`` at several input sizes (the
   evidence behind the default ``image_size``; target >= 90% test accuracy), then
   ``finetune:efficientnet_lite0`` and ``finetune:tiny_cnn``.
2. Throughput, random init (weights do not change speed): training images/s (forward, backward,
   AdamW step; channels-last) at 32 and 224 px, and evaluation images/s (no grad) at 32 and
   224 px with and without channels-last, for the paper's three CNNs and the other catalog ones.

``--write`` stores the throughput into the ``image`` section of ea_core/models/cpu_rates.json
(what the app's CPU-time estimate reads). The machine is shared: figures are approximate, and the
load average is printed with them.

    .venv/bin/python bench/bench_vision.py            # ~4-6 min on 2 cores
    .venv/bin/python bench/bench_vision.py --quick    # fewer sizes and models
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as runs do (ea_core.process.PASSIVE_WAIT): before torch loads

from ea_core.process import configure_process  # noqa: E402

PAPER = ("mobilenet_v2", "resnet34", "squeezenet1_0")
OTHERS = ("efficientnet_lite0", "resnet18", "mobilenet_v3_small", "tiny_cnn")
#: Runs kept in cpu_rates.json's image section (its figures are their medians).
KEEP_RUNS = 5


def say(text: str) -> None:
    print(text, flush=True)


def digits_task(seed: int = 0):
    from sklearn.datasets import load_digits

    from ea_core.imaging import encode_png
    from ea_core.splits import Split

    data = load_digits()
    images = [encode_png((x * (255 / 16)).round().astype(np.uint8)) for x in data.images]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_tr, n_va = int(0.6 * len(y)), int(0.2 * len(y))

    def split(ix):
        return Split([f"digit-{i}.png" for i in ix], y[ix], None, [images[i] for i in ix])

    return [str(i) for i in range(10)], split(order[:n_tr]), split(order[n_tr:n_tr + n_va]), split(order[n_tr + n_va:])


def run_digits(spec: str, labels, train, val, test, **settings) -> dict:
    from ea_core.models import make_model

    model = make_model(spec, **settings)  # its own, empty memory: this times the backbone
    t0 = time.perf_counter()
    model.fit(train, val, labels)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    acc = float((model.predict(test) == test.labels).mean())
    predict_s = time.perf_counter() - t1
    epochs = len(model.history_) if hasattr(model, "history_") else None
    return {"spec": spec, "settings": settings, "fit_s": round(fit_s, 1), "predict_s": round(predict_s, 1),
            "total_s": round(fit_s + predict_s, 1), "test_accuracy": round(acc, 4),
            "val_accuracy": model.best_val_accuracy_, "evaluations": epochs}


def throughput(arch: str, size: int, train_steps: int, eval_batches: int, batch_train: int, batch_eval: int) -> dict:
    """Images/s training (channels-last) and evaluating (with / without channels-last)."""
    import torch
    import torch.nn.functional as F

    from ea_core.models.vision_backbones import build_net

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, _, _ = build_net(arch, 10, size, False, 16)
    out: dict = {}
    x = torch.randn(batch_train, 3, size, size)
    y = torch.randint(0, 10, (batch_train,))
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    xc = x.contiguous(memory_format=torch.channels_last)
    for i in range(train_steps + 1):  # first step: warm-up, not timed
        if i == 1:
            t0 = time.perf_counter()
        loss = F.cross_entropy(net(xc), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out["train_per_s"] = batch_train * train_steps / (time.perf_counter() - t0)
    net.eval()
    xe = torch.randn(batch_eval, 3, size, size)
    for cl in (True, False):
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = net.to(memory_format=fmt)
        xin = xe.contiguous(memory_format=fmt)
        with torch.inference_mode():
            net(xin)
            t0 = time.perf_counter()
            for _ in range(eval_batches):
                net(xin)
        out["eval_cl_per_s" if cl else "eval_plain_per_s"] = batch_eval * eval_batches / (time.perf_counter() - t0)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 64/96 only, paper CNNs only, no finetune")
    ap.add_argument("--sizes", default="64,96,128,224", help="head:efficientnet_lite0 input sizes on digits")
    ap.add_argument("--no-digits", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--write", action="store_true", help="store the throughput in cpu_rates.json")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    configure_process(args.threads)
    import torch

    sizes = [64, 96] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    say(f"bench_vision: torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{tuple(round(v, 1) for v in os.getloadavg())} (shared machine: figures are approximate)")
    report: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    t_all = time.perf_counter()

    if not args.no_digits:
        labels, train, val, test = digits_task()
        say(f"\n== digits end to end ({len(train)}/{len(val)}/{len(test)} train/val/test, chance 10%) ==")
        runs = [("head:efficientnet_lite0", {"image_size": size}) for size in sizes]
        if not args.quick:
            runs.append(("finetune:efficientnet_lite0", {"image_size": 64, "epochs": 3, "patience": 2}))
        runs.append(("finetune:tiny_cnn", {"image_size": 32, "epochs": 15, "lr": 3e-3}))
        rows = []
        for spec, settings in runs:
            r = run_digits(spec, labels, train, val, test, **settings)
            rows.append(r)
            say(f"{r['spec']:<28} {settings['image_size']:>4} px  fit {r['fit_s']:6.1f} s  predict "
                f"{r['predict_s']:5.1f} s  total {r['total_s']:6.1f} s  test acc {r['test_accuracy']:.3f}  "
                f"(val {r['val_accuracy'] or 0:.3f}, {r['evaluations']} evaluations)")
        best = max((r for r in rows if r["spec"] == "head:efficientnet_lite0"), key=lambda r: r["test_accuracy"])
        say(f"target: head:efficientnet_lite0 >= 90% test accuracy -> best {best['test_accuracy']:.1%} at "
            f"{best['settings']['image_size']} px ({'met' if best['test_accuracy'] >= 0.9 else 'NOT met'})")
        report["digits"] = rows

    if not args.no_throughput:
        archs = PAPER if args.quick else PAPER + OTHERS
        say("\n== CPU throughput, images/s (random init; train = fwd+bwd+AdamW, channels-last; "
            "eval = no-grad, channels-last vs plain) ==")
        say(f"{'arch':<20} {'px':>4} {'train':>8} {'eval CL':>9} {'eval plain':>11} {'CL speed-up':>12}")
        table: dict = {}
        for arch in archs:
            for size in (32, 224):
                big = size == 224
                r = throughput(arch, size, train_steps=2 if big else 6, eval_batches=2 if big else 6,
                               batch_train=16 if big else 64, batch_eval=32 if big else 128)
                table.setdefault(arch, {})[str(size)] = r
                say(f"{arch:<20} {size:>4} {r['train_per_s']:8.1f} {r['eval_cl_per_s']:9.1f} "
                    f"{r['eval_plain_per_s']:11.1f} {r['eval_cl_per_s'] / r['eval_plain_per_s']:11.2f}x")
        report["throughput"] = table
        if args.write:
            path = Path(__file__).resolve().parents[1] / "ea_core" / "models" / "cpu_rates.json"
            data = json.loads(path.read_text())
            archs_out = {a: {"train": {s: v["train_per_s"] for s, v in t.items()},
                             "eval": {s: v["eval_cl_per_s"] for s, v in t.items()}} for a, t in table.items()}
            # The last KEEP_RUNS runs with this thread count are kept, and each figure is their median: one
            # run on a shared machine can be 3x off (its load average is kept with it).
            runs = [r for r in (data.get("image") or {}).get("runs", []) if r.get("threads") == report["threads"]]
            runs = (runs + [{"date": report["date"], "threads": report["threads"],
                             "load_avg": [round(v, 2) for v in report["load_avg"]], "archs": archs_out}])[-KEEP_RUNS:]
            medians: dict = {}
            for arch in {a for r in runs for a in r["archs"]}:
                for phase in ("train", "eval"):
                    for px in ("32", "224"):
                        values = [r["archs"][arch][phase][px] for r in runs if arch in r["archs"]]
                        medians.setdefault(arch, {}).setdefault(phase, {})[px] = round(statistics.median(values), 1)
            old = (data.get("image") or {}).get("archs", {})
            data["image"] = {
                "about": "images/s on this CPU, random init, written by bench/bench_vision.py --write; "
                         "train = batch 64 at 32 px / 16 at 224 px, eval = no-grad channels-last batch 128 / 32; "
                         "each figure the median of the runs below",
                "measured_on": report["date"], "threads": report["threads"],
                "load_avg": [round(v, 2) for v in report["load_avg"]], "load_s": 1.5,
                "archs": {**old, **medians}, "runs": runs,
            }
            path.write_text(json.dumps(data, indent=2) + "\n")
            say(f"wrote the image rates to {path}")
    say(f"\nbench_vision done in {time.perf_counter() - t_all:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
