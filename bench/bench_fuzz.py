"""Fuzz benchmark: malformed datasets through `python -m ea_core train`, counted by outcome.

Writes a corpus of bad inputs a careful tester would try (binary files named .csv, FIFOs, link
loops, duplicate columns, labels of every odd type, 20 MB cells, deeply nested JSON, broken
Parquet ...) to a temporary folder, runs each through the CLI as a subprocess with a timeout,
and prints one line per case and the totals:

    tried, accepted (exit 0), clean errors (exit 2, a message on stderr, no traceback),
    tracebacks, hangs (no exit within the timeout), other (any other exit)

Target: 0 tracebacks, 0 hangs, 0 other.

Usage:  python bench/bench_fuzz.py [--timeout 60] [--jobs 2] [--only SUBSTRING] [--keep DIR]
                                   [--provider MODULE:FUNCTION ...]

The corpus is plain data so that other corpora plug in: a provider is a function
``folder -> list[Case]``; append it to `PROVIDERS`, pass it to `build_corpus`, or name it with
``--provider``. A case whose ``argv`` is set runs that command (e.g. ``predict --bundle DIR
--input FILE --no-lm`` for a tampered bundle) instead of ``train --data PATH``.
`tests/test_data_hostile.py` loads the data cases in process (fast).
"""

from __future__ import annotations

