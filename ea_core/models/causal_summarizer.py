"""``causal:MODEL`` for summaries: a small causal (decoder-only) LM fine-tuned as a summarizer, by
default the packaged SmolLM2-135M-Instruct (``causal:smollm2``; works offline), else a local folder,
a ``.gguf`` file or a Hugging Face id (online).

Training: the LM's default summarization prompt (`CAUSAL_PROMPT`, in the model's chat template when
it has one) followed by the reference summary; the loss is on the summary's
tokens only. ``lora=True`` (the default, spec ``causal:MODEL``) trains LoRA adapters through
`peft` on every linear layer; ``lora=False`` (spec ``causal-full:MODEL``) fine-tunes every weight.
Generation is greedy; the raw confidence is exp(mean token log-prob) of the model's own summary
(the length-normalised sequence probability, as for ``finetune:``), mapped to expected ROUGE-L by
the engine. The per-token log-probs of the last `summarize` call are kept in `token_logprobs_`
(what bench/bench_summary_confidence.py compares other signals with).

Device: ``auto`` is the GPU when present (bf16/fp16 autocast), else the CPU. CPU time, measured on
demo:aclsum (2 shared cores, SmolLM2-135M, LoRA r=16, batch 4, sources cut to 384 tokens; see
docs/SUMMARY_CONFIDENCE.md): about 2.5 s per training example per epoch (full fine-tuning ~3 s)
and 1.4 s per generated summary, so a whole ACLSum run with it is tens of minutes on CPU.
Tests build a tiny random Llama from a config with ByT5's tokenizer (`from_config`, no download).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.data.summaries import SummarySplit
from ea_core.errors import ModelError
from ea_core.events import ProgressCallback
from ea_core.models.packaged_lm import converted_gguf_folder, packaged_location
from ea_core.models.summarizers import SUMMARIZER_JSON, Summaries, report_step

#: The spec name of the packaged offline model, its package and file.
PACKAGED = "smollm2"
#: The prompt (the LM's default summarization prompt, `ea_core.llm.summarize.DEFAULT_SUMMARY_PROMPT`).
CAUSAL_PROMPT = (
    "Summarize {instruction} of the following text in one or two sentences.\n\nText:\n{source}\n\nSummary:"
)
#: LoRA adapters go on every linear layer but the output head.
LORA_TARGETS = "all-linear"


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[Any, Any]:
    """Pad token-id lists into (input_ids, attention_mask) tensors, on the left for generation."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if left:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        else:
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
    return ids, mask


def packaged_smollm2() -> tuple[str, str, Path]:
    """(folder, gguf file, de-quantized copy folder) of the packaged SmolLM2-135M-Instruct: the
    same files and the same de-quantized copy as the local LM's (`ea_core.models.packaged_lm`).
    When the copy is missing (install.sh makes it), the GGUF file is loaded directly (~30 s more)."""
    folder, gguf = packaged_location("causal:smollm2", "causal:FOLDER")
    return folder, gguf, converted_gguf_folder(folder, gguf, "float32")


def load_causal_base(model: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM spec, fresh (never the shared cached LM object): the packaged
    SmolLM2 (its de-quantized copy, made once), a ``.gguf`` file, a folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ea_core.process import TRANSFORMERS_BUILD_LOCK

    source, kwargs = model, {}
    try:
        if model in (PACKAGED, "", "packaged"):
            folder, gguf, conv = packaged_smollm2()
            if (conv / "config.json").is_file():
                source = str(conv)
            else:
                source, kwargs = folder, {"gguf_file": gguf}
        elif model.endswith(".gguf") and Path(model).is_file():
            source, kwargs = str(Path(model).parent), {"gguf_file": Path(model).name}
        elif Path(model).expanduser().is_dir():
            source = str(Path(model).expanduser().resolve())
        with TRANSFORMERS_BUILD_LOCK:
            tok = AutoTokenizer.from_pretrained(source, **kwargs)
            lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"Cannot load the causal LM {model!r}: {exc}. Give 'smollm2' (packaged, offline), a local "
                         "folder or .gguf file with a causal LM, or a Hugging Face id (online).") from None
    return lm, tok


