"""What a training process sets up around the loop: seeds, the generator states that make a resumed run exact,
and its place in a ``torchrun`` world (rank, world size, device)."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
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


_RELEASE_WAIT_SECONDS = 5.0


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over all ranks in place, and return only once the backend has let go of it.

    Gloo runs a collective on its own worker thread, which drops its references to the tensor a moment
    after the caller wakes. While C++ holds a tensor made in Python, the tensor holds its Python object, and
    the last C++ reference gives that back under the GIL. When the collective is a script's last one (an
    evaluation just before the end), the main thread may already be finalizing the interpreter: the worker
    cannot take the GIL, exits inside a destructor, and the rank aborts after its work is done ("terminate
    called without an active exception", SIGABRT). ``destroy_process_group`` does not prevent it:
    DistributedDataParallel keeps the group, and so its threads, alive until exit. So wait until both
    counts are back where they were: the worker has released the tensor and given back its Python object."""
    before = _references(tensor)
    dist.all_reduce(tensor)
    if dist.get_backend() != "gloo":  # NCCL's watchdog may hold finished work until its next poll: not waited
        return
    # Bounded: a reference someone else took meanwhile (a hook keeping the tensor) must not hang training; past
    # the deadline the worst left is the abort at exit this wait exists to avoid.
    deadline = time.monotonic() + _RELEASE_WAIT_SECONDS
    while any(now > then for now, then in zip(_references(tensor), before)) and time.monotonic() < deadline:
        time.sleep(0.0001)  # releases the GIL, which the worker needs to give the Python object back


def _references(tensor: torch.Tensor) -> tuple[int, int]:
    """C++ references to the tensor, and references to its Python object (one of them held by C++)."""
    return tensor._use_count(), sys.getrefcount(tensor)  # type: ignore[attr-defined]  # private, not in torch's stubs


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
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": [g.get_state() for g in generators],
    }


def set_rng_state(state: Mapping[str, Any] | None, generators: Sequence[torch.Generator]) -> None:
    if state is None:
        return
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for generator, generator_state in zip(generators, state["loader"]):
        generator.set_state(generator_state.cpu())
