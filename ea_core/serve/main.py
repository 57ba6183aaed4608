"""``python -m ea_core serve``: load a bundle, check the settings, and serve it with uvicorn.

The LM stage is called where the operator says (``--lm-base-url``, the key from the provider's
standard variable or ``--lm-key-env``), never at the bundle's own endpoint unless trusted, as
``predict`` does. `build_served` does the work for the command, tests and benchmarks;
`ServerThread` runs an app on a port in a background thread (tests, benchmarks, the app).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.serve.settings import ServeSettings, check_bind

log = logging.getLogger("ea_core.serve")


def add_serve_args(p: Any) -> None:
    """The ``serve`` subcommand's flags (added to the CLI's parser by `ea_core.cli`)."""
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder (a run writes DIR/bundle)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the key clients must send (Authorization: Bearer KEY); "
                        "required to listen on an address other machines can reach, unless --insecure")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback address without a key (only behind a proxy or firewall "
                        "that guards the port)")
    p.add_argument("--log-dir", metavar="DIR",
                   help="append every request's input, route and answer to DIR/requests.jsonl (rotated), accept "
                        "POST /v1/feedback, and keep the LM spend ledger there (so --budget-usd holds across "
                        "restarts); the log becomes data for a new run with `from-log`")
    p.add_argument("--log-max-mb", type=float, default=64, metavar="MB",
                   help="rotate the request log at MB (default 64)")
    p.add_argument("--no-batching", action="store_true", help="run each input alone through the small models")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, metavar="MS",
                   help="how long an input waits for others to share a small-model call (default 2 ms)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="largest small-model batch (default 64)")
    p.add_argument("--encode-batch", type=int, default=16, metavar="N",
                   help="inputs per forward pass of a text encoder within a batch, sorted by length so each pass "
                        "pads little (default 16)")
    p.add_argument("--max-body-mb", type=float, default=8, metavar="MB", help="largest request body (default 8 MB)")
    p.add_argument("--max-batch-inputs", type=int, default=256, metavar="N",
                   help="most inputs in one /v1/classify request (default 256)")
    p.add_argument("--tuned-lm-share", type=float, metavar="R",
                   help="the LM share to watch for drift (default: the bundle's validation share)")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request line (uvicorn's access log)")
    g = p.add_argument_group("large model (the bundle's LM stage)")
    g.add_argument("--lm-base-url", metavar="URL",
                   help="endpoint to call the LM stage at (an OpenAI-compatible base URL); without it only the "
                        "provider's own URL, and a bundle that recorded another endpoint is refused")
    g.add_argument("--lm-key-env", metavar="VAR",
                   help="environment variable with the LM's API key (default: the provider's standard one)")
    g.add_argument("--trust-bundle-endpoint", action="store_true",
                   help="call the LM at the endpoint recorded in the bundle (only for a bundle you trust)")
    g.add_argument("--lm-local", metavar="PATH_OR_ID", help="for a bundle whose LM runs in process: the model to load")
    g.add_argument("--cache", metavar="PATH", default="lm_cache.sqlite",
                   help="LM answer cache shared with runs and other servers (default lm_cache.sqlite in the "
                        "current folder; 'none' for no cache)")
    g.add_argument("--budget-usd", type=float, metavar="X",
                   help="stop paying the LM once X USD are spent; then the last small model answers and the reply "
                        "says so")
    g.add_argument("--lm-concurrency", type=int, default=8, metavar="N", help="LM requests in flight (default 8)")
    g.add_argument("--lm-timeout", type=float, default=20.0, metavar="S", help="seconds per LM request (default 20)")
    g.add_argument("--lm-retries", type=int, default=2, metavar="N", help="retries of a failed LM request (default 2)")
    g.add_argument("--no-lm", action="store_true", help="never call the LM: the last small model answers the rest")


def settings_from_args(args: Any, api_key: Optional[str]) -> ServeSettings:
    return ServeSettings(
        api_key=api_key, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_batch_inputs=args.max_batch_inputs, batching=not args.no_batching,
        batch_wait_s=args.batch_wait_ms / 1000.0, max_batch=args.max_batch, encode_batch=args.encode_batch,
        lm_concurrency=args.lm_concurrency,
        lm_timeout_s=args.lm_timeout, lm_max_retries=args.lm_retries, tuned_lm_share=args.tuned_lm_share,
        log_dir=args.log_dir, log_max_bytes=max(int(args.log_max_mb * 1024 * 1024), 1024))


def _model_ids(meta: dict[str, Any]) -> list[str]:
    name = str((meta.get("task") or {}).get("name") or "").strip()
    name = re.sub(r"[^A-Za-z0-9._:-]+", "-", name)[:60].strip("-")
    return ["ea"] + ([f"ea:{name}"] if name else [])


def build_served(bundle: str | Path, settings: ServeSettings, *, lm_base_url: Optional[str] = None,
                 lm_key_env: Optional[str] = None, lm_api_key: Optional[str] = None, trust_endpoint: bool = False,
                 lm_local: Optional[str] = None, cache: Optional[str] = None, budget_usd: Optional[float] = None,
                 use_lm: bool = True, warm_up: bool = True) -> Any:
    """A `ServedSystem` for a bundle folder (what `serve` runs; tests and benchmarks call it too)."""
    from ea_core.bundle import BUNDLE_JSON, load_bundle, plan_bundle_lm, read_bundle_meta
    from ea_core.serve.app import ServedSystem
    from ea_core.serve.engine import ServeEngine, ServeInput
    from ea_core.serve.metrics import DriftWatch, ServeMetrics
    from ea_core.serve.reqlog import RequestLog

    from ea_core.summary_bundle import is_summary_bundle

    if is_summary_bundle(bundle):  # the bundle's task kind: summaries, not labels
        return _build_served_summaries(bundle, settings, lm_base_url=lm_base_url, lm_key_env=lm_key_env,
                                       lm_api_key=lm_api_key, trust_endpoint=trust_endpoint, cache=cache,
                                       budget_usd=budget_usd, use_lm=use_lm, warm_up=warm_up)
    meta = read_bundle_meta(bundle)
    task = meta.get("task") or {}
    image_task, pair_task = task.get("modality") == "image", bool(task.get("pair"))
    has_lm = use_lm and any(e.get("lm") for e in meta["stages"])
    options: Optional[dict[str, Any]] = None
    budget = None
    description = ""
    if has_lm:
        plan = plan_bundle_lm(meta["lm"], where=Path(bundle) / BUNDLE_JSON, base_url=lm_base_url, key_env=lm_key_env,
                              trust_endpoint=trust_endpoint, local_model=lm_local)
        description = plan.describe()
        if plan.base_url is not None:  # an endpoint: the server's retries, timeout, concurrency, budget
            from ea_core.llm import Budget, SpendLedger

            ledger = SpendLedger(Path(settings.log_dir) / "spend.jsonl") if settings.log_dir else None
            budget = Budget(budget_usd, ledger=ledger)
            options = {"budget": budget, "max_retries": settings.lm_max_retries, "timeout_s": settings.lm_timeout_s,
                       "backoff_max_s": min(settings.lm_max_wait_s, 60.0), "max_retry_after_s": settings.lm_max_wait_s,
                       "backoff_base_s": 0.25}
        elif budget_usd is not None:
            log.warning("--budget-usd does not apply: the LM runs in process and costs nothing.")
    system = load_bundle(bundle, api_key=lm_api_key, cache_path=cache, use_lm=use_lm, key_env=lm_key_env,
                         base_url=lm_base_url, trust_endpoint=trust_endpoint, local_model=lm_local,
                         lm_options=options)
    provider = system.provider
    if budget is not None and budget_usd is not None and getattr(provider, "price_known", True) is False:
        raise ConfigError("--budget-usd needs the LM's price, and the bundle's LM model has none in the price table: "
                          "a budget would count 0 per answer and never run out. Serve without --budget-usd, or "
                          "export the bundle from a run with --price-in / --price-out.")
    tuned = settings.tuned_lm_share
    if tuned is None and has_lm:
        rate = (meta.get("metrics") or {}).get("val_lm_call_rate")
        tuned = float(rate) if isinstance(rate, (int, float)) and 0 <= rate <= 1 else None
    drift = DriftWatch(tuned, settings.drift_window, settings.drift_min_inputs)
    if has_lm and tuned is None:
        log.warning("LM share drift is not watched: the bundle records no tuned LM share (a bundle exported at "
                    "thresholds chosen by hand has none). Give --tuned-lm-share R, the validation LM share at its "
                    "thresholds (the app's Thresholds tab shows it), to watch it; /metrics says "
                    "ea_lm_share_drift_watched 0 meanwhile.")
    metrics = ServeMetrics([s.name for s in system.stages], drift=drift, budget_usd=budget_usd if budget else None)
    engine = ServeEngine(system, settings, pair_task=pair_task, image_task=image_task, observer=metrics)
    if warm_up:
        if image_task:
            import numpy as np

            from ea_core.imaging import encode_png

            sample = ServeInput("warm-up", image=encode_png(np.zeros((8, 8, 3), dtype=np.uint8)))
        else:
            sample = ServeInput("warm up", "warm up" if pair_task else None)
        engine.warm_up(sample)
    request_log = None
    if settings.log_dir:
        request_log = RequestLog(settings.log_dir, text_col=task.get("text_col") or "text",
                                 pair_col=task.get("pair_col") or "text_pair", image_task=image_task,
                                 max_bytes=settings.log_max_bytes, keep=settings.log_keep)
    lm_check = getattr(provider, "check_endpoint", None) if has_lm else None
    return ServedSystem(engine, metrics, settings, model_ids=_model_ids(meta), request_log=request_log,
                        lm_check=lm_check, description=description)


def _uvicorn_options() -> dict[str, Any]:
    """The fastest event loop and HTTP parser installed (uvloop, httptools), else the pure-Python ones."""
    import importlib.util

    return {"loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11"}


def cmd_serve(args: Any) -> int:
    """The ``serve`` command (errors are `EAError`s: the CLI prints them and exits 2)."""
    import uvicorn

    from ea_core.serve.app import create_app

    api_key = None
    if args.api_key_env:
        api_key = (os.environ.get(args.api_key_env) or "").strip()
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is empty or not set; "
                              "put the key clients must send in it.")
    check_bind(args.host, api_key, args.insecure)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, not {args.port}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    settings = settings_from_args(args, api_key)
    cache = None if str(args.cache).lower() == "none" else args.cache
    served = build_served(args.bundle, settings, lm_base_url=args.lm_base_url, lm_key_env=args.lm_key_env,
                          trust_endpoint=args.trust_bundle_endpoint, lm_local=args.lm_local, cache=cache,
                          budget_usd=args.budget_usd, use_lm=not args.no_lm)
    if served.description:
        log.info("%s", served.description)
    stages = " -> ".join(f"{s.name} ({s.threshold:.3f})" for s in served.engine.system.stages)
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("Serving %s: %s at http://%s:%d/v1 (%s; micro-batching %s)", args.bundle, stages, host, args.port,
             "key required" if api_key else "no key", "on" if settings.batching else "off")
    app = create_app(served)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.access_log,
                server_header=False, **_uvicorn_options())
    return 0


def cmd_from_log(args: Any) -> int:
    """The ``from-log`` command: a request log folder to a labelled data file for a new run."""
    from ea_core.serve.reqlog import dataset_from_log

    counts = dataset_from_log(args.log_dir, args.out, lm_labels=args.lm_labels)
    print(f"Wrote {counts['feedback'] + counts['lm']} labelled inputs to {args.out} ({counts['feedback']} with "
          f"gold labels from feedback, {counts['lm']} labelled by the LM). Adapt again with: python -m ea_core run "
          f"--data {args.out} ...", file=sys.stderr)
    return 0


def _build_served_summaries(bundle: str | Path, settings: ServeSettings, *, lm_base_url: Optional[str],
                            lm_key_env: Optional[str], lm_api_key: Optional[str], trust_endpoint: bool,
                            cache: Optional[str], budget_usd: Optional[float], use_lm: bool, warm_up: bool) -> Any:
    """A `ServedSystem` over a summarization bundle: the reply's content is the summary."""
    from ea_core.serve.app import ServedSystem
    from ea_core.serve.engine import ServeInput
    from ea_core.serve.metrics import DriftWatch, ServeMetrics
    from ea_core.serve.reqlog import RequestLog
    from ea_core.serve.summaries import SummaryEngine

    if lm_api_key is None:
        lm_api_key = os.environ.get(lm_key_env or "OPENAI_API_KEY") or None
    engine = SummaryEngine(bundle, settings, use_lm=use_lm, api_key=lm_api_key, cache=cache, base_url=lm_base_url,
                           trust_endpoint=trust_endpoint, budget_usd=budget_usd)
    drift = DriftWatch(settings.tuned_lm_share if engine.has_lm else None, settings.drift_window,
                       settings.drift_min_inputs)
    metrics = ServeMetrics([s.name for s in engine.system.stages], drift=drift, budget_usd=None)
    engine.observer = metrics
    if warm_up:
        engine.warm_up(ServeInput("Warm up. The models load now."))
    request_log = None
    if settings.log_dir:
        request_log = RequestLog(settings.log_dir, text_col="source", pair_col="instruction", image_task=False,
                                 max_bytes=settings.log_max_bytes, keep=settings.log_keep)
    lm = engine.lm
    lm_check = getattr(lm, "check_endpoint", None)
    return ServedSystem(engine, metrics, settings, model_ids=["ea", "ea:summaries"], request_log=request_log,
                        lm_check=lm_check, description="summaries: the reply's content is the summary")


