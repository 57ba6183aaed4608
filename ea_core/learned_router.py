"""A learned deferral router: small classifiers that score each input for the accuracy deferring it
to the LM would gain (the LM right where the best small model is wrong, less the LM wrong where it
is right), trained on what the run already holds (the small models' out-of-fold outputs on the
training split and the LM answers mining and the probe paid for).

The paper's router reads each small model's own top probability, which cannot tell where the LM is
right; this one sees every small model's probabilities, margin, entropy, their agreement and the
input's length. Its score becomes one routing stage (the best small model's answer, with confidence
1 - score), so thresholds, auto-tune, the operating-point rule and the intervals work on it unchanged.

The fitted scorer is kept as plain numbers (`RouterParams`, JSON in the run folder and in a bundle:
loading it runs no pickled code), and `LearnedStage` puts it behind the small models' interface
(`predict_proba`), so a bundle, `predict`, Try it and the server route with it like any stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError, ModelError
from ea_core.llm.base import FAILED
from ea_core.models import load_model
from ea_core.models.base import read_bundle_json
from ea_core.runfolder import write_json
from ea_core.splits import Split

#: Fewest examples of each class ("defer helps" / "it does not") the router is trained on.
MIN_PER_CLASS = 10
#: A learned stage's folder (in a bundle): its scorer, and the small models it reads under ``ssm/NN``.
ROUTER_JSON = "router.json"
ROUTER_FORMAT = "ea-learned-router/1"
#: `RunConfig.router_labels`: the LM stage's name (its answers under the run's LM folder) and the run
#: folder's file holding the sample (row index, the best small model's out-of-fold label, the LM's).
ROUTER_LABELS_STAGE = "router_labels"
ROUTER_LABELS_NPZ = "router_labels.npz"


#: Quantiles of the training inputs' log length that cut it into bins (`features`' length_edges).
LENGTH_QUANTILES = (0.25, 0.5, 0.75)


def features(probs: Sequence[np.ndarray], split: Optional[Split] = None,
             length_edges: Sequence[float] = ()) -> np.ndarray:
    """Per input: each small model's probabilities, top probability, margin and normalised entropy,
    the share of small models agreeing with the first, and for texts log(1 + characters) and, with
    `length_edges` (cut points of that log length, from the training split), which length bin the
    input falls in (one-hot): an LM's accuracy may jump with length, which one slope cannot follow."""
    cols: list[np.ndarray] = []
    top = probs[0].argmax(axis=1)
    for p in probs:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
        s = np.sort(p, axis=1)
        ent = -(p * np.log(p)).sum(axis=1) / np.log(max(p.shape[1], 2))
        cols += [p, s[:, -1:], (s[:, -1] - s[:, -2])[:, None], ent[:, None]]
    cols.append(np.mean([p.argmax(axis=1) == top for p in probs], axis=0)[:, None])
    if split is not None and split.images is None:
        chars = np.array([len(t) + (len(split.pairs[i]) if split.pairs is not None else 0)
                          for i, t in enumerate(split.texts)], dtype=np.float64)
        cols.append(np.log1p(chars)[:, None])
        if len(length_edges):
            cols.append(np.eye(len(length_edges) + 1)[np.searchsorted(np.asarray(length_edges), np.log1p(chars))])
    return np.hstack(cols)


def length_edges_of(split: Split) -> tuple[float, ...]:
    """`LENGTH_QUANTILES` of the split's log(1 + characters) (none for images)."""
    if split.images is not None or not len(split.texts):
        return ()
    chars = np.array([len(t) + (len(split.pairs[i]) if split.pairs is not None else 0)
                      for i, t in enumerate(split.texts)], dtype=np.float64)
    return tuple(float(v) for v in np.quantile(np.log1p(chars), LENGTH_QUANTILES))


def router_label_sample(n_train: int, n: int, *, seed: int, shown: Sequence[int] = ()) -> np.ndarray:
    """Up to `n` training rows drawn uniformly at random (seeded; not the few-shot rows `shown`),
    sorted: the LM's answers there are labels of the learned router on inputs the small model gets
    right as well as wrong (`RunConfig.router_labels`). Rows mining asked anyway come from the cache."""
    pool = np.setdiff1d(np.arange(int(n_train)), np.asarray(shown, dtype=np.int64))
    rng = np.random.default_rng([int(seed), 22])
    return np.sort(rng.choice(pool, size=min(int(n), len(pool)), replace=False)).astype(np.int64)


