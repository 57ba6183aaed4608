"""Read one local file of a known format (CSV, TSV, JSON lines, JSON, Parquet) as an Arrow table.

pyarrow does the reading, so large files stay cheap; this module turns each way a file can be
wrong (a ragged row, an unclosed quote, a field too long, bad UTF-8, a broken or too deeply
nested JSON line, a repeated column) into a `DataError` that names the line and the fix.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ea_core.data.messages import MAX_SHOWN, short_reason
from ea_core.errors import DataError

__all__ = ["SUPPORTED_FORMATS", "FORMAT_NAMES", "FORMATS_HELP", "read_format", "encoding_message", "nested_columns"]

#: File extensions understood by `load_dataset`, and the reader used for each.
SUPPORTED_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON lines", "json": "JSON", "parquet": "Parquet"}
FORMATS_HELP = ".csv, .tsv, .jsonl/.ndjson (one JSON object per line), .json (JSON lines or an array of records), .parquet"
#: Bytes per read block of CSV/JSON lines: one field or record must fit in one block.
_BLOCK_BYTES = 1 << 22
#: Deepest nesting of lists/objects in a JSON record (real records nest a few levels).
_MAX_JSON_DEPTH = 500


def read_format(fmt: str, path: str, source: str, encoding: Optional[str], head: bytes) -> pa.Table:
    """`path` read by the reader of `fmt` (a value of `SUPPORTED_FORMATS`), with its columns named,
    unique and its rows present; `head` is the file's first bytes, `encoding` None for UTF-8."""
    try:
        if fmt == "csv":
            table = _read_csv(path, source, _sniff_delimiter(head), encoding)
        elif fmt == "tsv":
            table = _read_csv(path, source, "\t", encoding)
        elif fmt == "jsonl":
            table = _read_jsonl(path, source, encoding)
        elif fmt == "json":
            table = _read_json(path, source, encoding, head)
        else:
            table = _read_parquet(path, source)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(encoding_message(path, source, encoding, exc)) from None
    except RecursionError:
        raise DataError(
            f"{source} is nested too deeply to read: records must be flat objects like "
            '{"text": "...", "label": "..."}.'
        ) from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"Could not read {source} as {FORMAT_NAMES[fmt]}: {short_reason(exc)}.") from None
    if fmt in ("csv", "tsv") and any(pa.types.is_binary(f.type) for f in table.schema):
        raise DataError(encoding_message(path, source, encoding))  # pyarrow keeps non-UTF-8 cells as bytes
    if table.num_columns == 0:
        raise DataError(f"{source} has no columns.")
    names = table.column_names
    if any(not name.strip() for name in names):
        names = _name_blank_columns(names)
        table = table.rename_columns(names)
    _check_unique_columns(source, names)
    if table.num_rows == 0:
        raise DataError(
            f"{source} has no data rows (columns: {', '.join(table.column_names)}). "
            "Add rows below the header, or check that you passed the right file."
        )
    return table


def _check_unique_columns(source: str, names: list[str]) -> None:
    """Two columns of one name: which one is the label? Refuse, naming it (Arrow would raise a KeyError)."""
    dupes = [name for name, n in Counter(names).items() if n > 1]
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:MAX_SHOWN])
        raise DataError(
            f"{source} has duplicate column names: {shown} appear{'s' if len(dupes) == 1 else ''} more than once "
            "in its header. Rename or remove the extra column so that every column name is unique."
        )


def _name_blank_columns(names: list[str]) -> list[str]:
    """'text,,label': a column without a name is called column_2 (by position), so it is no duplicate."""
    taken, out = set(names), []
    for i, name in enumerate(names):
        if not name.strip():
            name = f"column_{i + 1}"
            while name in taken:
                name += "_"
            taken.add(name)
        out.append(name)
    return out


