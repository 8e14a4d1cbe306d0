"""Training loop ``fit``: validation each epoch, best weights, resume, early stopping.

``fit`` writes to ``out_dir``: ``metrics.csv`` (a row per epoch), ``best.safetensors``
(trainable weights of the best epoch by the monitored value), ``checkpoint.pt`` (resume
state, end of each epoch) and, when enabled, ``tensorboard/``. The train loader yields
``(inputs, targets)``; inputs are a tensor or a nested dict of tensors, passed as
``model(inputs)``.

Speed options (`TrainSettings`): bf16/fp16 autocast on CUDA, ``compile``
(``torch.compile`` of the forward; parameters, names and checkpoints are the model's own),
``channels_last``; timm's fused scaled-dot-product attention is switched on. Under
``accelerate launch`` the model is wrapped for gradient averaging
(`medpeft.train.distributed`) and only the main process writes. ``FitResult.timing``
holds the seconds spent waiting for data, computing, evaluating and checkpointing.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from medpeft.errors import ConfigError, DataError, TrainingError
from medpeft.mixed_precision import autocast
from medpeft.tasks import check_task
from medpeft.train import distributed
from medpeft.train.checkpoint import (
    Progress,
    load_checkpoint,
    load_trainable_file,
    save_checkpoint,
    save_trainable,
    seed_everything,
)
from medpeft.train.evaluation import evaluate, logits_of, to_device
from medpeft.train.files import BEST, CHECKPOINT
from medpeft.train.losses import build_loss
from medpeft.train.runlog import RunLog
from medpeft.train.schedules import build_optimizer, build_scheduler
from medpeft.train.settings import TrainSettings, autocast_dtype, training_device

AuxLoss = Callable[[nn.Module], "torch.Tensor | None"]
Objective = Callable[[Any, torch.Tensor], torch.Tensor]  # (model outputs, targets) -> loss


@dataclass
class FitResult:
    """Per-epoch history rows, the best epoch (0-based; None if none improved) and its row;
    ``timing``: seconds over all epochs (``data_s`` waiting for batches, ``compute_s``,
    ``eval_s``, ``checkpoint_s``), also those before a resume."""

    history: list[dict[str, float]]
    best_epoch: int | None
    best_metrics: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class _Parts:
    """What one optimizer step needs."""

    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    def resumable(self) -> tuple:
        """The parts a checkpoint saves and restores: optimizer, scheduler, scaler."""
        return self.optimizer, self.scheduler, self.scaler


def _build_parts(
    model: nn.Module, task: str, settings: TrainSettings, device: torch.device, steps_per_epoch: int
) -> _Parts:
    """Loss, optimizer, per-step scheduler and GradScaler for a run."""
    s = settings
    total = steps_per_epoch * s.epochs
    warmup = round(s.warmup * steps_per_epoch) if s.warmup else round(s.warmup_fraction * total)
    optimizer = build_optimizer(model, s.optimizer, s.lr, s.weight_decay, s.momentum, s.betas)
    fp16 = device.type == "cuda" and autocast_dtype(s) is torch.float16
    return _Parts(
        loss_fn=build_loss(task, s.label_smoothing),
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, s.schedule, total, min(warmup, total), s.min_lr,
            round(s.cycle_epochs * steps_per_epoch), s.cycle_decay,
        ),
        scaler=torch.amp.GradScaler("cuda", enabled=fp16),
    )


def fit(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    task: str,
    settings: TrainSettings,
    out_dir: str | Path,
    class_names: list[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    aux_loss: AuxLoss | None = None,
    objective: Objective | None = None,
    positive: int = 1,
) -> FitResult:
    """Train the model's trainable parameters, validating each epoch; end with the best weights.

    ``aux_loss(model)`` (a method's auxiliary loss, e.g. a router balancing term) is
    added to the task loss after every training forward when it returns a tensor.
    ``objective(outputs, targets)`` replaces the task loss for models whose outputs
    carry more than logits (early intervention); evaluation reads ``outputs.logits``.
    ``positive`` is the index of a two-class task's positive class in the validation metrics.

    With ``resume`` and ``out_dir/checkpoint.pt`` present, training continues
    after the last completed epoch with the saved optimizer, scheduler, scaler
    and RNG states, so an interrupted run ends as an uninterrupted one would.

    Raises:
        ConfigError: bad task or monitor name. DataError: an empty loader.
    """
    check_task(task)
    if len(train_loader) == 0:
        raise DataError("train_loader yields no batches")
    run = _Run(model, task, settings, Path(out_dir), class_names, progress, len(train_loader))
    run.aux_loss, run.objective, run.positive = aux_loss, objective, positive
    if resume and run.checkpoint_path.exists():
        run.state = load_checkpoint(run.checkpoint_path, model, *run.parts.resumable())
    log = (
        RunLog(run.out_dir, settings.tensorboard, purge_step=run.state.global_step or None)
        if distributed.is_main() else _NoLog()
    )
    try:
        while run.state.epoch < settings.epochs and not run.stopped_early():
            run.epoch(train_loader, val_loader, log)
    finally:
        log.close()
    distributed.barrier()  # the main process has written best.safetensors
    distributed.release()
    if run.state.best_epoch is not None:
        load_trainable_file(model, run.out_dir / BEST)
    best = next((row for row in run.state.history if row["epoch"] == run.state.best_epoch), {})
    return FitResult(run.state.history, run.state.best_epoch, dict(best), dict(run.state.timing))


class _NoLog:
    """The run log of a process that writes nothing (all but the main process)."""

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        """Nothing."""

    def epochs(self, history: list[dict], step: int) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


class _Run:
    """State of one ``fit`` call: model, settings, device, optimizer parts and progress."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        settings: TrainSettings,
        out_dir: Path,
        class_names: list[str] | None,
        progress: bool,
        num_batches: int,
    ) -> None:
        if distributed.is_main():
            out_dir.mkdir(parents=True, exist_ok=True)
        self.model, self.task, self.settings, self.out_dir = model, task, settings, out_dir
        self.class_names, self.progress = class_names, progress
        self.aux_loss: AuxLoss | None = None
        self.objective: Objective | None = None
        self.positive = 1
        self.checkpoint_path = out_dir / CHECKPOINT
        self.device = training_device(settings)
        self.dtype = autocast_dtype(settings)
        self.state = Progress()
        seed_everything(settings.seed)
        model.to(self.device)
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        use_fused_attention(model)
        # Forward passes go through these; parameters, names and checkpoints stay the model's.
        self.train_net = _compiled(distributed.wrap_model(model), settings.compile)
        self.eval_net = _compiled(model, settings.compile)
        steps_per_epoch = math.ceil(num_batches / settings.grad_accum_steps)
        self.parts = _build_parts(model, task, settings, self.device, steps_per_epoch)

    def stopped_early(self) -> bool:
        """Whether early stopping has triggered (also in a resumed run)."""
        patience = self.settings.patience
        return patience is not None and self.state.bad_epochs >= patience

    def epoch(self, train_loader: Any, val_loader: Any, log: RunLog) -> None:
        """Train one epoch, validate, keep the best weights, checkpoint and log."""
        state, settings = self.state, self.settings
        reseed_loader(train_loader, settings.seed, state.epoch)
        train_loss = self.train_epoch(train_loader, log)
        start = time.perf_counter()
        val = evaluate(
            self.eval_net, val_loader, self.task, self.class_names, self.progress, self.dtype,
            positive=self.positive,
        )
        self.add_time("eval_s", time.perf_counter() - start)
        start = time.perf_counter()
        lr = self.parts.optimizer.param_groups[0]["lr"]
        row = {"epoch": state.epoch, "train_loss": train_loss, "val_loss": val.loss, "lr": lr}
        row.update(val.metrics)
        state.history.append(row)
        self.track_best(row)
        state.epoch += 1
        if distributed.is_main():
            save_checkpoint(self.checkpoint_path, self.model, *self.parts.resumable(), state)
        log.epochs(state.history, state.global_step)
        self.add_time("checkpoint_s", time.perf_counter() - start)
        if self.progress:
            tqdm.write(
                f"epoch {row['epoch']}: train_loss {train_loss:.4f}  val_loss {val.loss:.4f}  "
                f"{settings.monitor} {row[settings.monitor]:.4f}  best epoch {state.best_epoch}"
            )

    def train_epoch(self, loader: Any, log: RunLog) -> float:
        """One pass with gradient accumulation; returns the mean training loss per sample."""
        model, parts, state = self.model, self.parts, self.state
        model.train()
        parts.optimizer.zero_grad(set_to_none=True)
        accum, num_batches = self.settings.grad_accum_steps, len(loader)
        total_loss, total_count = torch.zeros((), device=self.device), 0
        bar = tqdm(loader, total=num_batches, desc=f"epoch {state.epoch}", leave=False,
                   disable=not self.progress)
        start = fetched = time.perf_counter()
        waited = 0.0
        for index, (inputs, targets) in enumerate(bar):
            waited += time.perf_counter() - fetched
            group_start = index - index % accum
            group_size = min(accum, num_batches - group_start)
            last_of_group = index + 1 == group_start + group_size
            targets = to_device(targets, self.device)
            inputs = to_device(inputs, self.device)
            if self.settings.channels_last:
                inputs = to_channels_last(inputs)
            with _no_sync(self.train_net, last_of_group):
                with autocast(self.device, self.dtype):
                    outputs = self.train_net(inputs)
                if self.objective is not None:
                    loss = self.objective(outputs, targets)
                else:
                    loss = parts.loss_fn(logits_of(outputs).float(), targets)
                extra = self.aux_loss(model) if self.aux_loss is not None else None
                if extra is not None:
                    loss = loss + extra.float()
                if not torch.isfinite(loss):
                    raise_diverged(loss, state.epoch, index, inputs, parts.optimizer)
                parts.scaler.scale(loss / group_size).backward()
            total_loss += loss.detach() * len(targets)
            total_count += len(targets)
            if last_of_group:
                _optimizer_step(model, parts, self.settings.max_grad_norm)
                state.global_step += 1
                if state.global_step % self.settings.log_every == 0:
                    self.log_step(bar, log, loss.item())
            fetched = time.perf_counter()
        loss_sum, count = distributed.all_sum([total_loss.item(), total_count])
        self.add_time("data_s", waited)
        self.add_time("compute_s", time.perf_counter() - start - waited)
        return loss_sum / max(count, 1)

    def add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to the run's ``timing[key]``."""
        self.state.timing[key] = self.state.timing.get(key, 0.0) + seconds

    def log_step(self, bar: Any, log: RunLog, loss: float) -> None:
        """Show the latest loss and lr on the progress bar and in TensorBoard."""
        lr = self.parts.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log.scalars({"loss": loss, "lr": lr}, self.state.global_step, prefix="train")

    def track_best(self, row: dict) -> None:
        """Save the trainable weights if ``row`` improves the monitor, else count patience."""
        settings, state = self.settings, self.state
        if settings.monitor not in row:
            raise ConfigError(
                f"train.monitor: {settings.monitor!r} is not a validation value; "
                f"have {sorted(row)}"
            )
        value = float(row[settings.monitor])
        if _improves(value, state.best_value, settings.monitor_mode):
            state.best_value, state.best_epoch, state.bad_epochs = value, state.epoch, 0
            meta = {"epoch": str(state.epoch), "monitor": settings.monitor, "value": repr(value)}
            if distributed.is_main():
                save_trainable(self.model, self.out_dir / BEST, meta)
        else:
            state.bad_epochs += 1


