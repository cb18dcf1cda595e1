"""The compact training loop: mixed precision, exact gradient accumulation, checkpoints that resume exactly,
early stopping, and DDP under ``torchrun``.

    config = TrainConfig(amp=True, accumulation_steps=4, clip_grad_norm=1.0, checkpoint_dir="runs/cnn",
                         metrics=("loss", "accuracy"), seed=0)
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), 1e-3), torch.nn.CrossEntropyLoss(),
                      config=config)
    result = trainer.fit(train_loader, epochs=10, val_loader=val_loader)
    print(trainer.evaluate(test_loader))

One optimizer step takes ``accumulation_steps`` micro-batches (fewer at the end of an epoch). The steps of
one optimizer step, each for a reason:
1. scale each micro-batch's mean loss by its share of the step's samples, so the accumulated gradient is
   the full-batch gradient even when the last micro-batch is short (the criterion must average over samples,
   PyTorch's default ``reduction="mean"``);
2. under DDP, skip the gradient all-reduce on all but the last micro-batch (``no_sync``);
3. unscale fp16 gradients before clipping, so the clip threshold applies to the true gradient norm;
4. step the scheduler once per optimizer step, and not when the fp16 scaler skipped a step on inf/NaN.

Batches are ``(inputs, targets)``; inputs are a tensor, a tuple of tensors (``model(*inputs)``) or a dict
(``model(**inputs)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from onnxkit.pytorch.train_batches import Metric, accuracy, forward, groups, metric_functions, sample_count, to_device
from onnxkit.pytorch.train_progress import step_progress, total_steps
from onnxkit.pytorch.train_setup import (
    Placement,
    all_reduce_sum,
    init_distributed,
    loader_generators,
    place,
    rng_state,
    seed_everything,
    set_rng_state,
)

AmpMode = Literal["bf16", "fp16"]
CHECKPOINT_FORMAT = 1

# What users import from here; the helpers live in train_setup and train_batches.
__all__ = [
    "FitResult",
    "Metric",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "init_distributed",
    "seed_everything",
]


@dataclasses.dataclass
class StepRecord:
    """One optimizer step, as the ``on_step`` hook sees it. Values are read from the device only on access."""

    step: int
    epoch: int
    samples: int
    lr: float
    loss_tensor: torch.Tensor
    grad_norm_tensor: torch.Tensor | None

    @property
    def loss(self) -> float:
        """The step's mean loss over its samples (under DDP: over this rank's, when ranks get equal shares)."""
        return self.loss_tensor.item()

    @property
    def grad_norm(self) -> float | None:
        """The total gradient norm before clipping, when clipping is on."""
        return None if self.grad_norm_tensor is None else self.grad_norm_tensor.item()


@dataclasses.dataclass
class FitResult:
    steps: int
    epochs_completed: int
    history: list[dict[str, float]]  # one record per evaluation: step, epoch and the metrics
    best: dict[str, float] | None
    stopped_early: bool
    best_checkpoint: Path | None
    last_checkpoint: Path | None


@dataclasses.dataclass
class _State:
    """Everything besides model, optimizer, scheduler and scaler that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of the current epoch already trained on
    best_value: float | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    epoch_rng: dict[str, Any] | None = None  # generator states at the start of the epoch: reproduce its order


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: every setting of a run, recorded in its checkpoints.

    ``amp``: False, True (bf16 autocast on CPU, fp16 with a GradScaler on CUDA), or "bf16"/"fp16".
    ``eval_every``: evaluate every N optimizer steps (default: at the end of each epoch).
    ``monitor`` names the metric that decides the best checkpoint and early stopping, minimised when its
    name contains "loss", else maximised; ``patience`` evaluations without an improvement of more than
    ``min_delta`` stop the run. ``checkpoint_dir`` receives ``last.pt`` at every evaluation and at the end,
    and ``best.pt``. ``progress``: a progress bar (default when stderr is a terminal) or a log line every
    ``log_every`` steps. ``notes``: anything else to record in the checkpoints (hyperparameters, data).
    """

    amp: bool | AmpMode = False
    accumulation_steps: int = 1
    clip_grad_norm: float | None = None
    device: str | torch.device | None = None
    eval_every: int | None = None
    metrics: Sequence[str] | Mapping[str, Metric] = ("loss",)
    monitor: str = "loss"
    patience: int | None = None
    min_delta: float = 0.0
    checkpoint_dir: str | os.PathLike[str] | None = None
    seed: int | None = None
    progress: bool | None = None
    log_every: int = 50
    notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.accumulation_steps < 1:
            raise ValueError("accumulation_steps must be at least 1")


class Trainer:
    """Train a model with the steps above; evaluate it; checkpoint it; resume it.

    ``config`` (a ``TrainConfig``) says how. ``log`` receives the log lines (default: stderr);
    ``on_step(trainer, record)`` and ``on_eval(trainer, record)`` run after each step and evaluation; setting
    ``trainer.should_stop = True`` ends the run. Under ``torchrun``, ``distribute()`` joins the process group
    and wraps the model in DistributedDataParallel; ``fit``, ``evaluate`` and the checkpoint methods call it
    first, so call it yourself only to reach the wrapped ``trainer.model`` before training.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[Any, Any], torch.Tensor],
        scheduler: Any = None,
        *,
        config: TrainConfig | None = None,
        log: Callable[[str], None] | None = None,
        on_step: Callable[[Trainer, StepRecord], None] | None = None,
        on_eval: Callable[[Trainer, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config = config or TrainConfig()
        self.device = (
            torch.device(config.device)
            if config.device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.module = model
        self.model: nn.Module = model  # DistributedDataParallel(model) once distributed over several processes
        self.rank, self.world_size = 0, 1
        self._placement: Placement | None = None
        self.optimizer, self.criterion, self.scheduler = optimizer, criterion, scheduler

        amp = config.amp
        if amp is True:
            amp = "fp16" if self.device.type == "cuda" else "bf16"
        self.amp_dtype = {False: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        # bf16 keeps fp32's exponent range, so only fp16 needs loss scaling.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.accumulation_steps, self.clip_grad_norm = config.accumulation_steps, config.clip_grad_norm
        self.eval_every, self.metrics, self.monitor = config.eval_every, config.metrics, config.monitor
        self.minimize = "loss" in config.monitor
        self.patience, self.min_delta = config.patience, config.min_delta
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
        self.seed = config.seed
        self.progress = config.progress
        self.log_every = config.log_every
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.on_step, self.on_eval = on_step, on_eval
        # What a checkpoint records of the run, to warn when a resumed run differs.
        self.record: dict[str, Any] = {
            "amp": amp or None,
            "accumulation_steps": config.accumulation_steps,
            "clip_grad_norm": config.clip_grad_norm,
            "eval_every": config.eval_every,
            "monitor": config.monitor,
            "patience": config.patience,
            "min_delta": config.min_delta,
            "seed": config.seed,
            "world_size": 1,
            "optimizer": type(optimizer).__name__,
            "scheduler": type(scheduler).__name__ if scheduler is not None else None,
            **dict(config.notes),
        }
        self.state = _State()
        self.should_stop = False
        self._resume_rng: dict[str, Any] | None = None
        self._loader_generators: list[torch.Generator] = []

    def _ddp(self) -> nn.parallel.DistributedDataParallel:
        assert isinstance(self.model, nn.parallel.DistributedDataParallel), "distribute() wraps the model first"
        return self.model

    def distribute(self) -> Trainer:
        """Place the model: join the process group under ``torchrun``, move the model to this rank's device,
        and wrap it in DistributedDataParallel when there is more than one process. Runs once."""
        if self._placement is not None:
            return self
        self._placement = placement = place(self.device)
        self.device, self.rank, self.world_size = placement.device, placement.rank, placement.world_size
        self.module.to(self.device)  # moves parameters in place, so the optimizer still holds them
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        self.record["world_size"] = self.world_size
        return self

    # -- training ----------------------------------------------------------------------------------------

    def fit(
        self,
        train_loader: Iterable[Any],
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        val_loader: Iterable[Any] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` epochs or ``max_steps`` optimizer steps, whichever comes first.

        ``resume_from`` continues from a checkpoint exactly where it stopped: same data order, same random
        draws, same results as a run that was never interrupted (single process; under DDP the
        other ranks' random streams restart from rank 0's).
        """
        if epochs is None and max_steps is None:
            raise ValueError("give epochs or max_steps")
        self.distribute()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.seed is not None:
            seed_everything(self.seed)
        self.should_stop = False
        self._loader_generators = loader_generators(train_loader)
        self.record.update(epochs=epochs, max_steps=max_steps)
        total = total_steps(train_loader, epochs, max_steps, self.accumulation_steps)
        bar = self.progress if self.progress is not None else sys.stderr.isatty()
        log = self.log if self.rank == 0 else None  # one rank shows the run
        with step_progress(total, self.state.step, bar=bar, log=log, log_every=self.log_every) as advance:
            while (
                not self.should_stop
                and (epochs is None or self.state.epoch < epochs)
                and (max_steps is None or self.state.step < max_steps)
            ):
                if self._train_epoch(train_loader, max_steps, val_loader, advance):
                    self.state.epoch += 1
                    self.state.batches_done = 0
                    if val_loader is not None and self.eval_every is None:
                        self._evaluate_and_checkpoint(val_loader)
        last_eval = self.state.history[-1]["step"] if self.state.history else None
        if val_loader is not None and last_eval != self.state.step:
            self._evaluate_and_checkpoint(val_loader)
        elif val_loader is None and self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir / "last.pt")
        return self._result()

    def _train_epoch(
        self,
        loader: Iterable[Any],
        max_steps: int | None,
        val_loader: Iterable[Any] | None,
        advance: Callable[[StepRecord], None],
    ) -> bool:
        """Train on the rest of the current epoch; True if it reached the epoch's end."""
        generators = self._loader_generators
        if self.state.batches_done:  # resuming mid-epoch: replay the epoch's shuffle, then skip what was done
            set_rng_state(self.state.epoch_rng, generators)
        else:
            self.state.epoch_rng = rng_state(generators)
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:  # DistributedSampler reshuffles per epoch only when told the epoch
            set_epoch(self.state.epoch)
        batches = iter(loader)
        if self.state.batches_done:
            for _ in itertools.islice(batches, self.state.batches_done):
                pass
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng, generators)
            self._resume_rng = None
        self.model.train()
        for group in groups(batches, self.accumulation_steps):
            record = self._optimizer_step(group)
            self.state.batches_done += len(group)
            advance(record)
            if self.on_step is not None:
                self.on_step(self, record)
            if val_loader is not None and self.eval_every and self.state.step % self.eval_every == 0:
                self._evaluate_and_checkpoint(val_loader)
            if self.should_stop or (max_steps is not None and self.state.step >= max_steps):
                return False
        return True

    def _optimizer_step(self, group: list[Any]) -> StepRecord:
        group = [to_device(batch, self.device) for batch in group]
        counts = [sample_count(targets) for _, targets in group]
        total = sum(counts)
        if self.world_size > 1:  # DDP averages gradients over ranks; weigh by the global sample count
            global_total = torch.tensor(total, dtype=torch.int64, device=self.device)
            all_reduce_sum(global_total)
            total = int(global_total.item())
        step_loss = torch.zeros((), device=self.device)
        for index, ((inputs, targets), count) in enumerate(zip(group, counts)):
            last = index == len(group) - 1
            # no_sync exists once distribute() has wrapped the model (world_size > 1)
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self._ddp().no_sync()
            with sync:
                with self._autocast():
                    loss = self.criterion(forward(self.model, inputs), targets) * (count * self.world_size / total)
                self.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
        grad_norm = None
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_grad_norm)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        skipped = scale_before is not None and self.scaler.get_scale() < scale_before
        if self.scheduler is not None and not skipped:
            self.scheduler.step()
        self.state.step += 1
        return StepRecord(
            step=self.state.step,
            epoch=self.state.epoch,
            samples=sum(counts),
            lr=self.optimizer.param_groups[0]["lr"],
            loss_tensor=step_loss,
            grad_norm_tensor=grad_norm,
        )

    # -- evaluation ---------------------------------------------------------------------------------------

    def evaluate(
        self, loader: Iterable[Any], metrics: Sequence[str] | Mapping[str, Metric] | None = None
    ) -> dict[str, float]:
        """Sample-weighted means of ``metrics`` over ``loader``, in eval mode under no_grad.

        Metrics are names ("loss": the criterion, "accuracy": argmax against class targets) or a mapping of
        names to ``fn(outputs, targets) -> batch mean``. Under DDP the sums are reduced over all ranks.
        """
        self.distribute()
        functions = metric_functions(metrics if metrics is not None else self.metrics, self.criterion)
        sums = torch.zeros(len(functions) + 1, dtype=torch.float64, device=self.device)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    inputs, targets = to_device(batch, self.device)
                    with self._autocast():
                        # The plain module, not DDP's wrapper: its forward would add collectives per batch.
                        outputs = forward(self.module, inputs)
                    count = sample_count(targets)
                    for index, function in enumerate(functions.values()):
                        sums[index] += float(function(outputs, targets)) * count
                    sums[-1] += count
        finally:
            self.module.train(was_training)
        if self.world_size > 1:
            all_reduce_sum(sums)
        if sums[-1] == 0:
            raise ValueError("the evaluation loader yielded no samples")
        return {name: (sums[index] / sums[-1]).item() for index, name in enumerate(functions)}

    def _evaluate_and_checkpoint(self, val_loader: Iterable[Any]) -> None:
        metrics = self.evaluate(val_loader)
        if self.monitor not in metrics:
            raise ValueError(f"monitor '{self.monitor}' is not among the metrics {list(metrics)}")
        value, best = metrics[self.monitor], self.state.best_value
        improved = best is None or (value < best - self.min_delta if self.minimize else value > best + self.min_delta)
        if improved:
            self.state.best_value = value
            self.state.evals_without_improvement = 0
        else:
            self.state.evals_without_improvement += 1
        record = {"step": self.state.step, "epoch": self.state.epoch, **metrics}
        self.state.history.append(record)
        if self.rank == 0:
            text = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            self.log(f"eval at step {self.state.step}: {text}{' (best)' if improved else ''}")
        if self.patience is not None and self.state.evals_without_improvement >= self.patience:
            self.should_stop = True
            if self.rank == 0:
                self.log(f"early stop: no improvement of {self.monitor} in {self.patience} evaluations")
        if self.on_eval is not None:
            self.on_eval(self, record)
        if self.checkpoint_dir is not None:
            last = self.save_checkpoint(self.checkpoint_dir / "last.pt")
            if improved and last is not None:
                shutil.copyfile(last, self.checkpoint_dir / "best.pt")

    # -- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Write model, optimizer, scheduler, scaler, step, generator states and config (rank 0 only).
        Written to a temporary file and renamed, so an interrupted save never leaves a broken checkpoint.
        Everything in it loads with ``torch.load(weights_only=True)``."""
        self.distribute()
        if self.rank != 0:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "rng": rng_state(self._loader_generators),
            "config": self.record,
        }
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, temporary)
        os.replace(temporary, path)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore everything ``save_checkpoint`` wrote; the generator states are applied when training
        resumes, after the interrupted epoch's batches have been replayed."""
        self.distribute()
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint["scheduler"] is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = _State(**checkpoint["state"])
        self._resume_rng = checkpoint["rng"]
        changed = [
            key
            for key in ("amp", "accumulation_steps", "clip_grad_norm", "world_size")
            if checkpoint["config"].get(key) != self.record.get(key)
        ]
        if changed and self.rank == 0:
            self.log(
                f"warning: resuming with different {', '.join(changed)} than the checkpoint; "
                "the run will not match an uninterrupted one"
            )

    # -- helpers ------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _result(self) -> FitResult:
        history = self.state.history
        scored = [r for r in history if self.monitor in r]
        pick = min if self.minimize else max
        best = pick(scored, key=lambda r: r[self.monitor]) if scored else None
        directory = self.checkpoint_dir
        return FitResult(
            steps=self.state.step,
            epochs_completed=self.state.epoch,
            history=list(history),
            best=best,
            stopped_early=self.should_stop,
            best_checkpoint=directory / "best.pt" if directory and (directory / "best.pt").exists() else None,
            last_checkpoint=directory / "last.pt" if directory and (directory / "last.pt").exists() else None,
        )