def load_router_labels(state: Any, n: Optional[int] = None) -> Optional[dict[str, np.ndarray]]:
    """The run's `router_label_sample` with the LM's answers (``index``, ``ssm_label``, ``lm_label``),
    None when it has none; `n`: a uniform subsample of that many (the bench's smaller budgets)."""
    from ea_core.runfolder import load_arrays

    path = state.folder.path(ROUTER_LABELS_NPZ)
    if not path.is_file():
        return None
    arrays = {k: np.asarray(v) for k, v in load_arrays(path).items()}
    if n is not None and n < len(arrays["index"]):
        keep = np.sort(np.random.default_rng(0).permutation(len(arrays["index"]))[:n])
        arrays = {k: v[keep] for k, v in arrays.items()}
    return arrays


def known_lm_answers(state: Any, router_labels: Optional[int] = None) -> dict[int, int]:
    """Training row -> the LM's answer, wherever the run paid for one: mining, the probe and (with
    `router_labels` > 0, up to that many of) the router-label sample."""
    known = {} if state.mining is None else dict(zip(state.mining.candidates.tolist(),
                                                     state.mining.lm_labels.tolist()))
    if state.probe is not None:
        known.update(zip(state.probe["index"].tolist(), state.probe["lm_label"].tolist()))
    extra = load_router_labels(state, router_labels) if router_labels else None
    if extra is not None:
        known.update(zip(extra["index"].tolist(), extra["lm_label"].tolist()))
    return known


@dataclass
class DeferralLabels:
    """Training rows of the router and their target (1: the best small model wrong, the LM right)."""

    rows: np.ndarray
    target: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def deferral_labels(y: np.ndarray, best_pred: np.ndarray, lm_known: dict[int, int]) -> DeferralLabels:
    """Rows where the best small model (out of fold) is right are 0 whatever the LM says; rows where
    it is wrong count only when the LM's answer is known (mined or probed), 1 if the LM was right.
    The rest (wrong, the LM never asked) are left out: guessing them would invent labels."""
    y = np.asarray(y)
    right = best_pred == y
    rows, target = list(np.flatnonzero(right)), [0] * int(right.sum())
    unknown = 0
    for i in np.flatnonzero(~right):
        code = lm_known.get(int(i))
        if code is None or code == FAILED:
            unknown += 1
            continue
        rows.append(int(i))
        target.append(int(code == y[i]))
    order = np.argsort(rows, kind="stable")
    t = np.asarray(target, dtype=np.int64)[order]
    return DeferralLabels(np.asarray(rows, dtype=np.int64)[order], t,
                          {"ssm_right": int(right.sum()), "lm_fixes": int(t.sum()),
                           "both_wrong": int(len(t) - right.sum() - t.sum()), "left_out": unknown})


