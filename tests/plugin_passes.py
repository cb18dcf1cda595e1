"""Plugin passes that misbehave on purpose, for the pipeline's guards; ``python -m tests.plugin_passes ARGS``
runs the ``onnxkit`` command with them registered, as a user's plugin would be."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxkit import Pass, PassResult, register_pass, unregister_pass
from onnxkit.errors import DataError
from onnxkit.pass_base import Site


class ScaleFirstWeightPass(Pass):
    """Deliberately wrong: multiplies one weight by 1.5 while claiming to be exact."""

    name = "scale-weight"
    kind = "exact"

    def call(self, model: ir.Model) -> PassResult:
        value = next(v for v in model.graph.initializers.values() if v.const_value.size > 1)
        value.const_value = ir.tensor(value.const_value.numpy() * 1.5, name=value.name)
        return PassResult(model, True, [f"scaled {value.name}"])


class RenameOutputPass(Pass):
    """Deliberately wrong: renames the graph output."""

    name = "rename-output"

    def call(self, model: ir.Model) -> PassResult:
        model.graph.outputs[0].name = "renamed"
        return PassResult(model, True, ["renamed the output"])


class CrashPass(Pass):
    """Deliberately broken: raises."""

    name = "crash"

    def call(self, model: ir.Model) -> PassResult:
        raise RuntimeError("boom")


class TypeErrorPass(Pass):
    """Deliberately buggy: edits the model in place, then trips over a TypeError, as a real bug would."""

    name = "type-error"

    def call(self, model: ir.Model) -> PassResult:
        model.graph.remove(model.graph.node(0), safe=False)  # half-done work the pipeline must undo
        return PassResult(model, True, ["removed " + len(model.graph)])  # type: ignore[operator]  # the bug


class BadDataPass(Pass):
    """Refuses the data it was given, as quantize does when calibration samples do not fit: a user error."""

    name = "bad-data"

    def call(self, model: ir.Model) -> PassResult:
        raise DataError("input 'x' has 3 dims in the data but 2 in the model", hint="fix the data")


class SilentEditPass(Pass):
    """Deliberately dishonest: scales a weight in place and reports modified=False."""

    name = "silent-edit"

    def call(self, model: ir.Model) -> PassResult:
        ScaleFirstWeightPass().call(model)
        return PassResult(model, False)


class ContribReluPass(Pass):
    """Deliberately undeclared: swaps Relu for an ONNX Runtime contrib op while declaring standard ops only."""

    name = "contrib-relu"

    def call(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.domain, node.op_type = "com.microsoft", "Gelu"
                model.opset_imports["com.microsoft"] = 1
                return PassResult(model, True, ["swapped a Relu"])
        return PassResult(model, False)


# ---------------------------------------------------------------------------------------------------------
# A pass with two rewrite rules, one of which breaks the model at exactly one site


def relu_chain() -> onnx.ModelProto:
    """x → (Add c_i → Relu) × 3 → y, nodes named add_i and relu_i."""
    rng = np.random.default_rng(7)
    nodes, initializers, previous = [], [], "x"
    for i in range(3):
        initializers.append(numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), f"c{i}"))
        nodes.append(helper.make_node("Add", [previous, f"c{i}"], [f"sum{i}"], name=f"add_{i}"))
        previous = "y" if i == 2 else f"act{i}"
        nodes.append(helper.make_node("Relu", [f"sum{i}"], [previous], name=f"relu_{i}"))
    graph = helper.make_graph(
        nodes,
        "relu_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class TwoRulePass(Pass):
    """Two rules: ``commute-add`` swaps each Add's inputs (harmless); ``relu-as-max`` writes Relu(x) as
    Max(x, 0), except that at ``relu_1`` it breaks the model: with ``Abs`` (parity) or with an attribute Max
    does not have (onnx.checker), as ``break_with`` says."""

    name = "two-rules"
    break_with = "parity"

    def call(self, model: ir.Model) -> PassResult:
        sites = []
        for node in list(model.graph):
            if node.op_type == "Add" and self.context.allows("commute-add", node.name):
                first, second = node.inputs
                node.replace_input_with(0, second)
                node.replace_input_with(1, first)
                sites.append(Site("commute-add", node.name))
            elif node.op_type == "Relu" and self.context.allows("relu-as-max", node.name):
                sites.append(Site("relu-as-max", node.name))
                if node.name == "relu_1" and self.break_with == "parity":
                    node.op_type = "Abs"
                    continue
                zero = ir.Value(name=f"{node.name}_zero", const_value=ir.tensor(np.zeros((), np.float32)))
                zero.type, zero.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([])
                model.graph.register_initializer(zero)
                node.op_type = "Max"
                node.resize_inputs(2)
                node.replace_input_with(1, zero)
                if node.name == "relu_1" and self.break_with == "checker":
                    node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
        return PassResult(model, bool(sites), [f"rewrote {len(sites)} sites"], sites=sites)


class TwoRuleCheckerPass(TwoRulePass):
    """``two-rules`` breaking the model for onnx.checker instead of for parity."""

    name = "two-rules-checker"
    break_with = "checker"


class AbsEverywherePass(Pass):
    """One rule, ``relu-as-abs``, wrong at every site it fires: narrowing leaves the pass nothing to do."""

    name = "abs-everywhere"

    def call(self, model: ir.Model) -> PassResult:
        sites = []
        for node in model.graph:
            if node.op_type == "Relu" and self.context.allows("relu-as-abs", node.name):
                node.op_type = "Abs"
                sites.append(Site("relu-as-abs", node.name))
        return PassResult(model, bool(sites), [f"rewrote {len(sites)} Relu"], sites=sites)


PASSES = (
    AbsEverywherePass,
    ScaleFirstWeightPass,
    RenameOutputPass,
    CrashPass,
    TypeErrorPass,
    BadDataPass,
    SilentEditPass,
    ContribReluPass,
    TwoRulePass,
    TwoRuleCheckerPass,
)


def register_all() -> None:
    for cls in PASSES:
        register_pass(cls)


def unregister_all() -> None:
    for cls in PASSES:
        unregister_pass(cls.name)


if __name__ == "__main__":
    from onnxkit.cli import main

    register_all()
    main(prog_name="onnxkit")
