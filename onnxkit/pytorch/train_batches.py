"""Batches as the training loop sees them: micro-batches grouped into optimizer steps, moved to the device,
fed to the model (a tensor, a tuple or a dict of inputs), counted, and scored by the named metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of samples whose highest score is the target class."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def groups(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Micro-batches in groups of ``size``; the last group of an epoch may be smaller."""
    while group := list(itertools.islice(batches, size)):
        yield group


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def forward(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def sample_count(targets: Any) -> int:
    if isinstance(targets, torch.Tensor):
        return targets.shape[0]
    if isinstance(targets, Mapping):
        return sample_count(next(iter(targets.values())))
    return sample_count(targets[0])


def metric_functions(
    metrics: Sequence[str] | Mapping[str, Metric], criterion: Callable[[Any, Any], torch.Tensor]
) -> dict[str, Metric]:
    if isinstance(metrics, Mapping):
        return dict(metrics)

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # At least fp32 even under autocast, so reported losses do not carry bf16/fp16 rounding.
        return criterion(outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs, targets)

    named: dict[str, Metric] = {"loss": loss, "accuracy": accuracy}
    unknown = [name for name in metrics if name not in named]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; named metrics are {list(named)}, or pass a mapping")
    return {name: named[name] for name in metrics}


# ---------------------------------------------------------------------------------------------------------
# Generator states, in a form torch.load(weights_only=True) accepts
