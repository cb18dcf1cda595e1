"""Export with both exporters, checked in ONNX Runtime against torch; failures named with their way out."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from onnxkit import Pipeline
from onnxkit.cli import main
from onnxkit.errors import ExportError, ParityError
from onnxkit.modelio import to_proto
from onnxkit.pytorch import zoo
from onnxkit.pytorch.export import export_model
from onnxkit.pytorch.exporters import unsupported_operators
from tests.conftest import run_model

torch.set_num_threads(1)


@torch.library.custom_op("onnxkit_test::scaled_sin", mutates_args=())
def scaled_sin(x: torch.Tensor) -> torch.Tensor:
    """An operator neither exporter knows until it is taught."""
    return torch.sin(x) * 2


@scaled_sin.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class UsesCustomOp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_sin(self.linear(x))


class MaskedMeanEmbedding(torch.nn.Module):
    """Two integer inputs that share a batch and a sequence axis, and two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 8)

    def forward(self, token_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.unsqueeze(-1).float()
        pooled = (self.embedding(token_ids) * weights).sum(1) / weights.sum(1).clamp(min=1)
        return pooled, pooled.argmax(-1)


def trained_looking_cnn() -> zoo.BatchNormCNN:
    """BatchNormCNN with non-trivial running statistics, left in training mode like a model mid-training."""
    torch.manual_seed(0)
    model = zoo.BatchNormCNN()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8) * 2)
    return model.train()


@pytest.mark.parametrize("dynamo", [False, True])
def test_both_exporters_match_torch_at_two_batch_sizes(dynamo):
    model = trained_looking_cnn()
    model.features[1].eval()  # mixed modes must come back exactly as they were
    modes = [m.training for m in model.modules()]
    running_mean = model.features[1].running_mean.clone()
    example = torch.rand(2, 1, 8, 8)

    exported, report = export_model(
        model, example, input_names=("image",), output_names=("logits",), dynamic_batch=True, dynamo=dynamo
    )

    assert report.exporter == ("dynamo" if dynamo else "torchscript") and report.fallback_reason is None
    assert [m.training for m in model.modules()] == modes
    torch.testing.assert_close(model.features[1].running_mean, running_mean, rtol=0, atol=0)
    assert [c.shapes["image"][0] for c in report.checks] == [2, 5]
    assert report.verified and all(c.max_abs_error <= 1e-4 for c in report.checks)
    proto = to_proto(exported)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # Independent of the report: ORT at a third batch size, against the module in eval mode.
    images = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    np.testing.assert_allclose(run_model(proto, {"image": images.numpy()})[0], expected, atol=1e-4)


def test_named_inputs_multiple_outputs_and_full_axis_mapping():
    model = MaskedMeanEmbedding()
    example = {"token_ids": torch.randint(0, 50, (2, 6)), "mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    axes = {"token_ids": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}}

    exported, report = export_model(model, example, dynamic_axes=axes, dynamo=False)

    assert report.input_names == ["token_ids", "mask"] and report.output_names == ["output_0", "output_1"]
    assert report.checks[1].shapes == {"token_ids": [5, 9], "mask": [5, 9]}  # shared dims stay equal
    assert report.verified
    proto = to_proto(exported)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_input_names_default_to_forward_parameters():
    _, report = export_model(
        MaskedMeanEmbedding(), (torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 3, dtype=torch.int64)), dynamo=False
    )
    assert report.input_names == ["token_ids", "mask"]
    assert report.lines()[1] == "all input shapes static: verified at the example shapes only"


def test_unsupported_operator_is_named_with_the_way_out_for_each_exporter():
    with pytest.raises(ExportError) as caught:
        export_model(UsesCustomOp(), torch.randn(2, 4))
    error = caught.value
    assert "onnxkit_test::scaled_sin" in error.message and "tried dynamo, torchscript" in error.message
    assert "custom_translation_table={torch.ops.onnxkit_test.scaled_sin.default" in error.hint
    assert "register_custom_op_symbolic('onnxkit_test::scaled_sin'" in error.hint
    assert unsupported_operators(error.__cause__) == ["onnxkit_test::scaled_sin"]


def test_a_custom_translation_table_lets_dynamo_export_the_operator():
    from onnxscript import opset18 as op

    def scaled_sin_onnx(x):
        return op.Mul(op.Sin(x), op.Constant(value_float=2.0))

    model = UsesCustomOp()
    _, report = export_model(
        model,
        torch.randn(2, 4),
        dynamo=True,
        dynamic_batch=True,
        custom_translation_table={torch.ops.onnxkit_test.scaled_sin.default: scaled_sin_onnx},
    )
    assert report.exporter == "dynamo" and report.verified


def test_a_custom_symbolic_lets_torchscript_export_and_auto_falls_back_to_it():
    def symbolic(g, x):
        return g.op("Mul", g.op("Sin", x), g.op("Constant", value_t=torch.tensor(2.0)))

    torch.onnx.register_custom_op_symbolic("onnxkit_test::scaled_sin", symbolic, 9)
    try:
        _, report = export_model(UsesCustomOp(), torch.randn(2, 4), dynamo=None, dynamic_batch=True)
    finally:
        torch.onnx.unregister_custom_op_symbolic("onnxkit_test::scaled_sin", 9)
    assert report.requested == "auto" and report.exporter == "torchscript"
    assert "onnxkit_test.scaled_sin" in report.fallback_reason
    assert any(line.startswith("fell back to torchscript") for line in report.lines())
    assert report.verified


