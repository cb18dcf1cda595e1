"""DDP: two processes under torchrun (gloo on CPU) train exactly like one process on the full batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from onnxkit.pytorch.train import TrainConfig, Trainer, init_distributed

    torch.set_num_threads(1)
    init_distributed()  # the DistributedSampler below needs the process group
    torch.manual_seed(0)
    inputs = torch.randn(32, 5, dtype=torch.float64)
    data = TensorDataset(inputs, torch.sin(inputs[:, :2]))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    # Rank r gets samples r, r+2, r+4, ...: 16 each, 4 micro-batches of 4, 2 optimizer steps of 2 micro-batches.
    loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, shuffle=False))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), nn.MSELoss(),
                      config=TrainConfig(accumulation_steps=2, device="cpu"),
                      log=lambda line: None).distribute()
    all_reduces = []

    def counting_hook(process_group, bucket):
        all_reduces.append(trainer.state.step)
        return default_hooks.allreduce_hook(process_group, bucket)

    trainer.model.register_comm_hook(None, counting_hook)
    result = trainer.fit(loader, epochs=1)
    metrics = trainer.evaluate(loader)
    with open(f"{sys.argv[1]}/rank{trainer.rank}.json", "w") as f:
        json.dump({"world_size": trainer.world_size, "steps": result.steps, "all_reduces": all_reduces,
                   "loss": metrics["loss"], "parameters": [p.tolist() for p in model.parameters()]}, f)
    dist.destroy_process_group()
""")


@pytest.mark.slow  # two fresh torch processes and a rendezvous: ~40 s on 2 shared cores
def test_two_process_ddp_matches_single_process_full_batch_training(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(tmp_path / "worker.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env=environment,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    # Gradients are all-reduced once per optimizer step, on its last micro-batch (one bucket for this model),
    # not on each of the 4 micro-batches.
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["steps"] == 2 and rank["all_reduces"] == [0, 1]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]

    # One process on the same global batches: step 1 sees samples 0-15, step 2 samples 16-31.
    torch.manual_seed(0)
    inputs = torch.randn(32, 5, dtype=torch.float64)
    targets = torch.sin(inputs[:, :2])
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for batch in (slice(0, 16), slice(16, 32)):
        optimizer.zero_grad()
        nn.MSELoss()(model(inputs[batch]), targets[batch]).backward()
        optimizer.step()
    for trained, expected in zip(ranks[0]["parameters"], model.parameters()):
        torch.testing.assert_close(torch.tensor(trained, dtype=torch.float64), expected.detach(), rtol=0, atol=1e-12)
    with torch.no_grad():
        full_loss = nn.MSELoss()(model(inputs), targets).item()
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert abs(ranks[0]["loss"] - full_loss) < 1e-12
