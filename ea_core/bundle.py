"""Export an adapted system as a self-contained folder, and load it back for prediction.

A bundle holds the stage models (safetensors + JSON), the thresholds, the label list, the
calibration temperatures and the LM settings (model, prompt, few-shot examples, label offsets,
and the endpoint it was exported against, for information; never a key or a URL's userinfo).
Loading a bundle runs no pickled code.

A bundle is data from someone else, so loading treats it as untrusted:

* It never chooses where a request goes or which secret goes with it. The endpoint and the key
  come from the caller (``predict --lm-base-url`` / ``--lm-key-env``, the app's own fields); the
  key variable defaults to the provider's standard one (``OPENAI_API_KEY``, a preset's, none for
  local servers). The recorded endpoint is used only when it is the provider's own URL (OpenAI's
  or a preset's), or when the caller opts in (`trust_endpoint`, ``--trust-bundle-endpoint``);
  otherwise loading stops and shows it. A local LM must be the packaged default (``local``) or a
  Hugging Face id: a path is refused unless the caller names it (`local_model`, ``--lm-local``).
* Every path it names resolves inside its folder, links included, and no file in it is a FIFO or
  device; model settings about this machine (a head's ``cache_dir``, the device) are reset.
* Its labels must equal each model's own labels, in the same order.
* Anything malformed is a ConfigError naming the file, never a traceback.

A learned router's stage (``"router": true``) is a folder with its scorer's numbers and the small
models it reads (`ea_core.learned_router`); it loads like any stage, as one model.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional, Sequence

from ea_core.errors import ConfigError, ModelError
from ea_core.learned_router import LearnedStage, RouterParams, load_learned_stage, save_learned_stage
from ea_core.llm import make_provider
from ea_core.llm.cache import AnswerCache
from ea_core.llm.cost import PriceTable
from ea_core.llm.presets import PRESETS
from ea_core.llm.prompt import example_from_json
from ea_core.llm.spec import LOCAL_IMAGE, LMSpec
from ea_core.llm.urls import strip_userinfo
from ea_core.models import EmbeddingMemory, load_model
from ea_core.models.base import is_hub_id, read_bundle_json
from ea_core.runconfig import prompt_template
from ea_core.runfolder import read_json, write_json
from ea_core.runstate import LEARNED_STAGE
from ea_core.system import AdaptedSystem, SystemStage
from ea_core.tuning import NEVER_TAKES

BUNDLE_FORMAT = "ea-bundle/1"
BUNDLE_JSON = "bundle.json"

_TOP_KEYS = {"format", "labels", "stages", "lm", "task", "metrics"}
_STAGE_KEYS = {"name", "threshold", "folder", "temperature", "lm", "router"}
# key_env: written by older exports; read, never used.
_LM_KEYS = {"spec", "model", "base_url", "key_env", "describe", "few_shot_examples", "prompt", "label_offsets",
            "prices"}
_TASK_KEYS = {"name", "pair", "text_col", "pair_col", "modality"}


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
    model) and `temperature`; the LM stage has no folder; a learned router's stage has `router` (its
    scorer's numbers) and `models` (the saved small models it reads, best first). `lm`: settings to rebuild the provider
    (keys and URL userinfo are dropped). The result is checked as a loader would check it."""
    out = Path(out_dir)
    entries = []
    for i, st in enumerate(stages):
        entry = {"name": st["name"], "threshold": float(st["threshold"])}
        if st.get("router") is not None:
            entry.update(folder=f"models/{i:02d}", temperature=1.0, router=True)
        elif st.get("folder"):
            entry.update(folder=f"models/{i:02d}", temperature=float(st.get("temperature", 1.0)))
        else:
            entry["lm"] = True
        entries.append(entry)
    if any(e.get("lm") for e in entries) and not lm:
        raise ConfigError("A bundle with an LM stage needs the LM settings.")
    meta = {"format": BUNDLE_FORMAT, "labels": list(labels), "stages": entries, "lm": _without_secrets(lm),
            "task": task or {}, "metrics": metrics or {}}
    check_bundle_meta(meta, out / BUNDLE_JSON)
    if out.exists():
        if any(out.iterdir()) and not (out / BUNDLE_JSON).is_file():
            raise ConfigError(f"{out} exists and is not a bundle: choose an empty or new folder to export to.")
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    for st, entry in zip(stages, entries):
        if entry.get("router"):
            save_learned_stage(out / entry["folder"], labels, st["router"], st["models"], shutil.copytree)
        elif "folder" in entry:
            shutil.copytree(st["folder"], out / entry["folder"])
    write_json(out / BUNDLE_JSON, meta)
    return out


