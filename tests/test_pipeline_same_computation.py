"""A pass whose output computes what its input did (only shape annotations, node names or metadata changed) is
not run through ONNX Runtime again: the check could not fail, the report says why. Any other change is compared."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import Pipeline, graph, modelio
from onnxkit.errors import DataError
from onnxkit.examples import build_example
from onnxkit.parity import chain as parity_chain
from onnxkit.pipeline_parity import NOT_PROBED, SAME_COMPUTATION
from tests import plugin_passes


@pytest.fixture(autouse=True)
def broken_passes():
    plugin_passes.register_all()
    yield
    plugin_passes.unregister_all()


@pytest.fixture
def comparisons(monkeypatch) -> list[tuple]:
    """Each comparison the parity chain makes, as (reference, candidate)."""
    made: list[tuple] = []
    real_compare = parity_chain.ParityChain.compare

    def counting_compare(self, reference, candidate, *args, **kwargs):
        made.append((reference, candidate))
        return real_compare(self, reference, candidate, *args, **kwargs)

    monkeypatch.setattr(parity_chain.ParityChain, "compare", counting_compare)
    return made


def test_a_pass_that_only_annotates_shapes_is_not_run_again_and_the_report_says_why(comparisons):
    result = Pipeline.parse("shape-inference").run(build_example("mlp"))
    (shapes,) = result.report.passes
    assert shapes.modified and shapes.stats[0].startswith("annotated")
    assert comparisons == []
    assert shapes.parity["skipped"] == SAME_COMPUTATION and shapes.parity["passed"]
    assert set(shapes.timings["parity"]) == {"sessions"}  # the output is still loaded in ONNX Runtime
    assert result.report.rows()[0][-1] == "same function"
    assert result.report.exit_code == 0


def test_a_pass_that_changes_a_weight_is_compared(comparisons):
    result = Pipeline.parse("shape-inference,scale-weight").run(build_example("mlp"), on_fail="warn")
    shapes, scaled = result.report.passes
    # The run of exact passes, input to output; it fails, so each pass alone: shape-inference's output computes
    # what the input does and is not compared, scale-weight's is compared with the input's recorded outputs.
    assert len(comparisons) == 2 and comparisons[1][0] is comparisons[0][0]
    assert shapes.parity["skipped"] == SAME_COMPUTATION
    assert "skipped" not in scaled.parity and scaled.parity["passed"] is False
    assert result.report.exit_code == 1


def test_check_at_the_end_is_not_run_when_the_function_is_the_same(comparisons):
    result = Pipeline.parse("shape-inference").run(build_example("mlp"), check="end")
    assert comparisons == [] and result.report.final_parity["skipped"] == SAME_COMPUTATION


def test_computation_leaves_out_annotations_only():
    before = graph.fingerprint(modelio.as_ir_model(build_example("mlp")))
    annotated = Pipeline.parse("shape-inference").run(build_example("mlp"), check="off").model
    assert graph.fingerprint(annotated) != before  # the annotations are a change the claim check sees
    assert graph.computation(graph.fingerprint(annotated)) == graph.computation(before)
    renamed = modelio.as_ir_model(build_example("mlp"))
    next(iter(renamed.graph)).name = "another name"
    assert graph.computation(graph.fingerprint(renamed)) == graph.computation(before)
    with_attribute = modelio.as_ir_model(build_example("mlp"))
    next(iter(with_attribute.graph)).attributes["alpha"] = ir.AttrFloat32("alpha", 0.5)
    assert graph.computation(graph.fingerprint(with_attribute)) != graph.computation(before)


def _runs_on_no_synthetic_size() -> onnx.ModelProto:
    """A Reshape to [1, 7] after an Identity: it runs only on 7 features, a size no probe's ladder holds."""
    shape = numpy_helper.from_array(np.array([1, 7], np.int64), "shape")
    graph_ = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["copy"]), helper.make_node("Reshape", ["copy", "shape"], ["y"])],
        "to_seven",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "features"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [shape],
    )
    return helper.make_model(graph_, opset_imports=[helper.make_opsetid("", 17)])


def test_the_probe_runs_beside_the_passes_and_what_it_finds_wrong_stops_the_first_comparison():
    with pytest.raises(DataError, match="runs on no synthetic size of input 'x'"):
        Pipeline.parse("cleanup").run(_runs_on_no_synthetic_size())


def test_a_run_that_compares_nothing_needs_no_probed_inputs():
    result = Pipeline.parse("shape-inference").run(_runs_on_no_synthetic_size())
    (shapes,) = result.report.passes
    assert shapes.modified and shapes.parity["skipped"] == SAME_COMPUTATION
    assert result.report.parity_inputs == NOT_PROBED and result.report.exit_code == 0