def _sniff_delimiter(head: bytes) -> str:
    """',' unless the header line clearly uses ';' or a tab (European Excel exports)."""
    first = head.split(b"\n", 1)[0]
    if b"," in first:
        return ","
    for delim in (b";", b"\t", b"|"):
        if delim in first:
            return delim.decode()
    return ","


def _read_csv(path: str, source: str, delimiter: str, encoding: Optional[str]) -> pa.Table:
    from pyarrow import csv as pacsv

    read = pacsv.ReadOptions(encoding=encoding or "utf8", block_size=_BLOCK_BYTES)

    def stream(parse: Any, convert: Any) -> pa.Table:
        # The streaming reader keeps peak memory near the size of the final table.
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        return pa.Table.from_batches(list(reader), schema=reader.schema)

    quoted = dict(quote_char='"', newlines_in_values=True)
    # TSV files are usually unquoted (GLUE): a stray '"' must not swallow the following rows.
    # Quoting is tried second, for TSVs whose quoted fields hold tabs or newlines.
    attempts = [dict(quote_char=False, newlines_in_values=False), quoted] if delimiter == "\t" else [quoted]
    # No boolean inference: a cell "True" stays "True" whatever the rest of its column holds.
    convert = pacsv.ConvertOptions(
        strings_can_be_null=False, quoted_strings_can_be_null=False, true_values=[], false_values=[]
    )
    error: Optional[Exception] = None
    for opts in attempts:
        parse = pacsv.ParseOptions(delimiter=delimiter, **opts)
        try:
            try:
                return stream(parse, convert)
            except pa.ArrowInvalid as exc:
                if "conversion error" not in str(exc).lower():
                    raise
                # A column looked numeric at first and is not: read every column as text.
                names = pacsv.open_csv(path, read_options=read, parse_options=parse).schema.names
                convert_all = pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                    true_values=[],
                    false_values=[],
                )
                return stream(parse, convert_all)
        except pa.ArrowInvalid as exc:
            if error is None:
                error = exc
            if "csv parse error" not in str(exc).lower():
                break
    assert error is not None
    raise csv_failure(path, source, delimiter, encoding, error)


def csv_failure(path: str, source: str, delimiter: str, encoding: Optional[str], error: Exception) -> Exception:
    """The `DataError` for an Arrow CSV error (a field too long, a ragged row, bad UTF-8, an empty
    file), naming the line and the fix; `error` itself when it is none of those."""
    text = str(error)
    if "straddl" in text.lower() or "block size" in text.lower():
        return DataError(_long_field_message(path, source, "field (cell)"))
    if "empty csv" in text.lower():
        return DataError(f"{source} is empty: it has no header and no rows.")
    if "csv parse error" in text.lower():
        return DataError(_ragged_message(path, source, delimiter, encoding, text))
    if "utf8" in text.lower() or "utf-8" in text.lower():
        return DataError(encoding_message(path, source, encoding))
    return error


def _long_field_message(path: str, source: str, what: str) -> str:
    """A field too long for Arrow's read blocks: name the line, or the usual cause (an unclosed quote).

    Arrow reads a field across two blocks at most, so up to `_BLOCK_BYTES` always works and
    somewhat more (about twice that) usually does.
    """
    limit = f"{_BLOCK_BYTES >> 20} MB"
    long_line = _first_long_line(path, _BLOCK_BYTES)
    if long_line:
        number, size = long_line
        return (
            f"{source} has a {what} too long to read: line {number} is {size / (1 << 20):.1f} MB long (up to {limit} "
            "per line always works). Shorten that text (models read only its first few hundred words anyway), "
            "or remove the row."
        )
    return (
        f"{source} has a {what} too long to read, though no line is longer than {limit}: a double quote that opens "
        "a field probably never closes, so the rest of the file reads as one field. Check the quotes."
    )


