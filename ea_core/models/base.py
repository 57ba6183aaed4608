"""The one interface every Specific Small Model (SSM) satisfies, whatever its architecture.

In the spirit of scikit-learn: settings are constructor arguments stored under their own names
(so `get_params` and `clone` come from the constructor's signature, as in `sklearn.base`), learned
state ends with `_`, `fit` trains, `predict_proba` returns an (n_examples, n_labels) float array.
Models save to a folder as safetensors + JSON (never pickle) and load back with
`load_model(folder)`, which reads `model.json` to find the class. The router and the miner only
ever see `predict_proba` output.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from ea_core.errors import ConfigError, ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.models.catalog import catalog_entry
from ea_core.models.common import EpochScore
from ea_core.splits import Split

MODEL_JSON = "model.json"


class SmallModel(ABC):
    """A classifier over a fixed label list.

    Subclasses set `kind` (the SPEC prefix: ``tfidf``, ``head``, ``finetune``), store every
    constructor argument as the attribute of the same name, and implement `fit`, `predict_proba`,
    `_save_weights` and `_load_weights`.
    """

    kind: ClassVar[str] = ""
    #: Constructor arguments that are live objects the caller shares (a memory), not settings:
    #: `get_params` and `clone` pass them on, `model.json` never holds them.
    runtime_params: ClassVar[tuple[str, ...]] = ()

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
        select: Optional[EpochScore] = None,
    ) -> "SmallModel":
        """Train on `train` (early stopping on `val` when given). With `warm_start=True`, continue
        from the current weights (used to fine-tune an SSM into an augmented SSM). `stage` names the
        progress events (default ``train:<spec>``). `select`: the score of the validation
        probabilities that early stopping maximises instead of the selection metric (models without
        epochs ignore it)."""

    @abstractmethod
    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        """Probabilities, shape (len(split), len(labels_)), rows summing to 1."""

    def predict(self, split: Split) -> np.ndarray:
        return self.predict_proba(split).argmax(axis=1)

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's arguments, in order (scikit-learn's `_get_param_names`)."""
        return [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @classmethod
    def setting_names(cls) -> list[str]:
        """The arguments that are settings: what ``model.json`` saves and `make_model` accepts."""
        return [name for name in cls.param_names() if name not in cls.runtime_params]

    def get_params(self) -> dict[str, Any]:
        """Every constructor argument, read back from the attribute of the same name."""
        return {name: getattr(self, name) for name in self.param_names()}

    def clone(self, **changes: Any) -> "SmallModel":
        """An untrained twin with the same settings (and the same shared objects), `changes` applied."""
        return type(self)(**{**self.get_params(), **changes})

    def get_config(self) -> dict[str, Any]:
        """The settings as JSON-able data (a copy): enough to rebuild an untrained twin."""
        params = self.get_params()
        return {name: copy.deepcopy(params[name]) for name in self.setting_names()}

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

    def _confine(self, folder: Path, root: Path) -> None:
        """Called when loading from an untrusted bundle rooted at `root`, before the weights load:
        refuse settings that name files outside it and reset those that describe the exporter's
        machine (a cache folder, a device). Most kinds name no path: nothing to do."""

    @classmethod
    def _from_saved(cls, folder: Path, meta: dict[str, Any], root: Optional[Path] = None,
                    runtime: Optional[dict[str, Any]] = None) -> "SmallModel":
        path = folder / MODEL_JSON
        config = meta["config"]
        unknown = sorted(set(config) - set(cls.setting_names()))
        if unknown:
            raise ModelError(f"{path}: unknown {cls.kind!r} setting(s) {', '.join(map(repr, unknown))}; "
                             "the model folder was edited or comes from another version.")
        shared = {k: v for k, v in (runtime or {}).items() if k in cls.runtime_params and v is not None}
        try:
            model = cls(**config, **shared)
        except (TypeError, ValueError, ModelError) as err:
            raise ModelError(f"{path}: invalid {cls.kind!r} settings ({err}).") from None
        if root is not None:
            model._confine(folder, root)
        model.labels_ = list(meta["labels"])
        try:
            model._load_weights(folder)
        except ModelError:
            raise
        except _LOAD_ERRORS as err:
            raise damaged(folder, f"{type(err).__name__}: {_first_line(err)}") from None
        return model


_REGISTRY: dict[str, type[SmallModel]] = {}


def register(cls: type[SmallModel]) -> type[SmallModel]:
    """Class decorator: make a model kind loadable by `load_model` and buildable by `make_model`."""
    _REGISTRY[cls.kind] = cls
    return cls


def registered_kinds() -> dict[str, type[SmallModel]]:
    from ea_core.models import _load_all  # noqa: F401  (imports register every kind)

    return dict(_REGISTRY)


def load_model(folder: str | Path, *, root: Optional[str | Path] = None, memory: Any = None) -> SmallModel:
    """Load a saved model; runs no pickled code. A damaged or edited folder is a ModelError that
    names the file, never a traceback.

    `root`: the untrusted bundle folder holding this model (see `SmallModel._confine`); the caller
    has already checked that `folder` and every link under it resolve inside `root`.
    `memory`: the caller's `EmbeddingMemory`, for the kinds that keep one (head models; the
    others ignore it); None gives a head model its own.
    """
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelError(f"No saved model in {folder} (missing {MODEL_JSON}).")
    meta = read_json_file(path)
    if not isinstance(meta, dict):
        raise damaged(path, "not a JSON object")
    kinds = registered_kinds()
    if meta.get("kind") not in kinds:
        raise ModelError(f"{path}: unknown model kind {meta.get('kind')!r}; known: {', '.join(sorted(kinds))}.")
    if not isinstance(meta.get("config"), dict):
        raise damaged(path, "'config' must be an object of settings")
    labels = meta.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise damaged(path, "'labels' must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise damaged(path, "'labels' lists a label twice")
    return kinds[meta["kind"]]._from_saved(folder, meta, None if root is None else Path(root), {"memory": memory})


# What reading tampered JSON / safetensors / torch state can raise; all mean "damaged file".
_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, IndexError,
                                                 AttributeError, RuntimeError, OverflowError)
try:
    from safetensors import SafetensorError

    _LOAD_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover  (safetensors is a dependency)
    pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def damaged(path: Path, why: str) -> ModelError:
    """The error for a saved file that cannot be what we wrote: says which file and what to do."""
    return ModelError(f"{path} is damaged or was edited ({why}); save or export the model again.")


def read_json_file(path: Path) -> Any:
    """Strict JSON (no NaN/Infinity) from a saved file, or a ModelError naming it."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=no_constants)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise damaged(path, f"not readable JSON: {_first_line(err)}") from None


def read_bundle_json(path: Path) -> Any:
    """`read_json_file` for a bundle's own description (bundle.json, router.json): a damaged one is
    a `ConfigError` (the bundle is wrong, not a model in it), naming the file."""
    try:
        return read_json_file(path)
    except ModelError as err:
        raise ConfigError(str(err)) from None


def read_tensors(path: Path, framework: str = "numpy") -> dict[str, Any]:
    """Every tensor of a safetensors file, or a ModelError naming it (truncated, not safetensors...)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework=framework) as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except _LOAD_ERRORS as err:
        raise damaged(path, f"not a readable safetensors file: {_first_line(err)}") from None


