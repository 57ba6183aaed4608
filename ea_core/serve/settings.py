"""What an operator can set about a served system, with its defaults, in one place."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from ea_core.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass
class ServeSettings:
    """Limits, batching and LM settings of `ea_core.serve` (the ``serve`` command's flags)."""

    # Who may call: the expected bearer key (None: anyone who can reach the port).
    api_key: Optional[str] = None
    # Size limits: a request body, one text, one image (decoded bytes), inputs per /v1/classify.
    max_body_bytes: int = 8 * 1024 * 1024
    max_input_chars: int = 100_000
    max_image_bytes: int = 6 * 1024 * 1024
    max_batch_inputs: int = 256
    # Micro-batching of the small models: how long the first input of a batch waits for others,
    # and the largest batch. batching=False: every input runs alone (the benchmark's baseline).
    batching: bool = True
    batch_wait_s: float = 0.002
    max_batch: int = 64
    # Threads running small models off the event loop.
    model_threads: int = 2
    # Inputs per forward pass of a text encoder within one micro-batch (the batch sorted by length,
    # so each pass pads little): on 2 cores, MiniLM took 5.7 ms of CPU per input in passes of 16
    # out of a 64-input batch, 8.5-9.2 ms in one pass of 64 (padded to its longest), 10.3 ms alone.
    encode_batch: int = 16
    # The LM stage: requests in flight at once, and the provider's retry / timeout settings (a
    # client waits for them, so shorter than a run's).
    lm_concurrency: int = 8
    lm_timeout_s: float = 20.0
    lm_max_retries: int = 2
    lm_max_wait_s: float = 10.0
    # /readyz re-checks the LM endpoint at most this often.
    ready_check_s: float = 30.0
    # Drift: the LM share over the last `drift_window` inputs against the tuned share's 95%
    # interval, judged once `drift_min_inputs` were seen.
    drift_window: int = 500
    drift_min_inputs: int = 100
    tuned_lm_share: Optional[float] = None  # None: the bundle's validation share
    # Request log (None: none) and its rotation.
    log_dir: Optional[str] = None
    log_max_bytes: int = 64 * 1024 * 1024
    log_keep: int = 10

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_input_chars", "max_image_bytes", "max_batch_inputs", "max_batch",
                     "model_threads", "encode_batch", "lm_concurrency", "drift_window", "log_max_bytes", "log_keep"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)!r}.")
        if not 0 <= self.batch_wait_s <= 1:
            raise ConfigError(f"The batch wait must be between 0 and 1000 ms, not {self.batch_wait_s * 1000:g} ms.")
        if self.tuned_lm_share is not None and not 0 <= self.tuned_lm_share <= 1:
            raise ConfigError(f"The tuned LM share must be between 0 and 1, not {self.tuned_lm_share!r}.")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: Optional[str], insecure: bool) -> None:
    """ConfigError when `host` is reachable from other machines and no key guards the server."""
    if api_key or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"Refusing to serve on {host} without a key: anyone who can reach this machine could use the system "
        "(and spend your LM budget). Set a key in an environment variable and name it with --api-key-env VAR, "
        "bind 127.0.0.1, or pass --insecure if another layer (a proxy, a firewall) guards the port.")