def _first_long_line(path: str, limit: int) -> Optional[tuple[int, int]]:
    """(line number, length in bytes) of the first line longer than `limit`, read in chunks."""
    number, length = 1, 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            pieces = chunk.split(b"\n")
            for i, piece in enumerate(pieces):
                length += len(piece)
                if i < len(pieces) - 1:  # the line ends here
                    if length > limit:
                        return number, length
                    number, length = number + 1, 0
    return (number, length) if length > limit else None


def _ragged_message(path: str, source: str, delimiter: str, encoding: Optional[str], arrow_msg: str) -> str:
    name = {",": "comma", "\t": "tab", ";": "semicolon"}.get(delimiter, repr(delimiter))
    where, unclosed, start = "", False, 2
    try:
        with open(path, newline="", encoding=encoding or "utf-8", errors="replace") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, [])
            start = reader.line_num + 1
            for row in reader:
                if row and len(row) != len(header):
                    # A field that swallowed the following lines: a quote that opens and never closes.
                    unclosed = len(row) < len(header) and reader.line_num > start and any("\n" in f for f in row)
                    snippet = delimiter.join(row)
                    snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
                    where = f"line {start} has {len(row)} fields but the header has {len(header)} ({snippet!r})"
                    break
                start = reader.line_num + 1
    except csv.Error:  # "field larger than field limit": the same unclosed quote, in a bigger file
        unclosed = True
    except OSError:
        pass
    if unclosed:
        return (
            f"Malformed CSV in {source}: the double quote that opens a field on line {start} never closes, so the "
            "lines after it read as one field. Close that quote, or remove it (a quote inside a quoted field is "
            'written twice: "").'
        )
    if not where:
        where = arrow_msg.replace("CSV parse error: ", "").strip()
    return (
        f"Malformed CSV in {source}: {where}. Every row must have as many {name}-separated fields as the "
        f"header. Usually a text contains a {name} without quotes: wrap such fields in double quotes, "
        "or save the data as JSONL or Parquet instead."
    )


def encoding_message(path: str, source: str, encoding: Optional[str], exc: Optional[BaseException] = None) -> str:
    if encoding:
        return f"Could not decode {source} as {encoding}: {short_reason(exc) if exc else 'invalid bytes'}. Check the encoding you passed."
    bad = _first_bad_utf8(path)
    if bad is None:
        where = short_reason(exc) if exc else "invalid bytes"
    else:
        line, byte, snippet = bad
        where = f"line {line} has the byte 0x{byte:02X}, which is not valid UTF-8 (near {snippet!r})"
    return (
        f"{source} is not valid UTF-8: {where}. The file was probably saved in another encoding such as "
        "Windows-1252 or latin-1. Re-save it as UTF-8 (in Excel: 'CSV UTF-8'; in a text editor: 'Save as' "
        "with the UTF-8 encoding) and load it again."
    )


def _first_bad_utf8(path: str) -> Optional[tuple[int, int, str]]:
    """(line number, offending byte, nearby text) of the first invalid UTF-8 byte, or None."""
    line, carry = 1, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            data, final = carry + chunk, not chunk
            try:
                data.decode("utf-8")
                good, carry = len(data), b""
            except UnicodeDecodeError as err:
                if not final and err.reason == "unexpected end of data":
                    good, carry = err.start, data[err.start:]
                else:
                    before = data[: err.start]
                    line += before.count(b"\n")
                    start = max(before.rfind(b"\n") + 1, err.start - 30)
                    snippet = data[start : err.start + 10].split(b"\n", 1)[0].decode("utf-8", "replace")
                    return line, data[err.start], snippet
            line += data[:good].count(b"\n")
            if final:
                return None


def _json_source(path: str, encoding: Optional[str]) -> Any:
    """A path pyarrow can read directly, or an in-memory UTF-8 copy for other encodings."""
    if encoding is None:
        return path
    with open(path, "rb") as fh:
        return pa.BufferReader(fh.read().decode(encoding).encode("utf-8"))


