"""Tampered copies of a good bundle, for tests and a fuzz benchmark.

Each variant is what a broken copy or someone hostile could hand to `predict`: a missing key, a
"NaN" threshold, reversed labels, a truncated safetensors file, a folder that points outside
the bundle... Every one must be refused with a message naming the file (exit 2 from the CLI),
never a traceback, and nothing outside the bundle may be read.

    for name, folder in make_tampered_bundles(good_bundle, tmp / "tampered"):
        ...  # python -m ea_core predict --bundle folder --input ... --no-lm  -> exit 2
    expected_file(name)  # the file the message must name
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

BUNDLE_JSON = "bundle.json"

# name -> the file (or folder) the refusal message must name; filled as variants are made.
_EXPECTED: dict[str, str] = {}


def expected_file(name: str) -> str:
    """The file name a refusal of variant `name` must mention."""
    return _EXPECTED[name]


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / BUNDLE_JSON).read_text())


def _write_meta(folder: Path, meta: Any) -> None:
    (folder / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))


def _first_model_stage(meta: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in meta["stages"] if "folder" in e)


def _model_dir(folder: Path) -> Path:
    return folder / _first_model_stage(_meta(folder))["folder"]


def _model_json(folder: Path) -> dict[str, Any]:
    return json.loads((_model_dir(folder) / "model.json").read_text())


def _weights_file(folder: Path) -> Path:
    return next(p for p in sorted(_model_dir(folder).glob("*.safetensors")))


def _edit_meta(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        meta = _meta(folder)
        out = fn(meta)
        _write_meta(folder, meta if out is None else out)
    return mutate


def _edit_stage(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(meta: dict[str, Any]) -> None:
        fn(_first_model_stage(meta))
    return _edit_meta(edit)


def _edit_model_json(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = _model_dir(folder) / "model.json"
        meta = json.loads(path.read_text())
        fn(meta)
        path.write_text(json.dumps(meta, indent=2))
    return mutate


def _edit_tensors(fn: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        path = _weights_file(folder)
        tensors = load_file(str(path))
        fn(tensors)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return mutate


def _raw_meta_text(old: str, new: str) -> Callable[[Path], None]:
    """Replace text in bundle.json as written (for JSON that `json.dumps` would not write)."""
    def mutate(folder: Path) -> None:
        path = folder / BUNDLE_JSON
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
    return mutate


def _stage_value_text(key: str, value: str) -> Callable[[Path], None]:
    """Set a stage value to raw JSON text such as ``NaN`` or ``1e999`` (json.dumps would refuse)."""
    def mutate(folder: Path) -> None:
        meta = _meta(folder)
        _first_model_stage(meta)[key] = "__VALUE__"
        (folder / BUNDLE_JSON).write_text(json.dumps(meta, indent=2).replace('"__VALUE__"', value))
    return mutate


def _truncate(folder: Path) -> None:
    path = _weights_file(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(folder: Path) -> None:
    _weights_file(folder).write_bytes(os.urandom(4096))


def _outside_copy(folder: Path) -> Path:
    """A copy of the first model next to (outside) the bundle: what an escape would load."""
    target = folder.parent / f"{folder.name}-outside"
    shutil.copytree(_model_dir(folder), target)
    return target


def _folder_to(kind: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        outside = _outside_copy(folder)
        rel = {"parent": f"../{outside.name}", "absolute": str(outside.resolve()),
               "dotdot_inside": f"models/../../{outside.name}"}[kind]
        _edit_stage(lambda st: st.update(folder=rel))(folder)
    return mutate


def _link_model_dir(folder: Path) -> None:
    outside = _outside_copy(folder)
    model = _model_dir(folder)
    shutil.rmtree(model)
    model.symlink_to(outside.resolve(), target_is_directory=True)


def _link_weights(folder: Path) -> None:
    outside = _outside_copy(folder)
    path = _weights_file(folder)
    path.unlink()
    path.symlink_to((outside / path.name).resolve())


def _link_bundle_json(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-outside.json"
    shutil.copy(folder / BUNDLE_JSON, outside)
    (folder / BUNDLE_JSON).unlink()
    (folder / BUNDLE_JSON).symlink_to(outside.resolve())


def _fifo_model_json(folder: Path) -> None:
    path = _model_dir(folder) / "model.json"
    path.unlink()
    os.mkfifo(path)


def _vocab_gap(folder: Path) -> None:
    path = _model_dir(folder) / "tfidf_vocab.json"
    meta = json.loads(path.read_text())
    vocab = meta["vocabularies"][0]
    vocab[next(iter(vocab))] = len(vocab) + 10  # a column number past the end
    path.write_text(json.dumps(meta))


def _shrink(name: str, axis: int) -> Callable[[dict[str, np.ndarray]], None]:
    def fn(t: dict[str, np.ndarray]) -> None:
        t[name] = np.delete(t[name], -1, axis=axis)
    return fn


def _set_nan(name: str) -> Callable[[dict[str, np.ndarray]], None]:
    def fn(t: dict[str, np.ndarray]) -> None:
        t[name] = t[name].copy()
        t[name].flat[0] = np.nan
    return fn


def _drop_last_output(t: dict[str, np.ndarray]) -> None:
    """One output fewer in the head's last linear layer: fewer outputs than labels."""
    last = max(int(k.split(".")[1]) for k in t if k.startswith("head."))
    for part in ("weight", "bias"):
        t[f"head.{last}.{part}"] = np.delete(t[f"head.{last}.{part}"], -1, axis=0)