@dataclass(frozen=True)
class RouterParams:
    """The fitted scorer as numbers: standardise (``(x - mean) / scale``), then a logistic regression.
    With `wrong` (feature column, slope, intercept), that regression is a = P(the LM right | the best
    small model wrong), w = P(the best small model wrong) is a logistic curve of its top probability,
    and the score is (a + w) / 2 (`combine` "gain": the accuracy gained by deferring, w - (1 - a),
    mapped to 0..1, the LM's errors taken as independent of the small model's) or a * w ("product":
    P(wrong and the LM right)). "classwise": the regression also reads the true class (one-hot, K
    columns after the features), a(x, c) = P(the LM right | x, the label is c), and the score is the
    gain sum_{c != top} p_c a(x, c) - p_top (1 - a(x, top)) mapped to 0..1, with p_top = 1 - w and the
    rest of the mass spread as the small model spreads it: an LM good on some classes only is not
    taken as good where the small model is right. The run scores with these very numbers, so a
    bundle scores the same."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    wrong: Optional[tuple[int, float, float]] = None
    combine: str = "gain"
    length_edges: tuple[float, ...] = ()  # `features`' length bins (none: a scorer fitted before them)

    @classmethod
    def from_pipeline(cls, model: Any) -> "RouterParams":
        """From a fitted ``make_pipeline(StandardScaler(), LogisticRegression())``."""
        scaler, lr = model[0], model[-1]
        return cls(np.asarray(scaler.mean_, np.float64), np.asarray(scaler.scale_, np.float64),
                   np.asarray(lr.coef_[0], np.float64), float(lr.intercept_[0]))

    @property
    def n_features(self) -> int:
        """Columns of `features` it reads (classwise: its K class columns are its own)."""
        return len(self.coef) - (self.wrong[0] if self.combine == "classwise" and self.wrong else 0)

    def score(self, X: np.ndarray) -> np.ndarray:
        """P(defer helps) per row of the feature matrix `X`."""
        X = np.asarray(X, np.float64)
        if self.combine == "classwise" and self.wrong is not None:
            return self._classwise(X)
        p = _sigmoid(((X - self.mean) / self.scale) @ self.coef + self.intercept)
        if self.wrong is not None:
            col, slope, icpt = self.wrong
            w = _sigmoid(slope * X[:, col] + icpt)
            p = (p + w) / 2.0 if self.combine == "gain" else p * w
        return p

    def _classwise(self, X: np.ndarray) -> np.ndarray:
        k, slope, icpt = self.wrong  # type: ignore[misc]
        raw, rows = X[:, :k], np.arange(len(X))
        top = raw.argmax(axis=1)
        w = _sigmoid(slope * X[:, k] + icpt)
        rest = raw.copy()
        rest[rows, top] = 0.0
        total = rest.sum(axis=1, keepdims=True)
        rest = np.where(total > 0, rest / np.where(total > 0, total, 1.0), 1.0 / max(k - 1, 1))
        gain = np.zeros(len(X))
        for c in range(k):
            onehot = np.zeros((len(X), k))
            onehot[:, c] = 1.0
            a = _sigmoid(((np.hstack([X, onehot]) - self.mean) / self.scale) @ self.coef + self.intercept)
            gain += np.where(top == c, -(1.0 - w) * (1.0 - a), w * rest[:, c] * a)
        return (gain + 1.0) / 2.0

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept,
                **({} if self.wrong is None else {"wrong": list(self.wrong), "combine": self.combine}),
                **({"length_edges": list(self.length_edges)} if self.length_edges else {})}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "RouterParams":
        """Checked: equal-length lists of finite numbers, positive scales; else a ConfigError naming `where`."""
        try:
            arrays = [np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
            intercept = float(data["intercept"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: the learned router's numbers are missing or not numbers. The bundle is "
                              "damaged or was edited: export it again.") from None
        n = len(arrays[0])
        if not n or any(a.shape != (n,) or not np.all(np.isfinite(a)) for a in arrays) or not math.isfinite(intercept) \
                or np.any(arrays[1] <= 0):
            raise ConfigError(f"{where}: the learned router's mean, scale and coef must be lists of one finite number "
                              "per feature, scales positive. The bundle is damaged or was edited: export it again.")
        wrong = data.get("wrong")
        if wrong is not None:
            ok = isinstance(wrong, list) and len(wrong) == 3 and isinstance(wrong[0], int) \
                and not isinstance(wrong[0], bool) and 0 <= wrong[0] < n \
                and all(_is_finite(v) for v in wrong[1:])
            if not ok:
                raise ConfigError(f"{where}: the learned router's 'wrong' must be [feature column, slope, intercept]. "
                                  "The bundle is damaged or was edited: export it again.")
            wrong = (int(wrong[0]), float(wrong[1]), float(wrong[2]))
        combine = data.get("combine", "gain")
        if combine not in ("gain", "product", "classwise"):
            raise ConfigError(f"{where}: the learned router's 'combine' must be gain, product or classwise. The bundle is "
                              "damaged or was edited: export it again.")
        edges = data.get("length_edges", [])
        if not isinstance(edges, list) or len(edges) > 16 or not all(_is_finite(v) for v in edges) \
                or any(b < a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"{where}: the learned router's 'length_edges' must be a short rising list of numbers. "
                              "The bundle is damaged or was edited: export it again.")
        return cls(*arrays, intercept, wrong, combine, tuple(float(v) for v in edges))


def _no_better_than_a_constant(target: np.ndarray, folds: Any, X: np.ndarray, floor: float) -> bool:
    """Whether the constant "the LM's overall rate" scores a 5-fold mean log-loss within `floor`
    (the 1-SE rule's) on the same folds: the null model is then the most regularised choice."""
    losses = []
    for fit_rows, held in folds.split(X, target):
        p = float(np.clip(target[fit_rows].mean(), 1e-6, 1 - 1e-6))
        t = target[held]
        losses.append(float(np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))))
    return float(np.mean(losses)) >= floor


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class LearnedRouter:
    """A fitted deferral scorer (`RouterParams`), what it learned from and its 5-fold AUC."""

    params: RouterParams
    labels: DeferralLabels
    cv_auc: float

    def score(self, probs: Sequence[np.ndarray], split: Optional[Split] = None) -> np.ndarray:
        """P(defer helps) per input."""
        return self.params.score(features(probs, split, self.params.length_edges))

    def info(self) -> dict[str, Any]:
        """What it learned from and its AUC, and the scorer's numbers (``model``: what a bundle exports)."""
        return {"training_rows": int(len(self.labels.rows)), **self.labels.counts, "cv_auc": self.cv_auc,
                "model": self.params.to_json()}


