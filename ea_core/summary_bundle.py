"""A summarization system exported and used: the chosen cascade's summarizers, each with its
confidence map and threshold, and the LM's settings (never a key), in a folder whose bundle.json
says ``task.kind = "summarization"``; `predict_summaries` writes, per input row, the summary, the
stage that answered and its confidence.

Kept beside `ea_core.bundle` (the classification bundle's strict format) rather than inside it: a
summary stage has no labels or temperature, and the reader below checks its own format.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ea_core.calibration import apply_quality_map
from ea_core.data.summaries import SummarySplit, split_sentences
from ea_core.errors import ConfigError, DataError
from ea_core.events import CancelToken, ProgressEvent
from ea_core.llm.summarize import summary_lm_from_settings
from ea_core.models.base import read_bundle_json
from ea_core.models.summary_io import load_summarizer
from ea_core.summarization import SummarizationResult, write_summarization

SUMMARY_BUNDLE_FORMAT = "ea-summary-bundle/1"
BUNDLE_JSON = "bundle.json"


def is_summary_bundle(folder: str | Path) -> bool:
    """Whether `folder` holds a summarization bundle (what `predict` dispatches on)."""
    try:
        meta = json.loads((Path(folder) / BUNDLE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    task = meta.get("task") if isinstance(meta, dict) else None
    return isinstance(task, dict) and task.get("kind") == "summarization"


def export_summary_bundle(result: SummarizationResult, lm_settings: dict[str, Any], out_dir: str | Path,
                          system: str = "ea") -> Path:
    """Write the routed `system` row's cascade (stages in order, thresholds, confidence maps)."""
    row = next((r for r in result.rows if r["system"] == system and r.get("stages")), None)
    if row is None:
        raise ConfigError(f"No routed system {system!r} in these results.")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    by_name = {s.name: s for s in result.stages}
    stages = []
    for k, (name, thr) in enumerate(zip(row["stages"], row["thresholds"])):
        run = by_name[name]
        entry: dict[str, Any] = {"name": name, "threshold": float(thr), "quality_map": list(run.quality_map)}
        if run.kind == "lm":
            entry["lm"] = True
        else:
            folder = f"stage{k}"
            result.models[name].save(out / folder)
            entry["folder"] = folder
        stages.append(entry)
    meta = {"format": SUMMARY_BUNDLE_FORMAT, "task": {"kind": "summarization"}, "system": system,
            "chosen": row.get("chosen"), "stages": stages, "lm": lm_settings,
            "metrics": {k: row[k] for k in row if k.startswith(("val_rouge", "test_rouge"))}}
    (out / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
    return out


def export_summary_run(result: SummarizationResult, lm_settings: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Everything a finished run hands over, as files to download: results.json, results.csv,
    summaries.json and the adapted system zipped (bundle.zip, what `predict` takes once unzipped)."""
    out = Path(out_dir)
    write_summarization(result, out)
    bundle = export_summary_bundle(result, lm_settings, out / "bundle")
    archive = Path(shutil.make_archive(str(out / "bundle"), "zip", root_dir=bundle))
    return [out / "results.json", out / "results.csv", out / "summaries.json", archive]


def bundle_with_thresholds(src: str | Path, thresholds: Sequence[float], out_dir: str | Path,
                           metrics: Optional[dict[str, Any]] = None) -> Path:
    """A copy of the bundle at `src` whose stages answer at `thresholds` (an operating point picked
    on the sliders), zipped beside it; `metrics`: what those thresholds gave on validation and test."""
    src, out = Path(src), Path(out_dir)
    meta = read_summary_bundle_meta(src)
    if len(thresholds) != len(meta["stages"]):
        raise ConfigError(f"Give one threshold per stage ({len(meta['stages'])}), not {len(thresholds)}.")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    for entry, thr in zip(meta["stages"], thresholds):
        entry["threshold"] = float(thr)
    meta["chosen"] = "thresholds picked on the sliders"
    if metrics is not None:
        meta["metrics"] = metrics
    (out / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
    return Path(shutil.make_archive(str(out), "zip", root_dir=out))


@dataclass
class SummaryPredictions:
    """One summary, answering stage and confidence per input."""

    summaries: list[str]
    stage: list[str]
    confidence: np.ndarray


def read_summary_bundle_meta(folder: Path) -> dict[str, Any]:
    """A summarization bundle's bundle.json, checked (untrusted): a ConfigError names what is wrong."""
    path = folder / BUNDLE_JSON
    meta = read_bundle_json(path)  # the strict reader every bundle file goes through (no NaN, named errors)
    if not isinstance(meta, dict) or meta.get("format") != SUMMARY_BUNDLE_FORMAT:
        raise ConfigError(f"{path}: not a summarization bundle (format {SUMMARY_BUNDLE_FORMAT}).")
    stages = meta.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list.")
    for e in stages:
        ok = isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("threshold"), (int, float))
        qm = e.get("quality_map") if isinstance(e, dict) else None
        if not ok or not (isinstance(qm, list) and len(qm) == 2 and len(qm[0]) == len(qm[1]) >= 1):
            raise ConfigError(f"{path}: each stage needs a name, a threshold and a quality_map [x, y].")
        if not e.get("lm"):
            rel = Path(str(e.get("folder", "")))
            if rel.is_absolute() or ".." in rel.parts or not (folder / rel).resolve().is_relative_to(folder.resolve()):
                raise ConfigError(f"{path}: stage {e['name']!r} names a folder outside the bundle.")
    return meta


def load_summary_cascade(folder: str | Path, *, use_lm: bool = True, api_key: Optional[str] = None,
                  cache_path: Optional[str] = None, base_url: Optional[str] = None,
                  trust_endpoint: bool = False) -> list[tuple[dict[str, Any], Any]]:
    """The bundle's stages in order, each with its loaded summarizer or LM (see `predict_summaries`):
    load once, then route (`predict_summaries_in_chunks`) or trace one input (`trace_summary`)."""
    root = Path(folder)
    meta = read_summary_bundle_meta(root)
    stages = [e for e in meta["stages"] if use_lm or not e.get("lm")]
    if not stages:
        raise ConfigError("This bundle has only an LM stage; run it with the LM.")
    lm_settings = meta.get("lm") or {}
    if (use_lm and any(e.get("lm") for e in stages) and lm_settings.get("kind") == "openai" and not base_url
            and not trust_endpoint):
        raise ConfigError(f"This bundle's LM stage calls {lm_settings.get('base_url')!r}. A bundle never chooses "
                          "where your key is sent: pass --lm-base-url URL, or --trust-bundle-endpoint for a bundle "
                          "you made, or --no-lm to use the small models only.")
    return [(e, summary_lm_from_settings(lm_settings, api_key=api_key, cache_path=cache_path, base_url=base_url)
             if e.get("lm") else load_summarizer(root / e["folder"], root=root)) for e in stages]


def _route(cascade: list[tuple[dict[str, Any], Any]], split: SummarySplit) -> SummaryPredictions:
    n = len(split)
    summaries, who, conf = [""] * n, [""] * n, np.zeros(n)
    todo = np.arange(n)
    for k, (e, model) in enumerate(cascade):
        if todo.size == 0:
            break
        part = split.subset(todo)
        if e.get("lm"):
            gen = model.summarize(part.sources, part.instructions)
            texts, raw = gen.texts, gen.confidence
        else:
            out = model.summarize(part)
            texts, raw = out.texts, out.raw_conf
        c = apply_quality_map(e["quality_map"][0], e["quality_map"][1], raw)
        take = np.ones(todo.size, bool) if k == len(cascade) - 1 else c >= float(e["threshold"])
        for j in np.flatnonzero(take):
            i = int(todo[j])
            summaries[i], who[i], conf[i] = texts[j], e["name"], float(c[j])
        todo = todo[~take]
    return SummaryPredictions(summaries, who, conf)


def trace_summary(cascade: list[tuple[dict[str, Any], Any]], source: str,
                  instruction: str = "") -> list[dict[str, Any]]:
    """One pasted text down a loaded cascade: per stage its summary, confidence (expected ROUGE-L)
    against its threshold and whether it answered; stages after the one that answered are not run
    (the LM is asked, and paid, only when reached)."""
    if not source.strip():
        raise ConfigError("Paste a text to summarise.")
    split = SummarySplit([source], [""], [instruction], [split_sentences(source)])
    out: list[dict[str, Any]] = []
    answered = False
    last = len(cascade) - 1
    for k, (e, model) in enumerate(cascade):
        entry: dict[str, Any] = {"stage": e["name"], "threshold": None if k == last else float(e["threshold"])}
        if answered:
            out.append({**entry, "summary": "", "confidence": None, "answered": False, "note": "not reached"})
            continue
        cost = None
        if e.get("lm"):
            gen = model.summarize([source], [instruction])
            text, raw, cost = gen.texts[0], gen.confidence, gen.cost_usd
        else:
            o = model.summarize(split)
            text, raw = o.texts[0], o.raw_conf
        conf = float(apply_quality_map(e["quality_map"][0], e["quality_map"][1], raw)[0])
        answered = k == last or conf >= float(e["threshold"])
        out.append({**entry, "summary": text, "confidence": conf, "answered": answered,
                    "note": f"LM cost ${cost:.5f}" if cost is not None else ""})
    return out


def predict_summaries(folder: str | Path, split: SummarySplit, *, use_lm: bool = True, api_key: Optional[str] = None,
                      cache_path: Optional[str] = None, base_url: Optional[str] = None,
                      trust_endpoint: bool = False) -> SummaryPredictions:
    """Route every input down the bundle's cascade: a stage answers when its confidence (mapped to
    expected ROUGE-L) reaches its threshold; the last stage answers the rest (without the LM: the
    last small model). A bundle is data from someone else: its recorded endpoint is called (with
    the caller's key) only with `trust_endpoint`; otherwise the caller names the endpoint."""
    return _route(load_summary_cascade(folder, use_lm=use_lm, api_key=api_key, cache_path=cache_path, base_url=base_url,
                                trust_endpoint=trust_endpoint), split)


def _inputs_table(path: str) -> Any:
    from ea_core.data.formats import SUPPORTED_FORMATS, read_format

    p = Path(path)
    fmt = SUPPORTED_FORMATS.get(p.suffix.lower())
    if not p.is_file() or fmt is None:
        raise DataError(f"{path}: give a CSV, TSV, JSON lines or Parquet file of texts to summarise.")
    with open(p, "rb") as fh:
        return read_format(fmt, str(p), path, None, fh.read(65536))


def _detect(names: list[str], wanted: tuple[str, ...]) -> Optional[str]:
    lower = {c.lower(): c for c in names}
    return next((lower[c] for c in wanted if c in lower), None)


def summary_input_columns(path: str) -> dict[str, Any]:
    """The columns of a file of texts to summarise and the ones `read_summary_inputs` picks when none
    is named: ``{"columns", "source", "instruction"}`` (what a client's pickers offer)."""
    from ea_core.data.summaries import INSTRUCTION_NAMES, SOURCE_NAMES

    names = list(_inputs_table(path).column_names)
    return {"columns": names, "source": _detect(names, SOURCE_NAMES), "instruction": _detect(names, INSTRUCTION_NAMES)}


def read_summary_inputs(path: str, source_column: Optional[str] = None, instruction_column: Optional[str] = None,
                        *, how_to_name: str = "name one with --text-col") -> tuple[Any, SummarySplit]:
    """(the table, its rows as a split) of a file of texts to summarise (no reference needed);
    `how_to_name`: how the caller's user names the text column (in the error when none is found)."""
    from ea_core.data.summaries import INSTRUCTION_NAMES, SOURCE_NAMES

    table = _inputs_table(path)
    names = table.column_names
    src = source_column or _detect(names, SOURCE_NAMES)
    if src not in names:
        what = f"no column {source_column!r}" if source_column else "no source-text column"
        raise DataError(f"{path} has {what} (columns: {', '.join(names)}); {how_to_name}.")
    ins = instruction_column or _detect(names, INSTRUCTION_NAMES)
    if instruction_column and ins not in names:
        raise DataError(f"{path} has no column {instruction_column!r} (columns: {', '.join(names)}).")
    sources = ["" if v is None else str(v) for v in table.column(src).to_pylist()]
    instr = (["" if v is None else str(v) for v in table.column(ins).to_pylist()] if ins in names
             else [""] * len(sources))
    if not sources:
        raise DataError(f"{path} has no rows; give at least one text to summarise.")
    empty = [i for i, s in enumerate(sources) if not s.strip()]
    if empty:
        raise DataError(f"{path}: {len(empty)} row(s) have an empty {src!r} text (first: row {empty[0] + 1}); "
                        "fill them in or drop those rows.")
    sents = [split_sentences(s) for s in sources]
    return table, SummarySplit(sources, [""] * len(sources), instr, sents)


def predict_summaries_in_chunks(folder: str | Path, split: SummarySplit, *, chunk_size: int = 16,
                                progress: Optional[Callable[[ProgressEvent], None]] = None,
                                cancel: Optional[CancelToken] = None, **options: Any) -> SummaryPredictions:
    """`predict_summaries` over `split` a chunk of rows at a time (each row is routed on its own, so
    the answers are the same), with a ``predict`` progress event after each chunk; `cancel` is
    looked at before each chunk (`Cancelled`: no LM call is made after Stop); `options` go to
    `predict_summaries`."""
    cascade = load_summary_cascade(folder, **options)  # the models load once, not per chunk
    n, size = len(split), max(int(chunk_size), 1)
    summaries: list[str] = []
    stage: list[str] = []
    conf: list[np.ndarray] = []
    if progress is not None:
        progress(ProgressEvent("predict", 0, n))
    for start in range(0, n, size):
        if cancel is not None:
            cancel.check()
        part = _route(cascade, split.subset(range(start, min(start + size, n))))
        summaries += part.summaries
        stage += part.stage
        conf.append(part.confidence)
        if progress is not None:
            progress(ProgressEvent("predict", min(start + size, n), n))
    return SummaryPredictions(summaries, stage, np.concatenate(conf) if conf else np.zeros(0))


def write_summary_predictions(table: Any, preds: SummaryPredictions, output: str) -> None:
    """The input rows with `summary`, `stage` and `confidence` columns (CSV, or JSON lines by extension)."""
    df = table.to_pandas()
    df["summary"], df["stage"], df["confidence"] = preds.summaries, preds.stage, np.round(preds.confidence, 4)
    if output.lower().endswith((".jsonl", ".ndjson")):
        df.to_json(output, orient="records", lines=True, force_ascii=False)
    else:
        df.to_csv(output, index=False)


__all__ = ["SUMMARY_BUNDLE_FORMAT", "SummaryPredictions", "bundle_with_thresholds", "export_summary_bundle",
           "export_summary_run", "is_summary_bundle", "load_summary_cascade", "predict_summaries",
           "predict_summaries_in_chunks", "read_summary_inputs", "summary_input_columns", "trace_summary",
           "write_summary_predictions"]