def _variants(kind: str, has_lm: bool) -> list[tuple[str, str, Callable[[Path], None]]]:
    """(name, file the refusal must name, mutation) for a bundle whose first model is `kind`."""
    variants: list[tuple[str, str, Callable[[Path], None]]] = [
        # bundle.json: keys, types, numbers
        ("not_json", BUNDLE_JSON, _raw_meta_text("{", "{{")),
        ("not_an_object", BUNDLE_JSON, _edit_meta(lambda m: ["a", "list"])),
        ("missing_labels", BUNDLE_JSON, _edit_meta(lambda m: m.pop("labels") and None)),
        ("missing_stages", BUNDLE_JSON, _edit_meta(lambda m: m.pop("stages") and None)),
        ("wrong_format", BUNDLE_JSON, _edit_meta(lambda m: m.update(format="ea-bundle/99"))),
        ("unknown_top_key", BUNDLE_JSON, _edit_meta(lambda m: m.update(run_this="rm -rf ~"))),
        ("labels_not_list", BUNDLE_JSON, _edit_meta(lambda m: m.update(labels=",".join(m["labels"])))),
        ("labels_duplicate", BUNDLE_JSON, _edit_meta(lambda m: m.update(labels=[m["labels"][0]] * len(m["labels"])))),
        ("labels_reversed", "model.json", _edit_meta(lambda m: m.update(labels=m["labels"][::-1]))),
        ("stage_not_object", BUNDLE_JSON, _edit_meta(lambda m: m["stages"].insert(0, "tfidf"))),
        ("stage_missing_threshold", BUNDLE_JSON, _edit_stage(lambda st: st.pop("threshold"))),
        ("stage_missing_folder", BUNDLE_JSON, _edit_stage(lambda st: st.pop("folder"))),
        ("stage_unknown_key", BUNDLE_JSON, _edit_stage(lambda st: st.update(exec="import os"))),
        ("threshold_nan_string", BUNDLE_JSON, _edit_stage(lambda st: st.update(threshold="NaN"))),
        ("threshold_nan_literal", BUNDLE_JSON, _stage_value_text("threshold", "NaN")),
        ("threshold_infinite", BUNDLE_JSON, _stage_value_text("threshold", "1e999")),
        ("threshold_out_of_range", BUNDLE_JSON, _edit_stage(lambda st: st.update(threshold=7.5))),
        ("threshold_negative", BUNDLE_JSON, _edit_stage(lambda st: st.update(threshold=-0.5))),
        ("threshold_bool", BUNDLE_JSON, _edit_stage(lambda st: st.update(threshold=True))),
        ("temperature_zero", BUNDLE_JSON, _edit_stage(lambda st: st.update(temperature=0))),
        ("temperature_negative", BUNDLE_JSON, _edit_stage(lambda st: st.update(temperature=-1.5))),
        ("temperature_infinite", BUNDLE_JSON, _stage_value_text("temperature", "1e999")),
        ("task_not_object", BUNDLE_JSON, _edit_meta(lambda m: m.update(task="tweets"))),
        # paths: every one must stay inside the bundle
        ("folder_parent", BUNDLE_JSON, _folder_to("parent")),
        ("folder_absolute", BUNDLE_JSON, _folder_to("absolute")),
        ("folder_dotdot_inside", BUNDLE_JSON, _folder_to("dotdot_inside")),
        ("folder_missing", BUNDLE_JSON, _edit_stage(lambda st: st.update(folder="models/99"))),
        ("symlink_model_dir", "models", _link_model_dir),
        ("symlink_weights", ".safetensors", _link_weights),
        ("symlink_bundle_json", BUNDLE_JSON, _link_bundle_json),
        ("fifo_model_json", "model.json", _fifo_model_json),
        # the model's own files
        ("model_json_not_json", "model.json", lambda f: (_model_dir(f) / "model.json").write_text("{\"kind\": ")),
        ("model_unknown_kind", "model.json", _edit_model_json(lambda m: m.update(kind="pickle"))),
        ("model_unknown_config_key", "model.json", _edit_model_json(lambda m: m["config"].update(evil=1))),
        ("model_config_bad_value", "model.json", _edit_model_json(lambda m: m["config"].update(seed="x"))),
        ("model_labels_reversed", "model.json", _edit_model_json(lambda m: m.update(labels=m["labels"][::-1]))),
        ("model_labels_missing", "model.json", _edit_model_json(lambda m: m.pop("labels"))),
        ("weights_truncated", ".safetensors", _truncate),
        ("weights_garbage", ".safetensors", _garbage),
        ("weights_missing", ".safetensors", lambda f: _weights_file(f).unlink()),
    ]
    if kind == "tfidf":
        variants += [
            ("tfidf_coef_shape", "tfidf.safetensors", _edit_tensors(_shrink("coef", 1))),
            ("tfidf_coef_rows", "tfidf.safetensors", _edit_tensors(_shrink("coef", 0))),
            ("tfidf_intercept_shape", "tfidf.safetensors", _edit_tensors(_shrink("intercept", 0))),
            ("tfidf_idf_shape", "tfidf.safetensors", _edit_tensors(_shrink("idf_0", 0))),
            ("tfidf_coef_nan", "tfidf.safetensors", _edit_tensors(_set_nan("coef"))),
            ("tfidf_tensor_missing", "tfidf.safetensors", _edit_tensors(lambda t: t.pop("intercept"))),
            ("tfidf_vocab_gap", "tfidf_vocab.json", _vocab_gap),
            ("tfidf_vocab_not_json", "tfidf_vocab.json",
             lambda f: (_model_dir(f) / "tfidf_vocab.json").write_text("[1, 2")),
            ("tfidf_char_ngrams_added", "tfidf_vocab.json",
             _edit_model_json(lambda m: m["config"].update(char_ngrams=[2, 4]))),
        ]
    if kind == "head":
        variants += [
            ("head_mean_shape", "head.safetensors", _edit_tensors(_shrink("mean", 0))),
            ("head_out_rows", "head.safetensors", _edit_tensors(_drop_last_output)),
            ("head_weight_nan", "head.safetensors", _edit_tensors(_set_nan("head.1.weight"))),
            ("head_hidden_mismatch", "head.safetensors", _edit_model_json(lambda m: m["config"].update(hidden=7))),
            ("head_encoder_path", "model.json", _edit_model_json(lambda m: m["config"].update(model="/etc"))),
            ("head_encoder_relative_path", "model.json",
             _edit_model_json(lambda m: m["config"].update(model="../../encoder"))),
        ]
    if has_lm:
        variants += [
            ("lm_settings_missing", BUNDLE_JSON, _edit_meta(lambda m: m.update(lm=None))),
            ("lm_spec_missing", BUNDLE_JSON, _edit_meta(lambda m: m["lm"].pop("spec") and None)),
            ("lm_unknown_key", BUNDLE_JSON, _edit_meta(lambda m: m["lm"].update(headers={"X-Key": "$HOME"}))),
            ("lm_prices_file", BUNDLE_JSON, _edit_meta(lambda m: m["lm"].update(prices="/etc/passwd"))),
            ("lm_offsets_length", BUNDLE_JSON, _edit_meta(lambda m: m["lm"].update(label_offsets=[0.0]))),
            ("lm_prompt_unknown_field", BUNDLE_JSON, _edit_meta(lambda m: m["lm"].update(prompt={"evil": "x"}))),
            ("lm_two_lm_stages", BUNDLE_JSON,
             _edit_meta(lambda m: m["stages"].append({"name": "lm2", "threshold": 0.0, "lm": True}))),
        ]
    return variants


