"""Export an adapted system as a self-contained folder, and load it back for prediction.

A bundle holds the stage models (safetensors + JSON), the thresholds, the label list, the
calibration temperatures and the LM settings (endpoint, model, prompt; never the API key, which
is read from the environment variable named in the bundle when the LM is needed). Loading a
bundle runs no pickled code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from ea_core.errors import ConfigError
from ea_core.runfolder import read_json, write_json
from ea_core.system import AdaptedSystem, SystemStage

BUNDLE_FORMAT = "ea-bundle/1"
BUNDLE_JSON = "bundle.json"


def export_bundle(
    out_dir: str | Path,
    *,
    labels: list[str],
    stages: list[dict[str, Any]],
    lm: Optional[dict[str, Any]] = None,
    task: Optional[dict[str, Any]] = None,
    metrics: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a bundle. `stages`: dicts with name, threshold, and for small models `folder` (a saved
    model) and `temperature`; the LM stage has no folder. `lm`: settings to rebuild the provider."""
    out = Path(out_dir)
    if out.exists():
        if any(out.iterdir()) and not (out / BUNDLE_JSON).is_file():
            raise ConfigError(f"{out} exists and is not a bundle: choose an empty or new folder to export to.")
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    entries = []
    for i, st in enumerate(stages):
        entry = {"name": st["name"], "threshold": float(st["threshold"])}
        if st.get("folder"):
            rel = f"models/{i:02d}"
            shutil.copytree(st["folder"], out / rel)
            entry.update(folder=rel, temperature=float(st.get("temperature", 1.0)))
        else:
            entry["lm"] = True
        entries.append(entry)
    if any(e.get("lm") for e in entries) and not lm:
        raise ConfigError("A bundle with an LM stage needs the LM settings.")
    write_json(out / BUNDLE_JSON, {"format": BUNDLE_FORMAT, "labels": labels, "stages": entries,
                                   "lm": _without_secrets(lm), "task": task or {}, "metrics": metrics or {}})
    return out


