"""The run form: the Data, Small models and Large model tabs' fields <-> an `ea_core` RunConfig.

One mapping serves Run (form -> config), the settings download (config -> a JSON file without
key or server paths), the settings upload and a reopened run (config -> form), so they cannot
drift apart. The form's values themselves (never the key) are what `pages.setup` keeps per owner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.llm import PRESETS
from ea_core.llm.prompt import DEFAULT_INPUT_FORMAT, DEFAULT_INSTRUCTION, DEFAULT_PAIR_FORMAT, DEFAULT_SYSTEM
from ea_core.models.catalog import check_available
from ea_core.runconfig import RunConfig, check_money_caps
from ea_core.uploads import OwnerStore
from pages import data, lm, models
from pages.ui import NONE

KEYS: tuple[str, ...] = data.FORM_KEYS + models.FORM_KEYS + lm.FORM_KEYS
UPLOAD_PREFIX = "upload:"  # in a settings file: the data was an uploaded file of this name
_NOT_SAVED = ("cache",)  # server paths: meaningless elsewhere


def config_from_form(store: Optional[OwnerStore], values: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from the form (`values` keyed by `KEYS`; an uploaded file is one of
    `store`'s), its money cap checked against the LM's price and every small model buildable here
    (a download that cannot happen refuses now, not in the worker). Never holds a key."""
    fields = {**data.settings_of(store, values), **models.settings_of(values), **lm.settings_of(values)}
    cfg = RunConfig(**fields)
    cfg.validate()
    check_available(cfg.ssm)
    if cfg.lm:
        check_money_caps(cfg)  # a budget on an unknown price refuses now, not in the worker
    return cfg


def title_of(cfg: RunConfig, values: dict[str, Any]) -> str:
    """A run's one-line title for lists: data · small models · LM."""
    source = values.get("data_file") or cfg.data if values.get("source") == "file" else cfg.data
    lm_name = "local stand-in LM" if cfg.lm == "local" else (cfg.lm_model or cfg.lm or "no LM")
    return f"{source} · {' + '.join(cfg.ssm)} · {lm_name}"


def settings_file(cfg: dict[str, Any], run_folder: Path, out: Path) -> Path:
    """The run's settings as a JSON file a user can keep and load again (no key, no server paths)."""
    saved = {k: v for k, v in cfg.items() if k not in _NOT_SAVED}
    data_path = Path(str(saved.get("data", "")))
    if run_folder in data_path.parents:
        saved["data"] = UPLOAD_PREFIX + data_path.name
    out.write_text(json.dumps(saved, indent=2))
    return out


def read_settings(path: str) -> RunConfig:
    """A settings file back as a RunConfig (its data may be ``upload:NAME``: upload it again)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"Not a settings file (JSON expected): {err}.") from None
    return RunConfig.from_dict(raw)


def _preset_of(cfg: RunConfig) -> str:
    try:
        if not cfg.lm_spec(environ={}).is_endpoint:
            return lm.LOCAL
    except ConfigError:  # an unknown preset name: shown as another endpoint
        pass
    url = (cfg.lm_base_url or "").rstrip("/")
    if cfg.lm in PRESETS and (not url or url == PRESETS[cfg.lm].base_url.rstrip("/")):
        return cfg.lm
    for name, p in PRESETS.items():
        if url and url == p.base_url.rstrip("/"):
            return name
    return "openai" if not url else lm.CUSTOM  # another URL: the "other endpoint" choice shows it as it is


def form_from_config(cfg: RunConfig) -> dict[str, Any]:
    """Form values (keyed by `KEYS`) showing `cfg` (data ``upload:NAME``: the owner's file NAME)."""
    demo = next((key for key, (src, _) in data.DEMOS.items() if src == cfg.data), None)
    source = demo or ("file" if cfg.data.startswith(UPLOAD_PREFIX) else "hf")
    head = cfg.ssm_settings.get("head", {})
    fine = cfg.ssm_settings.get("finetune", {})
    prompt = cfg.prompt or {}
    preset = _preset_of(cfg)
    preset_url = PRESETS[preset].base_url if preset in PRESETS else None
    free = cfg.price_in == 0 and cfg.price_out == 0
    return {
        "source": source, "hf_name": cfg.data if source == "hf" else "",
        "data_file": cfg.data[len(UPLOAD_PREFIX):] if source == "file" else None,
        "text_col": cfg.text_col, "pair_col": cfg.text_pair_col or NONE, "label_col": cfg.label_col,
        "split_col": cfg.split_col or NONE, "val_frac": cfg.val_frac, "test_frac": cfg.test_frac,
        "max_train": cfg.max_train or 0, "max_val": cfg.max_val or 0, "max_test": cfg.max_test or 0, "seed": cfg.seed,
        "ssm": list(cfg.ssm), "head_epochs": head.get("epochs", models._default(models.EncoderHeadModel, "epochs")),
        "finetune_epochs": fine.get("epochs", models._default(models.FineTuneModel, "epochs")),
        "max_length": head.get("max_length", fine.get("max_length", models._default(models.FineTuneModel,
                                                                                      "max_length"))),
        "oof_folds": cfg.oof_folds, "mining": cfg.mining, "assm": cfg.assm, "ea_full": cfg.ea_full,
        "calibrate": cfg.calibrate, "max_lm_rate": cfg.max_lm_rate, "probe_lm": cfg.probe_lm,
        "router": cfg.router, "router_labels": cfg.router_labels,
        "preset": preset, "base_url": cfg.lm_base_url or preset_url or "", "model": cfg.lm_model or "",
        # Prices 0 / 0 are the "self-hosted, free" tick (the price boxes stay empty).
        "free": free, "price_in": None if free else cfg.price_in, "price_out": None if free else cfg.price_out,
        "budget_usd": cfg.budget_usd or 0,  # 0 is "no budget", as the box shows when left alone
        "concurrency": cfg.concurrency, "few_shot": cfg.few_shot,
        "prompt_system": prompt.get("system", DEFAULT_SYSTEM),
        "prompt_instruction": prompt.get("instruction", DEFAULT_INSTRUCTION),
        "prompt_input": prompt.get("input_format", DEFAULT_INPUT_FORMAT),
        "prompt_pair": prompt.get("pair_format", DEFAULT_PAIR_FORMAT),
    }


def upload_note(cfg: RunConfig) -> Optional[str]:
    if cfg.data.startswith(UPLOAD_PREFIX):
        return f"These settings used an uploaded file, {cfg.data[len(UPLOAD_PREFIX):]}: upload it again in the Data tab."
    return None
