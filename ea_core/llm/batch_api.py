"""The OpenAI-compatible Batch API as a way to ask the LM: one JSONL file of chat requests uploaded
to ``/v1/files``, ``POST /v1/batches`` with a 24 h window, polled until done, then the output and
error files read back. Providers bill batches at a discount (half price at OpenAI) in exchange for
waiting; the batch id is saved beside the run, so a restarted run polls the batch it already paid
for instead of submitting it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ea_core.runfolder import write_json

#: Share of the normal price a batch is billed at (OpenAI's Batch API: half).
BATCH_PRICE_FACTOR = 0.5
#: Statuses after which a batch will not change any more.
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
CHAT_PATH = "/v1/chat/completions"


def request_lines(bodies: dict[str, dict[str, Any]]) -> bytes:
    """The batch input file: one ``{"custom_id", "method", "url", "body"}`` line per request (the
    custom id is the request's cache key, so answers land in the cache under it)."""
    return "".join(json.dumps({"custom_id": key, "method": "POST", "url": CHAT_PATH, "body": body}) + "\n"
                   for key, body in bodies.items()).encode("utf-8")  # ASCII: no raw U+2028 inside a line


@dataclass
class BatchResults:
    """What a finished batch's files say: each answered request's chat completion by custom id, and
    the custom ids that failed (each with the reason)."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def read_results(output: Optional[str], errors: Optional[str]) -> BatchResults:
    """Parse the output and error files (JSONL; a line that cannot be read is skipped: its request
    is simply asked again later)."""
    out = BatchResults()
    for text, is_error in ((output, False), (errors, True)):
        for line in (text or "").split("\n"):  # not splitlines(): U+2028 may sit inside a JSON string
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
                continue
            key, resp = row["custom_id"], row.get("response") or {}
            body = resp.get("body") if isinstance(resp, dict) else None
            if not is_error and isinstance(body, dict) and int(resp.get("status_code") or 0) == 200:
                out.replies[key] = body
            else:
                err = row.get("error") or (body or {}).get("error") or {}
                out.errors[key] = str(err.get("message") if isinstance(err, dict) else err or "failed")[:200]
    return out


@dataclass
class BatchRecord:
    """The batch a stage submitted, saved beside the run (never the key): its id and the requests it
    holds, so a restart polls it instead of paying again."""

    path: Path
    batch_id: Optional[str] = None
    keys: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> "BatchRecord":
        path = Path(path)
        if path.is_file():
            data = json.loads(path.read_text())
            return cls(path, data.get("batch_id"), list(data.get("keys", [])))
        return cls(path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"batch_id": self.batch_id, "keys": self.keys})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