def add_from_log_args(p: Any) -> None:
    p.add_argument("log_dir", metavar="LOG_DIR", help="the folder a server wrote with --log-dir")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="the data file to write")
    p.add_argument("--lm-labels", action="store_true",
                   help="also label the inputs the LM answered (and nobody labelled) with the LM's answer "
                        "(distillation: the next adaptation learns the traffic the LM had to answer)")


def serve_command(bundle: str | Path, *, port: int = 8000, lm_base_url: Optional[str] = None,
                  key_env: str = "EA_SERVE_KEY", log_dir: Optional[str] = None,
                  tuned_lm_share: Optional[float] = None) -> str:
    """The shell command that serves `bundle` (for a UI to show); never holds a key or URL userinfo.
    `tuned_lm_share`: the validation LM share to watch for drift, for a bundle that records none."""
    import shlex

    from ea_core.llm.urls import strip_userinfo

    parts = ["python", "-m", "ea_core", "serve", "--bundle", str(bundle), "--port", str(int(port)),
             "--api-key-env", key_env]
    if lm_base_url:
        parts += ["--lm-base-url", strip_userinfo(lm_base_url)]
    if tuned_lm_share is not None:
        parts += ["--tuned-lm-share", f"{float(tuned_lm_share):.4g}"]
    if log_dir:
        parts += ["--log-dir", str(log_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A served app on `host:port` in a background thread: ``with ServerThread(app) as srv: srv.url``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: Optional[int] = None, **options: Any) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="on", **{**_uvicorn_options(), **options})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="ea-serve")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def readiness(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """What ``/readyz`` says once the server answers it (models loaded; the LM endpoint reached
        or not), or ``{"ready": False, "error": ...}`` when it does not answer within `timeout_s`."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = httpx.get(self.url + "/readyz", timeout=max(deadline - time.monotonic(), 0.5))
                return dict(reply.json())
            except (httpx.HTTPError, ValueError) as err:
                if time.monotonic() > deadline or not self.thread.is_alive():
                    return {"ready": False, "error": f"{type(err).__name__}: no answer from {self.url}/readyz"}
                time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