def _without_secrets(lm: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The LM settings with no key, no key variable name, and no userinfo in any URL."""
    if lm is None:
        return None

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return strip_userinfo(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if "key" not in str(k).lower()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(lm)


# ----------------------------------------------------------------------------------- checking


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: {why}. The bundle is damaged or was edited: export it again.")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def check_bundle_meta(meta: Any, path: Path) -> dict[str, Any]:
    """`meta` (a parsed bundle.json) if it is well formed, else a ConfigError naming `path`:
    keys, types, finite thresholds in [0, NEVER_TAKES], positive temperatures, distinct labels."""
    if not isinstance(meta, dict):
        raise _bad(path, "not a JSON object")
    missing = sorted({"format", "labels", "stages"} - set(meta))
    if missing:
        raise _bad(path, f"missing key(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(meta) - _TOP_KEYS)
    if unknown:
        raise _bad(path, f"unknown key(s) {', '.join(map(repr, unknown))}")
    if meta["format"] != BUNDLE_FORMAT:
        raise ConfigError(f"{path}: unsupported bundle format {meta['format']!r} (expected {BUNDLE_FORMAT}).")
    labels = meta["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise _bad(path, "'labels' must be a list of at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise _bad(path, "'labels' lists a label twice")
    stages = meta["stages"]
    if not isinstance(stages, list) or not stages:
        raise _bad(path, "'stages' must be a non-empty list")
    names = set()
    for i, e in enumerate(stages):
        where = f"stage {i + 1}"
        if not isinstance(e, dict):
            raise _bad(path, f"{where} is not an object")
        missing = sorted({"name", "threshold"} - set(e))
        unknown = sorted(set(e) - _STAGE_KEYS)
        if missing or unknown:
            raise _bad(path, f"{where}: " + "; ".join(
                ([f"missing key(s) {', '.join(map(repr, missing))}"] if missing else []) +
                ([f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else [])))
        if not isinstance(e["name"], str) or not e["name"].strip() or e["name"] in names:
            raise _bad(path, f"{where}: 'name' must be a non-empty string, distinct from the other stages'")
        names.add(e["name"])
        thr = e["threshold"]
        if not _is_number(thr) or not 0.0 <= thr <= NEVER_TAKES:
            raise _bad(path, f"{where} ({e['name']}): 'threshold' must be a number from 0 to {NEVER_TAKES}, "
                             f"not {thr!r}")
        if "lm" in e:
            if e["lm"] is not True or "folder" in e or "temperature" in e:
                raise _bad(path, f"{where} ({e['name']}): an LM stage has 'lm': true and no folder or temperature")
        else:
            if "folder" not in e or "temperature" not in e:
                raise _bad(path, f"{where} ({e['name']}): a model stage needs 'folder' and 'temperature'")
            if not isinstance(e["folder"], str) or not e["folder"].strip():
                raise _bad(path, f"{where} ({e['name']}): 'folder' must be a relative path inside the bundle")
            if not _is_number(e["temperature"]) or e["temperature"] <= 0:
                raise _bad(path, f"{where} ({e['name']}): 'temperature' must be a positive number, "
                                 f"not {e['temperature']!r}")
            if "router" in e and (e["router"] is not True or e["temperature"] != 1.0):
                raise _bad(path, f"{where} ({e['name']}): a learned router's stage has 'router': true and "
                                 "temperature 1")
    n_lm = sum(1 for e in stages if e.get("lm"))
    if n_lm > 1:
        raise _bad(path, "more than one LM stage")
    lm = meta.get("lm")
    if n_lm and not isinstance(lm, dict):
        raise _bad(path, "an LM stage needs the 'lm' settings object")
    if lm is not None:
        _check_lm(lm, labels, path)
    task = meta.get("task", {})
    if not isinstance(task, dict) or set(task) - _TASK_KEYS:
        raise _bad(path, f"'task' must be an object with only {', '.join(sorted(_TASK_KEYS))}")
    if not all(_optional_str(task.get(k)) for k in ("name", "text_col", "pair_col")) \
            or task.get("pair") not in (None, True, False) or task.get("modality") not in (None, "text", "pair", "image"):
        raise _bad(path, "'task': name, text_col and pair_col are strings, pair is true or false, modality is "
                         "text, pair or image")
    if not isinstance(meta.get("metrics", {}), dict):
        raise _bad(path, "'metrics' must be an object")
    return meta


def _is_image_json(value: Any) -> bool:
    """A few-shot image as `ea_core.llm.prompt.image_to_json` writes it: valid base64 and a name."""
    import base64
    import binascii

    if not (isinstance(value, dict) and set(value) <= {"image_base64", "name"} and _optional_str(value.get("name"))
            and isinstance(value.get("image_base64"), str)):
        return False
    try:
        base64.b64decode(value["image_base64"], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_lm(lm: Any, labels: list[str], path: Path) -> None:
    if not isinstance(lm, dict):
        raise _bad(path, "'lm' must be an object")
    unknown = sorted(set(lm) - _LM_KEYS)
    if unknown:
        raise _bad(path, f"'lm': unknown key(s) {', '.join(map(repr, unknown))}")
    if not isinstance(lm.get("spec"), str) or not lm["spec"].strip():
        raise _bad(path, "'lm.spec' must name the LM provider (e.g. 'openai', 'local')")
    for key in ("model", "base_url", "key_env"):
        if not _optional_str(lm.get(key)):
            raise _bad(path, f"'lm.{key}' must be a string")
    if not isinstance(lm.get("describe") or {}, dict):
        raise _bad(path, "'lm.describe' must be an object")
    examples = lm.get("few_shot_examples")
    if examples is not None and not (isinstance(examples, list) and all(
            isinstance(x, list) and len(x) == 3 and _optional_str(x[1]) and isinstance(x[2], str)
            and (isinstance(x[0], str) or _is_image_json(x[0]))
            for x in examples)):
        raise _bad(path, "'lm.few_shot_examples' must be a list of [text or image, pair or null, label]")
    offsets = lm.get("label_offsets")
    if offsets is not None and not (isinstance(offsets, list) and len(offsets) == len(labels)
                                    and all(_is_number(x) for x in offsets)):
        raise _bad(path, "'lm.label_offsets' must be one finite number per label")
    prompt = lm.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, dict) or not all(
                isinstance(v, str) for k, v in prompt.items() if k not in ("examples", "max_input_chars")):
            raise _bad(path, "'lm.prompt' must be an object of template texts")
        chars = prompt.get("max_input_chars", 1)
        if type(chars) is not int or chars < 1:
            raise _bad(path, "'lm.prompt.max_input_chars' must be a positive whole number")
        try:
            prompt_template(prompt)
        except (ConfigError, TypeError, ValueError, IndexError, KeyError) as err:
            raise _bad(path, f"'lm.prompt': {err}") from None
    prices = lm.get("prices")
    if prices is not None:
        if not isinstance(prices, dict):
            raise _bad(path, "'lm.prices' must be an object of model -> [input, output] USD per 1M tokens")
        try:
            table = PriceTable(prices, defaults=False).to_dict()
        except (ConfigError, TypeError, ValueError) as err:
            raise _bad(path, f"'lm.prices': {err}") from None
        if not all(math.isfinite(x) for p in table.values() for x in p.values()):
            raise _bad(path, "'lm.prices' must be finite numbers")


def _refuse_outside(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: {why}; a bundle may only use files inside its own folder: refused.")


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a link loop
        raise _refuse_outside(path, f"cannot be resolved ({err})") from None


def check_bundle_files(root: Path) -> None:
    """Every link under the bundle points inside it and every file is a regular file: a model
    file linked to ``~/.ssh/...`` would be read as part of the bundle, and a FIFO would hang."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = _resolve(path)
                if not target.is_relative_to(root):
                    raise _refuse_outside(path, f"a link to {target}, outside the bundle folder {root}")
            if name in filenames:
                try:
                    mode = os.stat(path).st_mode
                except OSError as err:
                    raise _refuse_outside(path, f"cannot be read ({err.strerror})") from None
                if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                    raise ConfigError(f"{path}: not a regular file (a FIFO, socket or device): refused.")


def bundle_path(root: Path, rel: Any, where: Path, what: str) -> Path:
    """`root / rel` with links resolved, refused unless it stays strictly inside `root`."""
    if not isinstance(rel, str) or not rel.strip():
        raise _bad(where, f"{what} must be a relative path inside the bundle")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise _refuse_outside(where, f"{what} {rel!r} is an absolute path")
    target = _resolve(root / rel)
    if target == root or not target.is_relative_to(root):
        raise _refuse_outside(where, f"{what} {rel!r} resolves to {target}, outside the bundle folder {root}")
    return target


def _root(folder: str | Path) -> Path:
    root = Path(folder)
    if not (root / BUNDLE_JSON).is_file():
        raise ConfigError(f"{folder} is not an EA bundle (no {BUNDLE_JSON}). Export one with "
                          "`python -m ea_core run ... --out DIR` (it writes DIR/bundle).")
    root = _resolve(root)
    check_bundle_files(root)
    return root


def read_bundle_meta(folder: str | Path) -> dict[str, Any]:
    """bundle.json of a bundle folder, checked (see `check_bundle_meta`), or a clear error."""
    root = _root(folder)
    path = root / BUNDLE_JSON
    meta = read_bundle_json(path)  # the strict reader every bundle file goes through (no NaN, named errors)
    meta = check_bundle_meta(meta, path)
    lm = meta.get("lm")
    if lm and lm.get("base_url"):  # shown to people: never with a secret in it
        lm["base_url"] = strip_userinfo(lm["base_url"])
    return meta


# ----------------------------------------------------------------------------------- the LM


def _same_url(a: Optional[str], b: Optional[str]) -> bool:
    return bool(a and b) and a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


@dataclass(frozen=True)
class BundleLM:
    """How a loaded bundle's LM stage will be called: what the caller chose, plus the bundle's
    own record of its endpoint, kept only to be shown."""

    spec: str  # for `make_provider`; ``local:ID`` for a local model
    model: Optional[str]
    base_url: Optional[str]  # None for an in-process LM
    key_env: str  # "" sends no key
    recorded_url: Optional[str] = None

    def describe(self) -> str:
        """One line for the person running `predict`: where the LM is called, with which key."""
        if self.base_url is None:
            return f"LM stage: {self.spec} (in process, no endpoint, no key)."
        key = f"key from ${self.key_env}" if self.key_env else "no key"
        line = f"LM stage: model {self.model or '(default)'} at {self.base_url} ({key})."
        if self.recorded_url and not _same_url(self.recorded_url, self.base_url):
            line += f" The bundle was exported against {self.recorded_url} (not used)."
        return line


def plan_bundle_lm(lm: dict[str, Any], *, where: Path, base_url: Optional[str] = None,
                   key_env: Optional[str] = None, trust_endpoint: bool = False,
                   local_model: Optional[str] = None) -> BundleLM:
    """Decide where a bundle's LM is called (see the module docstring); ConfigError when the bundle
    recorded an endpoint of its own and the caller named none."""
    spec = lm["spec"].strip()
    try:
        parsed = LMSpec.parse(spec, model=lm.get("model"), base_url=lm.get("base_url"), key_env="", environ={})
    except ConfigError as err:
        raise ConfigError(f"{where}: 'lm.spec' {spec!r}: {err}") from None
    recorded = parsed.given_url
    if parsed.is_local:
        if base_url:
            raise ConfigError(f"{where}: this bundle's LM runs in process ({spec}): an endpoint URL does not apply; "
                              "drop --lm-base-url (or pass --lm-local PATH_OR_ID to choose the local model).")
        if local_model:
            return BundleLM(f"local:{local_model.strip()}", None, None, "")
        if parsed.kind == LOCAL_IMAGE:
            return BundleLM(parsed.spec, None, None, "")
        named = parsed.model
        if named is None:
            return BundleLM("local", None, None, "")
        if is_hub_id(named) and not named.lower().endswith(".gguf"):
            return BundleLM(f"local:{named}", None, None, "")
        raise ConfigError(f"{where}: the bundle's local LM is {named!r}, a path on some machine; a bundle may name "
                          "only a Hugging Face id or the packaged default ('local'). To load that model, name it "
                          "yourself: --lm-local PATH_OR_ID (or --no-lm to skip the LM).")
    if local_model:
        raise ConfigError(f"{where}: this bundle's LM is an API ({spec}), not a local model: drop --lm-local.")
    preset = PRESETS[parsed.preset] if parsed.preset else None
    own_url = (preset or PRESETS["openai"]).base_url
    standard_env = "OPENAI_API_KEY" if preset is None else (preset.key_env or "")
    if base_url:
        url = LMSpec.parse(spec, base_url=base_url, key_env="", environ={}).given_url
    elif recorded is None or _same_url(recorded, own_url):
        url = own_url
    elif trust_endpoint:
        url = recorded
    else:
        raise ConfigError(
            f"{where}: this bundle was exported against {recorded}; a bundle never chooses where your key is sent. "
            f"To call its LM, pass --lm-base-url {recorded} (or another endpoint serving "
            f"{lm.get('model') or 'its model'}), or --trust-bundle-endpoint if you trust who made it; "
            "or --no-lm to let the last small model answer.")
    return BundleLM(spec, lm.get("model"), url, standard_env if key_env is None else key_env, recorded)


def bundle_lm_is_local(meta: dict[str, Any]) -> bool:
    """Whether a bundle's LM stage runs in process (a local model), by its recorded spec."""
    try:
        return LMSpec.parse(str((meta.get("lm") or {}).get("spec") or ""), environ={}).is_local
    except ConfigError:
        return False


def make_lm_provider(lm: dict[str, Any], labels: list[str], plan: BundleLM, *, api_key: Optional[str],
                     cache_path: Optional[str], options: Optional[dict[str, Any]] = None):
    """The LM as it was during the run (prompt, few-shot examples, label calibration), called
    where `plan` says; `options` go to `make_provider` (a server's budget, retries, timeout)."""
    cache = AnswerCache(Path(cache_path)) if cache_path else None
    examples = [example_from_json(x) for x in lm["few_shot_examples"]] if lm.get("few_shot_examples") else None
    provider = make_provider(plan.spec, model=plan.model, base_url=plan.base_url, key_env=plan.key_env,
                             api_key=api_key, cache=cache, few_shot_examples=examples,
                             prompt=prompt_template(lm.get("prompt")), prices=lm.get("prices"), **(options or {}))
    if lm.get("label_offsets") and hasattr(provider, "set_label_offsets"):
        provider.set_label_offsets(labels, lm["label_offsets"])
    return provider


# ----------------------------------------------------------------------------------- loading


def load_bundle(folder: str | Path, *, api_key: Optional[str] = None, cache_path: Optional[str] = None,
                use_lm: bool = True, key_env: Optional[str] = None, base_url: Optional[str] = None,
                trust_endpoint: bool = False, local_model: Optional[str] = None,
                lm_options: Optional[dict[str, Any]] = None) -> AdaptedSystem:
    """Rebuild the adapted system from an untrusted bundle folder (see the module docstring).

    The LM stage is called at `base_url` with the key `api_key` or the one in `key_env` (default:
    the provider's standard variable); the bundle's own endpoint only with `trust_endpoint`.
    With `use_lm=False`, the LM stage is dropped and the last small model answers whatever reaches
    it (offline use; say so to the user). `lm_options` go to the LM provider (`make_provider`:
    e.g. ``budget``, ``max_retries``, ``timeout_s`` for a server).
    """
    root = _root(folder)
    path = root / BUNDLE_JSON
    meta = read_bundle_meta(root)
    labels = meta["labels"]
    has_lm = use_lm and any(e.get("lm") for e in meta["stages"])
    plan = None
    if has_lm:
        # The caller's own URL may carry their key: split out there, used in memory only.
        api_key = LMSpec.parse("openai", base_url=base_url, api_key=api_key, key_env="", environ={}).key
        plan = plan_bundle_lm(meta["lm"], where=path, base_url=base_url, key_env=key_env,
                              trust_endpoint=trust_endpoint, local_model=local_model)
    stages: list[SystemStage] = []
    memory = EmbeddingMemory()  # the system's own: a later stage reuses what an earlier one embedded
    for i, e in enumerate(meta["stages"]):
        if e.get("lm"):
            if use_lm:
                stages.append(SystemStage(name=e["name"], threshold=float(e["threshold"])))
            continue
        model_dir = bundle_path(root, e["folder"], path, f"stage {e['name']!r} folder")
        if not model_dir.is_dir():
            raise _bad(path, f"stage {e['name']!r}: folder {e['folder']!r} does not exist in the bundle")
        try:
            model = (load_learned_stage(model_dir, labels, root=root, memory=memory) if e.get("router") else
                     load_model(model_dir, root=root, memory=memory))
        except ModelError as err:
            raise ConfigError(f"Bundle stage {e['name']!r}: {err}") from None
        if list(model.labels_) != labels:
            raise ConfigError(f"{model_dir / 'model.json'}: the model's labels {list(model.labels_)} differ from "
                              f"the labels {labels} in {path}; its answers would be mislabelled: refused. "
                              "The bundle is damaged or was edited: export it again.")
        stages.append(SystemStage(name=e["name"], threshold=float(e["threshold"]), model=model,
                                  temperature=float(e["temperature"])))
    provider = None
    if plan is not None:
        provider = make_lm_provider(meta["lm"], labels, plan, api_key=api_key, cache_path=cache_path,
                                    options=lm_options)
    return AdaptedSystem(labels, stages, provider)


def run_lm_settings(state) -> dict[str, Any]:
    """The run's LM as a bundle records it: enough to rebuild the same provider, never the key."""
    cfg = state.config
    return {"spec": cfg.lm, "model": cfg.lm_model,
            "base_url": cfg.lm_spec(environ={}).given_url,
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
        elif name == LEARNED_STAGE:
            entries.append(_learned_entry(state, float(thr)))
        else:
            entries.append({"name": name, "threshold": float(thr), "folder": records[name].folder / "model",
                            "temperature": state.temperatures.get(name, 1.0) if calibrated else 1.0})
    return entries


def _learned_entry(state, threshold: float) -> dict[str, Any]:
    """The run's learned router as a stage entry: its scorer (saved by the run) and every small model."""
    path = state.folder.path("learned_router.json")
    info = read_json(path) if path.is_file() else None
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict):
        raise ConfigError("This run's learned router was saved without its scorer (a run made before routers could "
                          "be exported): run it again in a new folder to export or try it.")
    return {"name": LEARNED_STAGE, "threshold": threshold, "router": info["model"],
            "models": [r.folder / "model" for r in state.ssms], "temperature": 1.0}


def default_system(rows: Sequence[dict[str, Any]]) -> str:
    """The routed system a run exports unless told otherwise: the learned router (``ea_learned``,
    `run --router learned`) where the evidence does not put it behind the cascade
    (`report.learned_vs_cascade`), else ``ea``, else ``specific_layer`` (no LM)."""
    by_name = {r["system"]: r for r in rows}
    if by_name.get("ea_learned", {}).get("beats_cascade"):
        return "ea_learned"
    return "ea" if "ea" in by_name else "specific_layer"


def export_run_bundle(state, rows: list[dict[str, Any]], out_dir: str | Path, system: Optional[str] = None,
                      thresholds: Optional[Sequence[float]] = None, layers: Optional[Sequence[str]] = None,
                      calibrated: bool = True) -> Path:
    """Export a run's cascade as a bundle: `system` (default `default_system`) at its thresholds
    tuned on validation, or any `layers` at given `thresholds` (the app's sliders)."""
    by_name = {r["system"]: r for r in rows}
    if thresholds is None:
        system = system or default_system(rows)
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
            "pair_col": state.task.pair_col, "modality": state.task.modality}
    return export_bundle(out_dir, labels=state.task.labels, stages=stages, lm=lm, task=task, metrics=metrics)