class LearnedStage:
    """The learned router as one stage of a live system, behind the small models' interface: per
    input, the best small model's label with confidence 1 - score (the other columns 0), which is
    what the cascade, Try it and the server read (argmax and max, temperature 1). `models`: every
    small model, best first, giving raw (uncalibrated) probabilities, as the router was trained on."""

    def __init__(self, labels: Sequence[str], models: Sequence[Any], params: RouterParams) -> None:
        self.labels_ = list(labels)
        self.models = list(models)
        self.params = params

    def scores(self, split: Split, *, batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(the best small model's label, the router's deferral score) per input."""
        probs = [np.asarray(m.predict_proba(split, batch_size=batch_size), np.float64) for m in self.models]
        X = features(probs, split, self.params.length_edges)
        if X.shape[1] != self.params.n_features:
            raise ConfigError(f"The learned router reads {self.params.n_features} features but these small models and "
                              f"inputs give {X.shape[1]}: export the bundle again from its run.")
        return probs[0].argmax(axis=1), self.params.score(X)

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        """The small models' interface (`batch_size`: their encoders' passes, as the server sets it)."""
        best, score = self.scores(split, batch_size=batch_size)
        out = np.zeros((len(best), len(self.labels_)))
        out[np.arange(len(best)), best] = np.clip(1.0 - score, 1e-12, 1.0)  # > 0: argmax stays the answer
        return out

    @property
    def memory(self) -> Any:
        return next((m.memory for m in self.models if hasattr(m, "memory")), None)

    @memory.setter
    def memory(self, value: Any) -> None:  # a stream bounds the head models' vectors (`cascade.for_streaming`)
        for m in self.models:
            if hasattr(m, "memory"):
                m.memory = value

    @property
    def use_cache(self) -> bool:
        return all(getattr(m, "use_cache", False) for m in self.models)

    @use_cache.setter
    def use_cache(self, value: bool) -> None:
        for m in self.models:
            if hasattr(m, "use_cache"):
                m.use_cache = value


def save_learned_stage(folder: str | Path, labels: Sequence[str], params: Any, model_folders: Sequence[Path],
                       copy: Any) -> None:
    """Write a learned stage's folder: ``router.json`` (format, labels, the scorer, how many models)
    and each small model's saved folder under ``ssm/NN`` (copied with `copy(src, dst)`)."""
    folder = Path(folder)
    p = params if isinstance(params, RouterParams) else RouterParams.from_json(params, str(folder / ROUTER_JSON))
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(model_folders):
        copy(src, folder / "ssm" / f"{i:02d}")
    write_json(folder / ROUTER_JSON, {"format": ROUTER_FORMAT, "labels": list(labels), "models": len(model_folders),
                                      "scorer": p.to_json()})


def load_learned_stage(folder: str | Path, labels: Sequence[str], *, root: Optional[Path] = None,
                       memory: Any = None) -> LearnedStage:
    """A learned stage from its folder (a bundle's, untrusted: the small models load from fixed
    ``ssm/NN`` names inside it, nothing pickled runs); a ConfigError names what is wrong."""
    folder = Path(folder)
    path = folder / ROUTER_JSON
    meta = read_bundle_json(path)  # the strict reader every bundle file goes through (no NaN, named errors)
    if not isinstance(meta, dict) or meta.get("format") != ROUTER_FORMAT:
        raise ConfigError(f"{path}: not a learned router ({ROUTER_FORMAT}). Export the bundle again.")
    n = meta.get("models")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 99 or meta.get("labels") != list(labels):
        raise ConfigError(f"{path}: 'models' must be a count from 1 to 99 and 'labels' the bundle's labels. "
                          "The bundle is damaged or was edited: export it again.")
    params = RouterParams.from_json(meta.get("scorer"), str(path))
    models = []
    for i in range(n):
        try:
            model = load_model(folder / "ssm" / f"{i:02d}", root=root, memory=memory)
        except ModelError as err:
            raise ConfigError(f"Learned router {folder}: {err}") from None
        if list(model.labels_) != list(labels):
            raise ConfigError(f"{folder / 'ssm' / f'{i:02d}'}: the model's labels differ from the bundle's. The "
                              "bundle is damaged or was edited: export it again.")
        models.append(model)
    return LearnedStage(labels, models, params)