def check_tensor(path: Path, name: str, value: Any, shape: tuple[Optional[int], ...]) -> None:
    """`value` (numpy or torch) has `shape` (None: any size) and only finite numbers, else ModelError."""
    actual = tuple(int(d) for d in value.shape)
    if len(actual) != len(shape) or any(w is not None and a != w for a, w in zip(actual, shape)):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise damaged(path, f"tensor {name!r} has shape {actual}, expected {want}")
    arr = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise damaged(path, f"tensor {name!r} holds non-finite or non-float values")


# A Hugging Face hub id: `name` or `owner/name`, letters, digits, `._-`; no `..`, no leading dot.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def is_hub_id(name: str) -> bool:
    """True for what can only be a hub id: not a path (absolute, ``~``, ``..``, backslash) and no
    file or folder of that name here (a relative folder would load in its place)."""
    name = str(name).strip()
    return bool(_HUB_ID.match(name)) and ".." not in name and not Path(name).exists()


def check_named_model(name: str, where: Path) -> None:
    """A pretrained MODEL that an untrusted bundle names must be a catalog name or a Hugging Face
    id: a path would make the bundle load files from outside itself."""
    if catalog_entry(str(name).strip()) is not None or is_hub_id(name):
        return
    raise ModelError(f"{where}: the model names {name!r}, which is not a catalog name or a Hugging Face id; "
                     "a bundle may not load files from outside its folder (export it with the encoder "
                     "saved inside: save_encoder=True).")
