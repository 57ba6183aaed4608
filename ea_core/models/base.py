"""The one interface every Specific Small Model (SSM) satisfies, whatever its architecture.

In the spirit of scikit-learn: settings are constructor arguments, learned state ends with `_`,
`fit` trains, `predict_proba` returns an (n_examples, n_labels) float array. Models save to a
folder as safetensors + JSON (never pickle) and load back with `load_model(folder)`, which reads
`model.json` to find the class. The router and the miner only ever see `predict_proba` output.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.splits import Split

MODEL_JSON = "model.json"


class SmallModel(ABC):
    """A classifier over a fixed label list.

    Subclasses set `kind` (the SPEC prefix: ``tfidf``, ``head``, ``finetune``) and implement
    `fit`, `predict_proba`, `_save_weights`, `_load_weights` and `get_config`.
    """

    kind: ClassVar[str] = ""

    labels_: list[str]

    @property
    def spec(self) -> str:
        """The CLI SPEC this model was built from, e.g. ``head:minilm``."""
        return self.kind

    @abstractmethod
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
    ) -> "SmallModel":
        """Train on `train` (early stopping on `val` when given). With `warm_start=True`, continue
        from the current weights (used to fine-tune an SSM into an augmented SSM). `stage` names the
        progress events (default ``train:<spec>``)."""

    @abstractmethod
    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        """Probabilities, shape (len(split), len(labels_)), rows summing to 1."""

    def predict(self, split: Split) -> np.ndarray:
        return self.predict_proba(split).argmax(axis=1)

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Constructor settings as JSON-able data (enough to rebuild an untrained twin)."""

    @abstractmethod
    def _save_weights(self, folder: Path) -> None: ...

    @abstractmethod
    def _load_weights(self, folder: Path) -> None: ...

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(folder)
        meta = {"kind": self.kind, "spec": self.spec, "config": self.get_config(), "labels": list(self.labels_)}
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def _from_saved(cls, folder: Path, meta: dict[str, Any]) -> "SmallModel":
        model = cls(**meta["config"])
        model.labels_ = list(meta["labels"])
        model._load_weights(folder)
        return model


_REGISTRY: dict[str, type[SmallModel]] = {}


def register(cls: type[SmallModel]) -> type[SmallModel]:
    """Class decorator: make a model kind loadable by `load_model` and buildable by `make_model`."""
    _REGISTRY[cls.kind] = cls
    return cls


def registered_kinds() -> dict[str, type[SmallModel]]:
    from ea_core.models import _load_all  # noqa: F401  (imports register every kind)

    return dict(_REGISTRY)


def load_model(folder: str | Path) -> SmallModel:
    """Load a saved model; runs no pickled code."""
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelError(f"No saved model in {folder} (missing {MODEL_JSON}).")
    meta = json.loads(path.read_text())
    kinds = registered_kinds()
    if meta.get("kind") not in kinds:
        raise ModelError(f"{path}: unknown model kind {meta.get('kind')!r}; known: {', '.join(sorted(kinds))}.")
    return kinds[meta["kind"]]._from_saved(folder, meta)
