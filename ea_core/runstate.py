"""What a run holds (`RunState`: data, trained models, LM answers, tuning, results) and how it is
saved in and reopened from its folder.

The engine writes it; the report, the bundle, the explorer and the app read it, none of them
needing the engine (`open_run` rebuilds a run, finished or partial, without recomputing anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ea_core import mining
from ea_core.errors import ConfigError
from ea_core.llm.base import MISSING_CONFIDENCE, LMAnswer, routing_confidence
from ea_core.models.common import selection_score
from ea_core.router import StageOutput
from ea_core.runconfig import RunConfig
from ea_core.runfolder import RunFolder, fingerprint, load_arrays, read_json, write_json
from ea_core.splits import Split, TaskData
from ea_core.calibration import apply_temperature

SPLITS = ("train", "val", "test")
STATE_JSON = "state.json"


@dataclass
class StageRecord:
    """A trained small model in the run folder (SSM or ASSM) and its cached outputs."""

    name: str  # SPEC for SSMs, "assm:SPEC" / "assm_full:SPEC" for augmented ones
    folder: Path
    val_accuracy: float
    test_accuracy: float
    train_time_s: float
    peak_rss_mb: float
    trained_on: int
    peak_gpu_mb: Optional[float] = None  # torch's peak CUDA memory while training; None on a CPU (and in older runs)

    def outputs(self) -> dict[str, np.ndarray]:
        return load_arrays(self.folder / "outputs.npz")


#: The learned router's stage name (`RunConfig.router` "learned").
LEARNED_STAGE = "learned_router"
LEARNED_NPZ = "learned_router.npz"


@dataclass
class RunState:
    """What a (possibly partial) run holds, handed to the report, the tuner and the UI."""

    folder: RunFolder
    config: RunConfig
    task: TaskData
    ssms: list[StageRecord] = field(default_factory=list)  # rank order
    assms: list[StageRecord] = field(default_factory=list)
    assm_full: list[StageRecord] = field(default_factory=list)
    lm_answers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> arrays
    lm_describe: dict[str, Any] = field(default_factory=dict)
    lm_gives_confidence: bool = False
    lm_few_shot: Optional[list] = None  # the prompt's examples, for the exported bundle
    lm_label_offsets: Optional[list[float]] = None  # local LM's "calibrate before use" offsets
    mining: Optional[mining.MiningResult] = None
    # RunConfig.probe_lm: training rows asked, the best small model's out-of-fold answer, the LM's.
    probe: Optional[dict[str, np.ndarray]] = None
    # RunConfig.router "learned": the deferral router's score per input of val and test, and what it learned from.
    learned: dict[str, Any] = field(default_factory=dict)
    lm_usage: dict[str, Any] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> layers, thresholds (on val)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the results table

    def records(self) -> dict[str, StageRecord]:
        """Every trained small model of the run by stage name."""
        return {r.name: r for r in self.ssms + self.assms + self.assm_full}

    def layer_records(self, layer: str) -> list[StageRecord]:
        """The small models behind a layer (the learned router answers with the best small model)."""
        return {"ssm": self.ssms, "assm": self.assms, "assm_full": self.assm_full, "learned": self.ssms[:1]}[layer]

    def stage_names(self, layers: tuple[str, ...] = ("ssm", "assm", "lm")) -> list[str]:
        """Names of the stages `stage_outputs` gives for `layers`, without loading any array."""
        return [name for layer in layers for name in (
            (["lm"] if self.lm_answers else []) if layer == "lm" else
            [LEARNED_STAGE] if layer == "learned" else [r.name for r in self.layer_records(layer)])]

    def stage_outputs(self, split: str, layers: tuple[str, ...] = ("ssm", "assm", "lm"),
                      calibrated: bool = True) -> list[StageOutput]:
        """Per-stage outputs on a split (small models temperature-scaled unless `calibrated` is
        False), in routing order, for `router.route`."""
        out: list[StageOutput] = []
        for layer in layers:
            if layer == "lm":
                if split in self.lm_answers:
                    out.append(lm_stage_output(self.lm_answers[split]))
                continue
            if layer == "learned":  # the best small model's answer; confidence 1 - the router's deferral score
                best = self.ssms[0].outputs()[split].argmax(axis=1)
                out.append(StageOutput(LEARNED_STAGE, best, 1.0 - self.learned[split]))
                continue
            for rec in self.layer_records(layer):
                proba = rec.outputs()[split]
                t = self.temperatures.get(rec.name, 1.0) if calibrated else 1.0
                out.append(StageOutput.from_proba(rec.name, apply_temperature(proba, t)))
        return out


def oof_path(record_folder: Path, folds: int) -> Path:
    """Where a small model's out-of-fold training probabilities (mining's input) are saved."""
    return Path(record_folder) / f"oof{folds}.npz"


def mining_probs(state: "RunState") -> list[np.ndarray]:
    """Each small model's training-split probabilities as mining saw them (out of fold when the run
    mined so and they are saved, else in-sample), in rank order."""
    k = state.config.oof_folds
    return [load_arrays(oof_path(r.folder, k))["proba"] if k >= 2 and oof_path(r.folder, k).is_file()
            else r.outputs()["train"] for r in state.ssms]


def rank_records(records: list[StageRecord], y_val: np.ndarray, metric: str, n_labels: int) -> list[StageRecord]:
    """Small models best first by `metric` (accuracy or macro_f1) on validation; stable for ties."""
    scores = [selection_score(y_val, r.outputs()["val"].argmax(1), metric, n_labels) for r in records]
    order = sorted(range(len(records)), key=lambda i: -(scores[i] if np.isfinite(scores[i]) else -np.inf))
    return [records[i] for i in order]


# -- the LM's answers, as arrays -------------------------------------------------------------

def lm_stage_output(answers: dict[str, np.ndarray], missing: float = MISSING_CONFIDENCE) -> StageOutput:
    """The LM as a routing stage: its label, its confidence (`routing_confidence`: `missing` when it
    gave none, 0 with no usable answer) and its cost per input."""
    conf = routing_confidence(answers["label"], answers["confidence"], missing)
    return StageOutput(name="lm", pred=answers["label"].astype(np.int64), conf=conf, is_lm=True,
                       cost_usd=answers["cost_usd"].astype(np.float64))


def answers_to_arrays(answers: list[LMAnswer], price_per_1m: Any = None) -> dict[str, np.ndarray]:
    """LM answers as arrays. `cost_usd` is what each answer costs at the model's price, also when it
    came from the cache (where nothing was paid this time): the routing cost of a system."""
    prompt = np.array([a.prompt_tokens for a in answers], dtype=np.float64)
    completion = np.array([a.completion_tokens for a in answers], dtype=np.float64)
    if isinstance(price_per_1m, dict) and "input" in price_per_1m:
        cost = (prompt * price_per_1m["input"] + completion * price_per_1m["output"]) / 1e6
    else:
        cost = np.array([a.cost_usd for a in answers], dtype=np.float64)
    return {
        "label": np.array([a.label for a in answers], dtype=np.int64),
        "confidence": np.array([np.nan if a.confidence is None else a.confidence for a in answers], dtype=np.float64),
        "cost_usd": cost,
        "tokens": np.array([a.prompt_tokens + a.completion_tokens for a in answers], dtype=np.int64),
        "latency_s": np.array([a.latency_s for a in answers], dtype=np.float64),
        "cached": np.array([a.cached for a in answers], dtype=bool),
    }


def lm_confidence_counts(lm_answers: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """Per split: LM answers naming a label, and how many of them carried the LM's own confidence
    (the others route with `MISSING_CONFIDENCE`)."""
    out = {}
    for split, arrays in lm_answers.items():
        ok = arrays["label"] >= 0
        out[split] = {"answers": int(ok.sum()), "with_confidence": int(np.sum(ok & np.isfinite(arrays["confidence"])))}
    return out


# -- a run as saved on disk ------------------------------------------------------------------

def save_task(task: TaskData, folder: Path) -> None:
    """Freeze the splits in the run folder, so a resumed run sees exactly the same data."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        split = task.split(name)
        cols = {"text": pa.array(split.texts, pa.string()), "label": pa.array(split.labels)}
        if split.pairs is not None:
            cols["pair"] = pa.array(split.pairs, pa.string())
        if split.images is not None:
            cols["image"] = pa.array(split.images, pa.binary())
        pq.write_table(pa.table(cols), folder / f"{name}.parquet")
    write_json(folder / "task.json", {"name": task.name, "labels": task.labels, "warnings": task.warnings,
                                      "text_col": task.text_col, "pair_col": task.pair_col,
                                      "label_col": task.label_col})


