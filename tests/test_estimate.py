"""Time estimates for the small-model checklist: how they grow, how they read, what they rest on.

No model is trained here: the estimate only reads the measured rates (`cpu_rates.json`), the
catalog and the model classes' constructor defaults.
"""

import inspect
import json

import pytest

from ea_core.errors import ConfigError
from ea_core.models import CATALOG, catalog_names, resolve_model
from ea_core.models.catalog import CatalogEntry, model_choices
from ea_core.models.encoder_head import EncoderHeadModel
from ea_core.models.estimate import (
    EXPONENT_RANGE,
    RATES_PATH,
    REQUIRED_KEYS,
    CpuRates,
    TimeEstimate,
    estimate_choices,
    estimate_seconds,
    format_estimate,
    format_seconds,
    load_rates,
    parse_rates,
)
from ea_core.models.finetune import FineTuneModel

SPECS = ["tfidf", "head:minilm", "finetune:minilm"]


def test_rates_file_loads_and_has_the_keys_the_estimate_needs():
    raw = json.loads(RATES_PATH.read_text())
    for section, keys in REQUIRED_KEYS.items():
        for key in keys:
            assert raw[section][key] > 0, f"{section}.{key}"
    assert raw["approximate"] is True and raw["cpu_model"] and raw["threads"] >= 1
    assert raw["torch"] and raw["measured_on"] and raw["runs"]
    rates = load_rates()
    assert isinstance(rates, CpuRates) and rates is load_rates()  # read once
    assert EXPONENT_RANGE[0] <= rates.compute_exponent <= EXPONENT_RANGE[1]
    assert rates.finetune_train_per_s < rates.finetune_infer_per_s


def test_a_rates_file_missing_a_key_is_a_readable_error():
    raw = json.loads(RATES_PATH.read_text())
    del raw["finetune"]["train_examples_per_s"]
    with pytest.raises(ConfigError, match=r"finetune\.train_examples_per_s.*bench_model_rates"):
        parse_rates(raw)


@pytest.mark.parametrize("spec", SPECS)
def test_estimate_grows_with_data_size(spec):
    small, big = estimate_seconds(spec, 1000, 1000), estimate_seconds(spec, 4000, 1000)
    assert big.seconds > small.seconds and big.low > small.low and big.high > small.high
    assert estimate_seconds(spec, 1000, 4000).seconds > small.seconds
    assert small.low <= small.seconds <= small.high


@pytest.mark.parametrize("spec", ["head:minilm", "finetune:minilm"])
def test_estimate_grows_with_epochs(spec):
    few, many = estimate_seconds(spec, 2000, 1000, epochs=3), estimate_seconds(spec, 2000, 1000, epochs=9)
    assert many.seconds > few.seconds and many.high > few.high
    assert estimate_seconds(spec, 2000, 1000, settings={"epochs": 9}).seconds == many.seconds


@pytest.mark.parametrize("spec", SPECS)
def test_estimate_grows_with_out_of_fold_folds(spec):
    seconds = [estimate_seconds(spec, 2000, 1000, oof_folds=k).seconds for k in (0, 3, 5)]
    assert seconds[0] < seconds[1] < seconds[2]
    assert "5-fold" in estimate_seconds(spec, 2000, 1000, oof_folds=5).basis


def test_head_out_of_fold_retrains_only_the_head():
    plain = estimate_seconds("head:minilm", 2000, 1000)
    oof = estimate_seconds("head:minilm", 2000, 1000, oof_folds=5)
    assert oof.parts["embed"] == plain.parts["embed"]  # embeddings are cached across folds
    assert oof.parts["oof"] == pytest.approx(4 * plain.parts["train"], rel=2e-3)


def test_finetune_costs_more_than_head_which_costs_more_than_tfidf():
    tfidf, head, finetune = (estimate_seconds(spec, 2000, 1000) for spec in SPECS)
    assert finetune.seconds > head.seconds > tfidf.seconds
    assert finetune.low > tfidf.high


def test_bigger_encoders_cost_more_and_the_basis_says_so():
    minilm, distil, bert = (estimate_seconds(f"finetune:{m}", 2000, 1000) for m in ("minilm", "distilbert", "bert"))
    assert bert.seconds > distil.seconds > minilm.seconds
    assert "encoder's size" in bert.basis and "size" not in minilm.basis
    # ALBERT has fewer weights than MiniLM but BERT-base compute: it runs like BERT, loads faster
    albert, bert_head = estimate_seconds("head:albert", 2000, 1000), estimate_seconds("head:bert", 2000, 1000)
    assert albert.parts["embed"] == bert_head.parts["embed"] and albert.parts["load"] < bert_head.parts["load"]


def test_a_local_folder_is_sized_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 12,
                                                      "hidden_size": 768}))
    local = estimate_seconds(f"finetune:{tmp_path}", 2000, 1000)
    bert = estimate_seconds("finetune:bert", 2000, 1000)
    assert local.parts["train"] == pytest.approx(bert.parts["train"])
    assert local.parts["predict"] == pytest.approx(bert.parts["predict"])


