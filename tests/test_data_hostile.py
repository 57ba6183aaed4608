"""Hostile and malformed datasets: refused at once with a message that names the problem, never
a traceback or a hang; one label rule for every format; warnings the app shows for free."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ea_core.data import inspect_source, load_dataset, normalize_label, read_table
from ea_core.errors import ConfigError, DataError
from ea_core.inputs import read_inputs

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "bench_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_fuzz", module)
    spec.loader.exec_module(module)
    return module


fuzz = _load_bench()


def within(seconds: float, call, *args, **kwargs):
    """`call(*args)` in a daemon thread: its result, or its exception re-raised; a test failure
    instead of a hung suite when a regression blocks (a FIFO opened for reading never returns)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(call, '__name__', call)}{args} still running after {seconds} s: it blocked")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def rows(n_per_class: int = 8, labels=("neg", "pos")) -> list[dict]:
    return [{"text": f"{lab} example {i}", "label": lab} for i in range(n_per_class) for lab in labels]


def csv_of(records: list[dict], sep: str = ",") -> str:
    cols = list(records[0])
    return "\n".join([sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in records]) + "\n"


def message(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        within(60, call, *args, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------------------------------------
# Not a regular file: refused before anything opens it
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_at_once_by_every_reader(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    start = time.monotonic()
    for call in (load_dataset, inspect_source, read_table, read_inputs):
        msg = message(call, str(fifo))
        assert "named pipe (FIFO)" in msg and "regular" in msg
    assert time.monotonic() - start < 5


def test_sockets_devices_and_broken_links_are_named(tmp_path):
    sock = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")  # would never end if read
    loop = tmp_path / "loop.csv"
    loop.symlink_to("loop2.csv")
    (tmp_path / "loop2.csv").symlink_to("loop.csv")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to("gone.csv")
    assert "is a socket" in message(load_dataset, str(sock))
    assert "is a device" in message(load_dataset, str(zero))
    assert "loop of symbolic links" in message(load_dataset, str(loop))
    assert "symbolic link to 'gone.csv', which does not exist" in message(load_dataset, str(dangling))
    assert "is a directory" in message(read_inputs, str(tmp_path))
    assert "File not found" in message(read_inputs, str(tmp_path / "nope.csv"))


# ---------------------------------------------------------------------------------------------
# Duplicate columns
# ---------------------------------------------------------------------------------------------


def test_duplicate_column_names_are_named_in_every_format(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label,label\n" + "".join(f"{r['text']},{r['label']},x\n" for r in rows()))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(f'{{"text": "{r["text"]}", "label": "{r["label"]}", "label": "x"}}\n' for r in rows()))
    array = tmp_path / "d.json"
    array.write_text("[" + ",".join(f'{{"text": "{r["text"]}", "label": "a", "label": "b"}}' for r in rows()) + "]")
    parquet = tmp_path / "d.parquet"
    n = len(rows())
    pq.write_table(pa.Table.from_arrays([pa.array(["t"] * n), pa.array(["a"] * n), pa.array(["b"] * n)],
                                        names=["text", "label", "label"]), parquet)
    for path in (csv, jsonl, array, parquet):
        msg = message(load_dataset, str(path))
        assert "duplicate column names: 'label'" in msg, (path.name, msg)


def test_columns_without_a_name_are_numbered_not_duplicates(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,,,label\n" + "".join(f"{r['text']},,,{r['label']}\n" for r in rows()))
    assert inspect_source(str(path)).columns == ["text", "column_2", "column_3", "label"]
    assert load_dataset(str(path)).labels == ["neg", "pos"]


# ---------------------------------------------------------------------------------------------
# One label rule for every format
# ---------------------------------------------------------------------------------------------


def write(tmp_path: Path, fmt: str, texts: list[str], labels: list) -> Path:
    path = tmp_path / f"d.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text("text" + sep + "label\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in zip(texts, labels)))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels)))
    elif fmt == "json":
        path.write_text(json.dumps([{"text": t, "label": lab} for t, lab in zip(texts, labels)]))
    else:
        try:
            col = pa.array(labels)
        except (pa.ArrowException, TypeError):
            col = pa.array([str(v) for v in labels])
        pq.write_table(pa.table({"text": texts, "label": col}), path)
    return path


