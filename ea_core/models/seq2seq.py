"""``finetune:MODEL`` for summaries: a Hugging Face seq2seq model (t5-small, flan-t5-small, bart-base
when online; a local folder) fine-tuned on (instruction + source, reference) pairs.

Its confidence is the length-normalised sequence probability of the generated summary (exp of the
mean token log-prob), mapped to expected ROUGE-L by the engine. Tests build a tiny random T5 from a
config with ByT5's tokenizer, which needs no download (`from_config`). On CPU, full fine-tuning of
even t5-small is minutes per few hundred examples: say so before choosing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.data.summaries import SummarySplit
from ea_core.errors import ModelError
from ea_core.events import ProgressCallback
from ea_core.models.summarizers import SUMMARIZER_JSON, Summaries, report_step


class Seq2SeqSummarizer:
    """Fine-tunes a seq2seq LM with AdamW (teacher forcing), generates greedily."""

    def __init__(self, model: str, *, seed: int = 0, epochs: int = 3, lr: float = 3e-4, batch_size: int = 8,
                 max_source_tokens: int = 384, max_target_tokens: int = 64, from_config: Optional[dict[str, Any]] = None,
                 device: str = "cpu", name: Optional[str] = None) -> None:
        self.model = model
        self.seed, self.epochs, self.lr, self.batch_size = int(seed), int(epochs), float(lr), int(batch_size)
        self.max_source_tokens, self.max_target_tokens = int(max_source_tokens), int(max_target_tokens)
        self.from_config = from_config
        self.device = device
        self.name = name or f"finetune:{model}"
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.losses_: list[float] = []
        #: Per-token log-probs of each summary of the last `summarize` call (confidence studies).
        self.token_logprobs_: list[np.ndarray] = []

    def _build(self) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        torch.manual_seed(self.seed)
        try:
            if self.from_config is not None:  # a random model from a config (tests; no download)
                from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

                self.tokenizer_ = ByT5Tokenizer()
                cfg = dict(self.from_config)
                cfg.setdefault("vocab_size", self.tokenizer_.vocab_size + 3)
                cfg.setdefault("decoder_start_token_id", self.tokenizer_.pad_token_id)
                self.model_ = T5ForConditionalGeneration(T5Config(**cfg))
            else:
                from ea_core.models.catalog import resolve_model

                resolved = resolve_model(self.model)
                self.tokenizer_ = AutoTokenizer.from_pretrained(resolved)
                self.model_ = AutoModelForSeq2SeqLM.from_pretrained(resolved)
        except (OSError, ValueError) as exc:
            raise ModelError(f"Cannot load the seq2seq model {self.model!r}: {exc}. Give a Hugging Face id "
                             "(online) or a local folder with a seq2seq model.") from None
        self.model_.to(self.device)

    @staticmethod
    def _inputs(split: SummarySplit) -> list[str]:
        return [f"summarize {i}: {s}" if i else f"summarize: {s}" for s, i in zip(split.sources, split.instructions)]

    def fit(self, train: SummarySplit, val: Optional[SummarySplit] = None, *, warm_start: bool = False,
            callback: Optional[ProgressCallback] = None) -> "Seq2SeqSummarizer":
        """Fine-tune (`warm_start`: continue from the current weights, e.g. on mined examples);
        `callback` gets each step's loss."""
        import torch

        if len(train) == 0:
            raise ModelError(f"{self.name}: no training examples.")
        if self.model_ is None or not warm_start:
            self._build()
        tok, model = self.tokenizer_, self.model_
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr)
        gen = np.random.default_rng(self.seed)
        src, tgt = self._inputs(train), list(train.references)
        model.train()
        per_epoch = -(-len(src) // self.batch_size)
        step = 0
        for _ in range(self.epochs):
            order = gen.permutation(len(src))
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = tok([src[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=self.max_source_tokens)
                lab = tok([tgt[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=self.max_target_tokens)["input_ids"]
                lab[lab == tok.pad_token_id] = -100
                loss = model(**{k: v.to(self.device) for k, v in enc.items()}, labels=lab.to(self.device)).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                step += 1
                report_step(callback, self.name, step, per_epoch * self.epochs, float(loss.detach()))
            self.losses_.append(total / len(src))
        model.eval()
        return self

    def save(self, folder: Path) -> None:
        """The fine-tuned weights and tokenizer (Hugging Face format) and the generation settings."""
        if self.model_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        folder.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(folder / "model")
        self.tokenizer_.save_pretrained(folder / "model")
        (folder / SUMMARIZER_JSON).write_text(json.dumps(
            {"kind": "seq2seq", "model": self.model, "name": self.name, "max_source_tokens": self.max_source_tokens,
             "max_target_tokens": self.max_target_tokens, "batch_size": self.batch_size}))

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> "Seq2SeqSummarizer":
        """A saved fine-tuned summarizer (weights as safetensors: no pickled code runs)."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        m = cls(str(meta.get("model", "")), name=meta.get("name"), batch_size=int(meta.get("batch_size", 8)),
                max_source_tokens=int(meta.get("max_source_tokens", 384)),
                max_target_tokens=int(meta.get("max_target_tokens", 64)))
        try:
            m.tokenizer_ = AutoTokenizer.from_pretrained(str(folder / "model"))
            m.model_ = AutoModelForSeq2SeqLM.from_pretrained(str(folder / "model"), use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"Cannot load the saved summarizer in {folder}: {exc}") from None
        m.model_.eval()
        return m

    def summarize(self, split: SummarySplit) -> Summaries:
        import torch

        if self.model_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        tok, model = self.tokenizer_, self.model_
        texts, conf, token_lp = [], [], []
        src = self._inputs(split)
        for start in range(0, len(src), self.batch_size):
            enc = tok(src[start:start + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_source_tokens)
            with torch.no_grad():
                out = model.generate(**{k: v.to(self.device) for k, v in enc.items()},
                                     max_new_tokens=self.max_target_tokens, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True)
            seq = out.sequences[:, 1:]
            if not out.scores:
                texts += [""] * seq.shape[0]
                conf += [0.0] * seq.shape[0]
                token_lp += [np.zeros(0)] * seq.shape[0]
                continue
            lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
            tok_lp = lp.gather(2, seq[:, : lp.shape[1]].unsqueeze(-1)).squeeze(-1)
            for b in range(seq.shape[0]):
                ids = seq[b].tolist()
                stop = next((j for j, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), len(ids))
                texts.append(tok.decode(ids[:stop], skip_special_tokens=True).strip())
                conf.append(float(np.exp(tok_lp[b, : max(stop, 1)].mean().item())))
                token_lp.append(tok_lp[b, : max(stop, 1)].cpu().numpy().astype(np.float64))
        self.token_logprobs_ = token_lp
        return Summaries(texts, np.clip(np.asarray(conf, dtype=np.float64), 0, 1))


__all__ = ["Seq2SeqSummarizer"]
