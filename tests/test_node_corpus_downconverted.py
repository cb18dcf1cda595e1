"""The ONNX backend node tests converted down to opsets 11 and 13: the rewriting exact passes must write
models that are valid at the model's own opset and keep its outputs.

The node tests are written at recent opsets, where every op a pass may emit exists. Real models are often
older (paddle2onnx and TorchScript exports at opset 11 to 13), where LayerNormalization, Gelu, the input
form of Squeeze/Unsqueeze axes and others do not. Each node-test model is converted with
``onnx.version_converter``; a model the converter refuses, or whose converted form ONNX Runtime cannot load
or run, is skipped and counted. The converted model's own ORT outputs are the reference. Every pass's output
must pass the full ``onnx.checker`` (with shape inference) and match the reference within the test's
tolerances.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path

import onnx
import onnx.version_converter
import pytest

from onnxkit.data import OnnxTestDataset
from onnxkit.errors import OnnxkitError
from onnxkit.graph import default_opset
from onnxkit.modelio import to_proto
from onnxkit.pipeline import Pipeline
from tests.test_node_corpus import generate_node_corpus, ort_session, outputs_match, run_in_ort

pytestmark = pytest.mark.slow

TARGET_OPSETS = (11, 13)
PASS_SPECS = ("cleanup", "simplify", "fuse", "fuse{target=onnxruntime}")


@dataclasses.dataclass
class DownconvertedSweep:
    opset: int
    total: int = 0
    already_at_or_below: int = 0
    not_convertible: int = 0
    not_runnable: int = 0
    no_inputs: int = 0  # constant models, which onnxkit.validate refuses before any pass
    checked: int = 0
    passed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    modified_by: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def failed(self) -> int:
        return len({failure.split(":")[0] for failure in self.failures})

    def summary(self) -> str:
        return (
            f"node-test corpus at opset {self.opset}: {self.total} models; {self.checked} converted and run "
            f"by ORT, passed {self.passed}, failed {self.failed}; skipped {self.already_at_or_below} already at "
            f"or below opset {self.opset}, {self.not_convertible} the converter refuses, {self.not_runnable} "
            f"ORT cannot load or run once converted; models changed per pass {dict(self.modified_by)}"
        )


def model_opset(model: onnx.ModelProto) -> int:
    return default_opset(model, missing=0)


def convert_down(model: onnx.ModelProto, opset: int) -> onnx.ModelProto | None:
    """The model at ``opset``, checked, or None where the converter cannot write a valid one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception:  # the converter raises RuntimeError, IndexError, ValidationError... per adapter
        return None
    return converted


def pass_problem(
    spec: str,
    model: onnx.ModelProto,
    inputs: dict,
    expected: dict,
    tolerance: tuple[float, float],
    sweep: DownconvertedSweep,
) -> str | None:
    """Why ``spec`` broke the converted model, or None when its output is valid and keeps the outputs."""
    try:
        run = Pipeline.parse(spec).run(model, check="off", on_fail="stop")
        if not run.report.passes[0].modified:
            return None
        sweep.modified_by[spec] += 1
        after = to_proto(run.model)
        onnx.checker.check_model(after, full_check=True)
        opset_after = model_opset(after)
        if opset_after != sweep.opset:
            return f"the opset changed from {sweep.opset} to {opset_after}"
        return outputs_match(expected, run_in_ort(ort_session(after), inputs), model, tolerance)
    except OnnxkitError as e:
        return f"{type(e).__name__}: {e.message}"
    except Exception as e:  # the checker, or ORT on the pass's output
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def sweep_at_opset(
    corpus: Path, tolerances: dict[str, tuple[float, float]], opset: int, specs: tuple[str, ...] = PASS_SPECS
) -> DownconvertedSweep:
    sweep = DownconvertedSweep(opset)
    for test_dir in sorted(p for p in corpus.iterdir() if (p / "model.onnx").exists()):
        sweep.total += 1
        original = onnx.load(test_dir / "model.onnx")
        if model_opset(original) <= opset:
            sweep.already_at_or_below += 1
            continue
        model = convert_down(original, opset)
        if model is None:
            sweep.not_convertible += 1
            continue
        if not model.graph.input:
            sweep.no_inputs += 1
            continue
        inputs = next(iter(OnnxTestDataset(test_dir).for_model(model)))
        try:
            session = ort_session(model)
            reference = dict(zip((o.name for o in model.graph.output), run_in_ort(session, inputs)))
        except Exception:  # ORT lacks a kernel at this opset, or cannot run the converted graph
            sweep.not_runnable += 1
            continue
        sweep.checked += 1
        tolerance = tolerances.get(test_dir.name, (1e-3, 1e-7))
        problems = [(spec, pass_problem(spec, model, inputs, reference, tolerance, sweep)) for spec in specs]
        sweep.failures += [f"{test_dir.name}: pass '{spec}': {problem}" for spec, problem in problems if problem]
        sweep.passed += not any(problem for _, problem in problems)
    return sweep


@pytest.fixture(scope="module")
def node_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[float, float]]]:
    folder = tmp_path_factory.mktemp("onnx-node-tests")
    return folder / "node", generate_node_corpus(folder)


@pytest.mark.parametrize("opset", TARGET_OPSETS)
def test_rewriting_passes_keep_downconverted_node_test_models_valid(node_corpus, opset, record_property) -> None:
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # ORT logs each model it refuses; the counts say how many
    corpus, tolerances = node_corpus
    sweep = sweep_at_opset(corpus, tolerances, opset)
    print("\n" + sweep.summary())
    record_property("summary", sweep.summary())
    for failure in sweep.failures:
        print(f"  FAILED {failure}")
    assert sweep.total > 1500  # the generators really ran
    assert sweep.checked > 100, "the converter should bring a few hundred node tests down"
    assert (
        sweep.checked + sweep.already_at_or_below + sweep.not_convertible + sweep.not_runnable + sweep.no_inputs
        == sweep.total
    )
    assert not sweep.failures, f"{sweep.failed} converted node-test models broken:\n" + "\n".join(sweep.failures)