import argparse
import decimal
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One input to try: a path for ``--data`` (which may not exist or not be a file)."""

    name: str
    path: str
    note: str = ""
    options: dict = field(default_factory=dict)  # load_dataset options, passed to the CLI as --max-train etc.
    argv: Optional[list[str]] = None  # the whole command after `python -m ea_core`; "{out}" is a fresh folder
    slow: bool = False  # left out of the in-process test's fast subset
    expect: str = "error"  # "ok": must be accepted, "error": must be a clean error, "": either


@dataclass
class Outcome:
    case: str
    kind: str  # accepted | clean | traceback | hang | other
    rc: Optional[int]
    seconds: float
    message: str


Provider = Callable[[Path], list[Case]]
KINDS = ("accepted", "clean", "traceback", "hang", "other")


# --------------------------------------------------------------------------------------------
# The data corpus
# --------------------------------------------------------------------------------------------

LABELS = ("negative", "neutral", "positive")


def good_rows(n_per_class: int = 12, labels=LABELS) -> list[dict]:
    return [{"text": f"{lab} example number {i}", "label": lab} for i in range(n_per_class) for lab in labels]


def labelled(labels: tuple, n: int = 8) -> list[dict]:
    """`n` rows of each label value (any type: the corpus tries them all)."""
    return [{"text": f"sample text {i}", "label": v} for i in range(n) for v in labels]


def csv_text(records: list[dict], sep: str = ",", newline: str = "\n") -> str:
    cols = list(records[0])
    lines = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in records]
    return newline.join(lines) + newline


def jsonl_text(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def data_cases(folder: Path) -> list[Case]:
    """Malformed (and a few odd but valid) datasets, written under `folder`."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    good = csv_text(good_rows())

    def add(name: str, content, note: str = "", **kw) -> None:
        path = folder / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        cases.append(Case(name, str(path), note, **kw))

    def add_path(name: str, path: Path, note: str, **kw) -> None:
        cases.append(Case(name, str(path), note, **kw))

    # --- not a regular file --------------------------------------------------------------------
    add_path("missing.csv", folder / "no-such-file.csv", "a file that does not exist")
    (folder / "folder.csv").mkdir(exist_ok=True)
    add_path("folder.csv", folder / "folder.csv", "a directory named like a file")
    fifo = folder / "fifo.csv"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    add_path("fifo.csv", fifo, "a named pipe: opening it would block forever")
    sock_path = folder / "socket.csv"
    if hasattr(socket, "AF_UNIX") and not sock_path.exists():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(sock_path))
    add_path("socket.csv", sock_path, "a Unix socket")
    for dev in ("null", "zero", "urandom"):
        link = folder / f"dev-{dev}.csv"
        if not link.is_symlink():
            link.symlink_to(f"/dev/{dev}")
        add_path(link.name, link, f"a link to /dev/{dev} (a device; /dev/zero never ends)")
    loop_a, loop_b = folder / "loop-a.csv", folder / "loop-b.csv"
    if not loop_a.is_symlink():
        loop_a.symlink_to(loop_b.name)
        loop_b.symlink_to(loop_a.name)
    add_path("symlink-loop.csv", loop_a, "two links pointing at each other")
    dangling = folder / "dangling.csv"
    if not dangling.is_symlink():
        dangling.symlink_to("nowhere.csv")
    add_path("dangling-link.csv", dangling, "a link to a missing file")
    locked = folder / "no-permission.csv"
    if locked.exists():
        locked.chmod(0o644)
    locked.write_text(good, encoding="utf-8")
    locked.chmod(0)
    add_path("no-permission.csv", locked, "chmod 000 (root reads it anyway)", expect="")
    add_path("file-as-folder.csv", folder / "one-row.csv" / "x.csv", "a path through a file")
    add_path("name-too-long.csv", folder / ("x" * 300 + ".csv"), "a 300-character file name")
    add("no-extension", good, "a CSV without an extension")
    add("sheet.xlsx", _zip_bytes("sheet.xml", "<x/>"), "an Excel workbook")

    # --- binary, compressed, other encodings ------------------------------------------------------
    add("empty.csv", b"", "0 bytes")
    add("whitespace.csv", " \n\t\r\n  \n", "only blanks")
    add("nul-bytes.csv", b"\x00" * 4096, "4 KB of NUL bytes")
    add("nul-in-cell.csv", good.replace("example number 3", "example\x00number 3").encode(), "a NUL inside a few cells",
        expect="")
    add("gzip.csv", gzip.compress(good.encode(), mtime=0), "a gzip file named .csv")
    add("gzip.jsonl", gzip.compress(jsonl_text(good_rows()).encode(), mtime=0), "a gzip file named .jsonl")
    add("zip.csv", _zip_bytes("data.csv", good), "a zip file named .csv")
    add("png.csv", b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "a PNG renamed .csv")
    add("pdf.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 20, "a PDF renamed .csv")
    add("random-bytes.csv", _random_bytes(8192, seed=1), "8 KB of random bytes")
    add("utf16le-no-bom.csv", good.encode("utf-16-le"), "UTF-16 little-endian without a BOM")
    add("utf16be-no-bom.csv", good.encode("utf-16-be"), "UTF-16 big-endian without a BOM")
    add("utf16-bom.csv", good.encode("utf-16"), "UTF-16 with a BOM (valid)", expect="ok")
    add("utf32-bom.csv", good.encode("utf-32"), "UTF-32 with a BOM")
    add("latin1.csv", csv_text([{"text": f"café crème {i}", "label": lab} for i in range(8) for lab in "ab"]).encode("latin-1"),
        "Latin-1 text")
    add("utf8-bom.csv", b"\xef\xbb\xbf" + good.encode(), "a UTF-8 BOM (valid)", expect="ok")
    add("utf8-bom.jsonl", b"\xef\xbb\xbf" + jsonl_text(good_rows()).encode(), "a UTF-8 BOM before JSON lines", expect="ok")
    add("crlf.csv", csv_text(good_rows(), newline="\r\n"), "Windows line ends (valid)", expect="ok")
    add("cr-only.csv", csv_text(good_rows(), newline="\r"), "old Mac line ends", expect="ok")

    # --- CSV structure ----------------------------------------------------------------------------
    add("header-only.csv", "text,label\n", "a header and no rows")
    add("one-row.csv", "text,label\ngood film,pos\n", "a single row")
    add("one-class.csv", csv_text(good_rows(labels=("same",))), "every label the same")
    add("two-per-class.csv", csv_text(good_rows(2, labels=("a", "b"))), "too few rows per class to split")
    add("ragged.csv", good + "a,b,c,d\n", "a row with too many fields")
    add("unbalanced-quote.csv", good.replace("neutral example number 4", '"neutral example number 4'),
        "an opening quote that never closes")
    big_quote = "text,label\n" + '"broken quote,neg\n' + "".join(f"row {i},{LABELS[i % 3]}\n" for i in range(300_000))
    add("unbalanced-quote-big.csv", big_quote, "an unclosed quote before 5 MB of rows", slow=True)
    add("huge-cell.csv", "text,label\n" + "x" * (20 << 20) + ",neg\n" + good.split("\n", 1)[1],
        "a 20 MB cell", slow=True)
    add("long-header.csv", "text,label," + ",".join(f"column_{i}_" + "h" * 100 for i in range(10_000)) + "\n"
        + "".join(f"{r['text']},{r['label']}" + "," * 10_000 + "\n" for r in good_rows()),
        "a 1 MB header line", slow=True, expect="ok")
    wide_cols = ["text", "label"] + [f"c{i}" for i in range(10_000)]
    add("10000-columns.csv", ",".join(wide_cols) + "\n" + "".join(
        f"{r['text']},{r['label']}," + ",".join("1" for _ in range(10_000)) + "\n" for r in good_rows()),
        "10,000 columns", slow=True, expect="ok")
    add("duplicate-columns.csv", "text,label,label\n" + "".join(f"{r['text']},{r['label']},x\n" for r in good_rows()),
        "the header names 'label' twice")
    add("empty-column-names.csv", "text,,,label\n" + "".join(f"{r['text']},,,{r['label']}\n" for r in good_rows()),
        "two columns without a name", expect="ok")
    add("no-label-column.csv", csv_text([{"text": r["text"], "stars": 3} for r in good_rows()]), "no label column")
    add("labels-all-empty.csv", "text,label\n" + "".join(f"{r['text']},\n" for r in good_rows()), "every label empty")
    add("case-variants.csv", csv_text(labelled(("NEG", "neg", "pos"))),
        "NEG / neg (accepted with a warning)", expect="ok")
    forms = "".join(f"row {i},{form}\n" for i in range(8) for form in ("1", "1.0", " 1 ", "2", "2.0"))
    add("integral-label-forms.csv", "text,label\n" + forms, "1, 1.0 and ' 1 ' (one class)", expect="ok")
    add("fractional-labels.csv", csv_text(labelled((2.5, 1, 3))),
        "2.5 among whole numbers")
    add("inf-labels.csv", csv_text(labelled(("inf", 1, 2))), "inf")
    add("nan-labels.csv", csv_text(labelled(("NaN", 1, 2))), "NaN", expect="ok")
    add("mixed-label-types.csv", csv_text(labelled((1, "pos", "2.0", "true"))),
        "numbers, strings and booleans", expect="ok")
    add("bool-labels.csv", csv_text(labelled(("true", "false"))),
        "true / false", expect="ok")
    add("free-text-labels.csv", csv_text([{"text": f"sample text {i}", "label": f"label {i}"} for i in range(500)]),
        "every label different")
    add("semicolons.csv", csv_text(good_rows(), sep=";"), "a European Excel export (valid)", expect="ok")
    add("numbers-as-text.csv", csv_text([{"text": i, "label": LABELS[i % 3]} for i in range(60)]),
        "texts that are numbers", expect="ok")
    add("blank-lines.csv", "text,label\n" + "\n" * 100_000 + good.split("\n", 1)[1], "100,000 blank lines", expect="ok")
    add("whitespace-texts.csv", "text,label\n" + "".join(f"   ,{LABELS[i % 3]}\n" for i in range(30)), "blank texts")
    add("unknown-split.csv", csv_text([{**r, "split": "holdout"} for r in good_rows()]), "split values that are not splits")
    many = [{"text": f"class {c} row {i}", "label": f"c{c}"} for c in range(200) for i in range(3)]
    add("many-classes-capped.csv", csv_text(many),
        "200 classes capped to 120 training rows (a warning)", options={"max_train": 120}, slow=True, expect="ok")
    add("label-is-text.csv", good, "--label-col names the text column", options={"label_col": "text"})
    add("max-train-one.csv", good, "max_train=1 leaves one class", options={"max_train": 1})

    # --- JSON lines and JSON ----------------------------------------------------------------------
    add("non-object-lines.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n42\n"str"\n', "lines that are not objects")
    add("list-labels.jsonl", jsonl_text(labelled((["a", "b"],), 20)), "labels that are lists")
    add("dict-labels.jsonl", jsonl_text(labelled(({"name": "a"},), 20)), "labels that are objects")
    add("mixed-list-labels.jsonl", jsonl_text(labelled((["a"], "b"), 10)),
        "strings and lists in one label column")
    add("nan-labels.jsonl", jsonl_text(labelled((float("nan"), 1, 2))),  # json.dumps writes the NaN literal
        "NaN literals", expect="ok")
    add("integral-forms.jsonl", jsonl_text(labelled((1, 1.0, "1", 2))),
        "1, 1.0 and '1' (one class)", expect="ok")
    add("fractional-labels.jsonl", jsonl_text(labelled((2.5, 1, "a"))),
        "2.5 among strings")
    add("bool-and-string.jsonl", jsonl_text(labelled((True, "True", False))),
        "true and 'True'", expect="ok")
    add("broken-line.jsonl", jsonl_text(good_rows())[:-40] + "\n{not json\n", "a broken last line")
    add("duplicate-key.jsonl", "".join(f'{{"text": "t {i}", "label": "a", "label": "b"}}\n' for i in range(20)),
        "an object naming 'label' twice")
    deep = "[" * 100_000 + "]" * 100_000
    add("deep-text.jsonl", "".join(f'{{"text": {deep if i == 0 else json.dumps("t")}, "label": "{LABELS[i % 3]}"}}\n'
                                   for i in range(30)), "a text nested 100,000 lists deep")
    add("deep.json", deep, "an array nested 100,000 deep")
    add("deep-object.json", '{"a":' * 50_000 + "1" + "}" * 50_000, "an object nested 50,000 deep")
    add("header-only-columns.json", json.dumps({"text": [], "label": []}), "columns without rows")
    add("many-empty-records.json", "[" + ",".join(["{}"] * 200_000) + "]", "200,000 empty records")
    add("scalar.json", "42", "a bare number")
    add("null.json", "null", "null")
    add("string.json", '"hello"', "a bare string")
    add("truncated.json", json.dumps(good_rows())[:-30], "an array cut short")
    add("array-of-arrays.json", json.dumps([[r["text"], r["label"]] for r in good_rows()]), "rows as arrays")
    add("duplicate-key.json", "[" + ",".join(f'{{"text": "t {i}", "label": "a", "label": "b"}}' for i in range(20)) + "]",
        "records naming 'label' twice")
    add("ragged-columns.json", json.dumps({"text": ["a", "b", "c"], "label": ["x"]}), "columns of different lengths")
    add("huge-line.jsonl", json.dumps({"text": "y" * (20 << 20), "label": "neg"}) + "\n" + jsonl_text(good_rows()),
        "a 20 MB line", slow=True)
    add("blank-lines.jsonl", "\n\n\n  \n", "only blank lines")
    add("null-texts.jsonl", jsonl_text([{"text": None, "label": LABELS[i % 3]} for i in range(30)]), "every text null")
    add("null-labels.jsonl", jsonl_text([{"text": f"sample text {i}", "label": None} for i in range(30)]), "every label null")

    # --- Parquet ----------------------------------------------------------------------------------
    valid = _parquet_bytes(pa.Table.from_pylist(good_rows()))
    add("wrong-schema.parquet", _parquet_bytes(pa.table({"a": list(range(30)), "b": [1.5] * 30})), "no text, no label")
    add("truncated.parquet", valid[: len(valid) // 2], "the first half of a valid file")
    add("no-footer.parquet", valid[:-8], "the footer cut off")
    add("text.parquet", good, "a CSV named .parquet")
    add("random.parquet", _random_bytes(4096, seed=2), "random bytes named .parquet")
    add("gzip.parquet", gzip.compress(valid, mtime=0), "a gzip'd Parquet file")
    def table(labels, texts=None):
        """A Parquet file of `labels` (an Arrow array or a list) and texts 'sample text i'."""
        n = len(labels)
        return _parquet_bytes(pa.table({"text": texts if texts is not None else [f"sample text {i}" for i in range(n)],
                                        "label": labels}))

    rows = good_rows()
    add("struct-labels.parquet", table([{"a": i % 2} for i in range(20)]), "struct labels")
    add("fractional-labels.parquet", table([2.5, 1.0, 3.0] * 8), "float labels with 2.5")
    add("integral-floats.parquet", table([1.0, 2.0, 3.0] * 8), "1.0 / 2.0 / 3.0 (valid)", expect="ok")
    add("zero-rows.parquet", table(pa.array([], pa.string()), pa.array([], pa.string())), "a schema and no rows")
    add("duplicate-columns.parquet", _parquet_bytes(pa.Table.from_arrays(
        [pa.array([r["text"] for r in rows]), pa.array([r["label"] for r in rows]), pa.array(["x"] * len(rows))],
        names=["text", "label", "label"])), "'label' twice")
    add("binary-text.parquet", table([LABELS[i % 3] for i in range(30)], pa.array([b"\xff\xfe bad " + bytes([i]) for i in range(30)])),
        "non-UTF-8 bytes as text")
    add("null-labels.parquet", table(pa.nulls(30)), "a label column of type null")
    add("dictionary-labels.parquet", table(pa.array([r["label"] for r in rows]).dictionary_encode(), [r["text"] for r in rows]),
        "dictionary-encoded labels (valid)", expect="ok")
    add("decimal-labels.parquet", table(pa.array([decimal.Decimal(v) for v in ("1.00", "2.00", "2.50")] * 8)),
        "decimal labels with 2.50")
    add("list-texts.parquet", table([LABELS[i % 3] for i in range(30)], [[f"sample text {i}"] for i in range(30)]),
        "texts that are lists")
    return cases


def _zip_bytes(name: str, text: str) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as zf:
        zf.writestr(name, text)
    return sink.getvalue()


def _random_bytes(n: int, seed: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def cache_cases(folder: Path) -> list[Case]:
    """`run --cache PATH` where PATH cannot hold an answer cache: each must stop before any training
    with a message naming the path (the endpoint is a closed port: it is never reached)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "fruit.csv"
    data.write_text("text,label\n" + "".join(f"{w} item {i},{w[0]}\n" for i in range(60)
                                             for w in ("apple", "banana", "cherry")))
    garbage = folder / "garbage.sqlite"
    garbage.write_bytes(_random_bytes(4096, seed=7))
    notes = folder / "notes.txt"
    notes.write_text("my notes\n" * 100)
    truncated = folder / "truncated.sqlite"
    import sqlite3

    with sqlite3.connect(truncated) as db:
        db.execute("create table t (x)")
        db.executemany("insert into t values (?)", [("x" * 200,)] * 200)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    places = {"cache:directory": folder, "cache:garbage": garbage, "cache:text_file": notes,
              "cache:truncated_sqlite": truncated, "cache:under_a_file": notes / "lm.sqlite",
              "cache:unwritable_place": Path("/sys/ea-fuzz/lm.sqlite"), "cache:dev_null": Path("/dev/null")}
    return [Case(name, str(path), "bad --cache", argv=[
        "run", "--data", str(data), "--ssm", "tfidf", "--lm", "openai", "--lm-model", "m",
        "--lm-base-url", "http://127.0.0.1:9/v1", "--cache", str(path), "--out", "{out}/run"])
        for name, path in places.items()]


def bundle_cases(folder: Path) -> list[Case]:
    """Tampered bundles through `predict` (tests/tampered_bundles.py)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.tampered_bundles import fuzz_cases

    return fuzz_cases(folder)


#: Case providers; `--provider` adds others.
PROVIDERS: list[Provider] = [data_cases, cache_cases, bundle_cases]


def build_corpus(folder: Path, providers: Optional[list[Provider]] = None) -> list[Case]:
    """Every provider's cases, each provider in its own subfolder."""
    cases: list[Case] = []
    for i, provider in enumerate(providers or PROVIDERS):
        cases.extend(provider(folder / f"{i}-{getattr(provider, '__name__', 'cases')}"))
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"case names must be unique: {sorted(dupes)}")
    return cases


def load_provider(spec: str) -> Provider:
    """``package.module:function`` (importable from the repository root) as a provider."""
    import importlib

    module, _, name = spec.partition(":")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return getattr(importlib.import_module(module), name or "fuzz_cases")


def cleanup(folder: Path) -> None:
    """Remove a corpus folder (restoring permissions first)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Running cases
# --------------------------------------------------------------------------------------------


def command(case: Case, out: Path) -> list[str]:
    """The CLI arguments of a case (after `python -m ea_core`)."""
    if case.argv is not None:
        return [a.replace("{out}", str(out)) for a in case.argv]
    flags: list[str] = []
    for key, value in case.options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return ["train", "--data", case.path, "--ssm", "tfidf", "--out", str(out), *flags]


def classify(rc: Optional[int], stderr: str) -> str:
    if rc is None:
        return "hang"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if rc == 0:
        return "accepted"
    if rc == 2 and stderr.strip():
        return "clean"
    return "other"


def run_case(case: Case, timeout: float, scratch: Path) -> Outcome:
    """Run one case as a subprocess in its own process group (killed whole on a timeout)."""
    out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    argv = [sys.executable, "-m", "ea_core", *command(case, out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OPENAI_API_KEY": "sk-fuzz-not-a-real-key"}  # the `run` cases call only a closed local port
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        rc = None
    seconds = time.monotonic() - start
    shutil.rmtree(out, ignore_errors=True)
    kind = classify(rc, stderr)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if kind == "traceback":
        message = lines[-1] if lines else ""
    else:
        message = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "")
    return Outcome(case.name, kind, rc, seconds, message)


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"tried": len(outcomes)}
    counts.update({kind: sum(o.kind == kind for o in outcomes) for kind in KINDS})
    return counts


def format_line(o: Outcome, width: int = 110) -> str:
    msg = o.message if len(o.message) <= width else o.message[: width - 3] + "..."
    return f"{o.case:<28} {o.kind:<10} {'' if o.rc is None else o.rc:>4} {o.seconds:6.1f}  {msg}"


def format_totals(outcomes: list[Outcome]) -> str:
    t = totals(outcomes)
    return (f"tried {t['tried']}, accepted {t['accepted']} (exit 0), clean errors {t['clean']} (exit 2, no traceback), "
            f"tracebacks {t['traceback']}, hangs {t['hang']}, other {t['other']}")


def unexpected(cases: list[Case], outcomes: list[Outcome]) -> list[str]:
    """Cases whose outcome contradicts their `expect` (a valid file refused, a bad one accepted)."""
    want = {"ok": "accepted", "error": "clean"}
    return [f"{c.name}: expected {want[c.expect]}, got {o.kind}" for c, o in zip(cases, outcomes)
            if c.expect and o.kind in want.values() and o.kind != want[c.expect]]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a case counts as a hang")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--keep", help="write the corpus here and keep it")
    parser.add_argument("--provider", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="add another corpus, e.g. tests.some_module:fuzz_cases (a function folder -> list[Case])")
    args = parser.parse_args(argv)

    providers = list(PROVIDERS) + [load_provider(spec) for spec in args.provider]
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ea-fuzz-"))
    try:
        cases = build_corpus(folder / "corpus", providers)
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        scratch = folder / "outs"
        scratch.mkdir(parents=True, exist_ok=True)
        print(f"{len(cases)} cases in {folder / 'corpus'}; `python -m ea_core train --ssm tfidf`, "
              f"timeout {args.timeout:.0f} s, {args.jobs} at once", flush=True)
        start = time.monotonic()
        print(f"{'case':<28} {'outcome':<10} {'rc':>4} {'s':>6}  message")
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for outcome in pool.map(lambda c: run_case(c, args.timeout, scratch), cases):  # in order, as they finish
                outcomes.append(outcome)
                print(format_line(outcome), flush=True)
        print()
        for line in unexpected(cases, outcomes):
            print(f"unexpected: {line}")
        print(format_totals(outcomes))
        print(f"wall time {time.monotonic() - start:.0f} s")
    finally:
        if not args.keep:
            cleanup(folder)
    t = totals(outcomes)
    return 0 if t["traceback"] == t["hang"] == t["other"] == 0 and not unexpected(cases, outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
