"""Read a table file a chunk of rows at a time, for batch prediction over files of any size.

`read_table` holds the whole file in memory; a stream holds one chunk (and one read block) at a
time, so memory stays flat whatever the file's size. Parquet is read page by page (a buffered
stream, no pre-buffering of whole column chunks); CSV/TSV through Arrow's streaming reader with
every column as text (no type guessing that a later block could contradict); JSON lines and plain
text (``.txt``: one input per non-empty line) line by line. A ``.json`` array cannot be streamed:
it is read whole (save big files as JSON lines or Parquet). The checks before parsing and the
messages for a malformed file are those of `read_table`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa

from ea_core.data.formats import (
    _BLOCK_BYTES,
    _check_unique_columns,
    _name_blank_columns,
    _sniff_delimiter,
    csv_failure,
    encoding_message,
)
from ea_core.data.messages import short_reason
from ea_core.data.sources import check_data_path, check_table_file, read_table
from ea_core.errors import DataError

__all__ = ["TableStream", "json_record", "open_table_stream", "STREAM_FORMATS"]

#: Formats read as a stream (``json`` arrays and anything else are read whole, then sliced).
STREAM_FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")
#: JSON lines whose keys name the columns (the union, in first-seen order).
_JSONL_SCHEMA_LINES = 1000
#: Bytes Parquet reads at a time (pages are decoded from this buffer, not from whole column chunks).
_PARQUET_BUFFER = 1 << 20


@dataclass
class TableStream:
    """An opened table file: its column names, and `chunks` of rows read on demand."""

    source: str
    fmt: str  # parquet, csv, tsv, jsonl, json or txt
    columns: list[str]
    path: str
    encoding: Optional[str] = None
    #: Rows, when known without reading the file (Parquet's footer, a table read whole); else None.
    rows: Optional[int] = None
    _csv: dict[str, Any] = field(default_factory=dict, repr=False)
    _table: Optional[pa.Table] = field(default=None, repr=False)

    def count_rows(self) -> tuple[int, bool]:
        """(rows, exact?): exact for Parquet and whole-read tables; for CSV / JSON lines / text
        the count of line ends (a field with a line break inside counts twice), scanned in blocks."""
        if self.rows is not None:
            return self.rows, True
        lines, last = 0, b"\n"
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                lines += block.count(b"\n")
                last = block[-1:]
        lines += last != b"\n"
        header = 1 if self.fmt in ("csv", "tsv") else 0
        return max(lines - header, 0), False

    def chunks(self, wanted: Iterable[str], size: int, skip: int = 0) -> Iterator[dict[str, list]]:
        """The `wanted` columns, `size` rows at a time (the last chunk shorter), as Python lists,
        after the first `skip` rows. A malformed part of the file is a `DataError` when reached."""
        wanted = list(dict.fromkeys(wanted))
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        if self.fmt == "txt":
            yield from _sliced_lists(self._txt_rows(), size, skip)
        elif self.fmt == "jsonl":
            yield from _sliced_lists(self._jsonl_rows(wanted), size, skip)
        else:
            for table in _rebatch(self._arrow_batches(wanted, skip), size, skip if self.fmt != "parquet" else 0):
                yield {name: table.column(name).to_pylist() for name in wanted}

    # ------------------------------------------------------------------ Arrow formats

    def _arrow_batches(self, wanted: list[str], skip: int) -> Iterator[pa.RecordBatch]:
        if self._table is not None:
            yield from self._table.select(wanted).to_batches()
        elif self.fmt == "parquet":
            yield from _parquet_batches(self.path, wanted, skip)
        else:
            yield from self._csv_batches(wanted)

    def _csv_batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        from pyarrow import csv as pacsv

        opts = self._csv
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in self.columns}, include_columns=wanted,
                                       strings_can_be_null=False, quoted_strings_can_be_null=False,
                                       true_values=[], false_values=[])
        try:
            reader = pacsv.open_csv(self.path, read_options=opts["read"], parse_options=opts["parse"],
                                    convert_options=convert)
            for batch in reader:
                yield batch
        except pa.ArrowInvalid as exc:
            raise csv_failure(self.path, self.source, opts["delimiter"], self.encoding, exc) from None
        except UnicodeDecodeError as exc:
            raise DataError(encoding_message(self.path, self.source, self.encoding, exc)) from None

    # ------------------------------------------------------------------ line formats

    def _text(self) -> Any:
        return open(self.path, encoding=self.encoding or "utf-8-sig", newline="")

    def _txt_rows(self) -> Iterator[dict[str, Any]]:
        """Non-empty lines, split as `str.splitlines` splits the whole text."""
        try:
            with open(self.path, encoding="utf-8", newline="") as fh:
                for line in fh:
                    for part in line.splitlines():
                        if part.strip():
                            yield {"text": part}
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"Cannot read {self.source} as UTF-8 text ({err}). Re-save it as UTF-8.") from None

    def _jsonl_rows(self, wanted: list[str]) -> Iterator[dict[str, Any]]:
        try:
            with self._text() as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    obj = json_record(line, number, self.source)
                    yield {name: obj.get(name) for name in wanted}
        except UnicodeDecodeError as exc:
            raise DataError(encoding_message(self.path, self.source, self.encoding, exc)) from None


def open_table_stream(source: str, *, encoding: Optional[str] = None) -> TableStream:
    """Open `source` for reading in chunks: the checks of `read_table` (a missing file, a folder,
    a FIFO, an unsupported or binary file, an empty one) and the column names, read now; rows later.
    ``.txt`` is one input per non-empty line (column ``text``)."""
    source = str(source)
    if Path(source).suffix.lower() == ".txt":
        check_data_path(source)
        return TableStream(source, "txt", ["text"], os.path.expanduser(source))
    path, fmt, encoding, head = check_table_file(source, encoding)
    if fmt == "parquet":
        return _open_parquet(source, path)
    if fmt in ("csv", "tsv"):
        return _open_csv(source, path, fmt, encoding, head)
    if fmt == "jsonl":
        return _open_jsonl(source, path, encoding)
    table = read_table(source, encoding=encoding)  # a JSON document: read whole
    return TableStream(source, fmt, table.column_names, path, encoding, rows=table.num_rows, _table=table)


# ---------------------------------------------------------------------------- Parquet


def _parquet_file(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, buffer_size=_PARQUET_BUFFER, pre_buffer=False)


def _open_parquet(source: str, path: str) -> TableStream:
    try:
        pf = _parquet_file(path)
        names = list(pf.schema_arrow.names)
        rows = pf.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"Could not read {source} as Parquet: {short_reason(exc)}.") from None
    _check_unique_columns(source, names)
    if rows == 0:
        raise DataError(f"{source} has no data rows (columns: {', '.join(names)}). "
                        "Add rows below the header, or check that you passed the right file.")
    return TableStream(source, "parquet", names, path, rows=rows)


def _parquet_batches(path: str, wanted: list[str], skip: int) -> Iterator[pa.RecordBatch]:
    """Batches of `wanted` from the row group holding row `skip` on, that row first: the row
    groups before it are never read."""
    pf = _parquet_file(path)
    first, start = 0, 0
    groups = pf.metadata.num_row_groups
    while first < groups and start + pf.metadata.row_group(first).num_rows <= skip:
        start += pf.metadata.row_group(first).num_rows
        first += 1
    offset = skip - start
    try:
        for batch in pf.iter_batches(batch_size=1 << 14, row_groups=range(first, groups), columns=wanted,
                                     use_threads=False):
            if offset:
                if batch.num_rows <= offset:
                    offset -= batch.num_rows
                    continue
                batch, offset = batch.slice(offset), 0
            yield batch
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"Could not read {path} as Parquet: {short_reason(exc)}.") from None


# ---------------------------------------------------------------------------- CSV / TSV


def _open_csv(source: str, path: str, fmt: str, encoding: Optional[str], head: bytes) -> TableStream:
    from pyarrow import csv as pacsv

    delimiter = _sniff_delimiter(head) if fmt == "csv" else "\t"
    read = pacsv.ReadOptions(encoding=encoding or "utf8", block_size=_BLOCK_BYTES)
    quoted = dict(quote_char='"', newlines_in_values=True)
    # As `read_table`: TSV is tried unquoted first (GLUE files hold stray quotes), then quoted.
    attempts = [dict(quote_char=False, newlines_in_values=False), quoted] if fmt == "tsv" else [quoted]
    error: Optional[Exception] = None
    for opts in attempts:
        parse = pacsv.ParseOptions(delimiter=delimiter, **opts)
        try:
            reader = pacsv.open_csv(path, read_options=read, parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
            names = list(reader.schema.names)
            reader.read_next_batch()  # the first block parses with these options
        except StopIteration:
            raise DataError(f"{source} has no data rows (columns: {', '.join(names)}). "
                            "Add rows below the header, or check that you passed the right file.") from None
        except pa.ArrowInvalid as exc:
            error = error or exc
            if "csv parse error" not in str(exc).lower():
                break
            continue
        except UnicodeDecodeError as exc:
            raise DataError(encoding_message(path, source, encoding, exc)) from None
        if any(not n.strip() for n in names):
            names = _name_blank_columns(names)
            read = pacsv.ReadOptions(encoding=encoding or "utf8", block_size=_BLOCK_BYTES, column_names=names,
                                     skip_rows=1)
        _check_unique_columns(source, names)
        return TableStream(source, fmt, names, path, encoding,
                           _csv={"read": read, "parse": parse, "delimiter": delimiter})
    assert error is not None
    raise csv_failure(path, source, delimiter, encoding, error)


# ---------------------------------------------------------------------------- JSON lines


def json_record(line: str, number: int, source: str) -> dict[str, Any]:
    """Line `number` of JSON lines `source` as an object, or a `DataError` naming the line."""
    text = line.strip()
    snippet = text if len(text) <= 60 else text[:57] + "..."
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        why = f"line {number} is broken ({err.msg} at column {err.colno}): {snippet!r}"
    except RecursionError:
        why = f"line {number} is nested too deeply: {snippet!r}"
    else:
        if isinstance(obj, dict):
            return obj
        why = f"line {number} is a JSON {type(obj).__name__}, not an object: {snippet!r}"
    raise DataError(f"{source} is not valid JSON lines: {why}. Each line must be one JSON object, e.g. "
                    '{"text": "...", "label": "..."}. Fix or remove that line.')


def _open_jsonl(source: str, path: str, encoding: Optional[str]) -> TableStream:
    names: dict[str, None] = {}
    seen = 0
    try:
        with open(path, encoding=encoding or "utf-8-sig", newline="") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                names.update(dict.fromkeys(json_record(line, number, source)))
                seen += 1
                if seen >= _JSONL_SCHEMA_LINES:
                    break
    except UnicodeDecodeError as exc:
        raise DataError(encoding_message(path, source, encoding, exc)) from None
    if not seen:
        raise DataError(f"{source} is empty: it has no records.")
    return TableStream(source, "jsonl", list(names), path, encoding)


# ---------------------------------------------------------------------------- re-chunking


def _rebatch(batches: Iterator[pa.RecordBatch], size: int, skip: int) -> Iterator[pa.Table]:
    """Tables of exactly `size` rows (the last one shorter) from batches of any size, after
    dropping the first `skip` rows; at most one chunk and one batch are held at a time."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if skip:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
        if not batch.num_rows:
            continue
        held.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(held)
            yield table.slice(0, size)
            rest = table.slice(size)
            held = [b for b in rest.to_batches() if b.num_rows]
            count -= size
    if count:
        yield pa.Table.from_batches(held)


def _sliced_lists(rows: Iterator[dict[str, Any]], size: int, skip: int) -> Iterator[dict[str, list]]:
    """Row dicts gathered into column lists of `size` rows, after the first `skip` rows."""
    columns: dict[str, list] = {}
    count = 0
    for row in rows:
        if skip:
            skip -= 1
            continue
        if not columns:
            columns = {name: [] for name in row}
        for name, value in row.items():
            columns[name].append(value)
        count += 1
        if count == size:
            yield columns
            columns, count = {}, 0
    if count:
        yield columns
