"""The training loop, tested numerically: accumulation, AMP, clipping, schedules, checkpoints, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from onnxkit.pytorch.train import TrainConfig, Trainer, accuracy, seed_everything

torch.set_num_threads(1)


def regression_data(samples: int = 10, dtype: torch.dtype = torch.float32) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 5, generator=generator, dtype=dtype)
    return TensorDataset(inputs, inputs @ torch.randn(5, 2, generator=generator, dtype=dtype))


def classification_data(samples: int = 60) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(samples, 6, generator=generator)
    return TensorDataset(inputs, (inputs[:, 0] + inputs[:, 1] > 0).long())


def classifier() -> nn.Module:
    """Dropout draws random numbers, so a resumed run only matches if the generators are restored too."""
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def quiet(line: str) -> None:
    pass


def test_accumulated_gradient_equals_the_full_batch_gradient_with_a_short_last_micro_batch():
    data = regression_data(10, torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    reference = copy.deepcopy(model)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.MSELoss(),
        config=TrainConfig(accumulation_steps=3, device="cpu"),
        log=quiet,
    )
    # 10 samples in micro-batches of 4: 4 + 4 + 2, one optimizer step.
    result = trainer.fit(DataLoader(data, batch_size=4), max_steps=1)
    assert result.steps == 1

    full_batch = torch.optim.SGD(reference.parameters(), lr=0.1)
    nn.MSELoss()(reference(data.tensors[0]), data.tensors[1]).backward()
    full_batch.step()
    for trained, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, rtol=0, atol=1e-12)

    # The naive normalisation (each micro-batch's mean divided by the number of micro-batches) is measurably off,
    # so the check above does tell the two apart.
    torch.manual_seed(0)
    naive_model = nn.Linear(5, 2).double()
    naive_optimizer = torch.optim.SGD(naive_model.parameters(), lr=0.1)
    for inputs, targets in DataLoader(data, batch_size=4):
        (nn.MSELoss()(naive_model(inputs), targets) / 3).backward()
    naive_optimizer.step()
    assert (naive_model.weight - model.weight).abs().max() > 1e-4


def test_bf16_autocast_on_cpu_matches_a_hand_written_step():
    data = regression_data(8)
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    reference = copy.deepcopy(model)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.MSELoss(),
        config=TrainConfig(amp=True, device="cpu"),
        log=quiet,
    )
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    trainer.fit(DataLoader(data, batch_size=8), max_steps=1)

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.MSELoss()(reference(data.tensors[0]), data.tensors[1])
    loss.backward()
    optimizer.step()
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=0)
    # bf16 really was used: an fp32 step lands elsewhere.
    torch.manual_seed(0)
    fp32 = nn.Linear(5, 2)
    fp32_optimizer = torch.optim.SGD(fp32.parameters(), lr=0.1)
    nn.MSELoss()(fp32(data.tensors[0]), data.tensors[1]).backward()
    fp32_optimizer.step()
    assert (fp32.weight - model.weight).abs().max() > 1e-5


def test_fp16_scaler_unscales_before_clipping_and_skipped_steps_leave_the_schedule_alone():
    data = regression_data(8)
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    reference = copy.deepcopy(model)
    norms = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    trainer = Trainer(
        model,
        optimizer,
        nn.MSELoss(),
        scheduler,
        config=TrainConfig(amp="fp16", clip_grad_norm=0.5, device="cpu"),
        log=quiet,
        on_step=lambda trainer, record: norms.append(record.grad_norm),
    )
    assert trainer.scaler.is_enabled()
    trainer.fit(DataLoader(data, batch_size=8), max_steps=6)

    # The canonical recipe from the PyTorch AMP docs, by hand.
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference_scheduler = torch.optim.lr_scheduler.StepLR(reference_optimizer, step_size=1, gamma=0.9)
    scaler = torch.amp.GradScaler("cpu")
    reference_norms, applied = [], 0
    for _ in range(6):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.MSELoss()(reference(data.tensors[0]), data.tensors[1])
        scaler.scale(loss).backward()
        scaler.unscale_(reference_optimizer)
        reference_norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5).item())
        scale = scaler.get_scale()
        scaler.step(reference_optimizer)
        scaler.update()
        reference_optimizer.zero_grad()
        if scaler.get_scale() >= scale:  # not skipped
            reference_scheduler.step()
            applied += 1

    assert norms == pytest.approx(reference_norms, rel=1e-6)
    # Early steps overflow at the initial scale of 65536 and are skipped; the rest are applied with the
    # true (unscaled) gradient norm, which a clip before unscaling would have seen 10^3-10^4 times larger.
    assert 0 < applied < 6 and all(math.isnan(n) or n == float("inf") or 0.5 < n < 100 for n in norms)
    assert scheduler.last_epoch == applied
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=0)


def test_scheduler_steps_once_per_optimizer_step_and_eval_runs_every_n_steps():
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    evaluated_at, rates = [], []
    trainer = Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        scheduler,
        config=TrainConfig(accumulation_steps=3, eval_every=2, device="cpu"),
        log=quiet,
        on_eval=lambda trainer, record: evaluated_at.append(record["step"]),
        on_step=lambda trainer, record: rates.append(record.lr),
    )
    # 60 samples / batch 6 = 10 micro-batches per epoch = 4 optimizer steps (3 + 3 + 3 + 1).
    result = trainer.fit(
        DataLoader(classification_data(), batch_size=6),
        epochs=2,
        val_loader=DataLoader(classification_data(12), batch_size=4),
    )
    assert result.steps == 8 and result.epochs_completed == 2
    assert scheduler.last_epoch == 8
    assert rates == [0.5**k for k in range(1, 9)]
    assert evaluated_at == [2, 4, 6, 8]


def test_evaluate_weights_batches_by_their_sample_count():
    model = classifier().eval()
    data = classification_data(10)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        config=TrainConfig(device="cpu"),
        log=quiet,
    )
    metrics = trainer.evaluate(DataLoader(data, batch_size=4), metrics=("loss", "accuracy"))
    with torch.no_grad():
        outputs = model(data.tensors[0])
    assert metrics["loss"] == pytest.approx(nn.CrossEntropyLoss()(outputs, data.tensors[1]).item(), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(accuracy(outputs, data.tensors[1]).item())
    assert model.training is False  # evaluate leaves the mode as it found it


def make_run(checkpoint_dir, on_step=None, seed=0):
    """A run with everything that must be restored: shuffling, dropout, AdamW moments, a schedule, clipping,
    accumulation with a short last micro-batch, and best/last checkpoints."""
    seed_everything(seed)
    model = classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=40)
    config = TrainConfig(
        accumulation_steps=4,
        clip_grad_norm=1.0,
        amp="bf16",
        eval_every=2,
        metrics=("loss", "accuracy"),
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        device="cpu",
    )
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), scheduler, config=config, log=quiet, on_step=on_step)
    # 9 micro-batches per epoch, the last of 4 samples; optimizer steps of 4 + 4 + 1 micro-batches.
    loader = DataLoader(classification_data(), batch_size=7, shuffle=True)
    val_loader = DataLoader(classification_data(20), batch_size=8)
    return trainer, loader, val_loader


class Interrupted(Exception):
    pass


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    trainer, loader, val_loader = make_run(tmp_path / "straight")
    straight = trainer.fit(loader, epochs=4, val_loader=val_loader)

    def interrupt(trainer, record):
        if record.step == 5:  # one step after the checkpoint at step 4, which lies mid-epoch
            raise Interrupted

    first, loader, val_loader = make_run(tmp_path / "interrupted", on_step=interrupt)
    with pytest.raises(Interrupted):
        first.fit(loader, epochs=4, val_loader=val_loader)
    checkpoint = torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 4 and checkpoint["state"]["batches_done"] == 4
    assert set(checkpoint) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}

    seed_everything(123)  # the resumed process starts from unrelated generator states
    resumed, loader, val_loader = make_run(tmp_path / "interrupted", seed=999)
    result = resumed.fit(loader, epochs=4, val_loader=val_loader, resume_from=tmp_path / "interrupted" / "last.pt")

    assert result.steps == straight.steps == 12
    assert result.history == straight.history
    for a, b in zip(resumed.module.parameters(), trainer.module.parameters()):
        assert torch.equal(a, b)
    assert resumed.scheduler.state_dict() == trainer.scheduler.state_dict()


def test_best_and_last_checkpoints(tmp_path):
    trainer, loader, val_loader = make_run(tmp_path)
    result = trainer.fit(loader, max_steps=9, val_loader=val_loader)
    best = torch.load(result.best_checkpoint, weights_only=True)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["state"]["step"] == 9
    assert best["state"]["step"] == result.best["step"]
    assert best["state"]["best_value"] == pytest.approx(min(r["loss"] for r in result.history))
    assert last["config"]["accumulation_steps"] == 4 and last["config"]["max_steps"] == 9


def test_early_stopping_after_patience_evaluations_without_improvement():
    model = classifier()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        nn.CrossEntropyLoss(),
        config=TrainConfig(eval_every=1, patience=2, min_delta=1e-3, device="cpu"),
        log=quiet,
    )
    result = trainer.fit(
        DataLoader(classification_data(), batch_size=6),
        epochs=5,
        val_loader=DataLoader(classification_data(12), batch_size=12),
    )
    # lr 0: the loss never moves, so the first evaluation sets the best and two more stop the run.
    assert result.stopped_early and result.steps == 3 and len(result.history) == 3


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        trainer, loader, _ = make_run(None)
        trainer.fit(loader, max_steps=4)
        runs.append(parameters(trainer.module))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_log_lines_when_not_on_a_terminal():
    lines = []
    model = classifier()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        config=TrainConfig(log_every=2, progress=False, device="cpu"),
        log=lines.append,
    )
    trainer.fit(DataLoader(classification_data(), batch_size=10), max_steps=4)
    assert [line.split(" epoch")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert "loss" in lines[0] and "lr 0.1" in lines[0]


def test_progress_bar_when_asked(capsys):
    model = classifier()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        config=TrainConfig(progress=True, device="cpu"),
        log=quiet,
    )
    trainer.fit(DataLoader(classification_data(), batch_size=10), epochs=1)
    assert "6/6" in capsys.readouterr().err


def test_bad_arguments():
    model = classifier()
    with pytest.raises(ValueError, match="accumulation_steps"):
        Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            nn.CrossEntropyLoss(),
            config=TrainConfig(accumulation_steps=0),
        )
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), config=TrainConfig(device="cpu")
    )
    with pytest.raises(ValueError, match="epochs or max_steps"):
        trainer.fit(DataLoader(classification_data(), batch_size=10))
    with pytest.raises(ValueError, match="unknown metric"):
        trainer.evaluate(DataLoader(classification_data(), batch_size=10), metrics=("f1",))


def test_constructing_a_trainer_joins_no_process_group_until_it_trains(monkeypatch):
    # Under torchrun (WORLD_SIZE > 1) the process group is joined by distribute(), which fit/evaluate call;
    # building a Trainer (e.g. to load a checkpoint's config or inspect it) must not try to rendezvous.
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = nn.Linear(3, 2)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), config=TrainConfig(device="cpu")
    )
    assert not torch.distributed.is_initialized()
    assert (trainer.rank, trainer.world_size) == (0, 1) and trainer.model is model
    assert trainer.config == TrainConfig(device="cpu")