def system_from_run(state, thresholds: Sequence[float], layers: Sequence[str] = ("ssm", "assm", "lm"), *,
                    api_key: Optional[str] = None, use_lm: bool = True, calibrated: bool = True,
                    provider: Any = None) -> AdaptedSystem:
    """The adapted system of a run at any thresholds (the app's sliders), answering live inputs.

    The LM stage uses the run's LM settings and its answer cache (answers the run paid for are free);
    `api_key` is needed only for an API LM and only lives in the returned provider's memory.
    With `use_lm=False` the LM stage is dropped and the last small model answers the rest.
    """
    stages: list[SystemStage] = []
    memory = EmbeddingMemory()  # the system's own: a later stage reuses what an earlier one embedded
    for st in run_stage_entries(state, layers, thresholds, calibrated):
        if st.get("router") is not None:
            models = [load_model(folder, memory=memory) for folder in st["models"]]
            params = RouterParams.from_json(st["router"], str(state.folder.path("learned_router.json")))
            stages.append(SystemStage(name=st["name"], threshold=st["threshold"],
                                      model=LearnedStage(state.task.labels, models, params)))
        elif st.get("folder") is None:
            if use_lm:
                stages.append(SystemStage(name=st["name"], threshold=st["threshold"]))
        else:
            stages.append(SystemStage(name=st["name"], threshold=st["threshold"],
                                      model=load_model(st["folder"], memory=memory), temperature=st["temperature"]))
    if use_lm and provider is None and any(s.is_lm for s in stages):
        cfg = state.config
        # The user's own run: its endpoint and key variable are the user's choice, unlike a bundle's.
        spec = cfg.lm_spec(api_key, environ={})  # the key pasted, or the one in the URL (memory only)
        plan = BundleLM(cfg.lm, cfg.lm_model, spec.given_url, cfg.lm_key_env or "OPENAI_API_KEY")
        provider = make_lm_provider(run_lm_settings(state), state.task.labels, plan,
                                    api_key=spec.key,
                                    cache_path=str(cfg.cache_path(state.folder.root)))
    return AdaptedSystem(state.task.labels, stages, provider if use_lm else None)