def test_defaults_come_from_the_model_constructors():
    for spec, cls in (("head:minilm", EncoderHeadModel), ("finetune:minilm", FineTuneModel)):
        default = inspect.signature(cls.__init__).parameters["epochs"].default
        assert estimate_seconds(spec, 2000, 1000).seconds == estimate_seconds(spec, 2000, 1000, epochs=default).seconds
        assert f"-{default}, early stopping" in estimate_seconds(spec, 2000, 1000, settings={"patience": 0}).basis \
            or spec.startswith("head")
        assert f"{default} epochs" in estimate_seconds(spec, 2000, 1000, n_val=0).basis


def test_early_stopping_gives_a_range_and_no_validation_none():
    est = estimate_seconds("finetune:minilm", 2000, 1000, epochs=30, settings={"patience": 2})
    assert "10-30, early stopping" in est.basis
    no_val = estimate_seconds("finetune:minilm", 2000, 1000, epochs=30, n_val=0)  # nothing to stop on
    assert "30 epochs" in no_val.basis and "early stopping" not in no_val.basis
    assert no_val.low > est.low


def test_a_head_is_expected_to_stop_where_it_stopped_on_the_demo():
    """A head on frozen features stops long before its 100 epochs (epoch 14 on the demo tweets):
    the estimate's central figure is that epoch, not half of the maximum."""
    rates = load_rates()
    est = estimate_seconds("head:minilm", 2000, 1000, settings={"patience": 2})
    assert f"~{rates.head_observed_epochs:.0f} epochs (3-" in est.basis
    assert estimate_seconds("head:minilm", 2000, 1000, epochs=5).basis.count("5") >= 1
    many = estimate_seconds("head:minilm", 2000, 1000, epochs=1000)
    assert many.high == pytest.approx(estimate_seconds("head:minilm", 2000, 1000).high)  # the cap is not the cost


def test_longer_texts_cost_more_up_to_max_length():
    short = estimate_seconds("finetune:minilm", 2000, 1000, mean_chars=100)
    long = estimate_seconds("finetune:minilm", 2000, 1000, mean_chars=400)
    capped = estimate_seconds("finetune:minilm", 2000, 1000, mean_chars=400, settings={"max_length": 32})
    assert long.seconds > 2 * short.seconds
    assert capped.seconds < long.seconds  # truncation at max_length bounds the cost per text


@pytest.mark.parametrize("spec", ["svm", "lora:minilm", "head:", "tfidf:minilm", ""])
def test_unknown_spec_is_a_config_error_listing_the_forms(spec):
    with pytest.raises(ConfigError, match="head:MODEL"):
        estimate_seconds(spec, 1000, 100)


def test_unknown_model_and_bad_sizes_are_readable_config_errors():
    with pytest.raises(ConfigError, match="not in the catalog.*minilm"):
        estimate_seconds("head:nobody/no-such-model-xyz", 1000, 100)
    with pytest.raises(ConfigError, match="n_train"):
        estimate_seconds("tfidf", 0, 100)
    with pytest.raises(ConfigError, match="oof_folds"):
        estimate_seconds("tfidf", 100, 100, oof_folds=1)


def test_every_choice_in_the_checklist_gets_an_estimate():
    choices = model_choices()
    specs = [c.spec for c in choices]
    assert specs[0] == "tfidf" and len(specs) == len(set(specs))
    assert {f"{kind}:{e.name}" for e in CATALOG for kind in e.kinds} | {"tfidf"} == set(specs)
    by_name = {e.name: e for e in CATALOG}
    estimates = estimate_choices(2000, 1000)
    for choice in choices:
        row = choice.to_dict()
        assert set(row) >= {"spec", "kind", "display_name", "params", "offline_available", "description"}
        assert choice.display_name and choice.params and choice.description
        if choice.model is not None:
            assert choice.offline_available == by_name[choice.model].offline_available
        est = estimates[choice.spec]
        assert isinstance(est, TimeEstimate) and 0 < est.low <= est.seconds <= est.high
        assert est.basis and str(est)
    assert next(c for c in choices if c.spec == "tfidf").offline_available is True
    assert next(c for c in choices if c.spec == "head:minilm").offline_available is True


def test_catalog_names_used_elsewhere_still_work():
    assert catalog_names()[0] == "minilm" and resolve_model("roberta") == "roberta-base"
    entry = CatalogEntry("x", "org/x", ("head",), "1M", "A test entry.")  # old positional form
    assert entry.to_dict()["display_name"] == "x"


@pytest.mark.parametrize(
    "low, mid, high, text",
    [
        (0.1, 0.2, 0.4, "<1 s"),
        (36, 40, 44, "~40 s"),
        (120, 200, 300, "2-5 min"),
        (40, 90, 180, "40 s-3 min"),
        (3000, 5400, 9000, "50 min-2.5 h"),
        (7.5, 8, 9, "~8 s"),
    ],
)
def test_estimates_read_like_people_say_them(low, mid, high, text):
    assert format_estimate(TimeEstimate("x", mid, low, high, "test")) == text


def test_format_seconds():
    assert [format_seconds(s) for s in (0.3, 8.4, 47, 200, 1500, 5400, 50000)] == [
        "<1 s", "8 s", "45 s", "3 min", "25 min", "1.5 h", "14 h"]
