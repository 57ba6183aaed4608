"""How loading errors and warnings name things: a few shown, the rest counted, one line per cause."""

from __future__ import annotations

#: Most names (columns, labels, values) one message lists before it counts the rest.
MAX_SHOWN = 8


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.rstrip(".")
    if len(text) > 300:
        text = text[:297] + "..."
    return text


def listing(head: str, names: list[str], shown: int = 5) -> str:
    """``head: a, b, c (and 4 more).``"""
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return f"{head}: {', '.join(names[:shown])}{more}."