def _read_jsonl(path: str, source: str, encoding: Optional[str]) -> pa.Table:
    from pyarrow import json as pajson

    deep = _too_deep_line(path)
    if deep is not None:
        raise DataError(
            f"{source} is nested too deeply to read: line {deep} has lists or objects more than "
            f"{_MAX_JSON_DEPTH} levels deep. Records must be flat objects like "
            '{"text": "...", "label": "..."}.'
        )
    try:
        return pajson.read_json(_json_source(path, encoding), read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES))
    except UnicodeDecodeError as exc:
        raise DataError(encoding_message(path, source, encoding, exc)) from None
    except pa.ArrowInvalid as exc:
        arrow_msg = str(exc)
    if "empty json" in arrow_msg.lower():
        raise DataError(f"{source} is empty: it has no records.")
    if "straddl" in arrow_msg.lower() or "block size" in arrow_msg.lower():
        raise DataError(_long_field_message(path, source, "record"))
    bad = _first_bad_json_line(path, encoding, source)
    if bad:
        raise DataError(f"{source} is not valid JSON lines: {bad}. Each line must be one JSON object, e.g. "
                        '{"text": "...", "label": "..."}. Fix or remove that line.')
    if "changed from" in arrow_msg or "type" in arrow_msg.lower():
        return _jsonl_mixed_types(path, encoding)
    raise DataError(f"Could not read {source} as JSON lines: {arrow_msg.splitlines()[0]}.")


def _too_deep_line(path: str) -> Optional[int]:
    """The first line whose brackets nest deeper than `_MAX_JSON_DEPTH`, or None.

    Arrow's JSON reader recurses once per level and crashes the process (a segmentation fault,
    no exception) somewhere past 10,000 levels, so depth is counted first: brackets per line,
    in numpy, a block at a time (brackets inside strings only ever overcount).
    """
    carry, line = 0, 1
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            arr = np.frombuffer(chunk, dtype=np.uint8)
            step = (arr == 91).view(np.int8) + (arr == 123).view(np.int8)  # [ {
            step -= (arr == 93).view(np.int8) + (arr == 125).view(np.int8)  # ] }
            depth = np.cumsum(step, dtype=np.int32)
            newlines = np.flatnonzero(arr == 10)
            starts = np.concatenate([[0], newlines[newlines < len(arr) - 1] + 1])
            base = np.concatenate([[-carry], depth[newlines]])[: len(starts)]  # depth before each line
            over = np.flatnonzero(np.maximum.reduceat(depth, starts) - base > _MAX_JSON_DEPTH)
            if len(over):
                return line + int(over[0])
            carry = int(depth[-1] - depth[newlines[-1]]) if len(newlines) else carry + int(depth[-1])
            line += len(newlines)
    return None


class _DuplicateKey(Exception):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _loads(text: str) -> Any:
    """json.loads that refuses repeated keys (the same rule as duplicate CSV columns)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _duplicate_key_message(source: str, key: str, where: str = "") -> str:
    return (
        f"{source} has duplicate column names: {key!r} appears more than once in a record{where}. Rename or "
        "remove the extra key so that every column name is unique."
    )


def _first_bad_json_line(path: str, encoding: Optional[str], source: str = "") -> Optional[str]:
    with open(path, encoding=encoding or "utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            snippet = text if len(text) <= 60 else text[:57] + "..."
            try:
                obj = _loads(text)
            except json.JSONDecodeError as err:
                return f"line {number} is broken ({err.msg} at column {err.colno}): {snippet!r}"
            except RecursionError:
                return f"line {number} is nested too deeply: {snippet!r}"
            except _DuplicateKey as dup:
                raise DataError(_duplicate_key_message(source or path, str(dup), f" (line {number})")) from None
            if not isinstance(obj, dict):
                return f"line {number} is a JSON {type(obj).__name__}, not an object: {snippet!r}"
    return None


def _jsonl_mixed_types(path: str, encoding: Optional[str]) -> pa.Table:
    """Slow path for JSON lines whose columns mix types (e.g. label 1 and label "1")."""
    columns: dict[str, list] = {}
    n = 0
    with open(path, encoding=encoding or "utf-8-sig") as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = _loads(line)
            for key in obj.keys() - columns.keys():
                columns[key] = [None] * n
            for key, values in columns.items():
                values.append(obj.get(key))
            n += 1
    return _table_from_columns(columns)


#: Schema metadata key: columns read from JSON whose values include lists or objects.
_NESTED_META = b"ea_nested_columns"


def _cell_text(value: Any) -> Optional[str]:
    """A JSON value as the text Arrow would give it, for columns that mix types (1, "1", 1.0, true)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # as `normalize_label` spells a boolean column
    if isinstance(value, (int, float)):
        return str(value)  # 1, 1.0, nan: the label rule reads these like Arrow's numeric columns
    return json.dumps(value, ensure_ascii=False)


