"""The API key in memory: a holder that never prints or pickles it, and a scrubber for messages.

Why: a key must never reach a log, an error text, a settings file or a pickle. Holding it in a
`Secret` makes the safe thing the default; `scrub` masks it (and anything key-shaped) in texts
that came from elsewhere, such as an endpoint's error body echoing the key.
"""

from __future__ import annotations

import re
from typing import Any, Optional


class Secret:
    """Holds a key; prints as *** and refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("The API key is not picklable.")


def scrub(text: str, *secrets: Optional[Secret]) -> str:
    """`text` with each secret (and anything that looks like a key) masked."""
    for secret in secrets:
        value = secret.reveal() if secret else ""
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = re.sub(r"(Bearer\s+)\S+", r"\1***", text, flags=re.I)
    return re.sub(r"\b(sk-[A-Za-z0-9]*-?)[A-Za-z0-9_\-\*\.]{6,}", r"\1***", text)
