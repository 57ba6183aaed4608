"""The LM as a summarizer: an OpenAI-compatible chat endpoint with a summarization prompt, or the
packaged SmolLM2 generating locally (a weak offline stand-in, said plainly).

Why a module of its own: classification scores labels, generation returns free text whose cost is
dominated by output tokens. Both providers return `Generation` (texts, a confidence per text from
the mean token log-prob, tokens and money), share the answer cache (one SQLite file, key = endpoint,
model, prompt and settings), and stop with an `LMError` before a call would pass the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ea_core.errors import LMError
from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
from ea_core.llm.endpoints import EndpointPolicy, refusal_in
from ea_core.llm.transport import run_sync

#: The default prompt; {instruction} is the example's instruction (e.g. an ACLSum aspect) or
#: "the main point", {source} the text. Settable (`prompt_template`), previewed by `render_prompt`.
DEFAULT_SUMMARY_PROMPT = (
    "Summarize {instruction} of the following text in one or two sentences.\n\nText:\n{source}\n\nSummary:"
)
#: Output tokens asked for per summary (and what the budget check assumes a reply costs at most).
MAX_SUMMARY_TOKENS = 96


@dataclass
class Generation:
    """What the LM produced for a batch: one text and confidence per input, and what it cost."""

    texts: list[str]
    confidence: np.ndarray
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    cached: int = 0
    cost_per_example: np.ndarray = field(default_factory=lambda: np.zeros(0))


def render_prompt(source: str, instruction: str = "", template: str = DEFAULT_SUMMARY_PROMPT,
                  shots: Sequence[tuple[str, str, str]] = ()) -> str:
    """The prompt for one input; `shots` are (source, instruction, summary) worked examples (k-shot)."""
    what = f"the {instruction}" if instruction else "the main point"
    try:
        parts = [template.format(source=s, instruction=f"the {i}" if i else "the main point") + " " + t
                 for s, i, t in shots]
        parts.append(template.format(source=source, instruction=what))
    except (KeyError, IndexError, ValueError) as exc:
        raise LMError(f"The summary prompt template is invalid ({exc}); use {{source}} and {{instruction}}.") from None
    return "\n\n".join(parts)


def confidence_from_logprobs(logprobs: Sequence[float]) -> float:
    """exp(mean token log-prob): the length-normalised sequence probability, in [0, 1]."""
    lp = [float(v) for v in logprobs if v is not None and math.isfinite(float(v))]
    return float(math.exp(sum(lp) / len(lp))) if lp else 0.5


class SummaryLM:
    """Base of the summarizing LMs: cache and budget around `_generate` (one input at a time or a batch)."""

    endpoint = "local"
    model = ""
    price_in_per_1m = 0.0
    price_out_per_1m = 0.0
    is_local = False

    def __init__(self, *, cache_path: Optional[str] = None, budget_usd: Optional[float] = None,
                 prompt_template: str = DEFAULT_SUMMARY_PROMPT, max_tokens: int = MAX_SUMMARY_TOKENS,
                 shots: Sequence[tuple[str, str, str]] = ()) -> None:
        self.cache_path = cache_path
        self.shots = [tuple(s) for s in shots]  # (source, instruction, summary) worked examples: k-shot
        self.budget_usd = budget_usd
        self.prompt_template = prompt_template
        self.max_tokens = int(max_tokens)
        self.spent_usd = 0.0

    def describe(self) -> str:
        return f"{self.model} at {self.endpoint}"

    def settings(self) -> dict[str, Any]:
        """What a bundle keeps to ask this LM again (never a key)."""
        return {"kind": "local" if self.is_local else "openai", "base_url": None if self.is_local else self.endpoint,
                "model": None if self.is_local else self.model, "price_in_per_1m": self.price_in_per_1m,
                "price_out_per_1m": self.price_out_per_1m, "prompt_template": self.prompt_template,
                "max_tokens": self.max_tokens, "shots": [list(x) for x in self.shots]}

    def prompt(self, source: str, instruction: str = "") -> str:
        """The exact prompt sent for one input (what the app previews)."""
        return render_prompt(source, instruction, self.prompt_template, self.shots)

    def estimate_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Money of one call: output tokens are priced separately (and dominate for summaries)."""
        return (prompt_tokens * self.price_in_per_1m + completion_tokens * self.price_out_per_1m) / 1e6

    def _generate(self, prompts: list[str]) -> list[tuple[str, float, int, int]]:
        """(text, confidence, prompt tokens, completion tokens) per prompt."""
        raise NotImplementedError

    def summarize(self, sources: Sequence[str], instructions: Sequence[str],
                  progress: Optional[Callable[[int, int], None]] = None, batch_size: int = 8) -> Generation:
        """Summaries of `sources`, from the cache where answered before; raises LMError past the budget."""
        prompts = [self.prompt(s, i) for s, i in zip(sources, instructions)]
        settings = {"kind": "summary", "max_tokens": self.max_tokens}
        keys = [make_key(self.endpoint, self.model, p, settings) for p in prompts]
        cache = AnswerCache(self.cache_path) if self.cache_path else None
        n = len(prompts)
        texts, conf, cost = [""] * n, np.zeros(n), np.zeros(n)
        out = Generation(texts, conf, cost_per_example=cost)
        try:
            found = cache.get_many(keys) if cache is not None else {}
            todo = []
            for i, key in enumerate(keys):
                hit = found.get(key)
                if hit is None:
                    todo.append(i)
                    continue
                texts[i], conf[i] = hit.raw, float(hit.confidence if hit.confidence is not None else 0.5)
                out.cached += 1
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                worst = sum(self.estimate_cost(len(prompts[i]) // 3, self.max_tokens) for i in chunk)
                if self.budget_usd is not None and self.spent_usd + worst > self.budget_usd + 1e-12:
                    raise LMError(f"The LM budget (${self.budget_usd:.4g}) would be passed: ${self.spent_usd:.4g} "
                                  f"spent, {len(todo) - start} summaries still to ask; raise the budget.")
                t0 = time.perf_counter()
                replies = self._generate([prompts[i] for i in chunk])
                latency = (time.perf_counter() - t0) / max(len(chunk), 1)
                for i, (text, c, pt, ct) in zip(chunk, replies):
                    money = self.estimate_cost(pt, ct)
                    texts[i], conf[i], cost[i] = text, c, money
                    out.prompt_tokens += pt
                    out.completion_tokens += ct
                    out.cost_usd += money
                    out.calls += 1
                    self.spent_usd += money
                    if cache is not None:
                        cache.put(keys[i], CachedAnswer(None, c, text, pt, ct, money, latency),
                                  endpoint=self.endpoint, model=self.model)
                if progress is not None:
                    progress(out.cached + out.calls, n)
        finally:
            if cache is not None:
                cache.close()
        return out


class OpenAISummaryLM(SummaryLM):
    """An OpenAI-compatible ``/chat/completions`` endpoint (logprobs asked for the confidence)."""

    def __init__(self, base_url: str, model: str, *, api_key: Optional[str] = None, price_in_per_1m: float = 0.0,
                 price_out_per_1m: float = 0.0, timeout_s: float = 60.0, max_retries: int = 3,
                 endpoint_policy: Optional[EndpointPolicy] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.endpoint, self.model = base_url.rstrip("/"), model
        self.price_in_per_1m, self.price_out_per_1m = float(price_in_per_1m), float(price_out_per_1m)
        self._api_key = api_key or "none"
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.policy = endpoint_policy  # a shared server's allow-list: checked now, and on every request
        if self.policy is not None:
            self.policy.check_url(self.endpoint)

    def _generate(self, prompts: list[str]) -> list[tuple[str, float, int, int]]:
        import openai

        async def ask_all() -> list[Any]:
            guarded = self.policy.guarded_client(self.timeout_s) if self.policy is not None else None
            client = openai.AsyncOpenAI(base_url=self.endpoint, api_key=self._api_key, timeout=self.timeout_s,
                                        max_retries=self.max_retries, http_client=guarded)
            try:
                return [await client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": p}], max_tokens=self.max_tokens,
                    temperature=0, logprobs=True) for p in prompts]
            finally:
                await client.close()

        try:
            replies = run_sync(ask_all)
        except openai.OpenAIError as exc:
            refused = refusal_in(exc)
            raise LMError(str(refused) if refused else f"The LM at {self.endpoint} failed to summarize: {exc}") from None
        out = []
        for p, r in zip(prompts, replies):
            choice = r.choices[0] if r.choices else None
            if choice is None:
                raise LMError(f"The LM at {self.endpoint} sent a reply without a summary; try again.")
            text = (choice.message.content or "").strip()
            lps = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
            usage = r.usage
            pt = int(getattr(usage, "prompt_tokens", 0) or len(p) // 4)
            ct = int(getattr(usage, "completion_tokens", 0) or max(len(text) // 4, 1))
            out.append((text, confidence_from_logprobs(lps), pt, ct))
        return out


class LocalSummaryLM(SummaryLM):
    """The packaged SmolLM2-135M-Instruct generating greedily on this machine: free and offline, but
    very weak; a stand-in that exercises the path, not a real LM."""

    is_local = True

    def __init__(self, model_path: Optional[str] = None, gguf_file: Optional[str] = None,
                 device: str = "cpu", **kw: Any) -> None:
        kw.setdefault("max_tokens", 48)
        super().__init__(**kw)
        from ea_core.llm.local_hf import default_model_location

        if model_path is None:
            model_path, gguf_file = default_model_location()
        self.model_path, self.gguf_file, self.device = model_path, gguf_file, device
        self.endpoint, self.model = "local", f"{model_path}/{gguf_file or ''}"

    def describe(self) -> str:
        return "the packaged SmolLM2-135M-Instruct on this machine (a weak offline stand-in)"

    def _generate(self, prompts: list[str]) -> list[tuple[str, float, int, int]]:
        import torch

        from ea_core.llm.local_hf import load_model

        model, tok = load_model(self.model_path, self.gguf_file, self.device, "float32")
        chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        enc = tok(chats, return_tensors="pt", padding=True, truncation=True, max_length=768)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=self.max_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        new = gen.sequences[:, enc["input_ids"].shape[1]:]
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in gen.scores], dim=1)
        tok_lp = logp.gather(2, new.unsqueeze(-1)).squeeze(-1)
        out = []
        for b in range(len(prompts)):
            ids = new[b].tolist()
            stop = next((j for j, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), len(ids))
            text = tok.decode(ids[:stop], skip_special_tokens=True).strip()
            lps = tok_lp[b, :max(stop, 1)].tolist()
            out.append((text, confidence_from_logprobs(lps), int(enc["attention_mask"][b].sum()), max(stop, 1)))
        return out


def summary_lm_from_settings(settings: dict[str, Any], *, api_key: Optional[str] = None,
                             cache_path: Optional[str] = None, base_url: Optional[str] = None) -> SummaryLM:
    """The LM a bundle names (`SummaryLM.settings`), with the key from the caller."""
    common = {"cache_path": cache_path, "prompt_template": str(settings.get("prompt_template") or DEFAULT_SUMMARY_PROMPT),
              "max_tokens": int(settings.get("max_tokens") or MAX_SUMMARY_TOKENS),
              "shots": [tuple(str(v) for v in x) for x in settings.get("shots") or [] if len(x) == 3]}
    if settings.get("kind") == "local":
        return LocalSummaryLM(**common)
    if settings.get("kind") != "openai" or not (base_url or settings.get("base_url")) or not settings.get("model"):
        raise LMError("The bundle's LM settings are incomplete: an OpenAI-compatible LM needs base_url and model.")
    return OpenAISummaryLM(str(base_url or settings["base_url"]), str(settings["model"]), api_key=api_key,
                           price_in_per_1m=float(settings.get("price_in_per_1m") or 0.0),
                           price_out_per_1m=float(settings.get("price_out_per_1m") or 0.0), **common)


__all__ = ["DEFAULT_SUMMARY_PROMPT", "summary_lm_from_settings", "Generation", "LocalSummaryLM", "OpenAISummaryLM", "SummaryLM",
           "confidence_from_logprobs", "render_prompt"]
