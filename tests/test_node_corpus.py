"""The ONNX backend node tests as a peer corpus: every exact pass must keep every model's outputs.

The onnx package ships the generators of its ~1,900 node tests, not their data. They are rebuilt into a
temporary folder (``model.onnx`` plus ``test_data_set_0/{input,output}_*.pb`` per test, ~10 s), then each
model ONNX Runtime can load is run before and after each exact pass, and the outputs are held against the
stored expected ones with onnx's own comparison and tolerances. A model whose outputs ORT already gets wrong
before any pass is excluded and counted; so is one ORT cannot load. A pass that breaks a model is a failure,
named with the model.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import onnx
import pytest

from onnxkit import list_passes
from onnxkit.data import OnnxTestDataset
from onnxkit.errors import OnnxkitError
from onnxkit.modelio import to_proto
from onnxkit.pass_base import SourcePass
from onnxkit.pipeline import Pipeline
from onnxkit.runtime import make_session

pytestmark = pytest.mark.slow


def generate_node_corpus(folder: Path) -> dict[str, tuple[float, float]]:
    """Write the node tests under ``folder/node/<test name>``; return each test's (rtol, atol).

    ``cmd_tools.generate_data`` writes the cases that ``model_test.collect_testcases`` returns; in onnx 1.23
    that is only the model cases, so the node cases are handed to the same writer.
    """
    from onnx.backend.test import cmd_tools
    from onnx.backend.test.case import node

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        patch.setattr(cmd_tools.model_test, "collect_testcases", node.collect_testcases)
        cmd_tools.generate_data(argparse.Namespace(output=str(folder)))
    return {case.name: (case.rtol, case.atol) for case in node.collect_testcases()}


def exact_passes() -> list[type]:
    """Every registered exact pass that works on ONNX models (``export`` starts from torch)."""
    return [
        entry.pass_class
        for entry in list_passes()
        if entry.pass_class is not None
        and entry.pass_class.kind == "exact"
        and not issubclass(entry.pass_class, SourcePass)
    ]


def ort_session(model: onnx.ModelProto) -> Any:
    return make_session(model)  # graph optimizations off, one thread: the graph runs as the pass wrote it


def run_in_ort(session: Any, inputs: dict[str, Any]) -> list[Any]:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {name: value for name, value in inputs.items() if name in names})


def outputs_match(
    expected: dict[str, Any], actual: list[Any], model: onnx.ModelProto, tolerances: tuple[float, float]
) -> str | None:
    """None when ``actual`` matches the stored outputs by onnx's own comparison, else why not."""
    from onnx.backend.test.runner import Runner

    rtol, atol = tolerances
    try:
        Runner.assert_similar_outputs([expected[o.name] for o in model.graph.output], actual, rtol=rtol, atol=atol)
    except Exception as e:  # assert_similar_outputs raises AssertionError, TypeError, AttributeError...
        return " ".join(str(e).split())[:300]
    return None


@dataclasses.dataclass
class SweepResult:
    total: int = 0
    loaded: int = 0
    passed: int = 0
    excluded: int = 0
    not_loadable: int = 0
    no_inputs: int = 0  # constant models, which onnxkit.validate refuses before any pass
    failures: list[str] = dataclasses.field(default_factory=list)
    modified_by: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def failed(self) -> int:
        return len({failure.split(":")[0] for failure in self.failures})


def sweep(corpus: Path, tolerances: dict[str, tuple[float, float]], passes: list[type]) -> SweepResult:
    result = SweepResult()
    for test_dir in sorted(p for p in corpus.iterdir() if (p / "model.onnx").exists()):
        result.total += 1
        model = onnx.load(test_dir / "model.onnx")
        data = OnnxTestDataset(test_dir).for_model(model)
        inputs, expected = next(iter(data)), data.expected_outputs()[0]
        case_tolerance = tolerances.get(test_dir.name, (1e-3, 1e-7))
        if not model.graph.input:
            result.no_inputs += 1
            continue
        try:
            session = ort_session(model)
        except Exception:  # ORT raises its own types for unsupported ops and types
            result.not_loadable += 1
            continue
        result.loaded += 1
        try:
            agrees = outputs_match(expected, run_in_ort(session, inputs), model, case_tolerance) is None
        except Exception:  # ORT loads the model but cannot run it on the stored inputs
            agrees = False
        if not agrees:
            result.excluded += 1  # ORT itself disagrees with the stored outputs
            continue
        model_failed = False
        for pass_class in passes:
            problem = None
            try:
                run = Pipeline([pass_class()]).run(model, check="off", on_fail="stop")
                if not run.report.passes[0].modified:
                    continue
                result.modified_by[pass_class.name] += 1
                after = to_proto(run.model)
                problem = outputs_match(expected, run_in_ort(ort_session(after), inputs), model, case_tolerance)
            except OnnxkitError as e:
                problem = f"{type(e).__name__}: {e.message}"
            except Exception as e:  # ORT cannot load or run the pass's output
                problem = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            if problem is not None:
                result.failures.append(f"{test_dir.name}: pass '{pass_class.name}': {problem}")
                model_failed = True
        result.passed += not model_failed
    return result


def test_exact_passes_keep_every_node_test_model(tmp_path_factory: pytest.TempPathFactory, record_property) -> None:
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # ORT logs each model it refuses; the counts below say how many
    folder = tmp_path_factory.mktemp("onnx-node-tests")
    tolerances = generate_node_corpus(folder)
    passes = exact_passes()
    assert {"cleanup", "shape-inference"} <= {p.name for p in passes}
    result = sweep(folder / "node", tolerances, passes)
    counts = (
        f"node-test corpus: {result.total} models; loaded {result.loaded}, passed {result.passed}, "
        f"excluded {result.excluded} (ORT disagrees before any pass), failed {result.failed}; "
        f"{result.not_loadable} not loadable by ORT; {result.no_inputs} without inputs (refused); passes {[p.name for p in passes]}; "
        f"models changed per pass {dict(result.modified_by)}"
    )
    print("\n" + counts)
    record_property("summary", counts)  # printed at the end of the run by tests/conftest.py, even under xdist
    for failure in result.failures:
        print(f"  FAILED {failure}")
    assert result.total > 1500  # the generators really ran
    assert result.loaded + result.not_loadable + result.no_inputs == result.total
    assert result.no_inputs < 10  # test_constant and the optional_has_element_empty_no_input cases
    assert result.passed + result.excluded + result.failed == result.loaded
    # ORT cannot exchange float8/int4/bfloat16 arrays with numpy and randomizes training Dropout, which
    # excludes ~10%; far more would mean the harness misreads the test data.
    assert result.excluded < result.loaded / 5, "ORT should agree with most stored outputs"
    assert not result.failures, f"{result.failed} node-test models broken by exact passes:\n" + "\n".join(
        result.failures
    )
