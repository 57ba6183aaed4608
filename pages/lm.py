"""Large model tab: which LM, its key (memory only), prompt, prices and budget; a real test call;
what the run will cost.

The API key is a password box. Its value travels from the browser to a handler when an event
needs it (Test connection, Run, Try it) and is never an output, never stored in `gr.State`, never
written anywhere: a run receives it through its worker's stdin pipe (`ea_core.runs`).
"""

from __future__ import annotations

import html
from typing import Any, Optional

import gradio as gr

from ea_core.errors import ConfigError, EAError
from ea_core.llm import PRESETS, LMSpec, PriceTable, PromptTemplate, make_provider
from ea_core.llm.endpoints import EndpointPolicy
from ea_core.llm.planning import estimate_run_cost, test_connection, tokens
from ea_core.llm.prompt import DEFAULT_INPUT_FORMAT, DEFAULT_INSTRUCTION, DEFAULT_PAIR_FORMAT, DEFAULT_SYSTEM
from ea_core.llm.spec import KNOWN
from pages.data import current_task
from pages.session import Studio
from pages.ui import error_message, note, pct, seconds, usd

LOCAL = "local"
CUSTOM = "custom"
CHOICES = ([("Local offline stand-in (weak): SmolLM2-135M for text, few-shot image-knn for images", LOCAL)]
           + [(p.title, name) for name, p in PRESETS.items()] + [("Other OpenAI-compatible endpoint", CUSTOM)])
LOCAL_NOTE = ("The local model is SmolLM2-135M-Instruct, packaged so the app works with no key and no network. "
              "It is a weak stand-in (about chance level on the demo): it exercises every step, but real gains "
              "need a real LM: pick an endpoint and paste its key. For image data no vision LM installs offline: "
              "the local stage is local:image-knn, few-shot nearest neighbours over EfficientNet features of 5 "
              "examples per label, which is not a language model. A vision model (e.g. gpt-4o-mini, qwen-vl-plus) "
              "behind an endpoint is what brings real gains.")
FORM_KEYS = ("preset", "base_url", "model", "price_in", "price_out", "free", "budget_usd", "concurrency", "few_shot",
             "prompt_system", "prompt_instruction", "prompt_input", "prompt_pair")
FREE_LABEL = "Self-hosted, free (prices 0 / 0)"
PASTE_KEY = "Paste your API key in the Large model tab (it stays in this page's memory only)."


def build(endpoints: Optional[EndpointPolicy] = None) -> dict[str, Any]:
    """The tab; `endpoints`: the endpoints this server calls (a restricted server says which)."""
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c["preset"] = gr.Dropdown(CHOICES, value=LOCAL, label="Large model", elem_id="lm-preset")
            c["endpoints"] = gr.HTML(endpoints_note(endpoints), elem_id="lm-endpoints",
                                     visible=endpoints is not None and endpoints.restricts)
            c["local_note"] = gr.HTML(note(LOCAL_NOTE, "warn"))
            with gr.Group(visible=False) as c["api_group"]:
                c["base_url"] = gr.Textbox(label="Base URL", placeholder="https://api.openai.com/v1")
                c["model"] = gr.Textbox(label="Model", placeholder="gpt-4o-mini")
                c["api_key"] = gr.Textbox(label="API key (kept in this page's memory only, never saved)",
                                          type="password", lines=1, max_lines=1, elem_id="lm-api-key")
                with gr.Row():
                    c["price_in"] = gr.Number(None, label="USD per 1M input tokens", minimum=0, min_width=120)
                    c["price_out"] = gr.Number(None, label="USD per 1M output tokens", minimum=0, min_width=120)
                # An endpoint on this machine may be a proxy to a paid API: it is free only when you say so.
                c["free"] = gr.Checkbox(False, label=FREE_LABEL, elem_id="lm-free")
                with gr.Row():
                    c["budget_usd"] = gr.Number(None, label="Budget in USD (empty or 0: none)", minimum=0, min_width=120)
                    c["concurrency"] = gr.Slider(1, 32, value=8, step=1, label="Parallel requests")
            c["test"] = gr.Button("Test connection (one real call)")
            c["test_out"] = gr.HTML("", elem_id="lm-test-out")
            c["estimate"] = gr.HTML("", elem_id="lm-estimate")
        with gr.Column(scale=6, min_width=360):
            with gr.Accordion("Prompt", open=True):
                c["prompt_system"] = gr.Textbox(DEFAULT_SYSTEM, label="System", lines=2)
                c["prompt_instruction"] = gr.Textbox(DEFAULT_INSTRUCTION, label="Instruction ({labels} = the label list)",
                                                     lines=3)
                with gr.Row():
                    c["prompt_input"] = gr.Textbox(DEFAULT_INPUT_FORMAT, label="Input ({text})", lines=1, min_width=140)
                    c["prompt_pair"] = gr.Textbox(DEFAULT_PAIR_FORMAT, label="Pair input ({text}, {pair})", lines=2,
                                                  min_width=140)
                c["few_shot"] = gr.Slider(0, 8, value=0, step=1, label="Examples per label shown to the LM (k-shot)")
            c["preview"] = gr.HTML("", elem_id="lm-prompt-preview")
    return c


