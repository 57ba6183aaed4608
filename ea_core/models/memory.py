"""The in-process memory of feature vectors that head models share.

A frozen extractor gives the same vector for the same input, so another cross-validation fold, a
retrain, a warm start or a subset of the data need not run it again. The memory is an object, not
a module global: whoever builds the models (a pipeline run, a loaded system, a test) creates one
and hands it to each model it builds (`make_model(..., memory=...)`, `load_model(..., memory=...)`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable, Iterable, Mapping

import numpy as np

from ea_core.errors import ModelError

#: Default bound: 1M MiniLM vectors (384 float32) are about 1.5 GB.
DEFAULT_MEMORY_VECTORS = 1_000_000

#: Calls with fewer inputs than this are not remembered (live single-input routing).
MIN_CACHED_INPUTS = 32


class EmbeddingMemory:
    """Vectors already computed, keyed by (feature space, input key).

    Safe to share between threads: every method holds a lock, and callers never rely on an entry
    surviving between two calls (`get_many` returns what it found, the caller keeps it). Bounded:
    at most `max_vectors` vectors, least recently used first out.
    """

    def __init__(self, max_vectors: int = DEFAULT_MEMORY_VECTORS) -> None:
        if int(max_vectors) < 0:
            raise ModelError(f"max_vectors must be >= 0, not {max_vectors!r}.")
        self.max_vectors = int(max_vectors)
        self._lock = threading.Lock()
        self._vectors: OrderedDict[tuple[str, Hashable], np.ndarray] = OrderedDict()

    def get_many(self, space: str, keys: Iterable[Hashable]) -> dict[Hashable, np.ndarray]:
        """The vectors of `keys` held for `space` (missing keys are simply absent)."""
        found: dict[Hashable, np.ndarray] = {}
        with self._lock:
            for key in keys:
                vector = self._vectors.get((space, key))
                if vector is not None:
                    self._vectors.move_to_end((space, key))
                    found[key] = vector
        return found

    def put_many(self, space: str, vectors: Mapping[Hashable, np.ndarray]) -> None:
        """Remember `vectors` for `space`, evicting the least recently used beyond the bound."""
        # Rows of a bigger array are copied, so an evicted row frees its memory for real.
        owned = {key: (v.copy() if v.base is not None else v) for key, v in vectors.items()}
        with self._lock:
            for key, vector in owned.items():
                self._vectors[(space, key)] = vector
                self._vectors.move_to_end((space, key))
            while len(self._vectors) > self.max_vectors:
                self._vectors.popitem(last=False)

    def clear(self) -> None:
        """Forget every vector."""
        with self._lock:
            self._vectors.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._vectors)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_vectors": self.max_vectors}  # a copy in another process starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_vectors"])  # type: ignore[misc]


def assemble(keys: list[Hashable], known: Mapping[Hashable, np.ndarray],
             fresh: Mapping[Hashable, np.ndarray]) -> np.ndarray:
    """Stack one vector per key, from one call's memory reads and its own extractor output (so
    another thread evicting entries meanwhile changes nothing)."""
    return np.stack([known[k] if k in known else fresh[k] for k in keys]).astype(np.float32, copy=False)
