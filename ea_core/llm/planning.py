"""Before a run: try the LM with one real call, and estimate what the whole run will ask of it.

A user about to spend money wants two answers first: does the endpoint work with my key and
model (and does it give structured output and log-probs, which make answers parseable and
confidences usable), and how many calls, tokens and dollars will this run take. The second is a
range: validation and test are asked in full, but mining asks only the training examples that
every small model gets wrong, which is known only after they are trained.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from ea_core.errors import EAError
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR
from ea_core.llm.base import FAILED, LMInput, LMProvider
from ea_core.llm.cost import PriceTable, estimate_tokens, message_tokens
from ea_core.llm.images import DEFAULT_IMAGE_MAX_SIDE, ImageSettings, estimate_part
from ea_core.llm.prompt import PromptTemplate
from ea_core.llm.spec import KNOWN, LMSpec, Price
from ea_core.splits import Split, TaskData

#: Share of training examples that every small model gets wrong, out of fold, seen on real tasks
#: (tweets: ~15-25%); the estimate shows this range, not a single number.
MINING_SHARE_RANGE = (0.10, 0.40)


@dataclass
class ConnectionReport:
    """What one real call to the LM showed."""

    ok: bool
    model: str
    answer: Optional[str] = None  # the label the LM chose (None: failed or named no label)
    raw: str = ""
    latency_s: float = 0.0
    cost_usd: float = 0.0
    price_known: bool = True
    structured_output: Optional[bool] = None  # None: unknown / not applicable
    logprobs: Optional[bool] = None
    confidence: Optional[float] = None
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def test_connection(provider: LMProvider, example: LMInput, labels: Sequence[str]) -> ConnectionReport:
    """Classify one input for real and report the answer, latency, cost and capabilities.

    Never raises for an LM problem: a bad key, an unknown model or an unreachable endpoint is a
    report with ``ok=False`` and the provider's (key-free) message. The call is paid: give
    `provider` the answer cache the run will use and the answer is kept under the key a later
    classification of the same input looks up (also when the call taught the provider that the
    endpoint ignores log-probs or structured output), so it is not bought twice. To check an
    endpoint without paying, use `check_endpoint`.
    """
    describe = provider.describe()
    model = str(describe.get("model", ""))
    t0 = time.perf_counter()
    try:
        answers, usage = provider.classify([example], list(labels), stage="lm:test")
    except EAError as err:
        return ConnectionReport(ok=False, model=model, latency_s=time.perf_counter() - t0, error=str(err))
    a = answers[0]
    describe = provider.describe()  # capabilities are known after the call
    caps = {name: (describe.get(name) or {}).get("supported") if isinstance(describe.get(name), dict) else None
            for name in ("structured_output", "logprobs")}
    if describe.get("provider") == "local-hf":
        caps = {"structured_output": None, "logprobs": True}  # label scoring: always a confidence
    failed = a.label == FAILED
    return ConnectionReport(
        ok=not failed,
        model=model,
        answer=str(labels[a.label]) if a.label >= 0 else None,
        raw=a.raw,
        latency_s=a.latency_s or (time.perf_counter() - t0),
        cost_usd=float(a.cost_usd),
        price_known=not usage.price_unknown,
        structured_output=caps["structured_output"],
        logprobs=caps["logprobs"],
        confidence=a.confidence,
        error=a.error if failed else (None if a.label >= 0 else "the model answered, but named no label"),
    )


def check_endpoint(provider: LMProvider) -> Optional[dict[str, Any]]:
    """Before a run: does the provider's endpoint answer, and take the key? Raises `LMError` if not.

    Unlike `test_connection` this buys nothing: an API provider makes one free request
    (``GET /models``, see `OpenAIProvider.check_endpoint`), so no paid answer is cached under a
    key no later classification looks up. Providers without an endpoint (a local model) give None.
    """
    check = getattr(provider, "check_endpoint", None)
    return check() if callable(check) else None


@dataclass
class RunCostEstimate:
    """Calls, tokens and USD a run is expected to need from the LM (a range: see the module doc)."""

    calls_low: int
    calls_high: int
    tokens_low: int
    tokens_high: int
    usd_low: float
    usd_high: float
    price_known: bool
    lines: list[str] = field(default_factory=list)  # one per part, for people

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens(n: float) -> str:
    """A token count for people: 950, 12k, 1.4M."""
    if n < 1000:
        return f"{n:.0f}"
    if n < 1e6:
        return f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k"
    return f"{n / 1e6:.1f}M"


def _prompt_tokens(template: PromptTemplate, split: Split, labels: Sequence[str], sample: int = 200,
                   model: str = "", images: Optional[ImageSettings] = None) -> float:
    """Mean prompt tokens per input of `split` (on an evenly spaced sample of at most `sample` inputs);
    images count by OpenAI's tile formula at the size they are sent (`cost.image_tokens`)."""
    n = len(split)
    if n == 0:
        return 0.0
    step = max(1, n // sample)
    idx = range(0, n, step)
    settings = images or ImageSettings()

    def part(image: Any) -> dict[str, Any]:
        return estimate_part(image, settings)

    total = sum(sum(message_tokens(m, model) for m in template.render(*split.input(i), labels, image_part=part))
                for i in idx)
    return total / len(idx)


def estimate_run_cost(task: TaskData, model: str, *, template: Optional[PromptTemplate] = None,
                      prices: Optional[PriceTable] = None, ea_full: bool = False, local: bool = False,
                      probe: int = 0, price: Optional[Price] = None,
                      mining_share: tuple[float, float] = MINING_SHARE_RANGE,
                      image_max_side: int = DEFAULT_IMAGE_MAX_SIDE, image_detail: str = "auto") -> RunCostEstimate:
    """What the run's LM stages will ask: val + test in full, mining a share of train (all of it
    with EA(Full)), and up to `probe` random unsure training inputs (`RunConfig.probe_lm`). Tokens
    are ~4 characters each; cached answers are not subtracted (a rerun on the same data pays
    nothing). `price`: the LM's (`LMSpec.price`: known, free because the user said so, or unknown);
    without it, `local` (an in-process model) is free and any other model has the price table's
    price, if any. Images count by OpenAI's tile formula at `image_max_side` and `image_detail`."""
    template = template or PromptTemplate()
    prices = prices or PriceTable()
    labels = task.labels
    answer_tokens = sum(estimate_tokens(lab) for lab in labels) / max(len(labels), 1) + 1
    if price is None:
        price = LMSpec.parse("local" if local else "openai", model=model, prices=prices, environ={}).price
    per_1m = price.per_1m if price.status == KNOWN else None

    settings = ImageSettings(int(image_max_side), str(image_detail))
    per_input = {name: _prompt_tokens(template, task.split(name), labels, model=model, images=settings)
                 for name in ("train", "val", "test")}

    def part(split: str, count: float) -> tuple[float, float]:
        """(tokens, USD) of `count` calls on inputs like those of `split`."""
        tokens = count * (per_input[split] + answer_tokens)
        usd = 0.0 if per_1m is None else count * (per_input[split] * per_1m[0] + answer_tokens * per_1m[1]) / 1e6
        return tokens, usd

    n_eval = len(task.val) + len(task.test)
    (val_tok, val_usd), (test_tok, test_usd) = part("val", len(task.val)), part("test", len(task.test))
    eval_tokens, eval_usd = val_tok + test_tok, val_usd + test_usd
    n_train = len(task.train)
    lo_share, hi_share = (1.0, 1.0) if ea_full else mining_share
    lo_calls, hi_calls = int(round(n_train * lo_share)), int(round(n_train * hi_share))
    probe = 0 if ea_full else min(int(probe), n_train)  # EA(Full) already asks about every training input
    hi_calls = min(hi_calls + probe, n_train)
    lo_tok, lo_usd = part("train", lo_calls)
    hi_tok, hi_usd = part("train", hi_calls)
    money = price.estimate_note()

    def usd(x: float) -> str:
        return money or f"${x:,.4f}"

    mining = (f"EA(Full): all {n_train:,} training examples" if ea_full else
              f"mining: {lo_calls:,}-{hi_calls:,} of {n_train:,} training examples (those every small model "
              f"gets wrong, {lo_share:.0%}-{hi_share:.0%}; known after training)" +
              (f" + up to {probe:,} probed unsure inputs (some may be mined anyway)" if probe else ""))
    lines = [f"validation + test: {n_eval:,} calls, ~{tokens(eval_tokens)} tokens, {usd(eval_usd)}",
             f"{mining}: ~{tokens(lo_tok)}-{tokens(hi_tok)} tokens, " + (money or f"{usd(lo_usd)}-{usd(hi_usd)}")
             + ("" if money else f" (with --lm-batch, the Batch API: {usd(lo_usd * BATCH_PRICE_FACTOR)}-"
                                 f"{usd(hi_usd * BATCH_PRICE_FACTOR)})")]
    return RunCostEstimate(
        calls_low=n_eval + lo_calls, calls_high=n_eval + hi_calls,
        tokens_low=int(eval_tokens + lo_tok), tokens_high=int(eval_tokens + hi_tok),
        usd_low=eval_usd + lo_usd, usd_high=eval_usd + hi_usd,
        price_known=price.known, lines=lines,
    )
