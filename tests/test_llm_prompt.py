"""Prompt rendering, few-shot selection and the strict answer parser."""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.llm.base import UNPARSEABLE
from ea_core.llm.prompt import PromptTemplate, find_label, parse_answer, select_examples
from ea_core.splits import Split

LABELS = ["positive", "negative", "neutral"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("positive", 0),
        ("Positive", 0),
        ("  NEGATIVE \n", 1),
        ("neutral.", 2),
        ('"neutral"', 2),
        ("**positive**", 0),
        ("The sentiment is negative.", 1),
        ("Answer: Neutral", 2),
        ("Label: positive\nThe text praises the product.", 0),
        ('{"label": "negative"}', 1),
        ('{"Label": "NEUTRAL"}', 2),
        ('```json\n{"label": "positive"}\n```', 0),
        ('Here you go: {"label": "neutral"}', 2),
        ('{"label": "happy"}', UNPARSEABLE),
        ('{"label": "positive or negative"}', UNPARSEABLE),
        ("positive or negative", UNPARSEABLE),
        ("It could be positive, negative or neutral.", UNPARSEABLE),
        ("I cannot tell.", UNPARSEABLE),
        ("", UNPARSEABLE),
        ("   ", UNPARSEABLE),
        ("positively glowing", UNPARSEABLE),  # not a whole word
        ("It is not positive.", UNPARSEABLE),  # a denied label is not an answer
        ("<think>positive? or negative?</think>negative", 1),
        ("<think>still thinking about positive", UNPARSEABLE),
    ],
)
def test_parse_answer(raw: str, expected: int) -> None:
    assert parse_answer(raw, LABELS) == expected


def test_label_inside_another_label() -> None:
    labels = ["neutral", "not neutral"]
    assert parse_answer("not neutral", labels) == 1
    assert parse_answer("Not Neutral.", labels) == 1
    assert parse_answer("The tweet is not neutral.", labels) == 1
    assert parse_answer("neutral", labels) == 0
    assert parse_answer("This one is neutral.", labels) == 0
    assert parse_answer("neutral, or maybe not neutral", labels) == UNPARSEABLE


def test_multiword_and_odd_labels() -> None:
    labels = ["not_entailment", "entailment"]
    assert parse_answer("entailment", labels) == 1
    assert parse_answer("not_entailment", labels) == 0
    assert parse_answer("The answer is not_entailment", labels) == 0
    labels = ["very  negative", "C++", "1"]
    assert parse_answer("Very negative", labels) == 0
    assert parse_answer("c++", labels) == 1
    assert parse_answer("1", labels) == 2
    assert parse_answer('{"label": 1}', labels) == 2
    assert parse_answer("anything", []) == UNPARSEABLE


def test_find_label_span() -> None:
    raw = "The sentiment is negative."
    idx, span = find_label(raw, LABELS)
    assert idx == 1 and raw[span[0] : span[1]] == "negative"
    raw = '{"label": "neutral"}'
    idx, span = find_label(raw, LABELS)
    assert raw[span[0] : span[1]] == "neutral"
    raw = "<think>positive</think> Neutral"
    idx, span = find_label(raw, LABELS)
    assert idx == 2 and raw[span[0] : span[1]] == "Neutral"


def test_render_single_and_pair() -> None:
    t = PromptTemplate()
    msgs = t.render("I love it", None, LABELS)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "positive, negative, neutral" in msgs[0]["content"]
    assert msgs[-1]["content"] == "Text: I love it"
    msgs = t.render("A man sleeps", "A person rests", ["entailment", "contradiction"])
    assert "Text A: A man sleeps" in msgs[-1]["content"] and "Text B: A person rests" in msgs[-1]["content"]
    preview = t.render("x")  # no labels: the placeholder stays, for a preview of the template
    assert "{labels}" in preview[0]["content"]


def test_render_few_shot_and_round_trip() -> None:
    t = PromptTemplate(system="Sys", instruction="Pick {labels}. JSON like {\"label\": x}", input_format="<<{text}>>")
    t = t.with_examples([("great", None, "positive"), ("awful", None, "negative")])
    msgs = t.render("meh", None, LABELS)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "<<great>>" and msgs[2]["content"] == "positive"
    assert '{"label": x}' in msgs[0]["content"]  # other braces left alone
    again = PromptTemplate.from_dict(t.to_dict())
    assert again.render("meh", None, LABELS) == msgs
    long = PromptTemplate(max_input_chars=10).render("x" * 100, None, LABELS)
    assert long[-1]["content"] == "Text: " + "x" * 10


def test_select_examples_k_per_label_seeded() -> None:
    labels = np.array([0, 1, 2] * 10 + [-1] * 5)
    split = Split([f"t{i}" for i in range(len(labels))], labels)
    ex = select_examples(split, LABELS, k=2, seed=3)
    assert len(ex) == 6
    assert sorted(e[2] for e in ex) == ["negative", "negative", "neutral", "neutral", "positive", "positive"]
    for text, pair, lab in ex:
        i = int(text[1:])
        assert LABELS[labels[i]] == lab and pair is None
    assert ex == select_examples(split, LABELS, k=2, seed=3)
    assert ex != select_examples(split, LABELS, k=2, seed=4)
    # a label with fewer rows than k gives what it has; k=0 gives none
    few = Split(["a", "b", "c"], np.array([0, 0, 1]), pairs=["x", "y", "z"])
    ex = select_examples(few, LABELS, k=5, seed=0)
    assert len(ex) == 3 and all(e[1] is not None for e in ex)
    assert select_examples(few, LABELS, k=0) == []
