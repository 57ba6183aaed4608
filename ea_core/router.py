"""The cascade router: which stage answers each input, and what that routing scores.

Easy Adaptation ranks several classifiers ("stages": SSMs, then augmented SSMs, then the large
model) and passes every input down the list; stage k *takes* input i when its confidence
``conf[k, i] >= thresholds[k]``, the first stage that takes it answers, and the last stage answers
whatever is left (its threshold is ignored). Any order is just another stage list, e.g. the LM
with a threshold on its log-prob confidence before an augmented SSM that answers the rest.

Routing is recomputed on every move of a UI slider and thousands of times while tuning, always
from cached per-stage outputs, so everything here is vectorised numpy over the ``(stages,
examples)`` matrix with no per-example Python loop. `StageStack` stacks the outputs once; its
`evaluate` encodes each (stage, true label, prediction) as one integer so that stage shares,
per-stage accuracy and the confusion matrix behind macro-F1 come from a single `np.bincount`,
and it remembers the last routing: when one threshold moves (a slider drag) only the inputs whose
confidence lies between the old and new value are re-routed. That is ~0.2 ms for a fresh setting
and well under 0.1 ms for a slider move at 10,000 examples x 6 stages (bench/bench_routing.py).
`route` and `evaluate` are one-shot conveniences on top of it.

Money: a paid stage (``cost_usd`` given, normally the LM) costs its per-example price for every
input that *reaches* it, whether it answers or passes on: its confidence is only known after the
call. The LM call rate is the share of inputs that reach an LM stage (the first one, if several).
With the LM last, as in the paper's main setting, this is exactly the LM's share of answers.

Generation: stages built with `StageOutput.graded` carry a quality in [0, 1] per input (ROUGE-L F1
against the reference) instead of a label; the same routing then scores mean quality
(`RoutingMetrics.accuracy`) and the oracle is the best stage's quality per input. Classification
is the special case quality = 1 where the label is right (`StageStack.quality`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from ea_core.errors import ConfigError
from ea_core.metrics import check_labels

# Confidences are probabilities; a tolerance this small absorbs float rounding, then they are clipped.
_CONF_TOL = 1e-6


def _as_pred(name: str, pred: Any) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.ndim != 1:
        raise ConfigError(f"Stage {name!r}: predictions must be a 1-D array, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigError(f"Stage {name!r}: predictions must be integer label indices.")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_conf(name: str, conf: Any, n: int) -> np.ndarray:
    arr = np.asarray(conf, dtype=np.float64)
    if arr.shape != (n,):
        raise ConfigError(
            f"Stage {name!r}: {arr.size} confidence value(s) (shape {arr.shape}) for {n} prediction(s); "
            "give one confidence per prediction."
        )
    if arr.size:
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"Stage {name!r}: confidences contain NaN or infinite values.")
        if arr.min() < -_CONF_TOL or arr.max() > 1 + _CONF_TOL:
            raise ConfigError(
                f"Stage {name!r}: confidences must lie in [0, 1] (got {arr.min():.4g} to {arr.max():.4g}); "
                "pass probabilities, e.g. exp(log-prob) for an LM."
            )
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0))


def _as_quality(name: str, quality: Any, n: int) -> np.ndarray:
    arr = np.asarray(quality, dtype=np.float64)
    if arr.shape != (n,):
        raise ConfigError(f"Stage {name!r}: {arr.size} quality value(s) for {n} example(s); give one per example.")
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < -_CONF_TOL or arr.max() > 1 + _CONF_TOL):
        raise ConfigError(f"Stage {name!r}: qualities must be finite numbers in [0, 1] (e.g. ROUGE-L F1).")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0))


@dataclass
class StageOutput:
    """Cached outputs of one stage on one split.

    `pred` holds label indices (for the LM, -1 unparseable / -2 failed, both counted wrong), or
    None for a generation stage (its texts live elsewhere); `conf` the stage's confidence in [0, 1]
    (ones for an LM without confidences); `cost_usd` the money per example if the stage is called
    (None = free); `quality` each output's quality in [0, 1] against the reference (e.g. ROUGE-L
    F1): given on every stage, routing scores mean quality instead of label correctness, so
    classification is the special case quality = 1 where the label is right.
    """

    name: str
    pred: Optional[np.ndarray]
    conf: np.ndarray
    is_lm: bool = False
    cost_usd: Optional[np.ndarray] = None
    quality: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.pred is None:  # a generation stage: its outputs are texts the router never sees
            self.pred = np.zeros(np.asarray(self.conf).reshape(-1).shape[0], dtype=np.int64)
        self.pred = _as_pred(self.name, self.pred)
        n = self.pred.shape[0]
        self.conf = _as_conf(self.name, self.conf, n)
        if self.quality is not None:
            self.quality = _as_quality(self.name, self.quality, n)
        self.is_lm = bool(self.is_lm)
        if self.cost_usd is not None:
            cost = np.asarray(self.cost_usd, dtype=np.float64)
            if cost.ndim == 0:
                cost = np.full(n, float(cost))
            if cost.shape != (n,):
                raise ConfigError(
                    f"Stage {self.name!r}: {cost.size} cost value(s) for {n} prediction(s); give one per example."
                )
            if cost.size and (not np.all(np.isfinite(cost)) or cost.min() < 0):
                raise ConfigError(f"Stage {self.name!r}: costs must be finite and non-negative.")
            self.cost_usd = cost

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    @classmethod
    def from_proba(cls, name: str, proba: np.ndarray) -> "StageOutput":
        """A small model's stage from its (n, n_labels) probabilities: pred = argmax, conf = max."""
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] == 0:
            raise ConfigError(f"Stage {name!r}: probabilities must have shape (n_examples, n_labels), got {p.shape}.")
        return cls(name=name, pred=p.argmax(axis=1), conf=p.max(axis=1) if len(p) else np.zeros(0))

    @classmethod
    def graded(cls, name: str, conf: Any, quality: Optional[Any] = None, *, is_lm: bool = False,
               cost_usd: Optional[Any] = None) -> "StageOutput":
        """A generation stage: confidence per input and, on a scored split, quality per input."""
        return cls(name=name, pred=None, conf=conf, is_lm=is_lm, cost_usd=cost_usd, quality=quality)