def load_task(folder: Path) -> TaskData:
    meta = read_json(folder / "task.json")
    splits = {}
    for name in SPLITS:
        t = pq.read_table(folder / f"{name}.parquet")
        pairs = t.column("pair").to_pylist() if "pair" in t.column_names else None
        images = t.column("image").to_pylist() if "image" in t.column_names else None
        splits[name] = Split(t.column("text").to_pylist(), t.column("label").to_numpy(), pairs, images)
    return TaskData(name=meta["name"], labels=meta["labels"], train=splits["train"], val=splits["val"],
                    test=splits["test"], warnings=meta["warnings"], text_col=meta["text_col"],
                    pair_col=meta["pair_col"], label_col=meta["label_col"])


def save_state(state: RunState) -> None:
    """What `open_run` needs to rebuild the state without re-running anything (paths relative to the run)."""
    root = state.folder.root

    def rel(records: list[StageRecord]) -> list[str]:
        return [str(Path(r.folder).relative_to(root)) for r in records]

    lm_dir = None
    if state.config.lm:
        lm_dir = str(Path("lm") / fingerprint(state.config.data_fingerprint(), state.config.lm_identity()))
    write_json(root / STATE_JSON, {
        "ssms": rel(state.ssms), "assms": rel(state.assms), "assm_full": rel(state.assm_full), "lm_dir": lm_dir,
        "lm_gives_confidence": state.lm_gives_confidence, "lm_few_shot": state.lm_few_shot, "notes": state.notes,
    })


