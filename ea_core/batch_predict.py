"""Batch prediction over a file of any size: read a chunk, route it, write it, never hold the file.

`prepare` opens the input (its columns checked now, before any model loads) and decides the
output; `run` loads the bundle and streams: each chunk of rows goes through the cascade (a stage
computes only the rows still open, as `AdaptedSystem.predict` does) and is written to its own
part file, renamed into place when complete, with the job's progress in a sidecar
(``OUTPUT.parts/progress.json``). A job killed half-way and started again with the same command
skips the chunks already written; LM answers paid for in the chunk it was in come from the answer
cache (``--cache``, or one kept in the parts folder until the job ends). When every chunk is
written the parts are joined into OUTPUT (renamed into place) and the parts folder goes.

Output: CSV (made safe for spreadsheets, as `ea_core.inputs.write_predictions`), JSON lines (exact
texts) or Parquet, with ``prediction``, ``answered_by`` and ``confidence`` per row, and with
`route` each stage the row reached with its confidence (on by default for Parquet).

Engines: ``local`` (this process) or ``ray`` (`ea_core.ray_predict`, Ray Data over a cluster),
which hand the same per-chunk results to the same writer.

``lm_batch`` (local engine): the LM stage goes through the endpoint's Batch API at the batch price.
A first pass routes every chunk still to write and submits one batch per chunk for its LM rows
(``OUTPUT.parts/lm_batch-NNNNNN.json`` keeps each batch id), so the batches run at the provider
together; a second pass collects them in order and writes the chunks. A job stopped while batches
run (killed, or ``lm_batch_max_wait_s`` reached) polls the saved batches when started again: nothing
is submitted, nor paid, twice; collected answers are in the cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ea_core.bundle import BUNDLE_JSON, load_bundle, read_bundle_meta
from ea_core.cascade import Chunk, LMBatch, Routed, for_streaming, route_split, stage_answers
from ea_core.data.stream import TableStream, open_table_stream
from ea_core.errors import ConfigError, DataError, LMError
from ea_core.events import CancelToken, EventKind, ProgressCallback, ProgressEvent, no_progress
from ea_core.inputs import as_texts, gold_codes, input_columns, prediction_summary, spreadsheet_safe
from ea_core.llm.base import FAILED
from ea_core.llm.batch_api import BatchRecord
from ea_core.splits import Split
from ea_core.system import AdaptedSystem

#: Rows per chunk unless told: a chunk is the unit of memory, of progress and of resuming.
DEFAULT_CHUNK_ROWS = 10_000
ENGINES = ("local", "ray")
PROGRESS_JSON = "progress.json"
PARTS_SUFFIX = ".parts"
#: How often a waiting job asks the provider whether its LM batches are done, unless told.
DEFAULT_BATCH_POLL_S = 30.0
#: Bump when what a part file holds changes: older parts are then not reused.
_PARTS_VERSION = 1


# ---------------------------------------------------------------------------- output files


def output_format(path: str) -> str:
    """``parquet`` (.parquet, .pq), ``jsonl`` (.jsonl) or ``csv`` (anything else, as before)."""
    suffix = Path(path).suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "jsonl" if suffix == ".jsonl" else "csv"


def route_text(names: Sequence[str], confidences: np.ndarray) -> str:
    """``tfidf 0.4120 > lm 0.9000``: each stage reached, in order, with its confidence; the last answered."""
    return " > ".join(f"{name} {c:.4f}" for name, c in zip(names, confidences) if not np.isnan(c))


class PartWriter:
    """Writes one chunk's predictions to a part file, and joins the parts into the output."""

    def __init__(self, fmt: str, names: list[str], labels: list[str], pairs: bool, route: bool) -> None:
        self.fmt, self.names, self.labels, self.pairs, self.route = fmt, names, labels, pairs, route
        self.header = ["text"] + (["text_pair"] if pairs else []) + ["prediction", "answered_by", "confidence"] + (
            ["route"] if route else [])

    @property
    def suffix(self) -> str:
        return {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}[self.fmt]

    def _cells(self, chunk: Chunk) -> Iterator[tuple[list[str], Optional[float], str]]:
        split, r = chunk.split, chunk.routed
        for i in range(len(split)):
            label = self.labels[r.pred[i]] if r.pred[i] >= 0 else ""
            by = self.names[r.answered_by[i]] if r.answered_by[i] >= 0 else ""
            conf = None if np.isnan(r.confidence[i]) else float(r.confidence[i])
            cells = [str(split.texts[i])] + ([str(split.pairs[i])] if split.pairs is not None else []) + [label, by]
            yield cells, conf, route_text(self.names, r.stage_confidence[i]) if self.route else ""

    def write(self, chunk: Chunk, path: Path) -> None:
        """The chunk's rows (no header) to `path`, synced to disk."""
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(self.table(chunk), path)
        else:
            buf = io.StringIO(newline="")
            w = csv.writer(buf)
            for cells, conf, route in self._cells(chunk):
                if self.fmt == "jsonl":
                    values = cells + [conf] + ([route] if self.route else [])
                    buf.write(json.dumps(dict(zip(self.header, values)), ensure_ascii=False) + "\n")
                else:
                    w.writerow([spreadsheet_safe(c) for c in cells] + ["" if conf is None else f"{conf:.4f}"]
                               + ([spreadsheet_safe(route)] if self.route else []))
            path.write_text(buf.getvalue(), encoding="utf-8", newline="")
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())

    def table(self, chunk: Chunk) -> Any:
        """The chunk as an Arrow table (Parquet output): missing answers are nulls."""
        import pyarrow as pa

        split, r = chunk.split, chunk.routed
        label = np.array(self.labels + [None], dtype=object)
        name = np.array(self.names + [None], dtype=object)
        columns: dict[str, Any] = {"text": pa.array(split.texts, pa.string())}
        if self.pairs:
            columns["text_pair"] = pa.array(split.pairs, pa.string())
        columns["prediction"] = pa.array(label[np.where(r.pred >= 0, r.pred, len(self.labels))], pa.string())
        columns["answered_by"] = pa.array(name[np.where(r.answered_by >= 0, r.answered_by, len(self.names))],
                                          pa.string())
        columns["confidence"] = pa.array(r.confidence, pa.float64(), from_pandas=True)  # NaN -> null
        if self.route:
            columns["route"] = pa.array([route_text(self.names, c) for c in r.stage_confidence], pa.string())
        return pa.table(columns)

    def join(self, parts: list[Path], target: Path) -> None:
        """The parts, in order, as one file at `target` (the header once; one part in memory at a time)."""
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for part in parts:
                    table = pq.read_table(part)
                    if writer is None:
                        writer = pq.ParquetWriter(target, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
            return
        with open(target, "w", newline="", encoding="utf-8") as out:
            if self.fmt == "csv":
                csv.writer(out).writerow(self.header)
            out.flush()
            for part in parts:
                with open(part, encoding="utf-8", newline="") as src:
                    shutil.copyfileobj(src, out, 1 << 20)


# ---------------------------------------------------------------------------- the job


@dataclass
class ChunkStats:
    """What the summary needs of a written chunk (kept in progress.json for a resumed job)."""

    rows: int
    answered: list[int]
    known: int
    correct: int


@dataclass
class PredictSummary:
    """What a finished job did: rows, who answered them, accuracy where gold labels were given."""

    output: str
    rows: int
    stage_names: list[str]
    answered: list[int]
    known: int
    correct: int
    resumed_rows: int = 0
    elapsed_s: float = 0.0
    engine: str = "local"

    @property
    def rows_per_s(self) -> float:
        done = self.rows - self.resumed_rows
        return done / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def text(self) -> str:
        """The lines `predict` prints (as before streaming)."""
        return prediction_summary(self.output, self.rows, self.stage_names, self.answered, self.known, self.correct)


@dataclass
class PredictJob:
    """A prediction job, prepared: the input opened and its columns resolved, the output chosen."""

    bundle: str
    meta: dict[str, Any]
    stream: TableStream
    output: str
    text_col: str
    pair_col: Optional[str]
    label_col: Optional[str]
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    route: bool = False
    use_lm: bool = True
    lm_options: dict[str, Any] = field(default_factory=dict)  # base_url, key_env, trust_endpoint, local_model
    cache: Optional[str] = None
    resume: bool = True
    lm_batch: bool = False  # the LM stage through the Batch API (see the module docstring)
    lm_batch_poll_s: float = DEFAULT_BATCH_POLL_S
    lm_batch_max_wait_s: Optional[float] = None  # None: wait for the batches to end; 0: submit and stop

    @property
    def fmt(self) -> str:
        return output_format(self.output)

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def has_lm(self) -> bool:
        return self.use_lm and any(e.get("lm") for e in self.meta["stages"])

    @property
    def stage_names(self) -> list[str]:
        return [e["name"] for e in self.meta["stages"] if self.use_lm or not e.get("lm")]

    @property
    def parts_dir(self) -> Path:
        return Path(self.output + PARTS_SUFFIX)

    def cache_path(self) -> Optional[str]:
        """The LM answer cache: the caller's, else one in the parts folder (kept until the job ends,
        so a killed job's paid answers are not bought again)."""
        if not self.has_lm:
            return None
        return self.cache or str(self.parts_dir / "lm_cache.sqlite")

    def fingerprint(self) -> dict[str, Any]:
        """What must not change for written parts to be reused: the input file, the bundle's files,
        the columns and the output's shape."""
        st = os.stat(self.stream.path)
        return {"version": _PARTS_VERSION, "input": os.path.abspath(self.stream.path), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "bundle": bundle_fingerprint(self.bundle),
                "columns": [self.text_col, self.pair_col, self.label_col], "chunk_rows": self.chunk_rows,
                "format": self.fmt, "route": self.route, "stages": self.stage_names}

    def batch_path(self, index: int) -> Path:
        """Where chunk `index`'s LM batch id is saved (beside the output, in its parts folder)."""
        return self.parts_dir / f"lm_batch-{index:06d}.json"

    def writer(self) -> PartWriter:
        return PartWriter(self.fmt, self.stage_names, self.labels, self.pair_col is not None, self.route)

    def load_system(self) -> AdaptedSystem:
        system = load_bundle(self.bundle, cache_path=self.cache_path(), use_lm=self.use_lm, **self.lm_options)
        return for_streaming(system, self.chunk_rows)

    def read_chunks(self, skip_rows: int = 0) -> Iterator[tuple[Split, Optional[np.ndarray]]]:
        """(inputs, gold label codes or None) per chunk of the input, after `skip_rows` rows."""
        wanted = [c for c in (self.text_col, self.pair_col, self.label_col) if c]
        for cols in self.stream.chunks(wanted, self.chunk_rows, skip=skip_rows):
            split = Split.from_texts(as_texts(cols[self.text_col]),
                                     as_texts(cols[self.pair_col]) if self.pair_col else None)
            gold = gold_codes(cols[self.label_col], self.labels) if self.label_col else None
            yield split, gold


def bundle_fingerprint(folder: str) -> str:
    """bundle.json's bytes and every file's name, size and modification time."""
    h = hashlib.sha256()
    root = Path(folder)
    h.update((root / BUNDLE_JSON).read_bytes())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def prepare(bundle: str, input_path: str, output: Optional[str] = None, *, text_col: Optional[str] = None,
            pair_col: Optional[str] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, route: Optional[bool] = None,
            use_lm: bool = True, lm_options: Optional[dict[str, Any]] = None, cache: Optional[str] = None,
            resume: bool = True, lm_batch: bool = False, lm_batch_poll_s: float = DEFAULT_BATCH_POLL_S,
            lm_batch_max_wait_s: Optional[float] = None) -> PredictJob:
    """A job for a text bundle: the bundle's settings read and checked, the input opened and its
    columns resolved (a bad file or column fails here, before any model loads). `output` defaults
    to ``INPUT.predictions.csv``; `route` to on for Parquet output only."""
    if int(chunk_rows) < 1:
        raise ConfigError(f"--chunk-rows must be at least 1, not {chunk_rows}.")
    if lm_batch and not float(lm_batch_poll_s) > 0:
        raise ConfigError(f"--lm-batch-poll must be a positive number of seconds, not {lm_batch_poll_s}.")
    if lm_batch and lm_batch_max_wait_s is not None and not float(lm_batch_max_wait_s) >= 0:
        raise ConfigError(f"--lm-batch-wait must be 0 or more seconds, not {lm_batch_max_wait_s}.")
    meta = read_bundle_meta(bundle)
    task = meta.get("task") or {}
    if task.get("modality") == "image":
        raise ConfigError("Streaming prediction reads tables of texts; this bundle classifies images.")
    stream = open_table_stream(input_path)
    text, pair, label = input_columns(stream.columns, input_path, text_col=text_col or task.get("text_col"),
                                      pair_col=pair_col or task.get("pair_col"), pair_task=task.get("pair"))
    if stream.fmt == "txt":
        pair, label = None, None
    output = str(output or f"{input_path}.predictions.csv")
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise ConfigError(f"--output {output} is the input file: name another file.")
    return PredictJob(bundle=str(bundle), meta=meta, stream=stream, output=output, text_col=text, pair_col=pair,
                      label_col=label, chunk_rows=int(chunk_rows),
                      route=output_format(output) == "parquet" if route is None else bool(route),
                      use_lm=use_lm, lm_options=dict(lm_options or {}), cache=cache, resume=resume,
                      lm_batch=bool(lm_batch), lm_batch_poll_s=float(lm_batch_poll_s),
                      lm_batch_max_wait_s=None if lm_batch_max_wait_s is None else float(lm_batch_max_wait_s))


class _Progress:
    """Rows done, rows per second and time left, as progress events (`stage` ``predict``)."""

    def __init__(self, callback: ProgressCallback, total: int, exact: bool, resumed: int) -> None:
        self.callback, self.total, self.exact, self.resumed = callback, total, exact, resumed
        self.start = time.perf_counter()

    def done(self, rows: int) -> None:
        elapsed = time.perf_counter() - self.start
        rate = (rows - self.resumed) / elapsed if elapsed > 0 else 0.0
        total = max(self.total, rows)
        eta = (total - rows) / rate if rate > 0 else None
        about = "" if self.exact else "~"
        message = f"{rows:,} / {about}{total:,} rows, {rate:,.0f} rows/s" + (
            f", ETA {_duration(eta)}" if eta is not None and rows < total else "")
        self.callback(ProgressEvent(stage="predict", step=rows, total=total, kind=EventKind.STAGE,
                                    elapsed_s=elapsed, eta_s=eta, message=message))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _message(callback: ProgressCallback, text: str) -> None:
    callback(ProgressEvent(stage="predict", step=0, total=0, kind=EventKind.STAGE, message=text))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _part(job: PredictJob, index: int) -> Path:
    return job.parts_dir / f"part-{index:06d}{job.writer().suffix}"


def _start_parts(job: PredictJob, callback: ProgressCallback) -> list[ChunkStats]:
    """The chunks a previous run of this very job wrote (resumed), or none: any other parts there
    are cleared (an LM answer cache in the folder is kept: its answers hold for any job)."""
    parts = job.parts_dir
    progress = parts / PROGRESS_JSON
    if not progress.is_file():
        return []
    try:
        saved = json.loads(progress.read_text(encoding="utf-8"))
        same = saved.get("fingerprint") == job.fingerprint()
        chunks = [ChunkStats(**c) for c in saved.get("chunks", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        same, chunks = False, []
    done: list[ChunkStats] = []
    for i, stats in enumerate(chunks):
        if not _part(job, i).is_file():
            break
        done.append(stats)
    if job.resume and same and done:
        rows = sum(c.rows for c in done)
        _message(callback, f"resuming: {len(done)} chunk(s) ({rows:,} rows) already written in {parts}; "
                           "they are not redone")
        return done
    for path in parts.iterdir():
        if path.name.startswith(("part-", "progress.")):
            path.unlink()
    if chunks:
        why = "--no-resume" if same else "they were for another input, bundle or settings"
        _message(callback, f"starting afresh: the parts in {parts} are not reused ({why})")
    return []


def run(job: PredictJob, *, engine: str = "local", ray_address: Optional[str] = None,
        callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> PredictSummary:
    """Route every row of the job's input and write the output (see the module docstring)."""
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    callback = callback or no_progress
    writer = job.writer()
    created = not job.parts_dir.exists()
    try:
        job.parts_dir.mkdir(exist_ok=True)  # in the output's folder, which must exist (as before)
        probe = job.parts_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DataError(f"Cannot write predictions to {job.output}: {err.strerror}.") from None
    try:
        done = _start_parts(job, callback)
        skip = sum(c.rows for c in done)
        if job.lm_batch and job.has_lm:
            if engine != "local":
                raise ConfigError("--lm-batch runs with the local engine only (--engine local): the Ray engine "
                                  "asks the LM request by request.")
            system = job.load_system()
            if not hasattr(system.provider, "classify_batch"):
                raise ConfigError("--lm-batch needs an OpenAI-compatible endpoint with a Batch API; this bundle's "
                                  "LM runs in process. Leave out --lm-batch.")
            chunks = _batch_chunks(job, system, skip, len(done), callback, cancel)
        elif engine == "ray":
            from ea_core.ray_predict import ray_chunks

            chunks = ray_chunks(job, skip_rows=skip, address=ray_address, callback=callback, cancel=cancel)
        else:
            chunks = _local_chunks(job, job.load_system(), skip, callback, cancel)
    except BaseException:
        if created:  # a bundle that does not load leaves nothing behind
            shutil.rmtree(job.parts_dir, ignore_errors=True)
        raise
    fingerprint = job.fingerprint()
    total, exact = job.stream.count_rows()
    progress = _Progress(callback, total, exact, skip)
    t0 = time.perf_counter()
    rows = skip
    try:
        for chunk in chunks:
            if cancel is not None:
                cancel.check()
            part = _part(job, len(done))
            tmp = part.with_name(part.name + ".tmp")
            writer.write(chunk, tmp)
            os.replace(tmp, part)
            r, gold = chunk.routed, chunk.gold
            known = gold >= 0 if gold is not None else np.zeros(len(chunk.split), bool)
            done.append(ChunkStats(rows=len(chunk.split),
                                   answered=[int(np.sum(r.answered_by == k)) for k in range(len(writer.names))],
                                   known=int(known.sum()),
                                   correct=int(np.sum(r.pred[known] == gold[known])) if gold is not None else 0))
            _write_json(job.parts_dir / PROGRESS_JSON, {"fingerprint": fingerprint,
                                                        "chunks": [asdict(c) for c in done]})
            rows += len(chunk.split)
            progress.done(rows)
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise DataError(f"Cannot write predictions to {job.output}: {err.strerror or err}{where}.") from None
    if rows == 0:
        shutil.rmtree(job.parts_dir, ignore_errors=True)
        if job.stream.fmt == "txt":
            raise DataError(f"{job.stream.source} has no non-empty lines.")
        raise DataError(f"{job.stream.source} has no data rows (columns: {', '.join(job.stream.columns)}). "
                        "Add rows below the header, or check that you passed the right file.")
    target = Path(job.output)
    tmp = target.with_name(target.name + ".tmp")
    try:
        writer.join([_part(job, i) for i in range(len(done))], tmp)
        os.replace(tmp, target)
    except OSError as err:
        raise DataError(f"Cannot write predictions to {job.output}: {err.strerror or err}.") from None
    shutil.rmtree(job.parts_dir, ignore_errors=True)
    return PredictSummary(output=job.output, rows=rows, stage_names=writer.names,
                          answered=[sum(c.answered[k] for c in done) for k in range(len(writer.names))],
                          known=sum(c.known for c in done), correct=sum(c.correct for c in done),
                          resumed_rows=skip, elapsed_s=time.perf_counter() - t0, engine=engine)


def _local_chunks(job: PredictJob, system: AdaptedSystem, skip: int, callback: ProgressCallback,
                  cancel: Optional[CancelToken]) -> Iterator[Chunk]:
    for split, gold in job.read_chunks(skip):
        if cancel is not None:
            cancel.check()
        yield Chunk(split, gold, route_split(system, split, callback=callback, cancel=cancel))


def _batch_chunks(job: PredictJob, system: AdaptedSystem, skip: int, first: int, callback: ProgressCallback,
                  cancel: Optional[CancelToken]) -> Iterator[Chunk]:
    """The chunks after `skip` rows, their LM stage through the Batch API: every chunk's batch is
    submitted (or its saved batch polled once) first, then each is collected in order and yielded.
    Stops with a message, writing nothing more, while a batch is still running."""
    submitted = 0
    for index, (split, _) in enumerate(job.read_chunks(skip), start=first):
        if cancel is not None:
            cancel.check()
        route_split(system, split, cancel=cancel, lm_batch=LMBatch(job.batch_path(index), job.lm_batch_poll_s, 0.0))
        submitted += BatchRecord.load(job.batch_path(index)).batch_id is not None
    if submitted:
        wait = ("polling" if job.lm_batch_max_wait_s is None else
                f"waiting up to {_duration(job.lm_batch_max_wait_s)}, polling")
        _message(callback, f"LM batch: {submitted} batch(es) running at the provider (ids saved in {job.parts_dir}); "
                           f"{wait} every {_duration(job.lm_batch_poll_s)}")
    for index, (split, gold) in enumerate(job.read_chunks(skip), start=first):
        path = job.batch_path(index)
        for attempt in range(2):  # what a collected batch left unanswered is asked once more, in a new batch
            routed = route_split(system, split, callback=callback, cancel=cancel,
                                 lm_batch=LMBatch(path, job.lm_batch_poll_s, job.lm_batch_max_wait_s))
            if BatchRecord.load(path).batch_id is not None:
                raise LMError(f"The LM batch of chunk {index + 1} is still running at the provider (its id is saved "
                              f"in {path}). Run the same command again later to collect it: no batch is submitted "
                              "or paid twice, and the chunks written are kept.")
            lost = int(np.sum(routed.pred == FAILED))
            if not lost:
                break
        if lost:
            _message(callback, f"chunk {index + 1}: the LM batches left {lost} row(s) unanswered (failed lines or "
                               "expiry, asked twice); they are written without a prediction")
        yield Chunk(split, gold, routed)


def predict_file(bundle: str, input_path: str, output: Optional[str] = None, *, engine: str = "local",
                 ray_address: Optional[str] = None, callback: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None, **options: Any) -> PredictSummary:
    """`prepare` then `run`: route every row of `input_path` through the bundle into `output`."""
    return run(prepare(bundle, input_path, output, **options), engine=engine, ray_address=ray_address,
               callback=callback, cancel=cancel)


__all__ = ["DEFAULT_BATCH_POLL_S", "DEFAULT_CHUNK_ROWS", "ENGINES", "Chunk", "LMBatch", "PartWriter", "PredictJob", "PredictSummary", "Routed",
           "for_streaming", "output_format", "predict_file", "prepare", "route_split", "route_text", "run",
           "stage_answers"]