#: How the router scores (see `fit_learned_router`); the first is the default, the others are kept for
#: the bench (`bench/bench_learned_router.py --methods`).
METHODS = ("classwise", "classwise_linear", "gain", "factored", "direct")
#: Regularisation strengths the factored LM-side regression chooses among, by 5-fold log-loss.
FACTORED_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit_learned_router(train_probs: Sequence[np.ndarray], train: Split, lm_known: dict[int, int],
                       seed: int = 0, method: str = "classwise") -> Optional[LearnedRouter]:
    """Fit the router on the training split's out-of-fold small-model outputs. None when the LM
    answers known leave fewer than `MIN_PER_CLASS` rows of either kind (nothing to learn from).

    Every method but "direct" splits the score in two: w = P(the best small model wrong), a logistic
    curve of its top probability fitted on every training row (the cascade's own signal, calibrated),
    and a = P(the LM right), a standardised logistic regression on the features, fitted on the rows
    whose LM answer is known, its strength chosen by 5-fold log-loss. Where the LM's accuracy
    depends on nothing the features show (an LM at chance), a is nearly flat and the router ranks as
    the cascade does.
    - "classwise" (default): a also reads the true class, so the expected gain of deferring counts
      the LM's accuracy on the class the small model would have got right (`RouterParams`), and the
      input's length bin (quartiles of the training split's lengths, `LENGTH_QUANTILES`) beside its
      log length; where no regularisation of a beats the constant LM rate by 5-fold log-loss (the
      1-SE rule, the constant the strongest), a is that constant and the router ranks as the cascade.
      "classwise_linear": the same with the log length alone (one slope) and no constant, the default
      before these two (it finds about a third of the long-input gain: bench_learned_router.py).
    - "gain": (a + w) / 2, a from the mined rows only; over-rates an LM good on some classes where
      the small model is right (-1.7 / -3.7 points at equal share in the bench).
    - "factored": a * w, P(wrong and the LM right).
    - "direct": one regression on "wrong and the LM right" (the first version: noisy where there is
      nothing to learn, -0.6 points at an LM at chance).
    Shallow gradient boosting overfit these few hundred rows (1-3 points worse) and is not offered."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method not in METHODS:
        raise ConfigError(f"Unknown learned-router method {method!r}; use one of {', '.join(METHODS)}.")
    best = train_probs[0].argmax(axis=1)
    labels = deferral_labels(train.labels, best, lm_known)
    pos = int(labels.target.sum())
    if pos < MIN_PER_CLASS or len(labels.target) - pos < MIN_PER_CLASS:
        return None
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    if method == "direct":
        X = features([p[labels.rows] for p in train_probs], train.subset(labels.rows))
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))
        auc = float(np.mean(cross_val_score(model, X, labels.target, cv=folds, scoring="roc_auc")))
        return LearnedRouter(RouterParams.from_pipeline(model.fit(X, labels.target)), labels, auc)
    y = np.asarray(train.labels)
    if method == "classwise":  # every training row whose LM answer is known (mined or probed), with its class
        wrong_rows = np.array(sorted(i for i, code in lm_known.items() if code != FAILED), dtype=np.int64)
        lm_right = (np.array([lm_known[int(i)] for i in wrong_rows]) == y[wrong_rows]).astype(np.int64)
    else:
        mask = best[labels.rows] != y[labels.rows]  # the mined rows: the LM's answer known
        wrong_rows, lm_right = labels.rows[mask], labels.target[mask]
    if min(int(lm_right.sum()), int(len(lm_right) - lm_right.sum())) < MIN_PER_CLASS:
        return None
    linear = method == "classwise_linear"
    edges = () if linear else length_edges_of(train)
    method = "classwise" if linear else method
    X = features([p[wrong_rows] for p in train_probs], train.subset(wrong_rows), edges)
    k = train_probs[0].shape[1]
    if method == "classwise":
        X = np.hstack([X, np.eye(k)[y[wrong_rows]]])

    def lm_side(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    # The strongest regularisation within one standard error of the best 5-fold log-loss: with a few
    # hundred rows, the best C alone fits noise where the LM's accuracy depends on nothing seen.
    loss = {c: cross_val_score(lm_side(c), X, lm_right, cv=folds, scoring="neg_log_loss") for c in FACTORED_CS}
    top_c = max(FACTORED_CS, key=lambda c: loss[c].mean())
    floor = loss[top_c].mean() - loss[top_c].std(ddof=1) / np.sqrt(len(loss[top_c]))
    lm_model = lm_side(min(c for c in FACTORED_CS if loss[c].mean() >= floor))
    auc = float(np.mean(cross_val_score(lm_model, X, lm_right, cv=folds, scoring="roc_auc")))
    params = RouterParams.from_pipeline(lm_model.fit(X, lm_right))
    if not linear and _no_better_than_a_constant(lm_right, folds, X, floor):
        # Nothing seen tells where the LM is right (an LM at chance): a flat a, so the router ranks
        # exactly as the cascade does instead of by noise.
        rate = float(np.clip(lm_right.mean(), 1e-6, 1 - 1e-6))
        params = RouterParams(params.mean, params.scale, np.zeros_like(params.coef), math.log(rate / (1 - rate)))
    top = train_probs[0].max(axis=1)[:, None]
    small_wrong = (best != train.labels).astype(np.int64)
    curve = LogisticRegression(C=1e4, max_iter=2000).fit(top, small_wrong)
    wrong = (train_probs[0].shape[1], float(curve.coef_[0, 0]), float(curve.intercept_[0]))  # the top-prob column
    combine = {"gain": "gain", "factored": "product"}.get(method, method)
    return LearnedRouter(RouterParams(params.mean, params.scale, params.coef, params.intercept, wrong, combine,
                                      edges), labels, auc)


# -- combining, not only choosing: the LM's answer stacked with the small models' probabilities --------------


@dataclass
class StackedCombiner:
    """A multinomial logistic regression over [every small model's probabilities, the LM's answer
    one-hot] (`stack_features`), fitted on training rows whose LM answer is known; `cv_accuracy`
    and `lm_accuracy` are the stack's out-of-fold accuracy and the LM's on those same rows."""

    model_: Any
    n_labels: int
    rows: int
    cv_accuracy: float
    lm_accuracy: float

    def predict(self, probs: Sequence[np.ndarray], lm_labels: np.ndarray) -> np.ndarray:
        """The combined answer per input (the stack's most probable class)."""
        return np.asarray(self.model_.predict(stack_features(probs, lm_labels, self.n_labels)), np.int64)


def stack_features(probs: Sequence[np.ndarray], lm_labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Per input: each small model's probabilities, then the LM's answer one-hot (all zeros where
    it failed or named no label)."""
    lm = np.asarray(lm_labels, np.int64)
    ok = (lm >= 0) & (lm < n_labels)
    onehot = np.zeros((len(lm), n_labels))
    onehot[np.flatnonzero(ok), lm[ok]] = 1.0
    return np.hstack([np.asarray(p, np.float64) for p in probs] + [onehot])


#: Regularisation strengths `fit_stacked_combiner` chooses among when given none, by cross-validated log-loss.
STACK_CS = (0.01, 0.1, 1.0, 10.0)


def fit_stacked_combiner(probs: Sequence[np.ndarray], lm_labels: np.ndarray, y: np.ndarray, n_labels: int,
                         seed: int = 0, folds: int = 5, C: Optional[float] = 1.0) -> Optional[StackedCombiner]:
    """Fit the stack on training rows whose LM answer is known (`probs`: the small models'
    out-of-fold probabilities on those rows, `y` their labels), with its cross-validated accuracy
    beside the LM's. None with fewer than two classes or two rows of the rarest class. The rows
    should be a sample of where the LM will be asked (the probe's); mined rows alone are only those
    the small models got wrong, from which it learns to contradict them. `C` None: the strength of
    `STACK_CS` with the best cross-validated log-loss on these rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

    y = np.asarray(y, np.int64)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        return None
    X = stack_features(probs, lm_labels, n_labels)
    cv = StratifiedKFold(min(folds, int(counts.min())), shuffle=True, random_state=seed)
    if C is None:
        C = max(STACK_CS, key=lambda c: cross_val_score(LogisticRegression(C=c, max_iter=2000), X, y, cv=cv,
                                                        scoring="neg_log_loss").mean())
    model = LogisticRegression(C=C, max_iter=2000)
    cv_pred = cross_val_predict(model, X, y, cv=cv)
    return StackedCombiner(model.fit(X, y), n_labels, len(y), float(np.mean(cv_pred == y)),
                           float(np.mean(np.asarray(lm_labels) == y)))


# -- more evidence than validation: the training split's out-of-fold outputs where the LM answered ----------


#: Folds of `oof_router_scores` in a run (`Pipeline._tune_with_training_evidence`) and the bench.
EVIDENCE_FOLDS = 3


def oof_router_scores(train_probs: Sequence[np.ndarray], train: Split, lm_known: dict[int, int], seed: int = 0,
                      method: str = "classwise", folds: int = 5) -> np.ndarray:
    """Each training row's deferral score from a router fitted (`fit_learned_router`) without the
    row's fold, on the other folds' out-of-fold small-model outputs and known LM answers: scores
    comparable to what the run's router gives new inputs. NaN in a fold whose router could not be
    fitted (too few LM answers)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(train.labels)
    out = np.full(len(y), np.nan)
    _, counts = np.unique(y, return_counts=True)
    k = int(min(folds, counts.min()))
    if k < 2:
        return out
    for fit_rows, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        pos = {int(r): j for j, r in enumerate(fit_rows)}
        known = {pos[i]: code for i, code in lm_known.items() if i in pos}
        router = fit_learned_router([p[fit_rows] for p in train_probs], train.subset(fit_rows), known, seed=seed,
                                    method=method)
        if router is not None:
            out[held] = router.score([p[held] for p in train_probs], train.subset(held))
    return out


def region_pairs(unsure: np.ndarray, sample: dict[str, np.ndarray], y: np.ndarray, share: float) -> dict[str, np.ndarray]:
    """The paired evidence a budget point's guard can pool with validation's (`RunConfig.probe_lm`'s
    form: ``y``, ``ssm_label``, ``lm_label``): the rows of `sample` (a uniform sample of the training
    split with the best small model's out-of-fold label and the LM's, `load_router_labels`) that fall
    in the `share` of training rows a router is least sure of (`unsure`: higher is less sure, e.g.
    the learned router's out-of-fold score or 1 - the small model's out-of-fold confidence; NaN rows
    are never in it), as `mining.probe_sample` draws the probe from the region the point sends."""
    unsure = np.asarray(unsure, dtype=np.float64)
    n = int(np.floor(share * len(unsure) + 1e-9))
    order = np.argsort(np.where(np.isnan(unsure), np.inf, -unsure), kind="stable")[:n]
    region = np.zeros(len(unsure), dtype=bool)
    region[order[~np.isnan(unsure[order])]] = True
    keep = region[sample["index"]]
    idx = sample["index"][keep]
    return {"index": idx, "y": np.asarray(y)[idx], "ssm_label": sample["ssm_label"][keep],
            "lm_label": sample["lm_label"][keep]}


def paired_vs_cascade(learned_unsure: np.ndarray, cascade_unsure: np.ndarray, sample: dict[str, np.ndarray],
                      y: np.ndarray, share: float) -> np.ndarray:
    """Per row of `sample` (the router-label sample: a uniform draw of the training split with the
    best small model's out-of-fold label and the LM's), whether the learned router's routing is
    right (1) minus whether the cascade's is (0 or 1), each sending the `share` of training rows it
    is least sure of (`region_pairs`, out of fold) to the LM: -1, 0 or 1. Their mean estimates the
    accuracy the learned router gains over the cascade at that share, on training inputs validation
    never saw; `report.build_rows` pools them with validation's to decide which of the two a run
    exports (`beats_cascade`)."""
    idx = np.asarray(sample["index"])
    y_s = np.asarray(y)[idx]
    ssm_right = np.asarray(sample["ssm_label"]) == y_s
    lm_right = np.asarray(sample["lm_label"]) == y_s

    def right(unsure: np.ndarray) -> np.ndarray:
        sent = np.isin(idx, region_pairs(unsure, sample, y, share)["index"])
        return np.where(sent, lm_right, ssm_right).astype(np.int64)

    return right(learned_unsure) - right(cascade_unsure)