def endpoints_note(endpoints: Optional[EndpointPolicy]) -> str:
    """Which endpoints this server calls (a shared server's operator decides; ``--allow-endpoint``)."""
    if endpoints is None or not endpoints.restricts:
        return ""
    return note(f"{endpoints.describe()} The local stand-in always works. Another endpoint: ask this server's "
                "operator, or run the studio on your own machine.", "info")


def is_local(preset: str) -> bool:
    return preset == LOCAL


def on_preset(preset: str) -> tuple[Any, ...]:
    """Fill URL, example model and known prices for a preset (and untick "free": a new endpoint is
    free only when you say so again); show the local model's warning."""
    if is_local(preset):
        return gr.update(visible=True), gr.update(visible=False), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    p = PRESETS.get(preset)
    url = p.base_url if p else ""
    model = p.example_model if p else ""
    known = LMSpec.parse(preset, environ={}).price if p else None
    price = known.per_1m if known is not None and known.status == KNOWN else None
    return (gr.update(visible=False), gr.update(visible=True), gr.update(value=url), gr.update(value=model),
            gr.update(value=price[0] if price else None), gr.update(value=price[1] if price else None),
            gr.update(value=False))


def template_of(values: dict[str, Any]) -> PromptTemplate:
    return PromptTemplate(system=values["prompt_system"] or "", instruction=values["prompt_instruction"] or "",
                          input_format=values["prompt_input"] or DEFAULT_INPUT_FORMAT,
                          pair_format=values["prompt_pair"] or DEFAULT_PAIR_FORMAT)


def prompt_fields(values: dict[str, Any]) -> Optional[dict[str, str]]:
    """The prompt as run settings (None when it is the default)."""
    t = template_of(values)
    fields = {"system": t.system, "instruction": t.instruction, "input_format": t.input_format,
              "pair_format": t.pair_format}
    default = PromptTemplate()
    if all(fields[k] == getattr(default, k) for k in fields):
        return None
    return fields


def _price(value: Any) -> Optional[float]:
    return None if value in (None, "") else float(value)