@dataclass
class RoutingResult:
    """Which stage answered each input, and the answer."""

    answered_by: np.ndarray
    pred: np.ndarray


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class RoutingMetrics:
    """What one routing scores on one labelled split (nan where undefined, e.g. no examples).

    `shares[k]` is the share of inputs answered by stage k (the paper's Table 3),
    `stage_accuracy[k]` stage k's accuracy on the inputs it answered, `oracle_accuracy` the share
    of inputs some stage gets right, `cost_per_1k_usd` the money spent per 1,000 inputs.
    """

    accuracy: float
    macro_f1: float
    lm_call_rate: float
    cost_per_1k_usd: float
    shares: list[float]
    stage_accuracy: list[float]
    oracle_accuracy: float
    n: int
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain floats and lists, nan written as None."""
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}


ThresholdsLike = Union[Sequence[float], np.ndarray]


class StageStack:
    """Stage outputs stacked once into ``(stages, examples)`` arrays, for routing many times.

    ``StageStack(stages, y).evaluate(thresholds)`` is what a UI slider calls on every change.
    `y` (optional) is validated and cached with its per-stage correctness matrix.
    """

    def __init__(
        self,
        stages: Sequence[StageOutput],
        y: Optional[np.ndarray] = None,
        n_labels: Optional[int] = None,
    ) -> None:
        stages = list(stages)
        if not stages:
            raise ConfigError("Routing needs at least one stage.")
        for s in stages:
            if not isinstance(s, StageOutput):
                raise ConfigError(f"Expected StageOutput objects, got {type(s).__name__}.")
        lengths = [len(s) for s in stages]
        if len(set(lengths)) != 1:
            detail = ", ".join(f"{s.name}={n}" for s, n in zip(stages, lengths))
            raise ConfigError(f"All stages must cover the same examples, but their lengths differ ({detail}).")
        self.stages = stages
        self.names: list[str] = [s.name for s in stages]
        self.n_stages = len(stages)
        self.n = lengths[0]
        self.conf = np.stack([s.conf for s in stages]) if self.n else np.zeros((self.n_stages, 0))
        self.pred = np.stack([s.pred for s in stages]) if self.n else np.zeros((self.n_stages, 0), np.int64)
        self.is_lm = np.array([s.is_lm for s in stages], dtype=bool)
        lm = np.flatnonzero(self.is_lm)
        self.first_lm: Optional[int] = int(lm[0]) if lm.size else None
        self.paid: list[int] = [k for k, s in enumerate(stages) if s.cost_usd is not None]
        self.cost = (
            np.stack([stages[k].cost_usd for k in self.paid])
            if self.paid and self.n
            else np.zeros((len(self.paid), self.n))
        )
        self._cols = np.arange(self.n)
        # Money if answered by stage a = prices of the paid stages <= a (all of them were called).
        self._cum_cost_flat: Optional[np.ndarray] = None
        if self.paid:
            cum = np.zeros((self.n_stages, self.n))
            for row, k in enumerate(self.paid):
                cum[k] = self.cost[row]
            for k in range(1, self.n_stages):  # row by row: much faster than cumsum(axis=0)
                cum[k] += cum[k - 1]
            self._cum_cost_flat = cum.ravel()
        self._pred_flat = self.pred.ravel()
        self._key_flat: Optional[np.ndarray] = None
        self._key_size = 0
        self._summary: Optional[np.ndarray] = None
        self._last: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, float, int]] = None
        self._lock = threading.Lock()  # the incremental state is shared by concurrent UI callbacks
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: Derived data of threshold search (see ea_core.tuning); cleared when the labels change.
        self.cache: dict[Any, Any] = {}
        self._y: Optional[np.ndarray] = None
        self._correct: Optional[np.ndarray] = None
        self._oracle = float("nan")
        self.n_labels = n_labels
        graded = [s.quality is not None for s in stages]
        if any(graded) and not all(graded):
            missing = ", ".join(s.name for s in stages if s.quality is None)
            raise ConfigError(f"Either every stage carries per-example quality or none does; missing on: {missing}.")
        #: Graded routing: the stages carry quality in [0, 1] per example (generation), no labels needed.
        self.graded = all(graded)
        self._quality: Optional[np.ndarray] = None
        if self.graded:
            self._quality = np.stack([s.quality for s in stages]) if self.n else np.zeros((self.n_stages, 0))
            self._oracle = float(self._quality.max(axis=0).mean()) if self.n else float("nan")
        if y is not None:
            self.set_labels(y, n_labels)

    # -- labels -------------------------------------------------------------------------------
    def set_labels(self, y: np.ndarray, n_labels: Optional[int] = None) -> None:
        """Validate and cache the true labels (and which stage is right on which input)."""
        y = check_labels(y, self.n, n_labels)
        self.cache.clear()
        self._last = None
        if self.graded:  # quality already says how good each output is: the labels only name folds
            self._y, self.n_labels = y, n_labels
            return
        if n_labels is None:
            top = max(int(y.max(initial=-1)), int(self.pred.max(initial=-1)))
            n_labels = max(top + 1, 1)
        self._y = y
        self.n_labels = n_labels
        self._correct = self.pred == y[None, :]
        self._oracle = float(self._correct.any(axis=0).mean()) if self.n else float("nan")
        # One code per (stage, input): (stage, true label, prediction + 1, with 0 = no valid label).
        # A routing's stage shares, per-stage hits and confusion matrix are then one bincount.
        L = n_labels
        self._key_size = self.n_stages * L * (L + 1)
        self._key_flat = None
        self._summary = None
        if self._key_size <= 1 << 20:
            valid = (self.pred >= 0) & (self.pred < L)
            p1 = np.where(valid, self.pred + 1, 0)
            stage = np.arange(self.n_stages)[:, None]
            self._key_flat = ((stage * L + y[None, :]) * (L + 1) + p1).ravel()
            S = self.n_stages
            if (2 * S + 3 * L) * self._key_size <= 1 << 18:
                # Every count the metrics need is a linear function of the code table:
                # rows = answers per stage, right answers per stage, then per label tp, support, predicted.
                code = np.arange(self._key_size)
                stage_of, rest = np.divmod(code, L * (L + 1))
                label_of, p1_of = np.divmod(rest, L + 1)
                hit = p1_of == label_of + 1
                A = np.zeros((2 * S + 3 * L, self._key_size))
                A[stage_of, code] = 1
                A[S + stage_of[hit], code[hit]] = 1
                A[2 * S + label_of[hit], code[hit]] = 1
                A[2 * S + L + label_of, code] = 1
                A[2 * S + 2 * L + p1_of[p1_of > 0] - 1, code[p1_of > 0]] = 1
                self._summary = A

    def has_labels(self, y: np.ndarray, n_labels: Optional[int] = None) -> bool:
        """Whether `y` (and `n_labels`, if given) are the labels already set."""
        if self._y is None or (n_labels is not None and n_labels != self.n_labels):
            return False
        return y is self._y or (np.shape(y) == self._y.shape and bool(np.array_equal(y, self._y)))

    @property
    def y(self) -> Optional[np.ndarray]:
        return self._y

    @property
    def scored(self) -> bool:
        """Whether a routing can be scored: labels were given, or the stages carry quality."""
        return self.graded or self._correct is not None

    @property
    def quality(self) -> np.ndarray:
        """Float ``(stages, examples)`` in [0, 1]: how good stage k's output is on input i (the
        stages' quality when graded, else 1.0 where the label is right). What tuning maximises."""
        if self._quality is not None:
            return self._quality
        return self.correct.astype(np.float64)

    @property
    def correct(self) -> np.ndarray:
        """Bool ``(stages, examples)``: stage k is right on input i (labelled stages only)."""
        if self.graded:
            raise ConfigError("These stages are graded by quality, not labels; read `quality`.")
        if self._correct is None:
            raise ConfigError("No labels were given; pass y to evaluate a routing.")
        return self._correct

    def sorted_conf(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(order, sorted confidences) of stage k, computed once (used by threshold search)."""
        if k not in self._sorted:
            order = np.argsort(self.conf[k])
            self._sorted[k] = (order, self.conf[k][order])
        return self._sorted[k]

    # -- routing ------------------------------------------------------------------------------
    def thresholds_array(self, thresholds: ThresholdsLike) -> np.ndarray:
        """Validated float64 thresholds, one per stage (the last one is ignored)."""
        try:
            thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Thresholds must be numbers: {exc}") from None
        if thr.shape[0] != self.n_stages:
            raise ConfigError(
                f"Got {thr.shape[0]} threshold(s) for {self.n_stages} stage(s) ({', '.join(self.names)}); "
                "give one per stage (the last stage's is ignored)."
            )
        if np.isnan(thr[:-1]).any():
            raise ConfigError("Thresholds must not be NaN.")
        return thr

    def answered_by(self, thresholds: ThresholdsLike) -> np.ndarray:
        """Index of the stage that answers each input."""
        thr = self.thresholds_array(thresholds)
        out = np.full(self.n, self.n_stages - 1, dtype=np.int64)
        # Walk the stages backwards so that the earliest stage that takes an input wins.
        for k in range(self.n_stages - 2, -1, -1):
            np.putmask(out, self.conf[k] >= thr[k], k)
        return out

    def route(self, thresholds: ThresholdsLike) -> RoutingResult:
        """Route every input; see the module docstring for the rule."""
        answered = self.answered_by(thresholds)
        return RoutingResult(answered_by=answered, pred=self._pred_flat[answered * self.n + self._cols])

    # -- scoring ------------------------------------------------------------------------------
    def _money(self, flat: np.ndarray) -> float:
        return 0.0 if self._cum_cost_flat is None else float(self._cum_cost_flat[flat].sum())

    def evaluate(
        self,
        thresholds: ThresholdsLike,
        y: Optional[np.ndarray] = None,
        n_labels: Optional[int] = None,
    ) -> RoutingMetrics:
        """All metrics of the routing at `thresholds` (labels from the constructor unless given).

        When only one threshold differs from the previous call (a slider move), only the inputs
        whose confidence lies between its old and new value are re-routed.
        """
        if y is not None and not self.has_labels(y, n_labels):
            self.set_labels(y, n_labels)
        if self.graded:
            return self._evaluate_graded(self.thresholds_array(thresholds))
        correct = self.correct
        thr = self.thresholds_array(thresholds)
        S, n = self.n_stages, self.n
        if n == 0:
            nan = float("nan")
            return RoutingMetrics(nan, nan, nan, nan, [nan] * S, [nan] * S, nan, 0, list(self.names))
        assert self._y is not None and self.n_labels is not None
        L = self.n_labels
        if self._key_flat is not None:
            table, money = self._table(thr)
            if self._summary is not None:
                v = self._summary @ table
                counts, right = v[:S], v[S : 2 * S]
                tp, support, predicted = v[2 * S : 2 * S + L], v[2 * S + L : 2 * S + 2 * L], v[2 * S + 2 * L :]
            else:
                t3 = table.reshape(S, L, L + 1)
                diag = np.arange(L)
                counts = t3.sum(axis=(1, 2))
                right = t3[:, diag, diag + 1].sum(axis=1)
                confusion = t3.sum(axis=0)
                tp, support, predicted = confusion[diag, diag + 1], confusion.sum(axis=1), confusion[:, 1:].sum(axis=0)
        else:  # very many labels: separate bincounts
            answered = self.answered_by(thr)
            flat = answered * n + self._cols
            hit = correct.ravel()[flat]
            counts = np.bincount(answered, minlength=S)
            right = np.bincount(answered, weights=hit, minlength=S)
            pred = self._pred_flat[flat]
            ok = (pred >= 0) & (pred < L)
            tp = np.bincount(self._y, weights=hit, minlength=L)
            support = np.bincount(self._y, minlength=L)
            predicted = np.bincount(pred[ok], minlength=L)[:L]
            money = self._money(flat)
        denom = support + predicted
        present = denom > 0
        f1 = 2.0 * tp[present] / denom[present]
        counts_l, right_l = counts.tolist(), right.tolist()
        stage_acc = [r / c if c else float("nan") for r, c in zip(right_l, counts_l)]
        calls = 0 if self.first_lm is None else sum(counts_l[self.first_lm :])
        return RoutingMetrics(
            accuracy=float(sum(right_l)) / n,
            macro_f1=float(f1.mean()) if f1.size else float("nan"),
            lm_call_rate=float(calls) / n,
            cost_per_1k_usd=money / n * 1000.0,
            shares=[c / n for c in counts_l],
            stage_accuracy=stage_acc,
            oracle_accuracy=self._oracle,
            n=n,
            names=list(self.names),
        )

    def _evaluate_graded(self, thr: np.ndarray) -> RoutingMetrics:
        """Graded routing: `accuracy` is the mean quality of the answers (e.g. ROUGE-L F1),
        `stage_accuracy` each stage's mean quality on what it answered, macro-F1 undefined."""
        S, n = self.n_stages, self.n
        nan = float("nan")
        if n == 0:
            return RoutingMetrics(nan, nan, nan, nan, [nan] * S, [nan] * S, nan, 0, list(self.names))
        assert self._quality is not None
        answered = self.answered_by(thr)
        flat = answered * n + self._cols
        q = self._quality.ravel()[flat]
        counts = np.bincount(answered, minlength=S).tolist()
        sums = np.bincount(answered, weights=q, minlength=S).tolist()
        calls = 0 if self.first_lm is None else sum(counts[self.first_lm :])
        return RoutingMetrics(
            accuracy=float(q.mean()),
            macro_f1=nan,
            lm_call_rate=float(calls) / n,
            cost_per_1k_usd=self._money(flat) / n * 1000.0,
            shares=[c / n for c in counts],
            stage_accuracy=[s_ / c if c else nan for s_, c in zip(sums, counts)],
            oracle_accuracy=self._oracle,
            n=n,
            names=list(self.names),
        )

    def answer_quality(self, thresholds: ThresholdsLike) -> np.ndarray:
        """Per input: the quality of the answer the routing at `thresholds` gives (1/0 for labels)."""
        answered = self.answered_by(thresholds)
        return self.quality[answered, self._cols]

    # Incremental state of the last evaluated routing: thresholds, answering stage per input, the
    # bincount table of (stage, label, prediction) codes and the money spent.
    _REFRESH_EVERY = 256  # full recompute now and then so float money sums cannot drift

    def _table(self, thr: np.ndarray) -> tuple[np.ndarray, float]:
        with self._lock:
            table, money = self._table_locked(thr)
            return table.copy(), money

    def _table_locked(self, thr: np.ndarray) -> tuple[np.ndarray, float]:
        assert self._key_flat is not None
        last = self._last
        if last is not None and last[4] < self._REFRESH_EVERY:
            changed = np.flatnonzero(thr[:-1] != last[0][:-1])
            if changed.size == 0:
                return last[2], last[3]
            if changed.size == 1:
                return self._move(int(changed[0]), thr)
        n = self.n
        ans = self.answered_by(thr)
        flat = ans * n + self._cols
        table = np.bincount(self._key_flat[flat], minlength=self._key_size).astype(np.float64)
        money = self._money(flat)
        self._last = (thr.copy(), ans, table, money, 0)
        return table, money

    def _move(self, k: int, thr: np.ndarray) -> tuple[np.ndarray, float]:
        """Re-route after stage k's threshold moved: only inputs with conf between old and new."""
        assert self._last is not None and self._key_flat is not None
        old_thr, ans, table, money, steps = self._last
        n, S = self.n, self.n_stages
        order, sc = self.sorted_conf(k)
        t0, t1 = old_thr[k], thr[k]
        lo, hi = np.searchsorted(sc, [min(t0, t1), max(t0, t1)], side="left")
        idx = order[lo:hi]  # min <= conf_k < max
        if t1 < t0:  # stage k now also takes these, if they reach it
            sel = idx[ans[idx] > k]
            new = np.full(sel.size, k, dtype=np.int64)
        else:  # stage k passes these on to the next stage that takes them
            sel = idx[ans[idx] == k]
            new = np.full(sel.size, S - 1, dtype=np.int64)
            for j in range(S - 2, k, -1):
                np.putmask(new, self.conf[j, sel] >= thr[j], j)
        if sel.size:  # the state is private: update it in place
            old_flat, new_flat = ans[sel] * n + sel, new * n + sel
            old_keys, new_keys = self._key_flat[old_flat], self._key_flat[new_flat]
            if self._key_size <= 4096:
                K = self._key_size
                table += np.bincount(new_keys, minlength=K) - np.bincount(old_keys, minlength=K)
            else:
                np.subtract.at(table, old_keys, 1)
                np.add.at(table, new_keys, 1)
            if self._cum_cost_flat is not None:
                money += float(self._cum_cost_flat[new_flat].sum() - self._cum_cost_flat[old_flat].sum())
            ans[sel] = new
        self._last = (thr.copy(), ans, table, money, steps + 1)
        return table, money


StagesLike = Union[Sequence[StageOutput], StageStack]


def as_stack(stages: StagesLike, y: Optional[np.ndarray] = None, n_labels: Optional[int] = None) -> StageStack:
    """`stages` as a `StageStack` (reused when it already is one), with labels `y` if given."""
    if isinstance(stages, StageStack):
        if y is not None and not stages.has_labels(y, n_labels):
            stages.set_labels(y, n_labels)
        return stages
    return StageStack(stages, y, n_labels)


def route(stages: StagesLike, thresholds: ThresholdsLike) -> RoutingResult:
    """Route every input through the cascade: the first stage with ``conf >= threshold`` answers,
    the last stage answers the rest."""
    return as_stack(stages).route(thresholds)


def evaluate(
    stages: StagesLike,
    thresholds: ThresholdsLike,
    y: Optional[np.ndarray] = None,
    n_labels: Optional[int] = None,
) -> RoutingMetrics:
    """Route and score against labels `y`, or by the stages' quality when they carry it (for
    repeated calls build a `StageStack` once)."""
    return as_stack(stages, y, n_labels).evaluate(thresholds)


def synthetic_stages(
    n: int = 10_000,
    n_stages: int = 6,
    n_labels: int = 4,
    *,
    seed: int = 0,
    lm_cost_usd: float = 0.0004,
) -> tuple[list[StageOutput], np.ndarray]:
    """Realistic fake cached outputs for benchmarks, tests and demos: ``(stages, y)``.

    Every input has a latent difficulty; each stage is right with a probability that falls with
    difficulty and rises with the stage's skill, and its confidence tracks the same noisy margin,
    so confidence and correctness are correlated but imperfectly. The stages are ranked weakest
    first; the last is an LM (conf from a noisy log-prob, ~1% unparseable answers, a per-example
    price). Stage names follow the app: ``ssm1.. , assm1.., lm``.
    """
    if n_stages < 1 or n_labels < 2:
        raise ConfigError("synthetic_stages needs at least one stage and two labels.")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_labels, size=n)
    difficulty = rng.normal(size=n)
    n_small = n_stages - 1
    n_assm = n_small // 3
    n_ssm = n_small - n_assm
    skills = np.linspace(0.6, 1.4, max(n_small, 1))[:n_small]
    names = [f"ssm{k + 1}" for k in range(n_ssm)] + [f"assm{k + 1}" for k in range(n_assm)]
    stages: list[StageOutput] = []

    def wrong_label() -> np.ndarray:
        return (y + rng.integers(1, n_labels, size=n)) % n_labels

    for name, skill in zip(names, skills):
        margin = skill - 2.0 * difficulty + rng.normal(scale=0.7, size=n)
        right = rng.random(n) < 1 / (1 + np.exp(-1.8 * margin))
        pred = np.where(right, y, wrong_label())
        noisy = margin + rng.normal(scale=0.7, size=n)
        conf = 1 / n_labels + (1 - 1 / n_labels) / (1 + np.exp(-1.5 * noisy))
        stages.append(StageOutput(name, pred, conf))
    margin = 2.4 - 1.2 * difficulty + rng.normal(scale=0.6, size=n)
    right = rng.random(n) < 1 / (1 + np.exp(-1.8 * margin))
    pred = np.where(right, y, wrong_label())
    pred[rng.random(n) < 0.01] = -1
    conf = np.exp(-np.log1p(np.exp(-(margin + rng.normal(scale=0.8, size=n)))))
    cost = lm_cost_usd * rng.lognormal(mean=0.0, sigma=0.3, size=n)
    stages.append(StageOutput("lm", pred, conf, is_lm=True, cost_usd=cost))
    return stages, y