def is_run_folder(folder: str | Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def open_run(folder: str | Path) -> RunState:
    """A run as saved in its folder, finished or partial, without an LM provider or API key.

    What it holds is what was done: the data, the trained models (rank order), the LM's answers,
    mining, calibration, tuning and the results table, each when its stage has finished. The UI
    reopens runs with it; nothing is recomputed or paid for.
    """
    root = Path(folder)
    if not is_run_folder(root):
        raise ConfigError(f"{root} is not a run folder (it has no config.json).")
    config = RunConfig.from_dict(read_json(root / "config.json"))
    if not (root / "data" / "task.json").is_file():
        raise ConfigError(f"The run in {root} has not loaded its data yet: there is nothing to open.")
    state = RunState(folder=RunFolder(root), config=config, task=load_task(root / "data"))
    saved = read_json(root / STATE_JSON) if (root / STATE_JSON).is_file() else {}

    def records(rels: list[str]) -> list[StageRecord]:
        return [StageRecord(folder=root / r, **read_json(root / r / "info.json")) for r in rels
                if (root / r / "info.json").is_file()]

    state.ssms, state.assms = records(saved.get("ssms", [])), records(saved.get("assms", []))
    state.assm_full = records(saved.get("assm_full", []))
    state.lm_gives_confidence = bool(saved.get("lm_gives_confidence", False))
    state.lm_few_shot = saved.get("lm_few_shot")
    state.notes = list(saved.get("notes", []))
    lm_dir = root / saved["lm_dir"] if saved.get("lm_dir") else None
    if lm_dir is not None and lm_dir.is_dir():
        for split in ("val", "test"):
            if (lm_dir / f"{split}.npz").is_file():
                state.lm_answers[split] = load_arrays(lm_dir / f"{split}.npz")
        for usage in lm_dir.glob("*_usage.json"):
            state.lm_usage[usage.name[: -len("_usage.json")]] = read_json(usage)
        if (lm_dir / "describe.json").is_file():
            state.lm_describe = read_json(lm_dir / "describe.json")["describe"]
        if (lm_dir / "label_offsets.json").is_file():
            state.lm_label_offsets = read_json(lm_dir / "label_offsets.json")
        if (root / "mining.npz").is_file() and (lm_dir / "mine.npz").is_file():
            saved_mining = load_arrays(root / "mining.npz")
            candidates = saved_mining["candidates"]
            answers = load_arrays(lm_dir / "mine.npz")
            if np.array_equal(answers["index"], candidates):
                state.mining = mining.split_underfit(candidates, answers["label"], state.task.train.labels,
                                                     len(state.task.train), state.lm_usage.get("mine"),
                                                     saved_mining.get("shown", ()))
        if (root / "probe.npz").is_file() and (lm_dir / "probe.npz").is_file():
            saved_probe, answers = load_arrays(root / "probe.npz"), load_arrays(lm_dir / "probe.npz")
            if np.array_equal(answers["index"], saved_probe["index"]):
                state.probe = {"index": saved_probe["index"], "ssm_label": saved_probe["ssm_label"],
                               "lm_label": answers["label"]}
    if (root / LEARNED_NPZ).is_file():
        state.learned = dict(load_arrays(root / LEARNED_NPZ))
    if (root / "calibration.json").is_file():
        state.calibration = read_json(root / "calibration.json")
        state.temperatures = {name: float(c["temperature"]) for name, c in state.calibration.items()}
    if (root / "tuning.json").is_file():
        state.tuning = read_json(root / "tuning.json")
    if (root / "results.json").is_file():
        state.rows = read_json(root / "results.json")["rows"]
    return state