def _table_from_columns(columns: dict[str, list]) -> pa.Table:
    """Columns of Python values as a table; mixed-type columns become text (nested ones remembered)."""
    arrays, nested = {}, []
    for key, values in columns.items():
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays[key] = pa.array([_cell_text(v) for v in values], pa.string())
            if any(isinstance(v, (dict, list)) for v in values):
                nested.append(key)
    table = pa.table(arrays)
    return table.replace_schema_metadata({_NESTED_META: json.dumps(nested)}) if nested else table


def nested_columns(table: pa.Table) -> set[str]:
    meta = table.schema.metadata or {}
    return set(json.loads(meta[_NESTED_META])) if _NESTED_META in meta else set()


def _load_json_doc(path: str, source: str, encoding: Optional[str]) -> Any:
    """The whole file as one JSON document (repeated keys refused, as in a CSV header)."""
    try:
        with open(path, encoding=encoding or "utf-8-sig") as fh:
            return json.load(fh, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise DataError(_duplicate_key_message(source, str(dup))) from None


def _read_json(path: str, source: str, encoding: Optional[str], head: bytes) -> pa.Table:
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"{":
        try:
            table = _read_jsonl(path, source, encoding)
            if table.num_rows != 1 or not any(pa.types.is_nested(f.type) for f in table.schema):
                return table
            # A single object holding lists: {"text": [...], "label": [...]} or {"data": [...]}.
            doc = _load_json_doc(path, source, encoding)
        except DataError as jsonl_error:
            try:
                doc = _load_json_doc(path, source, encoding)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise jsonl_error from None
    elif first == b"[":
        try:
            doc = _load_json_doc(path, source, encoding)
        except UnicodeDecodeError as exc:
            raise DataError(encoding_message(path, source, encoding, exc)) from None
        except json.JSONDecodeError as err:
            raise DataError(
                f"{source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (is the file "
                "complete?). Fix the file, or save it as JSON lines (.jsonl): one object per line."
            ) from None
    else:
        raise DataError(f"{source} does not look like JSON (it should start with '{{' or '[').")
    records = doc
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) == len(doc) and len({len(v) for v in lists}) == 1 and not any(isinstance(x, dict) for x in lists[0]):
            return _table_from_columns(doc)  # column-oriented: {"text": [...], "label": [...]}
        if len(lists) == 1:
            records = lists[0]  # {"data": [{...}, ...]}
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(
            f"{source} must hold records: one JSON object per line, or an array of objects like "
            '[{"text": "...", "label": "..."}, ...].'
        )
    if not records:
        raise DataError(f"{source} is empty: it has no records.")
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(rec))
    return _table_from_columns({k: [r.get(k) for r in records] for k in keys})


def _read_parquet(path: str, source: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        _check_unique_columns(source, pq.read_schema(path).names)  # reading such a file fails obscurely
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"Could not read {source} as Parquet ({short_reason(exc)}). Is it a valid, complete Parquet file?"
        ) from None