class BakesInBatchSize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int() turns the batch size into a constant in a TorchScript trace.
        return self.linear(x.reshape(int(x.shape[0]), -1))


def test_a_trace_that_bakes_in_the_batch_size_fails_verification():
    with pytest.raises(ParityError) as caught:
        export_model(BakesInBatchSize(), torch.randn(2, 4, 4), dynamic_batch=True, dynamo=False)
    assert "x[5x4x4]" in caught.value.message and "ONNX Runtime failed" in caught.value.message


def test_a_parity_failure_names_the_tolerance_that_would_pass():
    with pytest.raises(ParityError) as caught:
        export_model(trained_looking_cnn(), torch.rand(2, 1, 8, 8), dynamo=False, tolerance={"atol": 1e-12, "rtol": 0})
    assert "FAILED" in caught.value.message and "would pass with atol >=" in caught.value.message


def test_module_that_fails_on_its_example_is_an_export_error():
    with pytest.raises(ExportError, match="fails on the example inputs image"):
        export_model(zoo.SimpleCNN(), {"image": torch.randn(1, 8, 8)})


def test_export_is_the_first_pass_of_a_pipeline_on_a_torch_module(tmp_path):
    model = trained_looking_cnn()
    result = Pipeline.parse("export{dynamo=false,dynamic_batch=true,input_names=image},cleanup").run(
        model, example_inputs=torch.rand(1, 1, 8, 8)
    )
    first = result.report.passes[0]
    assert first.name == "export" and first.modified
    assert first.stats[0].startswith("exported with the torchscript exporter")
    path = result.save(tmp_path / "cnn.onnx")
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    np.testing.assert_allclose(run_model(str(path), {"image": images.numpy()})[0], expected, atol=1e-4)


def test_export_pass_on_an_onnx_model_changes_nothing_and_needs_example_inputs():
    exported, _ = export_model(zoo.SimpleCNN(), torch.rand(1, 1, 8, 8), dynamo=False, verify=False)
    export_pass = Pipeline.parse("export").passes[0]
    assert export_pass(exported).modified is False
    with pytest.raises(ExportError, match="needs example inputs"):
        Pipeline.parse("export").run(zoo.SimpleCNN())


# ---------------------------------------------------------------------------------------------------------
# CLI


def test_cli_exports_a_factory_with_a_state_dict(tmp_path):
    torch.manual_seed(1)
    trained = zoo.SimpleCNN()
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    output = tmp_path / "cnn.onnx"

    result = CliRunner().invoke(
        main,
        [
            "export",
            "onnxkit.pytorch.zoo:SimpleCNN",
            "--state-dict",
            str(tmp_path / "weights.pt"),
            "--input-shape",
            "image=1x1x8x8",
            "--dynamic-batch",
            "--no-dynamo",
            "-o",
            str(output),
        ],
    )

    assert result.exit_code == 0, result.output
    assert "exported with the torchscript exporter" in result.output and f"saved {output}" in result.output
    images = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = trained(images).numpy()
    np.testing.assert_allclose(run_model(str(output), {"image": images.numpy()})[0], expected, atol=1e-4)


def test_cli_imports_the_users_module_and_reads_a_sample_file(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    """)
    )
    np.savez(tmp_path / "sample.npz", tokens=np.array([[1, 5, 9]], dtype=np.int64))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(
        main,
        [
            "export",
            "my_models:build",
            "--sample",
            "sample.npz",
            "--no-dynamo",
            "--output-names",
            "scores",
            "-o",
            "m.onnx",
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in proto.graph.input] == ["tokens"] and [o.name for o in proto.graph.output] == ["scores"]
    report = json.loads(result.stdout)
    assert report["exporter"] == "torchscript" and report["verified"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["onnxkit.pytorch.zoo:NoSuchModel", "--input-shape", "x=1x1x8x8"],
            "cannot load onnxkit.pytorch.zoo:NoSuchModel",
        ),
        (["onnxkit.pytorch.zoo", "--input-shape", "x=1x1x8x8"], "bad model spec"),
        (["onnxkit.pytorch.zoo:SimpleCNN", "--input-shape", "x=1x1x8x8:int7"], "bad input shape"),
        (["onnxkit.pytorch.zoo:SimpleCNN"], "give either --input-shape"),
        (
            ["onnxkit.pytorch.zoo:SimpleCNN", "--input-shape", "x=1x1x8x8", "--dynamic-axis", "x=batch"],
            "bad dynamic axis",
        ),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, arguments, message):
    result = CliRunner().invoke(main, ["export", *arguments, "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_refuses_a_state_dict_that_needs_pickle(tmp_path):
    # A pickled module object, not a plain state dict: loading it would run arbitrary code.
    torch.save(zoo.SimpleCNN(), tmp_path / "whole_model.pt")
    result = CliRunner().invoke(
        main,
        [
            "export",
            "onnxkit.pytorch.zoo:SimpleCNN",
            "--state-dict",
            str(tmp_path / "whole_model.pt"),
            "--input-shape",
            "x=1x1x8x8",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert result.exit_code == 2 and "cannot read state dict" in result.output