class CausalSummarizer:
    """Fine-tunes a causal LM (LoRA or full) on prompt -> reference, generates greedily."""

    def __init__(self, model: str = PACKAGED, *, seed: int = 0, lora: bool = True, epochs: int = 1,
                 lr: Optional[float] = None, batch_size: int = 4, max_source_tokens: int = 384,
                 max_target_tokens: int = 64, max_steps: Optional[int] = None, lora_r: int = 16,
                 lora_alpha: int = 32, lora_dropout: float = 0.05, device: Optional[str] = "auto",
                 from_config: Optional[dict[str, Any]] = None, name: Optional[str] = None) -> None:
        self.model = model
        self.seed, self.lora, self.epochs, self.batch_size = int(seed), bool(lora), int(epochs), int(batch_size)
        self.lr = float(lr) if lr is not None else (1e-3 if self.lora else 5e-5)
        self.max_source_tokens, self.max_target_tokens = int(max_source_tokens), int(max_target_tokens)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.lora_r, self.lora_alpha, self.lora_dropout = int(lora_r), int(lora_alpha), float(lora_dropout)
        self.device = device
        self.from_config = from_config
        self.name = name or f"{'causal' if self.lora else 'causal-full'}:{model}"
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.losses_: list[float] = []
        self.steps_ = 0
        self.token_logprobs_: list[np.ndarray] = []

    # -- building ----------------------------------------------------------------------------
    def _torch_device(self) -> Any:
        from ea_core.models.hf_common import pick_device

        return pick_device(self.device)

    def _base(self) -> tuple[Any, Any]:
        if self.from_config is not None:  # a random model from a config (tests; no download)
            from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

            tok = ByT5Tokenizer()
            cfg = dict(self.from_config)
            cfg.setdefault("vocab_size", len(tok))
            cfg.setdefault("pad_token_id", tok.pad_token_id)
            cfg.setdefault("eos_token_id", tok.eos_token_id)
            cfg.setdefault("bos_token_id", tok.eos_token_id)
            return LlamaForCausalLM(LlamaConfig(**cfg)), tok
        return load_causal_base(self.model)

    def _build(self) -> None:
        import torch

        torch.manual_seed(self.seed)
        model, tok = self._base()
        if self.lora:
            model = self._with_lora(model)
        self.model_, self.tokenizer_ = model.to(self._torch_device()), tok

    def _with_lora(self, model: Any) -> Any:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ModelError("LoRA needs the peft package: run ./install.sh (or pip install peft), "
                             "or use causal-full:MODEL (full fine-tuning).") from None
        cfg = LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                         target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question (a FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, cfg)

    # -- prompts ------------------------------------------------------------------------------
    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer_
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def _prompt_ids(self, source: str, instruction: str) -> list[int]:
        """The LM's summarization prompt (source cut to `max_source_tokens`), in the chat template
        when the tokenizer has one, as token ids ending where the summary starts."""
        tok = self.tokenizer_
        src_ids = tok(source, add_special_tokens=False)["input_ids"]
        if len(src_ids) > self.max_source_tokens:
            source = tok.decode(src_ids[: self.max_source_tokens], skip_special_tokens=True)
        prompt = CAUSAL_PROMPT.format(source=source, instruction=f"the {instruction}" if instruction else "the main point")
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt + " "
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _target_ids(self, summary: str) -> list[int]:
        ids = list(self.tokenizer_(summary, add_special_tokens=False)["input_ids"])[: self.max_target_tokens]
        return ids + [int(self.tokenizer_.eos_token_id)]

    # -- training -----------------------------------------------------------------------------
    def fit(self, train: SummarySplit, val: Optional[SummarySplit] = None, *, warm_start: bool = False,
            callback: Optional[ProgressCallback] = None) -> "CausalSummarizer":
        """Fine-tune (`warm_start`: continue from the current weights, e.g. on mined examples);
        at most `max_steps` optimizer steps in all when set; `callback` gets each step's loss."""
        import torch

        from ea_core.models.hf_common import autocast

        if len(train) == 0:
            raise ModelError(f"{self.name}: no training examples.")
        if self.model_ is None or not warm_start:
            self._build()
            self.losses_, self.steps_ = [], 0
        model, device = self.model_, self._torch_device()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        rows = [(self._prompt_ids(s, i), self._target_ids(r))
                for s, i, r in zip(train.sources, train.instructions, train.references)]
        gen = np.random.default_rng(self.seed + len(self.losses_))
        model.train()
        steps = 0
        planned = self.epochs * -(-len(rows) // self.batch_size)
        planned = min(planned, self.max_steps) if self.max_steps is not None else planned
        for _ in range(self.epochs):
            order = gen.permutation(len(rows))
            total, seen = 0.0, 0
            for start in range(0, len(order), self.batch_size):
                if self.max_steps is not None and steps >= self.max_steps:
                    break
                batch = [rows[i] for i in order[start:start + self.batch_size]]
                ids, mask = _pad([p + t for p, t in batch], self._pad_id, left=False)
                labels = ids.clone()
                labels[mask == 0] = -100
                for b, (p, _t) in enumerate(batch):
                    labels[b, : len(p)] = -100  # the loss is on the summary only
                with autocast(device):
                    loss = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 labels=labels.to(device)).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                steps += 1
                total += float(loss.detach()) * len(batch)
                report_step(callback, self.name, steps, planned, float(loss.detach()))
                seen += len(batch)
            if seen:
                self.losses_.append(total / seen)
        self.steps_ += steps
        model.eval()
        return self

    # -- generation ---------------------------------------------------------------------------
    def summarize(self, split: SummarySplit) -> Summaries:
        import torch

        from ea_core.models.hf_common import autocast

        if self.model_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        tok, model, device = self.tokenizer_, self.model_, self._torch_device()
        eos, pad = int(tok.eos_token_id), self._pad_id
        prompts = [self._prompt_ids(s, i) for s, i in zip(split.sources, split.instructions)]
        order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths batch together
        texts: list[str] = [""] * len(prompts)
        conf = np.zeros(len(prompts))
        token_lp: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids, mask = _pad([prompts[i] for i in idx], pad, left=True)
            with torch.no_grad(), autocast(device):
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=self.max_target_tokens, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True, pad_token_id=pad, eos_token_id=eos)
            new = out.sequences[:, ids.shape[1]:]
            if not out.scores:
                continue
            lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
            tlp = lp.gather(2, new[:, : lp.shape[1]].unsqueeze(-1)).squeeze(-1).cpu().numpy()
            for b, i in enumerate(idx):
                seq = new[b].tolist()
                stop = next((j for j, t in enumerate(seq) if t in (eos, pad)), len(seq))
                texts[i] = tok.decode(seq[:stop], skip_special_tokens=True).strip()
                # The end-of-summary token counts: a model sure it is done is part of the signal.
                token_lp[i] = tlp[b, : min(stop + 1, tlp.shape[1])].astype(np.float64)
                conf[i] = float(np.exp(token_lp[i].mean())) if token_lp[i].size else 0.0
        self.token_logprobs_ = token_lp
        return Summaries(texts, np.clip(conf, 0.0, 1.0))

    # -- bundles ------------------------------------------------------------------------------
    def _meta(self, weights: str) -> dict[str, Any]:
        return {"kind": "causal", "model": self.model, "name": self.name, "lora": self.lora, "weights": weights,
                "max_source_tokens": self.max_source_tokens, "max_target_tokens": self.max_target_tokens,
                "batch_size": self.batch_size, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha}

    def save(self, folder: Path) -> None:
        """LoRA over a base that can be rebuilt (the packaged SmolLM2, a folder, a hub id): the adapter
        only (a few MB); otherwise (full fine-tuning, a model built from a config) the whole model,
        LoRA merged in. Safetensors and JSON: loading runs no pickled code."""
        if self.model_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        folder.mkdir(parents=True, exist_ok=True)
        if self.lora and self.from_config is None:
            self.model_.save_pretrained(str(folder / "adapter"))
            weights = "lora"
        else:
            model = self.model_
            if self.lora:
                model = copy.deepcopy(model).merge_and_unload()
            model.save_pretrained(str(folder / "model"))
            weights = "full"
        self.tokenizer_.save_pretrained(str(folder / "model" if weights == "full" else folder / "tokenizer"))
        (folder / SUMMARIZER_JSON).write_text(json.dumps(self._meta(weights)))

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], *, device: Optional[str] = "auto") -> "CausalSummarizer":
        """A saved fine-tuned causal summarizer (a ModelError naming the folder when it cannot load)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ints = {"batch_size": 4, "max_source_tokens": 384, "max_target_tokens": 64, "lora_r": 16, "lora_alpha": 32}
        got = {k: meta.get(k, v) for k, v in ints.items()}
        bad = [k for k, v in got.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad or meta.get("weights") not in ("lora", "full"):
            raise ModelError(f"{folder / SUMMARIZER_JSON}: bad setting(s) {', '.join(bad) or 'weights'}; "
                             "export the bundle again.")
        m = cls(str(meta.get("model", PACKAGED)), name=str(meta.get("name") or "causal"),
                lora=bool(meta.get("lora", True)), device=device, **got)
        try:
            if meta.get("weights") == "lora":
                from peft import PeftModel

                base, _ = load_causal_base(m.model)
                m.tokenizer_ = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    m.model_ = PeftModel.from_pretrained(base, str(folder / "adapter"), is_trainable=True)
            else:
                m.tokenizer_ = AutoTokenizer.from_pretrained(str(folder / "model"))
                m.model_ = AutoModelForCausalLM.from_pretrained(str(folder / "model"), use_safetensors=True)
                m.lora, m.lr = False, 5e-5  # merged: warm starts go on with full fine-tuning
        except ImportError:
            raise ModelError(f"The summarizer in {folder} is a LoRA adapter: it needs the peft package "
                             "(./install.sh installs it).") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"Cannot load the saved summarizer in {folder}: {exc}") from None
        m.model_.to(m._torch_device())
        m.model_.eval()
        return m


__all__ = ["CAUSAL_PROMPT", "CausalSummarizer", "PACKAGED", "load_causal_base", "packaged_smollm2"]
