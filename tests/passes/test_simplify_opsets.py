"""simplify's output passes the full ONNX checker at the model's own opset: the node tests converted down.

The ONNX node tests (rebuilt as in tests/test_node_corpus.py) are converted to opsets 11 and 13 where onnx's
version converter can; every converted model that passes the full checker must still pass it after simplify.
"""

from __future__ import annotations

import warnings

import onnx
import onnx_ir as ir
import pytest
from onnx import version_converter
from onnxkit.passes.simplify import SimplifyPass

from tests.test_node_corpus import generate_node_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_tests(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("onnx-node-tests")
    generate_node_corpus(folder)
    return sorted((folder / "node").iterdir())


def _converted(path, opset: int) -> onnx.ModelProto | None:
    """The model converted down to ``opset`` and valid there, or None."""
    model = onnx.load(path / "model.onnx")
    if model.opset_import[0].version <= opset:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            converted = version_converter.convert_version(model, opset)
            onnx.checker.check_model(converted, full_check=True)
        except Exception:  # noqa: BLE001 - the converter and checker raise many types; such a model is not ours
            return None
    return converted


@pytest.mark.parametrize("opset", [11, 13])
def test_simplify_output_is_valid_at_the_converted_opset(node_tests, opset, record_property):
    checked, failures = 0, []
    for path in node_tests:
        model = _converted(path, opset)
        if model is None:
            continue
        checked += 1
        result = SimplifyPass()(ir.serde.deserialize_model(model))
        try:
            onnx.checker.check_model(ir.serde.serialize_model(result.model), full_check=True)
        except Exception as e:  # noqa: BLE001 - any checker or inference error is a failure, reported by model
            failures.append(f"{path.name}: {str(e).splitlines()[0][:200]}")
    record_property("summary", f"simplify at opset {opset}: {checked} converted node tests checked, "
                               f"{len(failures)} invalid")
    assert checked > 100, "the converter should take a good part of the node tests"
    assert not failures, "\n".join(failures)