def raise_diverged(
    loss: torch.Tensor, epoch: int, batch: int, inputs: Any, optimizer: torch.optim.Optimizer
) -> None:
    """Stop training with the epoch, batch and samples where the loss became NaN or infinite."""
    samples = inputs.get("samples", []) if isinstance(inputs, dict) else []
    shown = ", ".join(samples[:3]) + (f" and {len(samples) - 3} more" if len(samples) > 3 else "")
    lr = optimizer.param_groups[0]["lr"]
    raise TrainingError(
        f"the loss is {loss.item()} at epoch {epoch}, batch {batch}"
        + (f" (samples {shown})" if shown else "")
        + f"; training diverged: lower train.lr (now {lr:g}) or check these inputs. "
        "The last finished epoch's checkpoint is kept"
    )


def reseed_loader(loader: Any, seed: int, epoch: int) -> None:
    """Seed the loader's shuffling/sampling generator for ``epoch``.

    The order of every epoch (and the seeds of its worker processes, drawn from the
    same generator) then depends on ``(seed, epoch)`` only, so a run resumed after
    any interruption replays exactly the epochs an uninterrupted run would.
    """
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed * 1_000_003 + epoch)


def use_fused_attention(model: nn.Module) -> None:
    """Switch timm attention layers to fused scaled-dot-product attention (FlashAttention /
    memory-efficient kernels on GPU); timm turns it off only when ``TIMM_FUSED_ATTN=0``."""
    for module in model.modules():
        if getattr(module, "fused_attn", None) is False:
            module.fused_attn = True


def to_channels_last(obj: Any) -> Any:
    """Image batches (4-D floating tensors, also inside dicts) in channels-last layout."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 4 and obj.is_floating_point():
            return obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {key: to_channels_last(value) for key, value in obj.items()}
    return obj


def _compiled(net: nn.Module, compile_model: bool) -> nn.Module:
    """``torch.compile(net)`` when asked (it shares ``net``'s parameters), else ``net``."""
    return torch.compile(net) if compile_model else net


def _no_sync(net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce of a distributed model on micro-batches that accumulate."""
    if sync or not distributed.is_distributed() or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()


def _optimizer_step(model: nn.Module, parts: _Parts, max_grad_norm: float | None) -> None:
    """Clip (optional), step the optimizer through the scaler, advance the schedule."""
    if max_grad_norm is not None:
        parts.scaler.unscale_(parts.optimizer)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()


def _improves(value: float, best: float | None, mode: str) -> bool:
    """Whether a finite ``value`` beats ``best`` (any finite value beats None)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