def settings_of(values: dict[str, Any]) -> dict[str, Any]:
    """The LM part of a RunConfig from the form (never the key)."""
    preset = values["preset"]
    if is_local(preset):
        return {"lm": "local", "lm_model": None, "lm_base_url": None, "few_shot": int(values["few_shot"] or 0),
                "prompt": prompt_fields(values)}
    model = (values["model"] or "").strip()
    url = (values["base_url"] or "").strip() or None
    if not model:
        raise ConfigError("Name the model to use at the endpoint (e.g. gpt-4o-mini).")
    if preset == CUSTOM and not url:
        raise ConfigError("Give the endpoint's base URL (e.g. http://localhost:8000/v1).")
    price_in, price_out = _price(values["price_in"]), _price(values["price_out"])
    if values.get("free"):  # "self-hosted, free": the user's word that it costs nothing
        price_in, price_out = 0.0, 0.0
    if (price_in is None) != (price_out is None):
        raise ConfigError("Give both prices (input and output, USD per 1M tokens) or neither.")
    budget = _price(values["budget_usd"]) or None  # an empty box arrives as 0: no budget
    return {"lm": "openai" if preset in (CUSTOM, "openai") else preset, "lm_model": model, "lm_base_url": url,
            "price_in": price_in, "price_out": price_out, "budget_usd": budget,
            "concurrency": int(values["concurrency"] or 8), "few_shot": int(values["few_shot"] or 0),
            "prompt": prompt_fields(values)}


def spec_of(values: dict[str, Any], api_key: Optional[str] = None) -> LMSpec:
    """The form's LM as one parsed value: kind, endpoint, key (pasted or in the URL; never a
    server's environment variable), price."""
    s = settings_of(values)
    return LMSpec.parse(s["lm"], model=s.get("lm_model"), base_url=s.get("lm_base_url"), key_env="", api_key=api_key,
                        price_in=s.get("price_in"), price_out=s.get("price_out"))


def check_key(values: dict[str, Any], api_key: Optional[str]) -> None:
    """An API endpoint needs a key, except one on this machine (Ollama, vLLM ...)."""
    if spec_of(values, api_key).missing_key:
        raise ConfigError(PASTE_KEY)


def provider_of(values: dict[str, Any], api_key: Optional[str], **options: Any):
    """A provider for the form's LM (no cache: a test call is a real call)."""
    s = settings_of(values)
    spec = spec_of(values, api_key)
    if spec.is_local:
        return make_provider(spec.spec, prompt=template_of(values))
    spec.check_endpoint(options.get("endpoint_policy"))  # an endpoint this server does not call: say so first
    if spec.missing_key:
        raise ConfigError(PASTE_KEY)
    prices = {s["lm_model"]: [s["price_in"], s["price_out"]]} if s["price_in"] is not None else None
    return make_provider(s["lm"], model=s["lm_model"], base_url=s["lm_base_url"], api_key=spec.key, key_env="",
                         prompt=template_of(values), prices=prices, **options)


def render_preview(studio: Studio, request: gr.Request, *values: Any) -> str:
    """The prompt as the LM will see it, rendered on the first training example of the loaded data."""
    form = dict(zip(FORM_KEYS, values))
    task = current_task(studio.session(request))
    if task is None or len(task.train) == 0:
        text, pair, labels = "An example input appears here once data is loaded.", None, ["label A", "label B"]
    else:
        (text, pair), labels = task.train.input(0), task.labels
    try:
        messages = template_of(form).render(text, pair, labels)
    except Exception as err:  # noqa: BLE001  (a half-typed template must not break the page)
        return note(f"Cannot render the prompt: {err}", "error")
    parts = "".join(f"<div><b>{html.escape(m['role'])}</b><pre style='white-space:pre-wrap;margin:2px 0 8px'>"
                    f"{html.escape(_shown(m['content']))}</pre></div>" for m in messages)
    shots = int(form["few_shot"] or 0)
    extra = (f"<p><i>+ {shots} example(s) per label from the training data, as earlier turns.</i></p>"
             if shots else "")
    return f"<div class='ea-note ea-info'><b>Prompt preview</b> (first training example){extra}{parts}</div>"


def _shown(content: Any) -> str:
    """A message's content as text; an image part (image tasks) shows as a placeholder."""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") if p.get("type") == "text" else "[the input image]"
                     for p in content if isinstance(p, dict))