FORMATS = ["csv", "tsv", "jsonl", "json", "parquet"]
#: What a user writes for "class 1" in each format: all of them are one class.
INTEGRAL = {"csv": ["1", "1.0", " 1 "], "tsv": ["1", "1.0", " 1 "], "jsonl": [1, 1.0, " 1 "],
            "json": [1, 1.0, "1.0"], "parquet": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_integral_numbers_are_one_class_whatever_their_form(tmp_path, fmt):
    forms = INTEGRAL[fmt]
    labels = [forms[i % 3] if i % 2 == 0 else (2 if fmt != "parquet" else 2.0) for i in range(24)]
    texts = [f"row {i} {'one' if i % 2 == 0 else 'two'}" for i in range(24)]
    task = load_dataset(str(write(tmp_path, fmt, texts, labels)))
    assert task.labels == ["1", "2"]
    for split in (task.train, task.val, task.test):
        for text, code in zip(split.texts, split.labels):
            assert text.endswith("one" if task.labels[code] == "1" else "two")


@pytest.mark.parametrize("fmt", FORMATS)
def test_fractional_numbers_are_refused_in_every_format(tmp_path, fmt):
    labels = [2.5 if i % 3 == 0 else ("a" if fmt not in ("parquet",) else 1.0) for i in range(24)]
    msg = message(load_dataset, str(write(tmp_path, fmt, [f"t {i}" for i in range(24)], labels)))
    assert "non-integer numbers (e.g. 2.5)" in msg and "--label-col" in msg


def test_labels_that_are_lists_or_objects_are_refused(tmp_path):
    for i, bad in enumerate((["a"], {"name": "a"})):
        path = tmp_path / f"d{i}.jsonl"
        path.write_text("".join(json.dumps({"text": f"t {k}", "label": bad if k % 2 else "b"}) + "\n" for k in range(20)))
        assert "lists or objects" in message(load_dataset, str(path))


def test_case_variants_stay_separate_classes_with_a_warning(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(csv_of([{"text": f"t {i} {lab}", "label": lab} for i in range(8) for lab in ("NEG", "neg", "pos")]))
    task = load_dataset(str(path))
    assert task.labels == ["NEG", "neg", "pos"]
    warning = next(w for w in task.warnings if "upper/lower case" in w)
    assert "'NEG' / 'neg'" in warning and "separate classes" in warning


def test_normalize_label_is_the_one_rule():
    assert [normalize_label(v) for v in (1, 1.0, "1", " 1 ", "1.0", "1e0", np.int64(1), np.float32(1.0))] == ["1"] * 8
    assert [normalize_label(v) for v in (None, float("nan"), "", "  ", "NaN")] == [None] * 5
    assert normalize_label(" pos ") == "pos" and normalize_label("NEG") == "NEG" and normalize_label(True) == "true"
    for bad in (2.5, "2.5", float("inf"), "inf", ["a"], {"a": 1}, 1e300):
        with pytest.raises(ValueError):
            normalize_label(bad)


def test_predict_inputs_read_gold_labels_by_the_same_rule(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": v}) + "\n"
                            for i, v in enumerate([1, 1.0, " 1 ", "2", 2.5, "other", None])))
    split, info = read_inputs(str(path), labels=["1", "2"])
    assert info["label_col"] == "label"
    assert split.labels.tolist() == [0, 0, 0, 1, -1, -1, -1]


def test_hugging_face_plain_label_column_follows_the_rule(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "hfdata"
    (folder / "data").mkdir(parents=True)
    records = [{"text": f"row {i}", "label": ["1", "1.0", " 1 ", "2"][i % 4]} for i in range(40)]
    datasets.Dataset.from_list(records).to_parquet(str(folder / "data" / "train-00000.parquet"))
    assert load_dataset(f"hf:{folder}").labels == ["1", "2"]


# ---------------------------------------------------------------------------------------------
# Size caps that drop whole classes
# ---------------------------------------------------------------------------------------------


def test_a_cap_below_the_number_of_classes_warns_how_many_are_missing(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text(csv_of([{"text": f"class {c} row {i}", "label": f"c{c}"} for c in range(50) for i in range(4)]))
    task = load_dataset(str(path), max_train=20)
    assert len(task.train) == 20 and len(np.unique(task.train.labels)) == 20
    warning = next(w for w in task.warnings if "training size cap (20)" in w)
    assert "30 of them have no training example" in warning and "--max-train" in warning and "at least 50" in warning

    kept = load_dataset(str(path), max_train=60)  # enough room: every class keeps an example, no warning
    assert len(np.unique(kept.train.labels)) == 50
    assert not any("size cap" in w for w in kept.warnings)


# ---------------------------------------------------------------------------------------------
# Binary input, other encodings, huge fields
# ---------------------------------------------------------------------------------------------

GOOD = csv_of(rows())


def _zip(text: str) -> bytes:
    import io

    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as zf:
        zf.writestr("data.csv", text)
    return sink.getvalue()


BINARY = {
    "gzip.csv": (lambda: gzip.compress(GOOD.encode(), mtime=0), ["gzip-compressed", "decompress it first"]),
    "zip.csv": (lambda: _zip(GOOD), ["ZIP archive", "unzip it"]),
    "png.csv": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(200), ["PNG image"]),
    "pdf.jsonl": (lambda: b"%PDF-1.4\n" + b"x" * 100, ["not a JSON lines file", "PDF document"]),
    "nul.csv": (lambda: b"\x00" * 1000, ["binary file", "NUL"]),
    "u16le.csv": (lambda: GOOD.encode("utf-16-le"), ["UTF-16 text (little-endian)", "save it as UTF-8"]),
    "u16be.tsv": (lambda: csv_of(rows(), "\t").encode("utf-16-be"), ["UTF-16 text (big-endian)", "save it as UTF-8"]),
    "u32.csv": (lambda: GOOD.encode("utf-32"), ["UTF-32", "save it as UTF-8"]),
    "gz.parquet": (lambda: gzip.compress(b"PAR1" + bytes(100), mtime=0), ["not a Parquet file", "gzip"]),
    "text.parquet": (lambda: GOOD.encode(), ["not a Parquet file", "holds text", ".csv"]),
    "parquet.csv": (lambda: b"PAR1" + bytes(100), ["Parquet file", "give it the .parquet extension"]),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_files_are_named_with_what_to_do(tmp_path, name):
    make, parts = BINARY[name]
    path = tmp_path / name
    path.write_bytes(make())
    msg = message(load_dataset, str(path))
    for part in parts:
        assert part in msg, (part, msg)


def test_utf16_with_a_bom_and_a_stray_nul_still_load(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(GOOD.encode("utf-16"))
    assert load_dataset(str(bom)).labels == ["neg", "pos"]
    nul = tmp_path / "nul.csv"
    nul.write_bytes(GOOD.replace("example 3", "example\x003").encode())
    assert load_dataset(str(nul)).labels == ["neg", "pos"]


def test_latin1_message_suggests_no_flag_that_does_not_exist(tmp_path, capsys):
    path = tmp_path / "latin.csv"
    path.write_bytes(csv_of([{"text": f"café {i}", "label": lab} for i in range(6) for lab in ("a", "b")]).encode("latin-1"))
    msg = message(load_dataset, str(path))
    assert "Re-save it as UTF-8" in msg
    from ea_core.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    import re

    for flag in re.findall(r"--[a-z][a-z-]+", msg):
        assert flag in help_text, f"the message suggests {flag}, which `train` does not have"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_field_too_long_for_the_reader_gets_a_clear_message(tmp_path, fmt):
    path = tmp_path / f"big.{fmt}"
    body = [{"text": "x" * (12 << 20), "label": "neg"}] + rows()  # beyond Arrow's two 4 MB blocks
    path.write_text(csv_of(body) if fmt == "csv" else "".join(json.dumps(r) + "\n" for r in body))
    msg = message(load_dataset, str(path))
    assert "too long to read" in msg and f"line {2 if fmt == 'csv' else 1} is 12.0 MB long" in msg
    assert "up to 4 MB" in msg and "block" not in msg


@pytest.mark.parametrize("n_rows", [10, 300_000])
def test_an_unclosed_quote_is_named_with_its_line(tmp_path, n_rows):
    path = tmp_path / "quote.csv"
    path.write_text('text,label\nfine,pos\n"broken,neg\n' + "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n_rows)))
    msg = message(load_dataset, str(path))
    assert "double quote that opens a field on line 3 never closes" in msg


def test_deeply_nested_json_is_a_data_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in message(load_dataset, str(deep))
    line = tmp_path / "deep.jsonl"
    line.write_text("".join('{"text": ' + ("[" * 100_000 + "]" * 100_000 if i == 0 else '"t"') + ', "label": "a"}\n'
                            for i in range(10)))
    message(load_dataset, str(line))


# ---------------------------------------------------------------------------------------------
# The fuzz corpus, in process: every case loads or is a DataError/ConfigError, never a hang
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    cases = fuzz.build_corpus(folder, [fuzz.data_cases])
    yield cases
    fuzz.cleanup(folder)


def test_the_corpus_is_big_enough_and_named_uniquely(corpus):
    assert len(corpus) >= 60
    assert len({c.name for c in corpus}) == len(corpus)


def _outcome(call, *args, **kwargs) -> str:
    try:
        within(60, call, *args, **kwargs)
    except (DataError, ConfigError):
        return "error"
    return "ok"  # any other exception fails the test


def test_every_fast_corpus_case_loads_or_is_a_clean_error(corpus):
    wrong = []
    for case in corpus:
        if case.slow or case.argv is not None:
            continue
        got = _outcome(load_dataset, case.path, **case.options)
        if case.expect and got != case.expect:
            wrong.append(f"{case.name}: expected {case.expect}, got {got}")
        _outcome(inspect_source, case.path)
        _outcome(read_inputs, case.path)
    assert not wrong, wrong


def test_the_bench_counts_outcomes_by_kind():
    assert fuzz.classify(None, "") == "hang"
    assert fuzz.classify(1, "Traceback (most recent call last):\n  ...") == "traceback"
    assert fuzz.classify(2, "error: bad file") == "clean"
    assert fuzz.classify(0, "") == "accepted"
    assert fuzz.classify(-9, "") == "other"
    case = fuzz.Case("x", "/tmp/x.csv", options={"max_train": 5})
    assert fuzz.command(case, Path("/o")) == ["train", "--data", "/tmp/x.csv", "--ssm", "tfidf", "--out", "/o",
                                              "--max-train", "5"]
    bundle = fuzz.Case("b", "/b", argv=["predict", "--bundle", "/b", "--input", "{out}/in.csv"])
    assert fuzz.command(bundle, Path("/o")) == ["predict", "--bundle", "/b", "--input", "/o/in.csv"]
    outcomes = [fuzz.Outcome("a", "accepted", 0, 1.0, ""), fuzz.Outcome("b", "accepted", 0, 1.0, "")]
    cases = [fuzz.Case("a", "/a", expect="ok"), fuzz.Case("b", "/b")]  # "b" should have been refused
    assert fuzz.unexpected(cases, outcomes) == ["b: expected clean, got accepted"]
    assert fuzz.format_totals(outcomes).startswith("tried 2, accepted 2 (exit 0), clean errors 0")