def variant_names(kind: str, has_lm: bool) -> list[str]:
    """The names `make_tampered_bundles` gives for a bundle whose first model is `kind`."""
    return [name for name, _, _ in _variants(kind, has_lm)]


def make_tampered_bundles(good: Path, out: Path) -> list[tuple[str, Path]]:
    """Copy `good` (a bundle folder with at least one small-model stage) once per tampering into
    `out`; return (variant name, bundle folder). Variants that only fit some model kinds (tfidf,
    head) are made when the first model is of that kind; LM variants when the bundle has an LM."""
    good, out = Path(good), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(good)
    kind = json.loads((good / _first_model_stage(meta)["folder"] / "model.json").read_text())["kind"]
    made = []
    for name, file, mutate in _variants(kind, any(e.get("lm") for e in meta["stages"])):
        folder = out / name
        shutil.copytree(good, folder, symlinks=True)
        mutate(folder)
        _EXPECTED[name] = file
        made.append((name, folder))
    return made


def fuzz_cases(folder: Path) -> list:
    """Cases for `bench/bench_fuzz.py`: every tampered variant of a fresh fruit run's bundle (TF-IDF,
    its augmented model and a scripted LM on 127.0.0.1), each through ``predict ... --no-lm``."""
    from bench.bench_fuzz import Case
    from ea_core.runconfig import RunConfig
    from ea_core.runs import execute_run
    from tests.fruit import LABELS, lm_answer, make_task
    from tests.scripted_server import ScriptedServer

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "fruit.csv"
    gold = make_task(data, n=180)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    try:
        cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                        oof_folds=0, concurrency=4, max_lm_rate=0.5, price_in=0.15, price_out=0.6)
        execute_run(cfg, folder / "run", api_key="sk-local")
    finally:
        srv.close()
    inputs = folder / "new.csv"
    inputs.write_text("text\n" + "\n".join(list(gold)[:20]) + "\n")
    good = [Case("bundle:untouched", str(folder / "run" / "bundle"), "the good bundle, as exported", expect="ok",
                 argv=["predict", "--bundle", str(folder / "run" / "bundle"), "--input", str(inputs), "--no-lm",
                       "--output", "{out}/pred.csv"])]
    return good + [Case(f"bundle:{name}", str(path), f"tampered bundle ({expected_file(name)})",
                        argv=["predict", "--bundle", str(path), "--input", str(inputs), "--no-lm",
                              "--output", "{out}/pred.csv"])
                   for name, path in make_tampered_bundles(folder / "run" / "bundle", folder / "tampered")]
