"""Choosing thresholds from cached validation outputs only, cheap enough to rerun whenever the
user moves a budget slider: `autotune` (the best validation score within an LM-call or money
budget), `pareto_front` (the whole trade-off for the UI), `brute_force_tune` (FrugalGPT's
`scipy.optimize.brute`, a baseline) and `val_test_report` (validation and test side by side;
thresholds are never chosen on test). Everything maximises the mean per-example quality of the
answers (`StageStack.quality`): accuracy for labels, e.g. ROUGE-L F1 for graded generation stages,
where `y` may be None. How the grid search works and where it is approximate:
docs/threshold-search.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
from scipy import optimize

from ea_core.errors import ConfigError, DataError
from ea_core.metrics import SELECTION_METRICS
from ea_core.router import StagesLike, StageStack, as_stack

#: A threshold above every confidence: the stage never answers, it always passes on.
NEVER_TAKES = 1.01
#: Largest candidate grid searched exhaustively (cells = product of candidates per tunable stage).
MAX_EXACT_CELLS = 1_000_000
EPS_COST = 1e-9  # relative slack for float money comparisons


def metric_weights(y: np.ndarray, metric: str = "accuracy") -> Optional[np.ndarray]:
    """Per-example weights of a selection `metric` in threshold search: None for accuracy (every
    example counts 1), scikit-learn's balanced sample weights for macro_f1 (see the module docstring)."""
    if metric not in SELECTION_METRICS or metric == "auto":
        raise ConfigError(f"metric must be 'accuracy' or 'macro_f1', not {metric!r}.")
    if metric == "accuracy":
        return None
    from sklearn.utils.class_weight import compute_sample_weight

    y = np.asarray(y)
    return compute_sample_weight("balanced", y) if y.size else np.zeros(0)


# =============================================================================================
# Threshold search
# =============================================================================================


@dataclass
class OperatingPoint:
    """Thresholds (one per stage; the last is ignored and set to 0) and what they score on the
    data they were tuned on. A threshold of `NEVER_TAKES` (> 1) means the stage never answers."""

    thresholds: list[float]
    accuracy: float
    lm_call_rate: float
    cost_per_1k_usd: float
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_thresholds(conf: np.ndarray, n_candidates: Optional[int] = 64) -> np.ndarray:
    """Sorted candidate thresholds of one stage: quantiles of `conf` plus 0 and `NEVER_TAKES`.

    The quantiles are at ``n_candidates`` evenly spaced levels from 0 to 1 (linear interpolation,
    like `np.quantile`). ``n_candidates=None`` gives every distinct routing of that stage: 0, the
    midpoints between consecutive distinct confidences, and `NEVER_TAKES`.
    """
    return _candidates_sorted(np.sort(np.asarray(conf, dtype=np.float64)), n_candidates)


def _candidates_sorted(sc: np.ndarray, n_candidates: Optional[int]) -> np.ndarray:
    if n_candidates is None:
        u = _distinct(sc)
        inner = (u[:-1] + u[1:]) / 2.0
    else:
        if n_candidates < 1:
            raise ConfigError("n_candidates must be at least 1.")
        if sc.size:
            pos = np.linspace(0.0, 1.0, n_candidates) * (sc.size - 1)
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, sc.size - 1)
            inner = sc[lo] + (sc[hi] - sc[lo]) * (pos - lo)
        else:
            inner = np.zeros(0)
    return np.unique(np.concatenate([[0.0], inner, [NEVER_TAKES]]))


def _distinct(sc: np.ndarray) -> np.ndarray:
    """Distinct values of a sorted array."""
    return sc[np.concatenate([[True], sc[1:] != sc[:-1]])] if sc.size else sc


