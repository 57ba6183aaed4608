"""make_provider specs and the endpoint presets."""

from __future__ import annotations

import pytest

from ea_core.errors import ConfigError, LMError
from ea_core.llm import PRESETS, Budget, OpenAIProvider, PromptTemplate, get_preset, is_local_url, make_provider


def test_presets_cover_the_usual_endpoints() -> None:
    for name in ["openai", "deepseek", "qwen", "glm", "doubao", "openrouter", "together", "ollama", "vllm", "llamacpp"]:
        preset = PRESETS[name]
        assert preset.base_url.startswith("http") and preset.example_model
    assert PRESETS["ollama"].base_url == "http://localhost:11434/v1" and PRESETS["ollama"].key_env is None
    assert PRESETS["vllm"].base_url == "http://localhost:8000/v1"
    assert PRESETS["llamacpp"].base_url == "http://localhost:8080/v1"
    assert PRESETS["deepseek"].key_env == "DEEPSEEK_API_KEY"
    assert get_preset("DashScope").name == "qwen" and get_preset("llama.cpp").name == "llamacpp"
    with pytest.raises(ConfigError, match="Known"):
        get_preset("nowhere")
    assert is_local_url("http://127.0.0.1:9/v1") and is_local_url("http://localhost:11434/v1")
    assert not is_local_url("https://api.openai.com/v1") and not is_local_url(None)


def test_make_provider_openai_specs(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    p = make_provider("openai", concurrency=3, budget_usd=2.5)
    assert isinstance(p, OpenAIProvider)
    assert p.model == "gpt-4o-mini" and p.base_url == "https://api.openai.com/v1"
    assert p.concurrency == 3 and p.budget is not None and p.budget.max_usd == 2.5
    p = make_provider("openai", model="my-model", base_url="http://localhost:8000/v1/")
    assert p.base_url == "http://localhost:8000/v1" and p.model == "my-model"
    with pytest.raises(ConfigError, match="model"):
        make_provider("openai", base_url="http://localhost:8000/v1")
    # a preset by name uses its URL and key variable
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-ds-test")
    p = make_provider("deepseek")
    assert p.base_url == "https://api.deepseek.com/v1" and p.key_env == "DEEPSEEK_API_KEY"
    assert make_provider("openai:deepseek", model="deepseek-reasoner").model == "deepseek-reasoner"
    monkeypatch.delenv("ZHIPUAI_API_KEY", raising=False)
    with pytest.raises(LMError, match="ZHIPUAI_API_KEY"):
        make_provider("glm")
    p = make_provider("ollama", model="qwen2.5:7b")  # local: no key needed
    assert p.local and p.price_known
    shared = Budget(1.0)
    assert make_provider("openai", budget=shared).budget is shared
    with pytest.raises(ConfigError):
        make_provider("")


def test_make_provider_prompt_and_few_shot(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    tpl = PromptTemplate(system="S", input_format="> {text}")
    p = make_provider("openai", prompt=tpl, few_shot_examples=[("good", None, "positive")])
    msgs = p.prompt.render("x", None, ["positive", "negative"])
    assert msgs[1] == {"role": "user", "content": "> good"} and msgs[2]["content"] == "positive"
    assert tpl.examples == []  # the caller's template is not modified
    d = p.describe()
    assert d["prompt"]["examples"] == [["good", None, "positive"]] and "sk-openai-test" not in str(d)
