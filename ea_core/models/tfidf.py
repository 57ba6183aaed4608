"""``tfidf`` — TF-IDF n-grams + logistic regression: the seconds-on-a-CPU baseline SSM.

Word 1-2-grams (optionally plus character n-grams) with sublinear tf, and a multinomial
scikit-learn `LogisticRegression` whose C is picked on the validation split. Pairs are joined as
``text [SEP] pair``. Saved without pickle: the vocabularies as JSON, idf/coef/intercept as
safetensors; loading rebuilds the vectorizers through their public `vocabulary`/`idf_`.

Warm start (turning an SSM into an augmented SSM on a few hard examples) keeps the vocabulary
and minimises ``C * cross-entropy(new data) + ||W - W_old||^2 / 2`` with L-BFGS from the current
weights: the new examples are learnt while the weights stay near what the full training set
taught (plain refitting on 20 examples would forget everything else). With C = `warm_start_C`
(4): on 20 hard tweets it learns 90-100% of them for a 1-4 pt validation cost; C = 32 costs 8 pt.

Imbalanced labels: ``class_weight`` ("auto", "balanced", "none") is scikit-learn's
``class_weight="balanced"`` (each class's loss scaled by n / (K * count)); "auto" turns it on when
the training split's largest class has at least `imbalance_ratio` times the examples of its
smallest. C is picked by ``selection_metric`` on validation (accuracy, macro-F1, or "auto":
macro-F1 when imbalanced). A warm start fits its few hard examples unweighted: the weights it
starts from, and stays near, already carry the balancing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.metrics import SELECTION_METRICS
from ea_core.models.base import (
    MODEL_JSON,
    SmallModel,
    check_tensor,
    damaged,
    read_json_file,
    read_tensors,
    register,
)
from ea_core.models.common import (
    CLASS_WEIGHTS,
    DEFAULT_IMBALANCE_RATIO,
    EpochScore,
    Progress,
    check_choice,
    check_training_data,
    check_warm_labels,
    class_weights,
    resolve_selection_metric,
    selection_score,
    softmax_np,
    usable_val,
)
from ea_core.splits import Split

PAIR_SEP = " [SEP] "
VOCAB_JSON = "tfidf_vocab.json"
WEIGHTS = "tfidf.safetensors"
DEFAULT_C_GRID = (0.5, 2.0, 8.0, 32.0)
#: How C is chosen from the grid: on the validation split ("val") or by k-fold on the training split ("cv").
C_SELECTIONS = ("val", "cv")
CV_FOLDS = 3
DEFAULT_C = 4.0  # used when C is None and there is no validation split to pick from the grid


def split_texts(split: Split) -> list[str]:
    """One string per input; a pair becomes ``text [SEP] pair``."""
    if split.pairs is None:
        return [str(t) for t in split.texts]
    return [f"{t}{PAIR_SEP}{p}" for t, p in zip(split.texts, split.pairs, strict=False)]


@register
class TfidfModel(SmallModel):
    """TF-IDF features + multinomial logistic regression."""

    kind = "tfidf"

    def __init__(
        self,
        *,
        C: Optional[float] = None,
        C_grid: Sequence[float] = DEFAULT_C_GRID,
        word_ngrams: Sequence[int] = (1, 2),
        char_ngrams: Optional[Sequence[int]] = None,
        min_df: int = 1,
        max_features: Optional[int] = 200_000,
        max_iter: int = 1000,
        warm_start_C: float = 4.0,
        seed: int = 0,
        class_weight: str = "auto",
        imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
        selection_metric: str = "auto",
        C_selection: str = "val",
    ) -> None:
        self.C = None if C is None else float(C)
        self.C_grid = [float(c) for c in C_grid]
        self.word_ngrams = [int(n) for n in word_ngrams]
        self.char_ngrams = None if char_ngrams is None else [int(n) for n in char_ngrams]
        self.min_df = int(min_df)
        self.max_features = None if max_features is None else int(max_features)
        self.max_iter = int(max_iter)
        self.warm_start_C = float(warm_start_C)
        self.seed = int(seed)
        self.class_weight = check_choice("class_weight", str(class_weight), CLASS_WEIGHTS)
        self.imbalance_ratio = float(imbalance_ratio)
        self.selection_metric = check_choice("selection_metric", str(selection_metric), SELECTION_METRICS)
        self.C_selection = check_choice("C_selection", str(C_selection), C_SELECTIONS)
        if len(self.word_ngrams) != 2 or (self.char_ngrams is not None and len(self.char_ngrams) != 2):
            raise ModelError("word_ngrams and char_ngrams are (min_n, max_n) pairs, e.g. (1, 2) and (2, 5).")
        self.vectorizers_: list[Any] = []
        self.coef_: Optional[np.ndarray] = None
        self.intercept_: Optional[np.ndarray] = None
        self.C_: Optional[float] = None
        self.class_weight_: Optional[np.ndarray] = None  # per-label loss weights of the last fresh fit
        self.selection_metric_: Optional[str] = None

    # ------------------------------------------------------------------ features

    def _vectorizer_params(self) -> list[dict[str, Any]]:
        params = [
            {
                "analyzer": "word",
                "ngram_range": tuple(self.word_ngrams),
                "sublinear_tf": True,
                "min_df": self.min_df,
                "max_features": self.max_features,
                "lowercase": True,
                "strip_accents": "unicode",
                "dtype": np.float64,
            }
        ]
        if self.char_ngrams is not None:
            params.append({**params[0], "analyzer": "char_wb", "ngram_range": tuple(self.char_ngrams)})
        return params

    def _features(self, texts: list[str]) -> Any:
        import scipy.sparse as sp

        mats = [vec.transform(texts) for vec in self.vectorizers_]
        return mats[0] if len(mats) == 1 else sp.hstack(mats, format="csr")

    # ------------------------------------------------------------------ training

    def fit(
        self,
        train: Split,
        val: Optional[Split],
        labels: list[str],
        *,
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        warm_start: bool = False,
        stage: Optional[str] = None,
        select: Optional[EpochScore] = None,
    ) -> "TfidfModel":
        from sklearn.feature_extraction.text import TfidfVectorizer

        check_training_data(labels, train, val)
        k = len(labels)
        val = usable_val(val)
        warm = warm_start and self.coef_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        if self.C is not None or (val is None and self.C_selection == "val"):
            grid = [self.C if self.C is not None else DEFAULT_C]
        else:
            grid = list(self.C_grid)
        progress = Progress(stage or f"train:{self.spec}", 1 + (1 if warm else len(grid)), callback, cancel)
        progress.check()
        texts = split_texts(train)
        y = np.asarray(train.labels)
        if not warm:
            self.vectorizers_ = []
            for params in self._vectorizer_params():
                vec = TfidfVectorizer(**params)
                try:
                    vec.fit(texts)
                except ValueError as exc:  # empty vocabulary
                    raise ModelError(f"tfidf found no usable words in the training texts: {exc}") from exc
                self.vectorizers_.append(vec)
        X = self._features(texts)
        progress.emit(1, message="vectorised")
        Xv = None if val is None else self._features(split_texts(val))

        if warm:
            # never fit the new examples harder than the original data was fitted
            C = min(self.warm_start_C, self.C_ if self.C_ is not None else (self.C or DEFAULT_C))
            self.coef_, self.intercept_ = _fit_proximal(X, y, k, C, self.coef_, self.intercept_, self.max_iter)
            self.labels_ = list(labels)
            acc = None if Xv is None else selection_score(
                val.labels, np.asarray(Xv @ self.coef_.T + self.intercept_).argmax(1), self.selection_metric_ or
                "accuracy", k)
            progress.emit(2, val_accuracy=acc, message=f"warm start, C={C:g}")
            return self

        self.class_weight_ = class_weights(y, k, self.class_weight, self.imbalance_ratio)
        metric = self.selection_metric_ = resolve_selection_metric(self.selection_metric, y, k, self.imbalance_ratio)
        if self.C_selection == "cv" and len(grid) > 1:
            self.C_, self.coef_, self.intercept_ = self._fit_cv(X, y, k, grid, metric, progress)
            self.labels_ = list(labels)
            return self
        best: Optional[tuple[float, float, np.ndarray, np.ndarray]] = None
        for i, C in enumerate(grid):
            progress.check()
            coef, intercept = self._fit_fresh(X, y, k, C, self.class_weight_)
            score = None if Xv is None else selection_score(val.labels, np.asarray(Xv @ coef.T + intercept).argmax(1),
                                                            metric, k)
            if best is None or (score is not None and score > best[0]):
                best = (score if score is not None else 0.0, C, coef, intercept)
            progress.emit(2 + i, val_accuracy=score, message=f"C={C:g}" + (" (val macro-F1)" if metric == "macro_f1"
                                                                            else ""))
        assert best is not None
        _, self.C_, self.coef_, self.intercept_ = best
        self.labels_ = list(labels)
        return self

    def _fit_cv(self, X: Any, y: np.ndarray, k: int, grid: list[float], metric: str,
                progress: Progress) -> tuple[float, np.ndarray, np.ndarray]:
        """C chosen by stratified k-fold on the training split (validation is left for ranking and
        routing, so the reported validation figure is not picked for luck there), then refitted on all of it."""
        from sklearn.model_selection import StratifiedKFold

        n_splits = int(min(CV_FOLDS, np.bincount(y, minlength=k)[np.bincount(y, minlength=k) > 0].min()))
        if n_splits < 2:  # a class with one example: no folds to score on
            C = DEFAULT_C
        else:
            folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y))
            scores = []
            for i, C in enumerate(grid):
                progress.check()
                fold_scores = []
                for fit_idx, held in folds:
                    coef, intercept = self._fit_fresh(X[fit_idx], y[fit_idx], k, C, self.class_weight_)
                    fold_scores.append(selection_score(y[held], np.asarray(X[held] @ coef.T + intercept).argmax(1),
                                                       metric, k))
                scores.append(float(np.mean(fold_scores)))
                progress.emit(2 + i, message=f"C={C:g}: {n_splits}-fold {metric} on train {scores[-1]:.3f}")
            C = grid[int(np.argmax(scores))]
        coef, intercept = self._fit_fresh(X, y, k, C, self.class_weight_)
        return C, coef, intercept

    def _fit_fresh(self, X: Any, y: np.ndarray, k: int, C: float,
                   weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """scikit-learn's multinomial logistic regression, as a full (K, F) weight matrix
        (`weights`: per-label loss weights, as scikit-learn's ``class_weight``)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        present = np.unique(y)
        if len(present) < k:  # some label has no training example: solve over all K ourselves
            zeros = np.zeros((k, X.shape[1]))
            return _fit_proximal(X, y, k, C, zeros, np.zeros(k), self.max_iter, anchor_intercept=False,
                                 sample_weight=None if weights is None else weights[y])
        # newton-cg: ~15x faster than lbfgs on tens of thousands of sparse n-gram features
        cw = None if weights is None else {int(c): float(weights[c]) for c in present}
        lr = LogisticRegression(C=C, solver="newton-cg", max_iter=self.max_iter, random_state=self.seed,
                                class_weight=cw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr.fit(X, y)
        coef, intercept = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        if k == 2:  # binary LR stores one row; softmax over [-z/2, z/2] equals sigmoid(z)
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        return coef, intercept

    # ------------------------------------------------------------------ inference

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        if self.coef_ is None:
            raise ModelError("tfidf is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        X = self._features(split_texts(split))
        return softmax_np(X @ self.coef_.T + self.intercept_)

    # ------------------------------------------------------------------ persistence

    def _save_weights(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        if self.coef_ is None:
            raise ModelError("tfidf is not trained yet: nothing to save.")
        vocabs = [{term: int(i) for term, i in vec.vocabulary_.items()} for vec in self.vectorizers_]
        (folder / VOCAB_JSON).write_text(json.dumps({"C": self.C_, "vocabularies": vocabs}, ensure_ascii=False))
        tensors = {"coef": np.ascontiguousarray(self.coef_), "intercept": np.ascontiguousarray(self.intercept_)}
        for i, vec in enumerate(self.vectorizers_):
            tensors[f"idf_{i}"] = np.ascontiguousarray(vec.idf_, dtype=np.float64)
        save_file(tensors, str(folder / WEIGHTS))

    def _load_weights(self, folder: Path) -> None:
        """Rebuild the vectorizers and weights, checking every shape against the vocabularies and
        labels first: a tampered file is a ModelError naming it, not a wrong answer later."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vocab_path, weights_path = folder / VOCAB_JSON, folder / WEIGHTS
        for low, high in [self.word_ngrams] + ([self.char_ngrams] if self.char_ngrams is not None else []):
            if not 1 <= low <= high:
                raise damaged(folder / MODEL_JSON, f"n-gram range ({low}, {high}) is not 1 <= min <= max")
        meta = read_json_file(vocab_path)
        params_list = self._vectorizer_params()
        vocabs = meta.get("vocabularies") if isinstance(meta, dict) else None
        if not isinstance(vocabs, list) or len(vocabs) != len(params_list):
            raise damaged(vocab_path, f"expected {len(params_list)} vocabularies for these n-gram settings")
        for vocab in vocabs:
            if not isinstance(vocab, dict) or not all(isinstance(t, str) for t in vocab) \
                    or sorted(i for i in vocab.values() if type(i) is int) != list(range(len(vocab))):
                raise damaged(vocab_path, "a vocabulary must map terms to the column numbers 0..n-1")
        C = meta.get("C")
        if C is not None and (isinstance(C, bool) or not isinstance(C, (int, float))):
            raise damaged(vocab_path, "'C' must be a number")
        tensors = read_tensors(weights_path)
        k, n_features = len(self.labels_), sum(len(v) for v in vocabs)
        expected = {"coef": (k, n_features), "intercept": (k,)}
        expected.update({f"idf_{i}": (len(v),) for i, v in enumerate(vocabs)})
        if set(tensors) != set(expected):
            raise damaged(weights_path, f"tensors {sorted(tensors)}, expected {sorted(expected)}")
        for name, shape in expected.items():
            check_tensor(weights_path, name, tensors[name], shape)
        self.vectorizers_ = []
        for i, (params, vocab) in enumerate(zip(params_list, vocabs, strict=True)):
            params = {**params, "vocabulary": vocab, "max_features": None, "min_df": 1}
            vec = TfidfVectorizer(**params)
            vec.idf_ = tensors[f"idf_{i}"]
            self.vectorizers_.append(vec)
        self.coef_ = tensors["coef"]
        self.intercept_ = tensors["intercept"]
        self.C_ = C


def _fit_proximal(
    X: Any,
    y: np.ndarray,
    k: int,
    C: float,
    W0: np.ndarray,
    b0: np.ndarray,
    max_iter: int,
    anchor_intercept: bool = True,
    sample_weight: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``C * sum CE(softmax(XW^T + b), y) + ||W - W0||^2 / 2`` from (W0, b0) by L-BFGS.

    With W0 = 0 and `anchor_intercept=False` this is scikit-learn's objective; with the current
    weights it is a warm start that learns new examples without drifting far from the old
    solution (the intercept is then anchored too, or a few one-sided examples would shift it).
    `sample_weight` scales each example's cross-entropy (class weighting), as in scikit-learn.
    """
    import scipy.sparse as sp
    from scipy.optimize import minimize

    W0 = np.asarray(W0, dtype=np.float64)
    X = sp.csr_matrix(X)
    # Columns absent from X have zero data gradient, so their weights stay at W0: optimise the rest.
    active = np.unique(X.indices)
    if len(active) < X.shape[1]:
        W_act, b = _fit_proximal(X[:, active], y, k, C, W0[:, active], b0, max_iter, anchor_intercept,
                                 sample_weight)
        W = W0.copy()
        W[:, active] = W_act
        return W, b
    n, f = X.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    b0 = np.asarray(b0, dtype=np.float64)
    lam_b = 1.0 if anchor_intercept else 0.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: k * f].reshape(k, f)
        b = theta[k * f :]
        z = X @ W.T + b
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        diff = W - W0
        diff_b = b - b0
        penalty = 0.5 * float((diff * diff).sum()) + 0.5 * lam_b * float(diff_b @ diff_b)
        loss = -C * float((sw[:, None] * onehot * logp).sum()) + penalty
        r = C * sw[:, None] * (np.exp(logp) - onehot)
        grad_W = np.asarray(X.T @ r).T + diff
        grad_b = r.sum(axis=0) + lam_b * diff_b
        return loss, np.concatenate([grad_W.ravel(), grad_b])

    theta0 = np.concatenate([W0.ravel(), b0])
    result = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = result.x
    return theta[: k * f].reshape(k, f).copy(), theta[k * f :].copy()
