"""How fuse applies a fusion's rewrite rules: as onnxscript's ``RewriteRuleSet`` does, with the same result, but
each node tried only against the rules whose pattern ends in its op type (``RuleIndex``), and a fusion none of
whose patterns can match the model's links between ops not searched at all (``Census``).

Private onnxscript names (tested with onnxscript 0.7.2, the range pinned in pyproject.toml): a rule's target
pattern is read to index it by op type, and rules are applied as ``RewriteRuleSet.apply_to_model`` applies
them, metadata merged the same way. No public API exposes these; this module and ``_base`` (the narrowing guard)
are the only fuse modules that reach inside onnxscript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript.rewriter import RULE_NAME_TAG, RewriteRule, _rewrite_rule
from onnxscript.rewriter._pattern_ir import NodeOutputPattern, StringConstantPattern

from onnxkit.passes._graph_utils import all_nodes

OpLink = tuple[str, int, str]


@dataclasses.dataclass(frozen=True)
class Census:
    """The op types in the model's graphs (functions and subgraphs included), and every link between two
    ops: which op reads, at which input, the output of which."""

    op_types: frozenset[str]
    links: frozenset[OpLink]

    @classmethod
    def of(cls, model: ir.Model) -> Census:
        op_types, links = set(), set()
        for node in all_nodes(model):
            op_type = node.op_type
            op_types.add(op_type)
            for index, value in enumerate(node.inputs):
                producer = value.producer() if value is not None else None
                if producer is not None:
                    links.add((op_type, index, producer.op_type))
        return cls(frozenset(op_types), frozenset(links))


@dataclasses.dataclass(frozen=True)
class _IndexedRule:
    """A rule with what its pattern says of its root node: its op type (None: any), and the op types of the
    nodes that must produce some of its inputs, by input position."""

    rule: RewriteRule
    root_op: str | None
    producer_ops: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, rule: RewriteRule) -> _IndexedRule:
        outputs = rule._target_pattern.output_nodes
        if len(outputs) != 1 or not isinstance(root_pattern := outputs[0].op, StringConstantPattern):
            return cls(rule, None, ())
        producer_ops = tuple(
            (index, producer_pattern.value())
            for index, value in enumerate(outputs[0].inputs)
            if isinstance(value, NodeOutputPattern)
            and isinstance(producer_pattern := value.producer().op, StringConstantPattern)
        )
        return cls(rule, root_pattern.value(), producer_ops)

    def may_match(self, links: frozenset[OpLink]) -> bool:
        """Whether a node may match, for all the model's ``links`` say: one of the root op type, with inputs
        from the op types the pattern names."""
        return self.root_op is None or all((self.root_op, index, op) in links for index, op in self.producer_ops)

    def fed_by_producer_ops(self, node: ir.Node) -> bool:
        """Whether the node's inputs come from the ops the pattern names. Most Mul and Add follow no Conv: the
        matcher pairs inputs by position, so it would refuse them as well, only later and slower."""
        inputs = node.inputs
        for index, op_type in self.producer_ops:
            value = inputs[index] if index < len(inputs) else None
            producer = value.producer() if value is not None else None
            if producer is None or producer.op_type != op_type:
                return False
        return True


class RuleIndex:
    """Rules applied as onnxscript's ``RewriteRuleSet.apply_to_model`` applies them, with the same result,
    but each node is tried only against the rules whose pattern ends in its op type.

    The rule set tries every rule at every node of every graph and every round, and most of a fusion's
    time went to rejecting nodes of other op types (233,000 tries on three 700-node models, for 1,250
    matches attempted). Here the rules a node is tried against are those the rule set would have tried,
    less those that refuse its op type outright, in the same order; the walk, the first rule that fires
    at a node, the graph edits and the metadata are the rule set's own.
    """

    def __init__(self, rules: Sequence[RewriteRule]) -> None:
        if any(rule.as_function for rule in rules):  # never needed by a fusion; the rule set's own path
            raise ValueError("rules that extract functions are not supported")
        self.rules = list(rules)
        self._indexed = [_IndexedRule.of(rule) for rule in rules]
        self._by_op: dict[str, list[_IndexedRule]] = {}

    def _rules_for(self, op_type: str) -> list[_IndexedRule]:
        found = self._by_op.get(op_type)
        if found is None:
            found = [r for r in self._indexed if r.root_op is None or r.root_op == op_type]
            self._by_op[op_type] = found
        return found

    def may_match(self, links: frozenset[OpLink]) -> bool:
        """Whether any rule may match a model whose links between ops are ``links``."""
        return any(indexed.may_match(links) for indexed in self._indexed)

    def search_nothing(self, model: ir.Model, *, constants: bool = True) -> None:
        """What a search that finds nothing leaves behind, without the search: the rules' hooks called, and
        (``constants``: where the model has Constant nodes) the outputs of those of the main graph and the
        functions marked with their values, shapes and types."""
        if constants:
            for graph in (model.graph, *model.functions.values()):
                onnxscript.optimizer.basic_constant_propagation(graph)
        self._visit_graph(before=True)
        self._visit_graph(before=False)

    def apply_to_model(self, model: ir.Model, *, constants: bool = True) -> int:
        """Apply the rules to the main graph, its subgraphs, then the local functions the model had; return
        how many rewrites were made. Like the rule set, it first marks the main graph's and each function's
        Constant outputs with their values (``constants``: where the model has Constant nodes). Unlike the
        rule set, no clean-up of unused nodes: the pass does it."""
        if constants:
            onnxscript.optimizer.basic_constant_propagation(model.graph)
        original_functions = list(model.functions.values())  # functions a rewrite adds are not searched
        count = self._apply_to_graph(model, model.graph)
        for function in original_functions:
            if constants:
                onnxscript.optimizer.basic_constant_propagation(function)
            count += self._apply_to_graph(model, function)
        if count:
            # The rewriter's builder may name new values after existing ones; names must stay unique.
            common_passes.NameFixPass()(model)
        return count

    def _apply_to_graph(self, model: ir.Model, graph: ir.Graph | ir.Function) -> int:
        count = 0
        self._visit_graph(before=True)
        for node in graph:  # the live list: the walk reaches the nodes a rewrite inserts after this one
            for indexed in self._rules_for(node.op_type):
                if not indexed.fed_by_producer_ops(node):
                    continue
                rule = indexed.rule
                delta = rule.try_rewrite(model, graph, node)
                if delta is None:
                    continue
                if delta.new_initializers:
                    if isinstance(graph, ir.Function):  # functions hold no initializers: the rule set skips it
                        continue
                    for initializer in delta.new_initializers:
                        graph.initializers[initializer.name] = initializer  # type: ignore[index]
                onnxscript.optimizer.basic_constant_propagation(delta.new_nodes)
                if rule.name:
                    for new_node in delta.new_nodes:
                        new_node.metadata_props[RULE_NAME_TAG] = rule.name
                ir.convenience.replace_nodes_and_values(
                    graph,
                    node,
                    delta.match.nodes if rule.remove_nodes else [],
                    delta.new_nodes,
                    delta.match.outputs,
                    delta.new_outputs,
                )
                if _rewrite_rule.merge_metadata:
                    _rewrite_rule._default_metadata_merger.copy_merged_metadata(delta.match.nodes, delta.new_nodes)
                count += 1
                break
            for attr in node.attributes.data.values():  # the dict itself: its Mapping view is slow per node
                if attr.type == ir.AttributeType.GRAPH:
                    count += self._apply_to_graph(model, attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for subgraph in attr.value:
                        count += self._apply_to_graph(model, subgraph)
        self._visit_graph(before=False)
        return count

    def _visit_graph(self, *, before: bool) -> None:
        """The rules' set-up (``before``) or clean-up hooks, called around each graph searched."""
        for rule in self.rules:
            visitor = rule.graph_pre_visitor if before else rule.graph_post_visitor
            if visitor:
                visitor()
