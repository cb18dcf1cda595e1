"""What a training process sets up around the loop: seeds, the generator states that make a resumed run exact,
and its place in a ``torchrun`` world (rank, world size, device)."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1) and return (rank, world size);
    (0, 1) otherwise. Call it before building a ``DistributedSampler``; the Trainer calls it too."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this process trains: its device, its rank and the world size (1 outside ``torchrun``)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1


def place(device: torch.device) -> Placement:
    """Join the process group when started by ``torchrun`` and choose this rank's device (``LOCAL_RANK``'s
    GPU under CUDA)."""
    rank, world_size = init_distributed("nccl" if device.type == "cuda" else "gloo")
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Placement(device, rank, world_size)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """Generators a DataLoader shuffles with besides the global one: its own and its sampler's."""
    candidates = [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]
    unique = {id(g): g for g in candidates if isinstance(g, torch.Generator)}
    return list(unique.values())


def rng_state(generators: Sequence[torch.Generator]) -> dict[str, Any]:
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": [g.get_state() for g in generators],
    }


def set_rng_state(state: Mapping[str, Any] | None, generators: Sequence[torch.Generator]) -> None:
    if state is None:
        return
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].cpu().numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for generator, generator_state in zip(generators, state["loader"]):
        generator.set_state(generator_state.cpu())
