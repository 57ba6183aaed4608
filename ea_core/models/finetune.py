"""``finetune:MODEL`` — full fine-tuning of a Hugging Face sequence classifier.

A custom loop rather than `Trainer`, because on a laptop CPU the time goes into padding: inputs
are tokenised once, batched by similar length (mega-chunks sorted by length, batch order
shuffled) and padded per batch, which does ~40% fewer token-passes than random batches on
tweets. AdamW with linear warmup/decay, gradient clipping, evaluation under
`torch.inference_mode`, early stopping on validation accuracy (or macro-F1: `selection_metric`)
keeping the best weights, mixed precision on GPU only. Saved with `save_pretrained` (safetensors)
plus the tokenizer. ``class_weight`` weights the cross-entropy by scikit-learn's
``compute_class_weight("balanced")`` ("auto": when the training split's largest/smallest class
ratio is at least `imbalance_ratio`; a warm start trains unweighted).

Randomness (the new classifier layer's initial weights, dropout inside the transformer) comes
from torch's global generators, which transformers' models offer no way around: `fit` seeds them
with `seed` inside `torch.random.fork_rng`, so the caller's random state is the same after `fit`
as before, and one fit is reproducible for its seed. Two fine-tunes running at once in threads of
one process still share those generators (their draws interleave, and each restores the state it
saved); run concurrent fine-tunes in separate worker processes when bit-exact reruns matter.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.metrics import SELECTION_METRICS
from ea_core.models.base import SmallModel, damaged, register
from ea_core.models.catalog import resolve_model
from ea_core.models.common import (
    CLASS_WEIGHTS,
    DEFAULT_IMBALANCE_RATIO,
    BestWeights,
    EpochScore,
    Progress,
    check_choice,
    check_training_data,
    check_warm_labels,
    class_weights,
    cross_entropy_np,
    epoch_score,
    resolve_selection_metric,
    softmax_np,
    usable_val,
)
from ea_core.models.hf_common import (
    amp_dtype,
    autocast,
    collate,
    length_grouped_batches,
    load_pretrained,
    load_tokenizer,
    pick_device,
    sorted_batches,
    tokenize_split,
)
from ea_core.models.parallel import Shard, fit_data_parallel, processes_for
from ea_core.process import TRANSFORMERS_BUILD_LOCK, warn_ignored_threads
from ea_core.splits import Split

HF_SUBDIR = "hf"


def _picklable(value: Any) -> bool:
    """Whether `value` can travel to a worker process (a selection rule defined in a function cannot)."""
    import pickle

    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001  (PicklingError, AttributeError, TypeError ...)
        return False
    return True


def _adamw(groups: list[dict[str, Any]], lr: float, device: Any) -> Any:
    """AdamW, fused into one kernel where torch supports it (CPU and CUDA): on a laptop CPU the
    per-tensor loop costs ~20% of a MiniLM step."""
    import torch

    try:
        return torch.optim.AdamW(groups, lr=lr, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=lr)


@contextlib.contextmanager
def _forked_rng(device: Any) -> Iterator[None]:
    """Inside the block torch's global CPU generator (and the training GPU's) may be reseeded
    freely: their states are saved on entry and put back on exit."""
    import torch

    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        yield


def _reseed(seed: int, device: Any) -> None:
    """Seed the generators `_forked_rng` saved (not every GPU's, as `torch.manual_seed` would)."""
    import torch

    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@register
class FineTuneModel(SmallModel):
    """Every weight of a pretrained transformer trained on the task (best accuracy, slowest)."""

    kind = "finetune"

    def __init__(
        self,
        model: str = "minilm",
        *,
        epochs: int = 3,
        lr: float = 5e-5,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_length: int = 128,
        max_batch_tokens: Optional[int] = 1024,
        seed: int = 0,
        patience: int = 2,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.01,
        grad_clip: float = 1.0,
        eval_every: Optional[int] = None,
        warm_start_epochs: Optional[int] = None,
        warm_start_lr: Optional[float] = None,
        device: str = "auto",
        precision: str = "auto",
        threads: Optional[int] = None,
        from_config: Optional[dict[str, Any]] = None,
        class_weight: str = "auto",
        imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
        selection_metric: str = "auto",
        data_parallel: Any = "auto",
    ) -> None:
        self.model = str(model)
        self.data_parallel = data_parallel  # see ea_core.models.parallel
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.max_length = int(max_length)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.seed = int(seed)
        self.patience = int(patience)
        self.warmup_ratio = float(warmup_ratio)
        self.weight_decay = float(weight_decay)
        self.grad_clip = float(grad_clip)
        self.eval_every = None if eval_every is None else int(eval_every)
        self.warm_start_epochs = None if warm_start_epochs is None else int(warm_start_epochs)
        self.warm_start_lr = None if warm_start_lr is None else float(warm_start_lr)
        self.device = device
        self.precision = precision
        self.threads = threads  # kept so saved configs load; see `ea_core.process.configure_process`
        warn_ignored_threads(f"finetune:{self.model}", threads)
        self.from_config = None if from_config is None else dict(from_config)
        self.class_weight = check_choice("class_weight", str(class_weight), CLASS_WEIGHTS)
        self.imbalance_ratio = float(imbalance_ratio)
        self.selection_metric = check_choice("selection_metric", str(selection_metric), SELECTION_METRICS)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise ModelError("finetune needs epochs >= 1, batch_size >= 1, eval_batch_size >= 1, max_length >= 2 "
                             "and lr > 0.")
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        self.best_val_score_: Optional[float] = None  # of `selection_metric_` (accuracy or macro-F1)
        self.class_weight_: Optional[np.ndarray] = None  # per-label loss weights of the last fresh fit
        self.selection_metric_: Optional[str] = None

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.model}"

    # ------------------------------------------------------------------ building

    def _build(self, labels: list[str]) -> None:
        """Fresh classifier with a K-way head: pretrained weights, or random from `from_config`.

        New weights are drawn from torch's global generator: call inside `_forked_rng`."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        resolved = resolve_model(self.model)
        tokenizer = load_tokenizer(self.model, resolved)
        label_kw = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
        if self.from_config is not None:
            cfg = dict(self.from_config)
            model_type = cfg.pop("model_type", None)
            if not model_type:
                raise ModelError("from_config needs a 'model_type' (e.g. 'bert').")
            try:
                config = AutoConfig.for_model(model_type, **cfg, **label_kw)
                with TRANSFORMERS_BUILD_LOCK:  # see `load_pretrained`
                    net = AutoModelForSequenceClassification.from_config(config)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"could not build a {model_type!r} model from from_config: {exc}") from exc
        else:
            net = load_pretrained(
                AutoModelForSequenceClassification, self.model, resolved, ignore_mismatched_sizes=True, **label_kw
            )
        if net.config.pad_token_id is None:
            net.config.pad_token_id = tokenizer.pad_token_id
        self.model_, self.tokenizer_ = net, tokenizer

    # ------------------------------------------------------------------ training

    def fit(
        self,
        train: Split,
        val: Optional[Split],
        labels: list[str],
        *,
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        warm_start: bool = False,
        stage: Optional[str] = None,
        select: Optional[EpochScore] = None,
    ) -> "FineTuneModel":
        check_training_data(labels, train, val)
        warm = warm_start and self.model_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        device = pick_device(self.device)
        processes = processes_for(self.data_parallel, device)
        if processes > 1 and _picklable(select):  # one process per GPU (ea_core.models.parallel)
            return fit_data_parallel(self, train, val, labels, processes, callback=callback, cancel=cancel,
                                     warm_start=warm_start, stage=stage, select=select)
        with _forked_rng(device):  # the caller's random state is untouched by what follows
            return self._fit(train, val, labels, device, warm, callback, cancel, stage, select)

    def _fit_rank(self, train: Split, val: Optional[Split], labels: list[str], shard: Shard, *,
                  callback: Optional[ProgressCallback] = None, warm_start: bool = False,
                  stage: Optional[str] = None, select: Optional[EpochScore] = None) -> "FineTuneModel":
        """`fit` as one process of data-parallel training (`shard`: this process's part)."""
        check_training_data(labels, train, val)
        warm = warm_start and self.model_ is not None
        device = pick_device(self.device)
        with _forked_rng(device):
            return self._fit(train, val, labels, device, warm, callback, None, stage, select, shard=shard)

    def _trained_state(self) -> dict[str, Any]:
        """What a fit learned, to hand from a worker process back to the caller's model."""
        names = ("model_", "tokenizer_", "labels_", "history_", "best_val_accuracy_", "best_val_score_",
                 "class_weight_", "selection_metric_")
        if self.model_ is not None:
            self.model_.to("cpu")
        return {name: getattr(self, name, None) for name in names}

    def _load_trained_state(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _fit(
        self,
        train: Split,
        val: Optional[Split],
        labels: list[str],
        device: Any,
        warm: bool,
        callback: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
        stage: Optional[str],
        select: Optional[EpochScore] = None,
        shard: Optional[Shard] = None,
    ) -> "FineTuneModel":
        import torch
        import torch.nn.functional as F
        from transformers import get_linear_schedule_with_warmup

        if not warm:
            _reseed(self.seed, device)
            self._build(list(labels))
        self.labels_ = list(labels)
        net = self.model_.to(device)
        val = usable_val(val)

        epochs = (self.warm_start_epochs or self.epochs) if warm else self.epochs
        lr = (self.warm_start_lr or self.lr) if warm else self.lr
        feats = tokenize_split(self.tokenizer_, train, self.max_length)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        val_feats = None if val is None else tokenize_split(self.tokenizer_, val, self.max_length)
        y_train = torch.tensor(np.array(train.labels), dtype=torch.long)
        k = len(labels)
        weights = None if warm else class_weights(np.asarray(train.labels), k, self.class_weight, self.imbalance_ratio)
        if not warm:
            self.class_weight_ = weights
            self.selection_metric_ = resolve_selection_metric(self.selection_metric, np.asarray(train.labels), k,
                                                              self.imbalance_ratio)
        metric = self.selection_metric_ or "accuracy"
        loss_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
        steps_per_epoch = math.ceil(len(feats) / self.batch_size)
        total = steps_per_epoch * epochs

        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = _adamw([g for g in groups if g["params"]], lr, device)
        warmup = 0 if warm else int(round(self.warmup_ratio * total))
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        dtype = amp_dtype(device, self.precision)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        # Data-parallel: the model wrapped so that backward sums gradients over the processes
        # (DDP averages: each process's loss is scaled by their number to make it a sum).
        train_net = net if shard is None else shard.accelerator.prepare_model(net)
        world = 1 if shard is None else shard.world

        progress = Progress(stage or f"train:{self.spec}", total, callback, cancel)
        rng = np.random.default_rng(self.seed)
        _reseed(self.seed, device)
        best, step = BestWeights(self.patience), 0
        self.history_ = []
        eval_every = self.eval_every or steps_per_epoch
        running, seen = 0.0, 0
        stop = False
        for epoch in range(epochs):
            for batch_idx in length_grouped_batches(lengths, self.batch_size, rng):
                progress.check()
                train_net.train()
                loss_sum = 0.0
                part, scale = batch_idx, float(world)
                if shard is not None:  # this process's share; with none, a zero loss keeps it in step
                    part = shard.take(batch_idx)
                    if not len(part):
                        part, scale = batch_idx[:1], 0.0
                for micro in self._micro_batches(part, lengths):
                    batch = {k: v.to(device) for k, v in collate([feats[i] for i in micro], self.tokenizer_).items()}
                    target = y_train[micro].to(device)
                    with autocast(device, self.precision):
                        logits = train_net(**batch).logits
                    # sum over the micro-batch / batch size: the gradients add up to the batch mean
                    # (weighted: each example counts its class weight; the batch is not renormalised,
                    # so micro-batches still add up to the same update)
                    loss = F.cross_entropy(logits.float(), target, weight=loss_weight, reduction="sum") \
                        / len(batch_idx) * scale
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    loss_sum += float(loss.detach())
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                running += loss_sum * len(batch_idx)
                seen += len(batch_idx)
                val_acc = None
                if val is not None and (step % eval_every == 0 or step == total):
                    val_logits = self._logits(val_feats, device)
                    val_pred = val_logits.argmax(axis=1)
                    val_acc = float((val_pred == val.labels).mean())
                    val_score = epoch_score(val.labels, val_logits, metric, select)
                    val_loss = cross_entropy_np(val_logits, val.labels)
                    self.history_.append({"step": step, "epoch": epoch + 1, "loss": running / seen,
                                          "val_loss": val_loss, "val_accuracy": val_acc, "val_score": val_score,
                                          "metric": metric})
                    stop = best.update(net, val_score, val_loss)
                progress.emit(step, loss=running / max(seen, 1), val_accuracy=val_acc,
                              message=f"epoch {epoch + 1}/{epochs}")
                if stop:
                    break
            running, seen = 0.0, 0
            if stop:
                break
        self.best_val_score_ = best.restore(net)
        kept = [h for h in self.history_ if h["val_score"] == self.best_val_score_ and h["val_loss"] == best.loss]
        self.best_val_accuracy_ = kept[0]["val_accuracy"] if kept else None
        net.eval()
        return self

    def _micro_batches(self, batch_idx: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Split a batch whose padded size exceeds `max_batch_tokens` (gradients are accumulated,
        so the update is the same): caps activation memory on the few very long batches."""
        padded = int(lengths[batch_idx].max()) * len(batch_idx)
        if not self.max_batch_tokens or padded <= self.max_batch_tokens:
            return [batch_idx]
        parts = min(len(batch_idx), math.ceil(padded / self.max_batch_tokens))
        order = batch_idx[np.argsort(-lengths[batch_idx], kind="stable")]
        return [part for part in np.array_split(order, parts) if len(part)]

    # ------------------------------------------------------------------ inference

    def _logits(self, feats: list[dict[str, list[int]]], device: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """Logits of pre-tokenised inputs, batched longest-first, without autograd."""
        import torch

        net = self.model_
        net.eval()
        out = np.zeros((len(feats), net.config.num_labels), dtype=np.float32)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        with torch.inference_mode():
            for idx in sorted_batches(lengths, batch_size or self.eval_batch_size):
                batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx], self.tokenizer_).items()}
                with autocast(device, self.precision):
                    logits = net(**batch).logits
                out[idx] = logits.float().cpu().numpy()
        return out

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        if self.model_ is None:
            raise ModelError(f"{self.spec} is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        device = pick_device(self.device)
        self.model_.to(device)
        feats = tokenize_split(self.tokenizer_, split, self.max_length)
        return softmax_np(self._logits(feats, device, batch_size))

    # ------------------------------------------------------------------ persistence

    def _save_weights(self, folder: Path) -> None:
        if self.model_ is None:
            raise ModelError(f"{self.spec} is not trained yet: nothing to save.")
        target = folder / HF_SUBDIR
        self.model_.save_pretrained(target)  # safetensors only in transformers 5
        self.tokenizer_.save_pretrained(target)

    def _confine(self, folder: Path, root: Path) -> None:
        """From a bundle: the weights are its own ``hf/`` folder (MODEL is not loaded), and the
        device is chosen on this machine."""
        self.device = "auto"

    def _load_weights(self, folder: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        source = str(folder / HF_SUBDIR)
        self.tokenizer_ = load_tokenizer(source, source)
        self.model_ = load_pretrained(AutoModelForSequenceClassification, source, source)
        self.model_.eval()
        outputs = getattr(self.model_.config, "num_labels", None)
        if outputs != len(self.labels_):
            raise damaged(folder / HF_SUBDIR / "config.json",
                          f"the classifier has {outputs} outputs but model.json lists {len(self.labels_)} labels")
