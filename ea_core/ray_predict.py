"""Batch prediction on Ray Data (``predict --engine ray``): the same cascade over a cluster.

Ray reads the input in blocks (Parquet, CSV/TSV with the local reader's options, JSON lines parsed
line by line as the local reader does), then each small-model stage is a ``map_batches`` over an
autoscaling pool of actors that load the bundle's model once (one GPU each when the cluster has
GPUs and the model is a neural one). A stage computes only the rows still open when they reach
it; rows already answered ride along untouched. The LM stage is one actor (bounded concurrency:
the provider's own request limit, so rate limits hold) pinned to this machine, where the answer
cache is and whose environment holds the key (a local Ray started here inherits it; the key is
never passed through Ray). Ray keeps the input's order, so the driver receives the routed rows
in order and writes them with the local engine's writer: the same output, the same parts and
progress file. On a rerun after a kill, the chunks written are kept and not written again, but
Ray recomputes the rows before them (LM answers come from the cache; `--engine local` skips them).

Install with ``pip install '.[ray]'``. Point at a cluster with ``--ray-address`` (``auto`` on a
cluster node, ``ray://HEAD:10001`` from elsewhere); the input, the bundle and the output folder
must then be at the same path on every node (a shared file system).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from ea_core.cascade import Chunk, Routed, for_streaming, stage_answers
from ea_core.errors import ConfigError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.inputs import as_texts, gold_codes
from ea_core.splits import Split

#: Formats Ray reads itself; other inputs are for the local engine.
RAY_FORMATS = ("parquet", "csv", "tsv", "jsonl")
_PRED, _BY, _CONF = "__ea_pred", "__ea_by", "__ea_conf"


def _conf_col(k: int) -> str:
    return f"__ea_c{k}"


def _routed(batch: dict[str, np.ndarray], stages: int) -> Routed:
    n = len(batch[_PRED])
    return Routed(np.asarray(batch[_PRED], dtype=np.int64).copy(), np.asarray(batch[_BY], dtype=np.int64).copy(),
                  np.asarray(batch[_CONF], dtype=np.float64).copy(),
                  np.stack([np.asarray(batch[_conf_col(k)], dtype=np.float64) for k in range(stages)], axis=1)
                  if stages else np.zeros((n, 0)))


def _one_stage(bundle: str, name: str) -> Any:
    """An adapted system of the bundle's stage `name` alone (its model only, not the others'),
    loaded with the checks of `load_bundle` (files inside the bundle, labels in order)."""
    from pathlib import Path

    from ea_core.bundle import BUNDLE_JSON, bundle_path, read_bundle_meta
    from ea_core.learned_router import load_learned_stage
    from ea_core.models import load_model
    from ea_core.system import AdaptedSystem, SystemStage

    root = Path(bundle).resolve()
    meta = read_bundle_meta(root)
    e = next(e for e in meta["stages"] if e["name"] == name)
    folder = bundle_path(root, e["folder"], root / BUNDLE_JSON, f"stage {name!r} folder")
    # A learned router's stage is its scorer and the small models it reads (`load_bundle` does the same).
    model = load_learned_stage(folder, meta["labels"], root=root) if e.get("router") else load_model(folder, root=root)
    return AdaptedSystem(meta["labels"], [SystemStage(name, float(e["threshold"]), model, float(e["temperature"]))])


class _Stage:
    """One stage of the cascade as a Ray Data actor: the model loaded once, the open rows answered."""

    def __init__(self, bundle: str, name: str, index: int, stages: int, threshold: float, last: bool,
                 text_col: str, pair_col: Optional[str], batch_rows: int,
                 lm: Optional[dict[str, Any]] = None) -> None:
        from ea_core.bundle import load_bundle

        self.index, self.stages, self.threshold, self.last = index, stages, threshold, last
        self.text_col, self.pair_col = text_col, pair_col
        if lm is None:
            self.system = for_streaming(_one_stage(bundle, name), batch_rows)
        else:  # this machine's key variable and answer cache (see the module docstring)
            self.system = load_bundle(bundle, use_lm=True, cache_path=lm["cache"], **lm["options"])
        self.k = [s.name for s in self.system.stages].index(name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[self.text_col])
        if self.index == 0:
            empty = Routed.empty(n, self.stages)
            batch[_PRED], batch[_BY], batch[_CONF] = empty.pred, empty.answered_by, empty.confidence
            for k in range(self.stages):
                batch[_conf_col(k)] = empty.stage_confidence[:, k]
        routed = _routed(batch, self.stages)
        open_idx = np.flatnonzero(routed.answered_by < 0)
        if len(open_idx):
            texts = as_texts(batch[self.text_col][open_idx].tolist())
            pairs = as_texts(batch[self.pair_col][open_idx].tolist()) if self.pair_col else None
            pred, conf = stage_answers(self.system, self.k, Split.from_texts(texts, pairs))
            routed.take(self.index, open_idx, pred, conf, self.threshold, self.last)
        batch[_PRED], batch[_BY], batch[_CONF] = routed.pred, routed.answered_by, routed.confidence
        for k in range(self.stages):
            batch[_conf_col(k)] = routed.stage_confidence[:, k]
        return batch


def _parse_jsonl(batch: dict[str, np.ndarray], wanted: list[str], source: str) -> dict[str, np.ndarray]:
    """JSON lines read as text lines, parsed as the local reader parses them (blank lines skipped)."""
    from ea_core.data.stream import json_record

    rows = [json_record(line, 0, source) for line in batch["text"] if str(line).strip()]
    return {name: np.array([r.get(name) for r in rows], dtype=object) for name in wanted}


#: Logical CPUs of each read task. Ray schedules by these, and actors that held every CPU of a
#: small cluster left none to list and read the files with (seen on a 2-CPU machine with two
#: stages: nothing was ever read); so actors share what one whole CPU for reading leaves.
READ_CPUS = 0.5
RESERVED_CPUS = 1.0


def _read(job: Any, wanted: list[str]) -> Any:
    import pyarrow as pa
    import ray.data
    from pyarrow import csv as pacsv

    stream = job.stream
    if stream.fmt == "parquet":
        return ray.data.read_parquet(stream.path, columns=wanted, num_cpus=READ_CPUS)
    if stream.fmt in ("csv", "tsv"):
        opts = stream._csv
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in stream.columns}, include_columns=wanted,
                                       strings_can_be_null=False, quoted_strings_can_be_null=False,
                                       true_values=[], false_values=[])
        return ray.data.read_csv(stream.path, read_options=opts["read"], parse_options=opts["parse"],
                                 convert_options=convert, partitioning=None, num_cpus=READ_CPUS)
    if stream.fmt == "jsonl":
        lines = ray.data.read_text(stream.path, encoding=stream.encoding or "utf-8-sig", drop_empty_lines=True,
                                   num_cpus=READ_CPUS)
        return lines.map_batches(_parse_jsonl, fn_kwargs={"wanted": wanted, "source": stream.source},
                                 batch_format="numpy", num_cpus=READ_CPUS)
    raise ConfigError(f"--engine ray reads Parquet, CSV, TSV or JSON lines; {stream.source} is {stream.fmt}: "
                      "convert it, or use --engine local.")


def ray_chunks(job: Any, *, skip_rows: int = 0, address: Optional[str] = None,
               callback: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None) -> Iterator[Chunk]:
    """The rows of `job` (an `ea_core.batch_predict.PredictJob`) routed on Ray, in input order,
    `job.chunk_rows` at a time, after `skip_rows`."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install '.[ray]' (or pip install 'ray[data]').") from None
    if job.stream.fmt not in RAY_FORMATS:
        _read(job, [])  # the message
    system = job.load_system()  # a bundle that does not load fails here, before Ray starts
    neural = {st.name for st in system.stages if st.model is not None
              and not str(getattr(st.model, "spec", "")).startswith("tfidf")}
    entries = [e for e in job.meta["stages"] if job.use_lm or not e.get("lm")]
    wanted = [c for c in (job.text_col, job.pair_col, job.label_col) if c]
    started = not ray.is_initialized()
    if started:  # ea_core must be importable on every node (installed there, as here)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the output in the input's order
        ctx.enable_progress_bars = False
        ds = _read(job, wanted)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        # Small-model actors share what reading leaves: one actor per stage at least, more where room.
        n_small = max(sum(1 for e in entries if not e.get("lm")), 1)
        actor_cpus = min(1.0, max(0.05, (cpus - RESERVED_CPUS) / n_small))
        most = max(1, int((cpus - RESERVED_CPUS) / actor_cpus / n_small))
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for k, e in enumerate(entries):
            kwargs = dict(bundle=job.bundle, name=e["name"], index=k, stages=len(entries),
                          threshold=float(e["threshold"]), last=k == len(entries) - 1, text_col=job.text_col,
                          pair_col=job.pair_col, batch_rows=job.chunk_rows)
            if e.get("lm"):
                kwargs["lm"] = {"cache": job.cache_path(), "options": job.lm_options}
                ds = ds.map_batches(_Stage, fn_constructor_kwargs=kwargs, batch_size=job.chunk_rows,
                                    batch_format="numpy", concurrency=1, num_cpus=0,
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
            elif gpus and e["name"] in neural:
                ds = ds.map_batches(_Stage, fn_constructor_kwargs=kwargs, batch_size=job.chunk_rows,
                                    batch_format="numpy", concurrency=(1, gpus), num_gpus=1)
            else:
                ds = ds.map_batches(_Stage, fn_constructor_kwargs=kwargs, batch_size=job.chunk_rows,
                                    batch_format="numpy", concurrency=(1, most), num_cpus=actor_cpus)
        skip = int(skip_rows)
        for batch in ds.iter_batches(batch_size=job.chunk_rows, batch_format="numpy", prefetch_batches=1):
            if cancel is not None:
                cancel.check()
            n = len(batch[job.text_col])
            if skip >= n:  # written before a kill: recomputed, not written again
                skip -= n
                continue
            rows = np.arange(skip, n)
            skip = 0
            texts = as_texts(batch[job.text_col][rows].tolist())
            pairs = as_texts(batch[job.pair_col][rows].tolist()) if job.pair_col else None
            gold = gold_codes(batch[job.label_col][rows].tolist(), job.labels) if job.label_col else None
            r = _routed(batch, len(entries))
            yield Chunk(Split.from_texts(texts, pairs), gold,
                        Routed(r.pred[rows], r.answered_by[rows], r.confidence[rows], r.stage_confidence[rows]))
    finally:
        if started:
            ray.shutdown()


__all__ = ["RAY_FORMATS", "ray_chunks"]