def run_test(studio: Studio, api_key: Optional[str], request: gr.Request, *values: Any) -> str:
    """Test connection: one real call on one training example; answer, latency, cost, capabilities."""
    form = dict(zip(FORM_KEYS, values))
    task = current_task(studio.session(request))
    example, labels = (("I love this!", None), ["positive", "negative"]) if task is None else (task.train.input(0),
                                                                                           task.labels)
    try:
        provider = provider_of(form, api_key, max_retries=1, timeout_s=20.0,
                               endpoint_policy=studio.manager.endpoints)
        report = test_connection(provider, example, labels)
    except EAError as err:
        return note(error_message(err), "error")
    if not report.ok:
        return note(f"The call failed: {report.error}", "error")

    def yes(v: Optional[bool]) -> str:
        return "n/a" if v is None else ("yes" if v else "no")

    price = spec_of(form).price
    cost = (price.label() if price.free else usd(report.cost_usd, 6) if report.price_known
            else "price unknown: enter prices or tick self-hosted")
    rows = [("answer", report.answer or "(named no label)"), ("raw reply", report.raw[:200] or "(label scores)"),
            ("latency", seconds(report.latency_s)), ("cost of this call", cost),
            ("structured output", yes(report.structured_output)), ("log-probs (confidence)", yes(report.logprobs)),
            ("confidence", pct(report.confidence) if report.confidence is not None else "-")]
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"{note(f'Connected to {report.model}.', 'ok')}<table class='ea-trace'>{body}</table>"


def price_line(spec: LMSpec) -> str:
    """Which price case holds, for people: "price: $0.15 / $0.60 per 1M tokens (price table)",
    "price: free (self-hosted, as you said)", "price: unknown: give prices or tick self-hosted"."""
    return f"price: {spec.price.label()}"


def estimate(studio: Studio, ea_full: bool, probe_lm: Optional[float], router: Optional[str],
             router_labels: Optional[float], request: gr.Request, *values: Any) -> str:
    """The LM's price case, and what the run will ask of it (calls, tokens, USD) for the loaded data
    (extra calls: the probe, and the learned router's random training inputs when it is chosen)."""
    form = dict(zip(FORM_KEYS, values))
    try:
        s = settings_of(form)
        spec = spec_of(form)
    except EAError as err:
        return note(error_message(err), "warn")
    price = spec.price
    task = current_task(studio.session(request))
    if task is None:
        return note(f"{price_line(spec)}. Load the data to see what the run will cost.",
                    "info" if price.known else "warn")
    prices = PriceTable({s["lm_model"]: [s["price_in"], s["price_out"]]} if s.get("price_in") is not None else None)
    est = estimate_run_cost(task, s.get("lm_model") or "local", template=template_of(form), prices=prices,
                            ea_full=bool(ea_full), price=price,
                            probe=int(probe_lm or 0) + (int(router_labels or 0) if router == "learned" else 0))
    money = (price.label() if price.free else (f"{usd(est.usd_low)}-{usd(est.usd_high)}" if est.price_known
                                               else "unknown: enter the model's prices, or tick self-hosted if free"))
    items = "".join(f"<li>{html.escape(line)}</li>" for line in est.lines)
    budget = f" Budget: {usd(s['budget_usd'], 2)}." if s.get("budget_usd") is not None else ""
    if s.get("budget_usd") is not None and not price.known:
        budget += " A budget needs the price: the run will refuse to start without it."
    kind = "info" if est.price_known else "warn"
    return (f"<div class='ea-note ea-{kind}'><b>{html.escape(price_line(spec))}</b><br>"
            f"<b>Before you run:</b> {est.calls_low:,}-{est.calls_high:,} LM calls, "
            f"~{tokens(est.tokens_low)}-{tokens(est.tokens_high)} tokens, {html.escape(money)}.{html.escape(budget)}"
            f"<ul>{items}</ul>Answers are cached: a rerun on the same data pays nothing.</div>")
