"""Plumbing shared by the transformer-based kinds (``head`` and ``finetune``).

Loading with readable errors (no internet, unknown id, broken folder), device choice, tokenising
a `Split` once, dynamic padding, and length-grouped batching: short texts padded to the longest
text of a random batch waste most of a CPU's time, so batches are built from texts of similar
length instead.

Nothing here changes process-wide switches (torch's thread count, transformers' log level or
progress bars): two jobs in two threads would race on them. Entry points set them once with
`ea_core.process.configure_process`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.models.catalog import catalog_names, hub_cached, is_local, resolve_model
from ea_core.process import TRANSFORMERS_BUILD_LOCK
from ea_core.splits import Split

#: Keys of tokenizer output that the models take.
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def pick_device(device: Optional[str] = "auto") -> "Any":
    """`auto` (or None) means CUDA when present, else CPU; anything else is passed to torch."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"Device {device!r} asked for, but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return dev


def load_error(model: str, resolved: str, exc: BaseException) -> ModelError:
    """A ModelError that says why `model` did not load and what to use instead."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = f"use 'minilm' for the offline default (catalog: {', '.join(catalog_names())})"
    if is_local(resolved):
        if not (Path(resolved) / "config.json").is_file():
            return ModelError(
                f"could not load {model!r}: the folder {resolved} has no config.json "
                f"(expected a folder written by save_pretrained); {hint}."
            )
        return ModelError(f"could not load {model!r} from {resolved}: {detail}; {hint}.")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not hub_cached(resolved):
        why = "offline mode (HF_HUB_OFFLINE=1)" if offline else "no internet or no such model on the hub"
        return ModelError(
            f"could not load {model!r}: not a local folder, not in the Hugging Face cache, and {why}; "
            f"{hint}. ({detail})"
        )
    return ModelError(f"could not load {model!r}: {detail}; {hint}.")


def load_tokenizer(model: str, resolved: Optional[str] = None) -> Any:
    """AutoTokenizer for `model`, with a pad token (some decoders lack one)."""
    from transformers import AutoTokenizer

    resolved = resolved or resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except Exception as exc:  # noqa: BLE001  (OSError, ValueError, HTTP errors ... all mean "cannot load")
        raise load_error(model, resolved, exc) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"The tokenizer of {model!r} has neither a pad nor an end-of-text token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(auto_cls: Any, model: str, resolved: Optional[str] = None, *, builds_model: bool = True,
                    **kwargs: Any) -> Any:
    """`auto_cls.from_pretrained(...)`, turning every failure into a ModelError.

    Models are built one at a time in the process (`TRANSFORMERS_BUILD_LOCK`: transformers swaps
    process-wide functions while it builds one); ``builds_model=False`` (configs) skips the lock.
    """
    resolved = resolved or resolve_model(model)
    try:
        with TRANSFORMERS_BUILD_LOCK if builds_model else contextlib.nullcontext():
            return auto_cls.from_pretrained(resolved, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise load_error(model, resolved, exc) from exc


def tokenize_split(tokenizer: Any, split: Split, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise every input of `split` once (pairs as pairs), truncated, unpadded."""
    texts = [str(t) for t in split.texts]
    pairs = None if split.pairs is None else [str(p) for p in split.pairs]
    if not texts:
        return []
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in _MODEL_KEYS if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def collate(features: list[dict[str, list[int]]], tokenizer: Any) -> dict[str, Any]:
    """Pad a batch to its longest member (dynamic padding), honouring the tokenizer's pad side."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_values = {
        "input_ids": tokenizer.pad_token_id,
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
    }
    batch: dict[str, Any] = {}
    for key in features[0]:
        rows = []
        for f in features:
            seq = f[key]
            pad = [pad_values[key]] * (longest - len(seq))
            rows.append(pad + seq if left else seq + pad)
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Random batches of similar-length examples: shuffle, cut into mega-chunks of `group`
    batches, sort each chunk by length, cut into batches, shuffle the batch order."""
    n = len(lengths)
    perm = rng.permutation(n)
    chunk = max(batch_size * group, batch_size)
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        idx = perm[start : start + chunk]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic inference batches, longest first (fails fast on memory, pads least)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def autocast(device: Any, precision: str = "auto") -> Any:
    """Mixed-precision context on GPU (bf16 when supported, else fp16); a no-op on CPU or fp32."""
    import torch

    dtype = amp_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_dtype(device: Any, precision: str = "auto") -> Any:
    """The autocast dtype for `precision` on `device`, or None for full precision."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if precision in ("fp16", "auto"):
        return torch.float16
    raise ModelError(f"Unknown precision {precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'.")