def _bins_sorted(order: np.ndarray, sc: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Number of candidates <= each confidence, for confidences given sorted (`sc = conf[order]`)."""
    starts = np.searchsorted(sc, cands, side="left")  # first sorted position each candidate is <=
    b_sorted = np.cumsum(np.bincount(starts, minlength=sc.size + 1)[: sc.size])
    bins = np.empty(sc.size, dtype=np.int64)
    bins[order] = b_sorted
    return bins


class _Search:
    """Validation outputs prepared for threshold search (see the module docstring)."""

    def __init__(self, stack: StageStack, n_candidates: Optional[int], base: Optional["_Search"] = None,
                 weights: Optional[np.ndarray] = None) -> None:
        if stack.n == 0:
            raise DataError("Threshold tuning needs labelled validation examples; there are none.")
        self.stack = stack
        self.n = stack.n
        self.S = stack.n_stages
        self.F = self.S - 1  # tunable stages
        self.L = stack.first_lm
        self.has_cost = bool(stack.paid)
        if base is not None:  # same stages and labels, other candidates: share the big arrays
            self.correct, self.cum_cost, self.reach_lm = base.correct, base.cum_cost, base.reach_lm
            self.calls_mat = base.calls_mat
            self.tol = base.tol
        else:
            # Per (stage, input) quality: 1/0 correctness for labels, e.g. ROUGE-L F1 for generation.
            self.correct = np.array(stack.quality, dtype=np.float64)
            # Counts are integers (ties within half a count) unless weighted or graded.
            self.tol = 1e-9 * max(float(self.n), 1.0) if stack.graded else 0.5
            if weights is not None:
                self.correct = self.correct * np.asarray(weights, dtype=np.float64)[None, :]
                self.tol = 1e-9 * max(float(np.sum(weights)), 1.0)
            # Cumulative money if answered by stage a: sum of the prices of paid stages <= a.
            spend = np.zeros((self.S, self.n))
            for row, k in enumerate(stack.paid):
                spend[k] = stack.cost[row]
            self.cum_cost = np.cumsum(spend, axis=0)
            self.reach_lm = (np.arange(self.S) >= self.L) if self.L is not None else np.zeros(self.S, bool)
            self.calls_mat = np.repeat(self.reach_lm.astype(np.float64)[:, None], self.n, axis=1)
        self.cands: list[np.ndarray] = []
        self.bins: list[np.ndarray] = []  # bins[k][i] = number of candidates <= conf[k, i]
        self.values: list[np.ndarray] = []  # distinct confidences (n_candidates=None only)
        for k in range(self.F):
            order, sc = stack.sorted_conf(k)
            if n_candidates is None:  # every distinct routing; bin = rank of the distinct value + 1
                first = np.concatenate([[True], sc[1:] != sc[:-1]])
                u = sc[first]
                self.values.append(u)
                self.cands.append(np.concatenate([[0.0], (u[:-1] + u[1:]) / 2.0, [NEVER_TAKES]]))
                bins = np.empty(sc.size, dtype=np.int64)
                bins[order] = np.cumsum(first)
                self.bins.append(bins)
            else:
                c = _candidates_sorted(sc, n_candidates)
                self.cands.append(c)
                self.bins.append(_bins_sorted(order, sc, c))

    # -- grids ------------------------------------------------------------------------------
    def grid(self, sub: Optional[list[np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(correct count, LM-call count, money) of every combination of candidate indices.

        `sub[k]` optionally restricts stage k to a subset of its candidate indices; the tensors are
        indexed by position in that subset.
        """
        F, n = self.F, self.n
        cands = self.cands if sub is None else [c[s] for c, s in zip(self.cands, sub)]
        sizes = [len(c) for c in cands]
        flats = []
        flat = np.zeros(n, np.int64)
        for k in range(F):
            b = self.bins[k] if sub is None else np.searchsorted(cands[k], self.stack.conf[k], side="right")
            flat = flat * sizes[k] + b
            flats.append(flat)

        def hist(k: int, w: np.ndarray) -> np.ndarray:  # over axes 0..k
            m = int(np.prod(sizes[: k + 1]))
            return np.bincount(flats[k], weights=w, minlength=m).reshape(sizes[: k + 1])

        def reach(p: int, w: np.ndarray) -> np.ndarray:
            """Sum of w over inputs reaching stage p (thresholds 0..p-1 all above their bins)."""
            if p == 0:
                return np.full(sizes, w.sum())
            h = hist(p - 1, w)
            for ax in range(p):
                h = np.cumsum(h, axis=ax)
            return np.broadcast_to(h.reshape(h.shape + (1,) * (F - p)), sizes)

        acc = np.zeros(sizes)
        for k in range(F):
            h = hist(k, self.correct[k])
            for ax in range(k):
                h = np.cumsum(h, axis=ax)
            h = h.sum(axis=k, keepdims=True) - np.cumsum(h, axis=k)  # stage k takes: bin > threshold index
            acc += h.reshape(h.shape + (1,) * (F - k - 1))
        acc += reach(F, self.correct[F])
        calls = np.zeros(sizes) if self.L is None else np.array(reach(self.L, np.ones(n)))
        money = np.zeros(sizes)
        for row, p in enumerate(self.stack.paid):
            money += reach(p, self.stack.cost[row])
        return acc, calls, money

    # -- exact evaluation of one index vector --------------------------------------------------
    def thresholds(self, j: Sequence[int]) -> list[float]:
        return [float(self.cands[k][j[k]]) for k in range(self.F)] + [0.0]

    def score(self, j: Sequence[int], ans: Optional[np.ndarray] = None) -> tuple[float, float, float]:
        """(correct count, LM-call count, money) at candidate indices `j`."""
        if ans is None:
            ans = self.answered(j)
        cols = np.arange(self.n)
        return (
            float(self.correct[ans, cols].sum()),
            float(self.reach_lm[ans].sum()),
            float(self.cum_cost[ans, cols].sum()),
        )

    def _score_for(self, j: Sequence[int], ans: np.ndarray, money: bool) -> tuple[float, float, float]:
        sc = self.score(j, ans)
        return sc if money else (sc[0], sc[1], 0.0)

    def answered(self, j: Sequence[int]) -> np.ndarray:
        take = self._take(j)
        return take.argmax(axis=0)

    def _take(self, j: Sequence[int]) -> np.ndarray:
        take = np.ones((self.S, self.n), dtype=bool)
        for k in range(self.F):
            take[k] = self.bins[k] > j[k]
        return take

    # -- coordinate ascent -------------------------------------------------------------------
    def _coordinate(
        self,
        k: int,
        take: np.ndarray,
        after: list[np.ndarray],
        ans: np.ndarray,
        cur: tuple[float, float, float],
        money: bool = True,
    ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(correct, calls, money) for every candidate of stage k, the other thresholds fixed
        (money left at 0 when `money` is False)."""
        idx = np.flatnonzero(ans >= k)  # inputs reaching stage k
        if idx.size == 0:
            return None
        now = ans[idx]
        pt = after[k][idx]  # where each would go if stage k passed it on
        b = self.bins[k][idx]
        m = len(self.cands[k])

        def gain(w: np.ndarray) -> np.ndarray:
            h = np.bincount(b, weights=w, minlength=m)
            return h.sum() - np.cumsum(h)  # stage k takes iff bin > candidate index

        c_pt = self.correct[pt, idx]
        acc_j = cur[0] - self.correct[now, idx].sum() + c_pt.sum() + gain(self.correct[k, idx] - c_pt)
        calls_j = np.zeros(m)
        if self.L is not None:
            r_pt = self.reach_lm[pt].astype(np.float64)
            calls_j = cur[1] - self.reach_lm[now].sum() + r_pt.sum() + gain(self.reach_lm[k] - r_pt)
        money_j = np.zeros(m)
        if self.has_cost and money:
            m_pt = self.cum_cost[pt, idx]
            money_j = cur[2] - self.cum_cost[now, idx].sum() + m_pt.sum() + gain(self.cum_cost[k, idx] - m_pt)
        return acc_j, calls_j, money_j

    def ascend(
        self,
        j0: Sequence[int],
        calls_cap: float,
        money_cap: float,
        max_sweeps: int = 50,
        penalty: Optional[tuple[float, float]] = None,
    ) -> np.ndarray:
        """Constrained coordinate ascent from feasible indices `j0` (see the module docstring).

        Each step sets one stage's threshold to its best candidate within budget given the others
        (most correct, then fewest LM calls, then least money) and is kept only if strictly better.
        With ``penalty=(lam_calls, lam_money)`` it instead maximises the unconstrained Lagrangian
        ``correct - lam_calls * calls - lam_money * money`` (the caps are ignored).
        """
        j = np.array(j0, dtype=np.int64)
        take = self._take(j)
        after = self._after(take)
        ans = take.argmax(axis=0)
        # Money only matters under a money budget or price; elsewhere it just breaks exact ties.
        use_money = bool(np.isfinite(money_cap) or (penalty is not None and penalty[1] != 0))
        cur = self._score_for(j, ans, use_money)
        for _ in range(max_sweeps):
            changed = False
            for k in range(self.F):
                tables = self._coordinate(k, take, after, ans, cur, money=use_money)
                if tables is None:
                    continue
                acc_j, calls_j, money_j = tables
                if penalty is None:
                    ok = (calls_j <= calls_cap + 0.5) & (money_j <= money_cap)
                    best = _pick(acc_j, calls_j, money_j, ok, tol=self.tol)
                    if best < 0:
                        continue
                    improved = _better((float(acc_j[best]), float(calls_j[best]), float(money_j[best])), cur,
                                       self.tol)
                else:
                    value = acc_j - penalty[0] * calls_j - penalty[1] * money_j
                    best = _pick(value, calls_j, money_j, np.ones(value.size, bool), tol=1e-9)
                    here = cur[0] - penalty[0] * cur[1] - penalty[1] * cur[2]
                    improved = bool(value[best] > here + 1e-9)
                if best != j[k] and improved:
                    j[k] = best
                    take[k] = self.bins[k] > best
                    after = self._after(take)
                    ans = take.argmax(axis=0)
                    cur = self._score_for(j, ans, use_money)
                    changed = True
            if not changed:
                break
        return j

    def repair(
        self, j0: Sequence[int], calls_cap: float, money_cap: float, max_steps: int = 200
    ) -> Optional[np.ndarray]:
        """Greedy walk from over-budget indices `j0` into the budget: each step changes the one
        threshold that loses the fewest correct answers per unit of overspend removed (removing
        more than the overspend earns nothing extra). None if it gets stuck."""
        j = np.array(j0, dtype=np.int64)
        take = self._take(j)
        after = self._after(take)
        ans = take.argmax(axis=0)
        cur = self.score(j, ans)
        money_scale = max(cur[2], 1e-12) / max(cur[1], 1.0) if self.has_cost else 1.0

        def over(calls: np.ndarray, money: np.ndarray) -> np.ndarray:
            return np.maximum(calls - calls_cap, 0.0) + np.maximum(money - money_cap, 0.0) / money_scale

        for _ in range(max_steps):
            if cur[1] <= calls_cap + 0.5 and cur[2] <= money_cap:
                return j
            ov = float(over(np.array(cur[1]), np.array(cur[2])))
            best_key: Optional[float] = None
            best_move = None
            for k in range(self.F):
                tables = self._coordinate(k, take, after, ans, cur)
                if tables is None:
                    continue
                acc_j, calls_j, money_j = tables
                # Overspend removed, counted only up to what is needed: a move that overshoots
                # into the budget gets no credit for the calls it gives up beyond that.
                cut = np.minimum(ov - over(calls_j, money_j), ov)
                ratio = np.where(cut > 1e-12, (cur[0] - acc_j) / np.maximum(cut, 1e-12), np.inf)
                c = int(np.argmin(ratio))
                if not np.isfinite(ratio[c]):
                    continue
                key = -float(ratio[c])
                if best_key is None or key > best_key:
                    best_key, best_move = key, (k, c)
            if best_move is None:
                return None
            k, c = best_move
            j[k] = c
            take[k] = self.bins[k] > c
            after = self._after(take)
            ans = take.argmax(axis=0)
            cur = self.score(j, ans)
        return None

    def ascend_pairs(self, j0: Sequence[int], calls_cap: float, money_cap: float, max_sweeps: int = 30) -> np.ndarray:
        """Constrained block coordinate ascent over *pairs* of stages from feasible indices `j0`.

        Each step sets two stages' thresholds jointly to the best pair of candidates within budget
        given the others, evaluated exactly for all pairs at once (2-D histograms and prefix sums),
        and is kept only if strictly better. Subsumes single-stage steps; pairs let the search trade
        LM calls between two stages at a tight budget, which single moves cannot.
        """
        if self.F < 2:
            return self.ascend(j0, calls_cap, money_cap, max_sweeps)
        j = np.array(j0, dtype=np.int64)
        F = self.F
        take = self._take(j)
        ans = take.argmax(axis=0)
        use_money = bool(np.isfinite(money_cap))  # else money only breaks exact ties: skip it
        cur = self._score_for(j, ans, use_money)
        pairs = [(k, l) for k in range(F) for l in range(k + 1, F)]
        for _ in range(max_sweeps):
            changed = False
            for k, l in pairs:
                idx = np.flatnonzero(ans >= k)  # inputs reaching stage k
                if idx.size == 0:
                    continue
                mk, ml = len(self.cands[k]), len(self.cands[l])
                if l > k + 1:
                    between = take[k + 1 : l][:, idx]
                    reach_l = ~between.any(axis=0)
                    mid = k + 1 + between.argmax(axis=0)
                else:
                    reach_l = np.ones(idx.size, dtype=bool)
                    mid = np.full(idx.size, l)
                aft = l + 1 + take[l + 1 :, idx].argmax(axis=0)  # first taker after l (the last takes all)
                bk, bl = self.bins[k][idx], self.bins[l][idx]
                rl, nr = np.flatnonzero(reach_l), np.flatnonzero(~reach_l)
                flat = bk[rl] * ml + bl[rl]
                now = ans[idx]

                n = self.n
                f_now = now * n + idx
                f_mid = mid[nr] * n + idx[nr]
                f_aft = aft[rl] * n + idx[rl]
                i_rl = idx[rl]

                def table(w: np.ndarray, total: float) -> np.ndarray:
                    """Metric of every (candidate k, candidate l) from per-(stage, input) values `w`."""
                    wf = w.ravel()
                    h = np.bincount(bk, weights=w[k][idx], minlength=mk)
                    t = (h.sum() - np.cumsum(h))[:, None]  # stage k takes: bin_k > candidate index
                    if nr.size:
                        t = t + np.cumsum(np.bincount(bk[nr], weights=wf[f_mid], minlength=mk))[:, None]
                    h3 = np.bincount(flat, weights=w[l][i_rl], minlength=mk * ml).reshape(mk, ml)
                    h3 = np.cumsum(h3, axis=0)
                    h3 = h3.sum(axis=1, keepdims=True) - np.cumsum(h3, axis=1)
                    h4 = np.bincount(flat, weights=wf[f_aft], minlength=mk * ml).reshape(mk, ml)
                    h4 = np.cumsum(np.cumsum(h4, axis=0), axis=1)
                    return (total - wf[f_now].sum()) + t + h3 + h4

                acc_t = table(self.correct, cur[0])
                ok = np.ones((mk, ml), dtype=bool)
                calls_t = np.zeros((mk, ml))
                if self.L is not None:
                    calls_t = table(self.calls_mat, cur[1])
                    ok &= calls_t <= calls_cap + 0.5
                money_t = np.zeros((mk, ml))
                if self.has_cost and use_money:
                    money_t = table(self.cum_cost, cur[2])
                    ok &= money_t <= money_cap
                best = _pick(acc_t.ravel(), calls_t.ravel(), money_t.ravel(), ok.ravel(), tol=self.tol)
                if best < 0:
                    continue
                bk_new, bl_new = divmod(best, ml)
                cand = (float(acc_t.flat[best]), float(calls_t.flat[best]), float(money_t.flat[best]))
                if (bk_new, bl_new) != (j[k], j[l]) and _better(cand, cur, self.tol):
                    j[k], j[l] = bk_new, bl_new
                    take[k] = self.bins[k] > bk_new
                    take[l] = self.bins[l] > bl_new
                    ans = take.argmax(axis=0)
                    cur = self._score_for(j, ans, use_money)
                    changed = True
            if not changed:
                break
        return j

    def _after(self, take: np.ndarray) -> list[np.ndarray]:
        """after[k][i]: the first stage after k that takes input i (the last stage takes all)."""
        after: list[np.ndarray] = [np.empty(0, np.int64)] * self.F
        nxt = np.full(self.n, self.F, dtype=np.int64)
        for k in range(self.F - 1, -1, -1):
            after[k] = nxt
            if k:
                nxt = np.where(take[k], k, nxt)
        return after


def _pick(acc: np.ndarray, calls: np.ndarray, money: np.ndarray, ok: np.ndarray, tol: float = 0.5) -> int:
    """Index of the best feasible entry (most correct, then fewest calls, then least money), -1 if none.

    Entries within `tol` of the best `acc` tie (0.5: correct counts are integers)."""
    if not ok.any():
        return -1
    a = np.where(ok, acc, -np.inf)
    tie = a >= a.max() - tol
    cm = np.where(tie, calls, np.inf)
    tie &= cm <= cm.min() + 0.5
    return int(np.argmin(np.where(tie, money, np.inf)))


def _better(a: tuple[float, float, float], b: tuple[float, float, float], tol: float = 0.5) -> bool:
    """Lexicographically better: more correct (by more than `tol`), then fewer LM calls, then less money."""
    if abs(a[0] - b[0]) > tol:
        return a[0] > b[0]
    if a[1] != b[1]:
        return a[1] < b[1] - 0.5
    return a[2] < b[2] - EPS_COST * max(abs(b[2]), 1e-12)


def _caps(search: _Search, max_lm_rate: Optional[float], max_cost_per_1k: Optional[float]) -> tuple[float, float]:
    n = search.n
    calls_cap = np.inf
    money_cap = np.inf
    if max_lm_rate is not None:
        if not 0 <= max_lm_rate <= 1:
            raise ConfigError(f"max_lm_rate must be a share between 0 and 1, got {max_lm_rate}.")
        calls_cap = np.floor(max_lm_rate * n + 1e-9)
    if max_cost_per_1k is not None:
        if max_cost_per_1k < 0:
            raise ConfigError(f"max_cost_per_1k must be non-negative, got {max_cost_per_1k}.")
        if not search.has_cost:
            raise ConfigError("A money budget was given but no stage has per-example costs (cost_usd).")
        total = max_cost_per_1k * n / 1000.0
        money_cap = total * (1 + EPS_COST) + 1e-15
    return calls_cap, money_cap


def _prepared(
    stack: StageStack, n_candidates: Optional[int], max_cells: int, grid: bool = True, metric: str = "accuracy"
) -> tuple[_Search, Optional[list[np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The search, its coarse subsets and grid tensors, cached on the stack so that moving a budget
    slider only re-runs the selection (the cache holds one setting and is cleared with the labels)."""
    key = ("search", n_candidates, metric)
    search = stack.cache.get(key)
    if search is None:
        if stack.n == 0:
            raise DataError("Threshold tuning needs labelled validation examples; there are none.")
        for k in [k for k in stack.cache if isinstance(k, tuple)]:
            del stack.cache[k]
        stack.cache.pop("fine", None)
        search = stack.cache[key] = _Search(
            stack, n_candidates, weights=None if stack.graded else metric_weights(stack.y, metric))
    if not grid or search.F == 0:
        return search, None, (np.zeros(0), np.zeros(0), np.zeros(0))
    gkey = ("grid", n_candidates, max_cells)
    hit = stack.cache.get(gkey)
    if hit is None:
        for k in [k for k in stack.cache if isinstance(k, tuple) and k[0] == "grid"]:
            del stack.cache[k]
        sub = _coarse_subsets(search, max_cells)
        hit = stack.cache[gkey] = (sub, search.grid(sub))
    return search, hit[0], hit[1]


def _coarse_subsets(search: _Search, max_cells: int) -> Optional[list[np.ndarray]]:
    """None if the full grid fits `max_cells`, else an evenly spaced subset of each stage's candidates."""
    sizes = [len(c) for c in search.cands]
    if float(np.prod(sizes, dtype=np.float64)) <= max_cells:
        return None
    g = max(3, int(np.floor(max_cells ** (1.0 / search.F))))
    return [np.unique(np.round(np.linspace(0, m - 1, min(g, m))).astype(np.int64)) for m in sizes]


def _best_cells(acc: np.ndarray, calls: np.ndarray, money: np.ndarray, ok: np.ndarray, top: int) -> list[int]:
    """Flat indices of up to `top` feasible cells, best first (accuracy, then fewer calls, less money)."""
    a = np.where(ok, acc, -np.inf).ravel()
    if top >= a.size:
        pool = np.arange(a.size)
    else:
        pool = np.argpartition(-a, top - 1)[: top * 4 if top * 4 < a.size else a.size]
    pool = pool[np.isfinite(a[pool])]
    order = np.lexsort((money.ravel()[pool], calls.ravel()[pool], -a[pool]))
    best = pool[order]
    # argpartition only guarantees the top accuracy; make sure the best tie-break is there.
    amax = a.max()
    ties = np.flatnonzero(a == amax)
    if ties.size:
        t = ties[np.lexsort((money.ravel()[ties], calls.ravel()[ties]))[0]]
        best = np.concatenate([[t], best[best != t]])
    return [int(v) for v in best[:top]]


def _infeasible(search: _Search, calls: np.ndarray, money: np.ndarray, what: str) -> ConfigError:
    n = search.n
    return ConfigError(
        f"No thresholds meet the budget ({what}): the cheapest routing still calls the LM on "
        f"{calls.min() / n:.1%} of inputs and costs ${money.min() / n * 1000:.4g} per 1,000 inputs "
        "(an LM or paid stage comes first). Raise the budget or reorder the stages."
    )


def autotune(
    stages: StagesLike,
    y: Optional[np.ndarray],
    *,
    max_lm_rate: Optional[float] = None,
    max_cost_per_1k: Optional[float] = None,
    n_candidates: Optional[int] = 64,
    max_exact_cells: int = MAX_EXACT_CELLS,
    restarts: int = 4,
    polish: bool = True,
    metric: str = "accuracy",
) -> OperatingPoint:
    """Thresholds maximising validation accuracy within the budget (LM call share and/or money per
    1,000 inputs); ties go to fewer LM calls, then less money. Raises `ConfigError` if no
    thresholds meet the budget.

    The search over the candidate grid is exact when it fits `max_exact_cells` (else coarse grid +
    coordinate ascent, see the module docstring); `polish` then runs coordinate ascent over every
    distinct routing of each stage, which can only raise validation accuracy.

    ``metric="macro_f1"`` maximises balanced accuracy instead (see the module docstring); the
    returned point still reports plain accuracy.
    """
    stack = as_stack(stages, y)
    search = _prepared(stack, n_candidates, max_exact_cells, grid=False, metric=metric)[0]
    calls_cap, money_cap = _caps(search, max_lm_rate, max_cost_per_1k)
    what = ", ".join(
        s for s in (
            None if max_lm_rate is None else f"LM call rate <= {max_lm_rate:.1%}",
            None if max_cost_per_1k is None else f"<= ${max_cost_per_1k:.4g} per 1,000 inputs",
        ) if s
    ) or "none"
    if search.F == 0:
        acc, calls, money = search.score([])
        if calls > calls_cap + 0.5 or money > money_cap:
            raise _infeasible(search, np.array([calls]), np.array([money]), what)
        return _final_point(stack, [0.0], "single stage")
    search, sub, (acc, calls, money) = _prepared(stack, n_candidates, max_exact_cells, metric=metric)
    ok = (calls <= calls_cap + 0.5) & (money <= money_cap)
    if not ok.any():
        raise _infeasible(search, calls, money, what)
    if sub is None:
        best_j = np.array(np.unravel_index(_best_cells(acc, calls, money, ok, 1)[0], acc.shape))
        method = "exact grid"
    else:
        best_j, best_s = None, None
        starts = [
            np.array([s[i] for s, i in zip(sub, np.unravel_index(flat, acc.shape))])
            for flat in _best_cells(acc, calls, money, ok, max(restarts, 1))
        ]
        starts += _lagrangian_starts(search, sub, (acc, calls, money), calls_cap, money_cap)[: max(restarts // 2, 2)]
        seen: set[tuple[int, ...]] = set()
        for start in starts:
            if tuple(start) in seen:
                continue
            seen.add(tuple(start))
            j = search.ascend_pairs(start, calls_cap, money_cap)
            s = search.score(j)
            if best_s is None or _better(s, best_s):
                best_j, best_s = j, s
        assert best_j is not None
        method = "coarse grid + coordinate ascent"
    thresholds = search.thresholds(best_j)
    if polish and n_candidates is not None:
        thresholds = _polish(search, thresholds, calls_cap, money_cap)
        method += " + polish"
    return _final_point(stack, thresholds, method)


def _lagrangian_starts(
    search: _Search,
    sub: list[np.ndarray],
    tensors: tuple[np.ndarray, np.ndarray, np.ndarray],
    calls_cap: float,
    money_cap: float,
    steps: int = 10,
) -> list[np.ndarray]:
    """Feasible starting points from the Lagrangian relaxation, best first.

    Bisects the price of the budgeted quantity (LM calls, else money): for each price, takes the
    coarse cell maximising ``correct - price * spend`` and improves it by unconstrained coordinate
    ascent on the full grid. These are points of the front's concave hull; they often sit in a
    different region than the coarse grid's best feasible cell, from which constrained ascent can
    stall when several thresholds must move together.
    """
    acc, calls, money = tensors
    if np.isfinite(calls_cap):
        spend, hi, as_penalty = calls, 1.0, lambda lam: (lam, 0.0)
    elif np.isfinite(money_cap):
        paid = search.cum_cost[-1]
        hi = 1.0 / max(float(paid[paid > 0].min()) if (paid > 0).any() else 1.0, 1e-12)
        spend, as_penalty = money, lambda lam: (0.0, lam)
    else:
        return []
    found: list[tuple[tuple[float, float, float], np.ndarray]] = []
    over: list[np.ndarray] = []
    lo = 0.0
    for _ in range(steps):
        lam = (lo + hi) / 2
        flat = int(np.argmax((acc - lam * spend).ravel()))
        start = np.array([s[i] for s, i in zip(sub, np.unravel_index(flat, acc.shape))])
        j = search.ascend(start, np.inf, np.inf, max_sweeps=20, penalty=as_penalty(lam))
        sc = search.score(j)
        if sc[1] <= calls_cap + 0.5 and sc[2] <= money_cap:
            found.append((sc, j))
            hi = lam
        else:
            over.append(j)
            lo = lam
    # The cheapest over-budget solutions, walked greedily into the budget, reach the non-convex
    # parts of the front between two supported points.
    for j in over[-2:]:
        fixed = search.repair(j, calls_cap, money_cap)
        if fixed is not None:
            found.append((search.score(fixed), fixed))
    found.sort(key=lambda t: (-t[0][0], t[0][1], t[0][2]))
    return [j for _, j in found]


def _polish(search: _Search, thresholds: list[float], calls_cap: float, money_cap: float) -> list[float]:
    """Coordinate ascent over every distinct routing of each stage, from `thresholds`; stages it
    does not move keep their threshold."""
    fine = search.stack.cache.get("fine")
    if fine is None or fine.correct is not search.correct:
        fine = search.stack.cache["fine"] = _Search(search.stack, None, base=search)
    # Fine candidate r takes the distinct confidences values[r:], as does any threshold in (values[r-1], values[r]].
    start = [int(np.searchsorted(fine.values[k], thresholds[k], side="left")) for k in range(fine.F)]
    j = fine.ascend(start, calls_cap, money_cap)
    return [float(fine.cands[k][j[k]]) if j[k] != start[k] else thresholds[k] for k in range(fine.F)] + [0.0]


def _final_point(stack: StageStack, thresholds: list[float], method: str) -> OperatingPoint:
    m = stack.evaluate(thresholds)
    return OperatingPoint([float(t) for t in thresholds], m.accuracy, m.lm_call_rate, m.cost_per_1k_usd, method)


def _front_flat(acc: np.ndarray, x: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (more `acc`, less `x`), sorted by `x`; `tie` breaks ties."""
    order = np.lexsort((tie, -acc, x))
    a = acc[order]
    keep = np.ones(a.size, dtype=bool)
    if a.size > 1:
        keep[1:] = a[1:] > np.maximum.accumulate(a)[:-1]
    return order[keep]


def pareto_front(
    stages: StagesLike,
    y: Optional[np.ndarray],
    *,
    n_candidates: Optional[int] = 64,
    cost_weighted: bool = False,
    max_exact_cells: int = MAX_EXACT_CELLS,
    max_refine: int = 32,
) -> list[OperatingPoint]:
    """Validation accuracy vs LM call rate (money per 1,000 inputs if `cost_weighted`): the
    non-dominated operating points, cheapest first, accuracy strictly rising along the list.

    Exact on the candidate grid when it fits `max_exact_cells`; otherwise the coarse grid's front
    with up to `max_refine` of its points improved by coordinate ascent under their own budget.
    """
    stack = as_stack(stages, y)
    if cost_weighted and not stack.paid:
        raise ConfigError("A cost-weighted front needs per-example costs (cost_usd) on at least one stage.")
    if stack.n_stages == 1:
        return [_final_point(stack, [0.0], "single stage")]
    search, sub, (acc, calls, money) = _prepared(stack, n_candidates, max_exact_cells)
    a, c, m = acc.ravel(), calls.ravel(), money.ravel()
    if not cost_weighted:
        # Fast pre-filter: only a cell with the best accuracy for its (integer) call count can be on the front.
        ci = np.rint(c).astype(np.int64)
        best = np.full(search.n + 1, -1.0)
        np.maximum.at(best, ci, a)
        pool = np.flatnonzero(a == best[ci])
        flats = pool[_front_flat(a[pool], c[pool], m[pool])]
    else:
        flats = _front_flat(a, m, c)
    method = "exact grid"
    cells = [np.unravel_index(int(f), acc.shape) for f in flats]
    if sub is None:
        js = [np.array(cell) for cell in cells]
    else:
        method = "coarse grid + coordinate ascent"
        js = [np.array([s[i] for s, i in zip(sub, cell)]) for cell in cells]
        picks = np.unique(np.round(np.linspace(0, len(js) - 1, min(max_refine, len(js)))).astype(int))
        refined = []
        for p in picks:
            caps = (np.inf, m[flats[p]] * (1 + EPS_COST) + 1e-15) if cost_weighted else (c[flats[p]], np.inf)
            refined.append(search.ascend(js[p], *caps))
        js = js + refined
    scores = np.array([search.score(j) for j in js]) if sub is not None else np.stack([a[flats], c[flats], m[flats]], 1)
    x = scores[:, 2] if cost_weighted else scores[:, 1]
    tie = scores[:, 1] if cost_weighted else scores[:, 2]
    keep = _front_flat(scores[:, 0], x, tie)
    n = search.n
    return [
        OperatingPoint(
            search.thresholds(js[i]),
            float(scores[i, 0] / n),
            float(scores[i, 1] / n),
            float(scores[i, 2] / n * 1000.0),
            method,
        )
        for i in keep
    ]


def brute_force_tune(
    stages: StagesLike,
    y: Optional[np.ndarray],
    max_lm_rate: float,
    grid: int = 40,
) -> OperatingPoint:
    """FrugalGPT-style baseline: `scipy.optimize.brute` over `grid` evenly spaced thresholds in
    [0, 1] per tunable stage (at most 3), the LM-rate budget as a penalty that puts every
    over-budget setting below every feasible one."""
    stack = as_stack(stages, y)
    if stack.n == 0:
        raise DataError("Threshold tuning needs labelled validation examples; there are none.")
    F = stack.n_stages - 1
    if F > 3:
        raise ConfigError(f"Brute force is limited to 3 tunable thresholds ({grid}^{F} settings); use autotune.")
    if not 0 <= max_lm_rate <= 1:
        raise ConfigError(f"max_lm_rate must be a share between 0 and 1, got {max_lm_rate}.")
    quality = stack.quality
    cols = np.arange(stack.n)
    cap = np.floor(max_lm_rate * stack.n + 1e-9)

    def objective(t: np.ndarray) -> float:
        ans = stack.answered_by(np.append(np.atleast_1d(t), 0.0))
        acc = float(quality[ans, cols].sum()) / stack.n
        calls = 0 if stack.first_lm is None else np.count_nonzero(ans >= stack.first_lm)
        return -acc if calls <= cap else 1.0 + (calls - cap) / stack.n

    if F == 0:
        thr: list[float] = [0.0]
    else:
        x = optimize.brute(objective, [(0.0, 1.0)] * F, Ns=grid, finish=None)
        thr = [float(v) for v in np.atleast_1d(x)] + [0.0]
    m = stack.evaluate(thr)
    return OperatingPoint(thr, m.accuracy, m.lm_call_rate, m.cost_per_1k_usd, "scipy.optimize.brute")


def val_test_report(
    val_stages: StagesLike,
    y_val: Optional[np.ndarray],
    test_stages: StagesLike,
    y_test: Optional[np.ndarray],
    thresholds: Sequence[float],
    n_labels: Optional[int] = None,
) -> dict[str, Any]:
    """Metrics of `thresholds` (chosen on validation) on validation and test, side by side.

    Returns ``{"thresholds", "names", "val", "test", "table"}`` where `val`/`test` are
    `RoutingMetrics.to_dict()` and `table` lists ``{"metric", "val", "test"}`` rows.
    """
    val = as_stack(val_stages, y_val, n_labels)
    test = as_stack(test_stages, y_test, n_labels)
    if val.names != test.names:
        raise ConfigError(
            f"Validation and test stages differ ({', '.join(val.names)} vs {', '.join(test.names)}); "
            "give the same stages in the same order."
        )
    mv, mt = val.evaluate(thresholds).to_dict(), test.evaluate(thresholds).to_dict()
    table = [
        {"metric": key, "val": mv[key], "test": mt[key]}
        for key in ("accuracy", "macro_f1", "lm_call_rate", "cost_per_1k_usd", "oracle_accuracy", "n")
    ]
    for k, name in enumerate(val.names):
        table.append({"metric": f"share:{name}", "val": mv["shares"][k], "test": mt["shares"][k]})
    return {
        "thresholds": [float(t) for t in val.thresholds_array(thresholds)],
        "names": list(val.names),
        "val": mv,
        "test": mt,
        "table": table,
    }


__all__ = [
    "NEVER_TAKES",
    "OperatingPoint",
    "autotune",
    "brute_force_tune",
    "candidate_thresholds",
    "pareto_front",
    "val_test_report",
]