def _without_secrets(lm: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if lm is None:
        return None
    return {k: v for k, v in lm.items() if "key" not in k.lower() or k == "key_env"}


def load_bundle(folder: str | Path, *, api_key: Optional[str] = None, cache_path: Optional[str] = None,
                use_lm: bool = True, key_env: Optional[str] = None) -> AdaptedSystem:
    """Rebuild the adapted system. With `use_lm=False`, the LM stage is dropped and the last small
    model answers whatever reaches it (offline use; say so to the user)."""
    from ea_core.models import load_model

    folder = Path(folder)
    path = folder / BUNDLE_JSON
    meta = read_bundle_meta(folder)
    if meta.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{path}: unsupported bundle format {meta.get('format')!r} (expected {BUNDLE_FORMAT}).")
    stages: list[SystemStage] = []
    for e in meta["stages"]:
        if e.get("lm"):
            if use_lm:
                stages.append(SystemStage(name=e["name"], threshold=e["threshold"]))
        else:
            stages.append(SystemStage(name=e["name"], threshold=e["threshold"],
                                      model=load_model(folder / e["folder"]), temperature=e["temperature"]))
    provider = None
    if any(s.is_lm for s in stages):
        provider = make_bundle_provider(meta["lm"], meta["labels"], api_key=api_key, cache_path=cache_path,
                                        key_env=key_env)
    return AdaptedSystem(meta["labels"], stages, provider)


def read_bundle_meta(folder: str | Path) -> dict[str, Any]:
    """bundle.json of a bundle folder, or a clear error."""
    path = Path(folder) / BUNDLE_JSON
    if not path.is_file():
        raise ConfigError(f"{folder} is not an EA bundle (no {BUNDLE_JSON}). Export one with "
                          "`python -m ea_core run ... --out DIR` (it writes DIR/bundle).")
    try:
        meta = read_json(path)
        meta["labels"], meta["stages"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is damaged ({err}); export the bundle again.") from None
    return meta


def make_bundle_provider(lm: dict[str, Any], labels: list[str], *, api_key: Optional[str],
                         cache_path: Optional[str], key_env: Optional[str] = None):
    """The LM as it was during the run: same endpoint, prompt, few-shot examples, label calibration."""
    from ea_core.llm import make_provider
    from ea_core.llm.cache import AnswerCache
    from ea_core.pipeline import prompt_template

    cache = AnswerCache(Path(cache_path)) if cache_path else None
    examples = [tuple(x) for x in lm["few_shot_examples"]] if lm.get("few_shot_examples") else None
    provider = make_provider(lm["spec"], model=lm.get("model"), base_url=lm.get("base_url"),
                             key_env=key_env or lm.get("key_env") or "OPENAI_API_KEY", api_key=api_key,
                             cache=cache, few_shot_examples=examples, prompt=prompt_template(lm.get("prompt")),
                             prices=lm.get("prices"))
    if lm.get("label_offsets") and hasattr(provider, "set_label_offsets"):
        provider.set_label_offsets(labels, lm["label_offsets"])
    return provider


def run_lm_settings(state) -> dict[str, Any]:
    """The run's LM as a bundle records it: enough to rebuild the same provider, never the key."""
    cfg = state.config
    return {"spec": cfg.lm, "model": cfg.lm_model, "base_url": cfg.lm_base_url, "key_env": cfg.lm_key_env,
            "describe": state.lm_describe, "few_shot_examples": state.lm_few_shot, "prompt": cfg.prompt,
            "label_offsets": state.lm_label_offsets, "prices": cfg.prices()}


def run_stage_entries(state, layers: Sequence[str], thresholds: Sequence[float],
                      calibrated: bool = True) -> list[dict[str, Any]]:
    """A run's stages for `layers` with one threshold each: what `export_bundle` takes."""
    names = state.stage_names(tuple(layers))
    if len(names) != len(thresholds):
        raise ConfigError(f"Got {len(thresholds)} threshold(s) for {len(names)} stage(s) ({', '.join(names)}).")
    records = state.records()
    entries: list[dict[str, Any]] = []
    for name, thr in zip(names, thresholds):
        if name == "lm":
            entries.append({"name": "lm", "threshold": float(thr)})
        else:
            entries.append({"name": name, "threshold": float(thr), "folder": records[name].folder / "model",
                            "temperature": state.temperatures.get(name, 1.0) if calibrated else 1.0})
    return entries


def export_run_bundle(state, rows: list[dict[str, Any]], out_dir: str | Path, system: Optional[str] = None,
                      thresholds: Optional[Sequence[float]] = None, layers: Optional[Sequence[str]] = None,
                      calibrated: bool = True) -> Path:
    """Export a run's cascade as a bundle: `system` (default ``ea`` if trained, else
    ``specific_layer``) at its thresholds tuned on validation, or any `layers` at given `thresholds`
    (the app's sliders)."""
    by_name = {r["system"]: r for r in rows}
    if thresholds is None:
        system = system or ("ea" if "ea" in by_name else "specific_layer")
        if system not in state.tuning:
            raise ConfigError(f"No routed system {system!r} in this run; have: {', '.join(state.tuning) or 'none'}.")
        layers, thresholds = state.tuning[system]["layers"], state.tuning[system]["thresholds"]
        metrics = {k: v for k, v in by_name.get(system, {}).items() if k != "thresholds"}
    else:
        layers = layers or ("ssm", "assm", "lm")
        metrics = {"system": system or "custom", "note": "thresholds chosen in the app"}
    stages = run_stage_entries(state, layers, thresholds, calibrated)
    lm = run_lm_settings(state) if any(st["name"] == "lm" for st in stages) else None
    task = {"name": state.task.name, "pair": state.task.is_pair, "text_col": state.task.text_col,
            "pair_col": state.task.pair_col}
    return export_bundle(out_dir, labels=state.task.labels, stages=stages, lm=lm, task=task, metrics=metrics)


def system_from_run(state, thresholds: Sequence[float], layers: Sequence[str] = ("ssm", "assm", "lm"), *,
                    api_key: Optional[str] = None, use_lm: bool = True, calibrated: bool = True,
                    provider: Any = None) -> AdaptedSystem:
    """The adapted system of a run at any thresholds (the app's sliders), answering live inputs.

    The LM stage uses the run's LM settings and its answer cache (answers the run paid for are free);
    `api_key` is needed only for an API LM and only lives in the returned provider's memory.
    With `use_lm=False` the LM stage is dropped and the last small model answers the rest.
    """
    from ea_core.models import load_model

    stages: list[SystemStage] = []
    for st in run_stage_entries(state, layers, thresholds, calibrated):
        if st.get("folder") is None:
            if use_lm:
                stages.append(SystemStage(name=st["name"], threshold=st["threshold"]))
        else:
            stages.append(SystemStage(name=st["name"], threshold=st["threshold"], model=load_model(st["folder"]),
                                      temperature=st["temperature"]))
    if use_lm and provider is None and any(s.is_lm for s in stages):
        cache = state.config.cache_path(state.folder.root)
        provider = make_bundle_provider(run_lm_settings(state), state.task.labels, api_key=api_key,
                                        cache_path=str(cache))
    return AdaptedSystem(state.task.labels, stages, provider if use_lm else None)
