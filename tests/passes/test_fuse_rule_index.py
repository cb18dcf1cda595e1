"""How fuse applies its rules: ``RuleIndex`` tries a node only against the rules whose pattern ends in its op
type, and a rule fusion whose op links the model lacks is not searched at all. Neither may change what the
rules do: the model comes out byte for byte as onnxscript's ``RewriteRuleSet`` leaves it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper
from onnxscript.rewriter import RewriteRuleSet

from onnxkit.passes.fuse import FusePass, _affine
from onnxkit.passes.fuse._base import FusionContext, _narrowable
from onnxkit.passes.fuse._rule_index import Census, RuleIndex
from tests.passes.test_fuse import make_model, tensor, value, weights


def _branch(rng: np.random.Generator, name: str) -> onnx.GraphProto:
    """A Conv whose output is scaled, then shifted, per channel: two rewrites into the Conv, in a branch."""
    return helper.make_graph(
        [
            helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"]),
            helper.make_node("Mul", [f"{name}_c", f"{name}_scale"], [f"{name}_m"]),
            helper.make_node("Add", [f"{name}_shift", f"{name}_m"], [f"{name}_y"]),
        ],
        name,
        [],
        [value(f"{name}_y", [1, 4, 3, 3])],
        initializer=[
            weights(rng, f"{name}_w", 4, 3, 1, 1),
            tensor(f"{name}_scale", rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32)),
            tensor(f"{name}_shift", rng.standard_normal((4, 1, 1)).astype(np.float32)),
        ],
    )


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv + Mul + Add in the main graph and in both branches of an If, and a Mul that follows no Conv."""
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["xg"]),
        helper.make_node("Conv", ["xg", "w"], ["c"]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["main_y"]),
        helper.make_node(
            "If", ["cond"], ["branch_y"], then_branch=_branch(rng, "then"), else_branch=_branch(rng, "else")
        ),
        helper.make_node("Add", ["main_y", "branch_y"], ["y"]),
    ]
    initializers = [
        tensor("gain", np.array(2.0, np.float32)),
        weights(rng, "w", 4, 3, 1, 1),
        tensor("scale", rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)),
        tensor("shift", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)),
    ]
    return make_model(
        nodes, [value("x", [1, 3, 3, 3]), value("cond", [], TensorProto.BOOL)], [value("y", [1, 4, 3, 3])], initializers
    )


def _apply(model: onnx.ModelProto, indexed: bool) -> tuple[bytes, int, list[str]]:
    """conv-affine's rules on ``model``, through ``RuleIndex`` or through onnxscript's rule set."""
    ir_model = ir.from_proto(model)
    context = FusionContext.for_model(ir_model, "standard").for_fusion("conv-affine")
    rules = [_narrowable(rule, context) for rule in _affine.affine_rules(("Conv",), ("Mul", "Add"), context)]
    if indexed:
        count = RuleIndex(rules).apply_to_model(ir_model)
    else:
        rule_set = RewriteRuleSet(rules)
        rule_set.remove_unused_nodes = False  # as fuse runs it: the pass removes dead nodes itself
        count = rule_set.apply_to_model(ir_model)
    sites = [str(site) for site in context.sites]
    return ir.to_proto(ir_model).SerializeToString(deterministic=True), count, sites


def test_rule_index_rewrites_exactly_as_onnxscripts_rule_set(rng):
    model = _model(rng)
    indexed, indexed_count, indexed_sites = _apply(model, indexed=True)
    reference, reference_count, reference_sites = _apply(model, indexed=False)
    assert indexed_count == reference_count == 6  # Mul and Add into the Conv: main graph, then, else
    assert indexed_sites == reference_sites
    assert indexed == reference


def test_a_rule_fusion_is_searched_only_where_its_links_exist_subgraphs_included(rng, monkeypatch):
    model = _model(rng)
    links = Census.of(ir.from_proto(model)).links
    context = FusionContext.for_model(ir.from_proto(model), "standard")
    conv_affine = RuleIndex(_affine.affine_rules(("Conv",), ("Mul", "Add"), context))
    assert ("Mul", 0, "Conv") in links and conv_affine.may_match(links)
    assert not conv_affine.may_match(frozenset(link for link in links if link[2] != "Conv"))

    searched, skipped = [], []
    apply_to_model, search_nothing = RuleIndex.apply_to_model, RuleIndex.search_nothing
    monkeypatch.setattr(
        RuleIndex,
        "apply_to_model",
        lambda self, *a, **k: searched.append(self.rules[0].name) or apply_to_model(self, *a, **k),
    )
    monkeypatch.setattr(
        RuleIndex,
        "search_nothing",
        lambda self, *a, **k: skipped.append(self.rules[0].name) or search_nothing(self, *a, **k),
    )
    result = FusePass()(ir.from_proto(model))
    # The Conv+Mul+Add blocks fold in the main graph and in both branches; the Mul before the Conv folds too.
    assert result.stats == [
        "folded 6 constant Mul/Add/Sub/Div into Conv/ConvTranspose",
        "folded 1 constant Mul/Div into the weights of the layer after it",
    ]
    assert "fold-Mul-into-Conv" in searched
    # Mul and Add are present, but no Mul reads a Mul, no Add an Add: constant-steps' rules are never tried.
    assert any(name.startswith("merge-Mul") for name in skipped)
    assert not any(name.startswith("merge-") for name in searched)
