"""Apply rules to a graph until nothing changes: splice replacements, keep weights, check shapes.

How one application works (see docs/rules.md):

1. One ``keras.Input`` per match input (same shape and dtype) is handed to ``replacement(match, *inputs)``.
2. The mini-graph between those inputs and the returned tensors is lifted. A call of a matched layer on the
   same inputs as in the graph *keeps* that node; any other call of an original layer is a new call of it
   (emit copies its weights); every other layer is new and owned by the rewrite (``node.meta["owned"]``).
   The calls the replacement made are then removed from the layers' Keras bookkeeping, so original layers
   are left exactly as they were.
3. The mini-graph is spliced into a copy of the graph: consumers of the match's outputs read the
   replacement's outputs, the matched nodes that were not kept are removed.
4. Shapes are recomputed forward from the changed consumers, stopping where nothing changes. A layer with
   weights whose input shape changed gets fresh weights (``meta["reinitialize"]``, listed in
   `RewriteResult.reinitialized`) when its weight shapes change; a layer that cannot take the new shape
   raises `ShapeMismatchError` naming the rule, the node and the shapes.

`rewrite` repeats this to a fixed point with a worklist: after the first full scan, each pass re-matches
only around what changed.

Example:
    >>> import keras
    >>> import rewriter
    >>> x = keras.Input((8,), name="x")
    >>> h = keras.layers.Dropout(0.5, name="drop")(keras.layers.Dense(4, name="d")(x))
    >>> model = keras.Model(x, h)
    >>> result = rewriter.rewrite(model, [rewriter.Rule("no-dropout", "Dropout", rewriter.bypass())])
    >>> [layer.name for layer in result.model.layers]
    ['x', 'd']
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import networkx as nx
import numpy as np

from rewriter.emit import emit
from rewriter.errors import GraphError, LiftError, RewriteError, ShapeMismatchError
from rewriter.graph import Graph, Node, Port, TensorSpec, _map_structure
from rewriter.lift import _is_model_layer, _lift_structures, lift
from rewriter.rules import Rule, RuleSet, as_rule_set, call_node

__all__ = ["Application", "RewriteResult", "SiteMatch", "rewrite"]


# ------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Application:
    """One application of a rule.

    Attributes:
        rule: The rule's name.
        matched: Names of the matched nodes (as they were when matched).
        new: Names of the nodes the replacement added.
    """

    rule: str
    matched: tuple[str, ...]
    new: tuple[str, ...]


@dataclasses.dataclass
class RewriteResult:
    """What `rewrite` produced.

    Attributes:
        model: The new keras.Model.
        graph: The rewritten graph (``model`` is ``emit(graph)``).
        applications: One record per application, in order.
        reinitialized: Layer names that were given fresh weights because their input shape changed.
        vetoed: ``(rule, anchor, reason)`` for each match a rule's ``check`` refused.
        skipped: ``(rule, anchor, reason)`` for each match that could not be applied (e.g. an interior
            output is used outside the match).
        unverified: ``(rule, anchor, reason)`` for each application of a function-preserving rule that
            could not be checked numerically (neither where it applied nor end to end).
        passes: Number of passes over the rules.
        params_before: Parameter count of the input.
        params_after: Parameter count of ``model``.
    """

    model: keras.Model
    graph: Graph
    applications: list[Application]
    reinitialized: list[str]
    vetoed: list[tuple[str, str, str]]
    skipped: list[tuple[str, str, str]]
    unverified: list[tuple[str, str, str]]
    passes: int
    params_before: int
    params_after: int

    def counts(self) -> dict[str, int]:
        """Applications per rule name.

        Example:
            >>> result.counts()  # doctest: +SKIP
            {'fold-bn': 53}
        """
        return dict(collections.Counter(a.rule for a in self.applications))

    def report(self) -> str:
        """A readable summary: applications per rule, parameters before and after, fresh weights.

        Example:
            >>> print(result.report())  # doctest: +SKIP
            rewrite of 'resnet50': 53 applications in 2 passes
        """
        total = len(self.applications)
        lines = [f"rewrite of {self.graph.name!r}: {total} application(s) in {self.passes} pass(es)"]
        for rule, count in self.counts().items():
            lines.append(f"  {rule}: {count}")
        if not self.applications:
            lines.append("  (no rule applied)")
        delta = self.params_after - self.params_before
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,} ({delta:+,})")
        if self.reinitialized:
            lines.append(f"fresh weights (input shape changed): {', '.join(self.reinitialized)}")
        if self.vetoed:
            lines.append(f"vetoed by check(): {len(self.vetoed)}")
            lines.extend(f"  {rule} at {anchor!r}: {reason}" for rule, anchor, reason in self.vetoed[:10])
        if self.skipped:
            lines.append(f"skipped: {len(self.skipped)}")
            lines.extend(f"  {rule} at {anchor!r}: {reason}" for rule, anchor, reason in self.skipped[:10])
        if self.unverified:
            lines.append(f"function-preserving but NOT verified: {len(self.unverified)}")
            lines.extend(f"  {rule} at {anchor!r}: {reason}" for rule, anchor, reason in self.unverified[:10])
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- site match


class SiteMatch:
    """A match made by hand (the surgeries use it): the interface of `rewriter.Match` without a pattern.

    Args:
        graph: The graph the nodes belong to.
        nodes: The matched node names.
        inputs: Ports entering the match; defaults to the producers of the nodes outside the set, in
            topological then argument order. May list extra ports (e.g. the source of a skip connection).
        outputs: Ports the replacement must provide; defaults to every output of the last node.
        captures: Capture name -> node name; defaults to each node under its own name.

    Example:
        >>> site = SiteMatch(graph, ["dense"])  # doctest: +SKIP
        >>> site.inputs, site.outputs  # doctest: +SKIP
        ([Port(node='x', index=0)], [Port(node='dense', index=0)])
    """

    def __init__(
        self,
        graph: Graph,
        nodes: Sequence[str],
        *,
        inputs: Sequence[Port] | None = None,
        outputs: Sequence[Port] | None = None,
        captures: dict[str, str] | None = None,
    ) -> None:
        self.graph = graph
        self.pattern = None
        if len(nodes) > 1:
            position = {name: i for i, name in enumerate(graph.topological_names())}
            nodes = sorted(nodes, key=position.__getitem__)
        self.nodes: list[str] = list(nodes)
        members = set(self.nodes)
        if inputs is None:
            inputs = [p for name in self.nodes for p in graph.producers(name) if p.node not in members]
        self.inputs: list[Port] = list(inputs)
        if outputs is None:
            last = graph.node(self.nodes[-1])
            outputs = [Port(last.name, i) for i in range(last.num_outputs)]
        self.outputs: list[Port] = list(outputs)
        self.captures: dict[str, str] = dict(captures) if captures else {n: n for n in self.nodes}
        self.anchor: str = self.nodes[-1]

    def __getitem__(self, name: str) -> Any:
        return self.graph.node(self.captures[name]).layer

    def get(self, name: str, default: Any = None) -> Any:
        """The captured layer, or ``default``."""
        return self[name] if name in self.captures else default

    def node(self, name: str) -> Node:
        """The captured `Node`."""
        return self.graph.node(self.captures.get(name, name))

    @property
    def escaping(self) -> list[Port]:
        """Interior outputs used outside the match (or graph outputs)."""
        return _escaping(self.graph, set(self.nodes), set(self.outputs))

    def __repr__(self) -> str:
        return f"SiteMatch(nodes={self.nodes})"


def _escaping(graph: Graph, members: set[str], outputs: set[Port]) -> list[Port]:
    escaping: list[Port] = []
    graph_outputs = set(graph.outputs)
    for name in members:
        node = graph.node(name)
        for index in range(node.num_outputs):
            port = Port(name, index)
            if port in outputs:
                continue
            if port in graph_outputs or any(u.consumer not in members for u in graph.uses(port)):
                escaping.append(port)
    return escaping


# ------------------------------------------------------------------------------------------- session


class _Session:
    """The working state of one rewrite: the graph copy, layer bookkeeping and the records."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.initial_layers: set[int] = set()
        self.layer_names: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for node in graph.topological():
            if node.layer is not None:
                self.initial_layers.add(id(node.layer))
                if not node.is_input:
                    self.layer_names[node.layer_name][id(node.layer)] += 1
        self.applications: list[Application] = []
        self.reinitialized: dict[str, None] = {}
        self.shared_changes: dict[str, tuple[str, str]] = {}  # layer name -> (rule, node) that changed it
        self.renamed: dict[int, Any] = {}  # id of a new layer whose name was taken -> its renamed copy
        self.vetoed: list[tuple[str, str, str]] = []
        self.skipped: list[tuple[str, str, str]] = []
        self._temp = itertools.count()
        self._placeholders: dict[TensorSpec, list[Any]] = {}
        self.atol = 1e-4
        self.rtol = 1e-3
        self.check_locally = True
        self.inputs: Any = None  # the caller's inputs for the numeric checks (random ones if None)
        self.unverified: list[tuple[str, str, str]] = []

    def placeholders(self, specs: Sequence[TensorSpec]) -> list[Any]:
        """One symbolic input per spec; reused across applications (their calls are forgotten after)."""
        out: list[Any] = []
        used: collections.Counter[TensorSpec] = collections.Counter()
        for spec in specs:
            pool = self._placeholders.setdefault(spec, [])
            k = used[spec]
            used[spec] += 1
            if k == len(pool):
                pool.append(keras.Input(batch_shape=spec.shape, dtype=spec.dtype))
            out.append(pool[k])
        return out

    def temp_name(self) -> str:
        return f"__rewrite_new_{next(self._temp)}"

    def count_layer(self, node: Node, delta: int) -> None:
        if node.layer is None or node.is_input:
            return
        counter = self.layer_names[node.layer_name]
        counter[id(node.layer)] += delta
        if counter[id(node.layer)] <= 0:
            del counter[id(node.layer)]


@dataclasses.dataclass
class _Outcome:
    matched: tuple[str, ...]
    new: tuple[str, ...]
    touched: set[str]
    region: set[str]


# ------------------------------------------------------------------------------------------- applying


def _input_spec(graph: Graph, port: Port) -> TensorSpec:
    return graph.node(port.node).output_specs[port.index]


def _as_tensor_list(result: Any, rule: str, expected: int) -> list[Any]:
    if isinstance(result, dict):
        raise RewriteError(f"Rule {rule!r}: the replacement returned a dict; return a tensor or a list.")
    outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(outputs) != expected:
        raise RewriteError(
            f"Rule {rule!r}: the replacement returned {len(outputs)} tensor(s), but the match has "
            f"{expected} output(s) to replace."
        )
    for tensor in outputs:
        if not isinstance(tensor, keras.KerasTensor):
            raise RewriteError(
                f"Rule {rule!r}: the replacement returned {tensor!r}; expected symbolic tensors built "
                "from its inputs with the Keras functional API."
            )
    return outputs


def _depends_on_foreign_tensors(placeholders: Sequence[Any], outputs: Sequence[Any]) -> bool:
    """Whether ``outputs`` read (transitively) a tensor that is neither a placeholder nor built from one."""
    own_inputs = {id(t._keras_history.operation) for t in placeholders}
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or history.operation is None:
            return True
        if id(history.operation) in own_inputs:
            continue
        keras_node = history.operation._inbound_nodes[history.node_index]
        if id(keras_node) in seen:
            continue
        seen.add(id(keras_node))
        arguments = keras_node.arguments.keras_tensors
        if not arguments:
            return True
        stack.extend(arguments)
    return False


def _calls_from(placeholders: Sequence[Any]) -> list[Any]:
    """Every Keras call made on the placeholders or on tensors built from them, used or not.

    Found forward through ``_outbound_nodes``: a call belongs to the replacement when one of its arguments
    was built from a placeholder (calls of the original model read only the model's own tensors).
    """
    derived = {id(t) for t in placeholders}
    found: list[Any] = []
    seen: set[int] = set()
    stack = [t._keras_history.operation for t in placeholders]
    while stack:
        operation = stack.pop()
        for keras_node in list(operation._outbound_nodes):
            if id(keras_node) in seen:
                continue
            if not any(id(t) in derived for t in keras_node.arguments.keras_tensors):
                continue
            seen.add(id(keras_node))
            found.append(keras_node)
            derived.update(id(t) for t in keras_node.outputs)
            stack.append(keras_node.operation)
    return found


def _forget_calls(keras_nodes: Iterable[Any]) -> None:
    """Remove layer calls from the Keras bookkeeping of the layers involved (in place)."""
    for keras_node in keras_nodes:
        _remove_identical(keras_node.operation._inbound_nodes, keras_node)
        for tensor in keras_node.arguments.keras_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None and history.operation is not None:
                _remove_identical(history.operation._outbound_nodes, keras_node)


def _remove_identical(items: list[Any], item: Any) -> None:
    for index in range(len(items) - 1, -1, -1):
        if items[index] is item:
            del items[index]
            return


def _same_call(a: Node, b: Node) -> bool:
    try:
        return bool(a.call_args == b.call_args and a.call_kwargs == b.call_kwargs)
    except Exception:  # numpy arrays among the arguments: be conservative
        return False


def _call_replacement(session: _Session, rule: Rule, match: Any) -> tuple[Graph, list[Any], list[Port]] | str:
    """Run the replacement on placeholders; return the lifted mini-graph (or a reason to skip).

    Whatever happens (even an error half-way), every call the replacement made is removed from the Keras
    bookkeeping afterwards, so the original layers it called are left exactly as they were.
    """
    graph = session.graph
    input_ports = list(match.inputs)
    placeholders = session.placeholders([_input_spec(graph, port) for port in input_ports])
    where = f"match at {getattr(match, 'anchor', '?')!r} (nodes {list(match.nodes)})"
    try:
        try:
            result = rule.replacement(match, *placeholders)
        except RewriteError:
            raise
        except Exception as error:
            shapes = ", ".join(str(_input_spec(graph, p)) for p in input_ports)
            message = (
                f"Rule {rule.name!r}: the replacement failed on the {where} with input(s) {shapes}: "
                f"{type(error).__name__}: {_brief(error)}"
            )
            if isinstance(error, ValueError) and "shape" in str(error).lower():
                raise ShapeMismatchError(message) from error
            raise RewriteError(message) from error
        outputs = _as_tensor_list(result, rule.name, len(match.outputs))
        if _depends_on_foreign_tensors(placeholders, outputs):
            raise RewriteError(
                f"Rule {rule.name!r}: the replacement's outputs on the {where} depend on tensors that are "
                "not its inputs (a keras.Input it made, or a tensor of the original model). Build the "
                "replacement only from the tensors it receives."
            )
        try:
            mini = _lift_structures("replacement", list(placeholders), list(outputs))
        except LiftError as error:
            raise RewriteError(f"Rule {rule.name!r}: cannot read the replacement's graph: {error}") from error
    finally:
        _forget_calls(_calls_from(placeholders))
    return mini, outputs, input_ports


def _apply(session: _Session, rule: Rule, match: Any) -> _Outcome | str | None:
    """Apply ``rule``'s replacement at ``match``: an `_Outcome`, a reason to skip, or None (no change)."""
    graph = session.graph
    called = _call_replacement(session, rule, match)
    if isinstance(called, str):
        return called
    mini, _, input_ports = called
    members = list(match.nodes)
    member_set = set(members)
    if rule.function_preserving and session.check_locally:
        _check_locally(session, rule.name, match, mini, input_ports)

    # Map mini-graph ports to graph ports; detect kept nodes (same layer called on the same inputs).
    port_map: dict[Port, Port] = {}
    for index, input_name in enumerate(mini.inputs):
        port_map[Port(input_name, 0)] = input_ports[index]
    by_layer: dict[int, list[str]] = collections.defaultdict(list)
    for name in members:
        layer = graph.node(name).layer
        if layer is not None:
            by_layer[id(layer)].append(name)
    kept: set[str] = set()
    new_nodes: list[tuple[Node, list[Port]]] = []
    for mini_node in mini.topological():
        if mini_node.is_input:
            continue
        feeding = [port_map[p] for p in mini.producers(mini_node.name)]
        twin = next(
            (
                name
                for name in by_layer.get(id(mini_node.layer), [])
                if name not in kept
                and graph.producers(name) == feeding
                and _same_call(graph.node(name), mini_node)
            ),
            None,
        )
        if twin is not None:
            kept.add(twin)
            for index in range(mini_node.num_outputs):
                port_map[Port(mini_node.name, index)] = Port(twin, index)
            continue
        new_nodes.append((mini_node, feeding))
        for index in range(mini_node.num_outputs):
            port_map[Port(mini_node.name, index)] = Port(f"\0{mini_node.name}", index)

    replaced = [port_map[p] for p in mini.outputs]
    removed = [name for name in members if name not in kept]
    where = getattr(match, "anchor", members[-1] if members else "?")
    if not new_nodes and all(new == old for new, old in zip(replaced, match.outputs)) and not removed:
        return None
    for name in removed:
        if graph.node(name).is_input:
            return f"the match contains the model input {name!r}, which cannot be removed"
    escaping = _escaping(graph, set(removed), set(match.outputs))
    if escaping:
        return (
            f"interior output(s) {[f'{p.node}[{p.index}]' for p in escaping]} are used outside the match "
            "and the replacement does not keep those nodes"
        )

    _check_dtypes(graph, rule.name, match, mini, replaced)

    # Add the new nodes under temporary names.
    temp_of: dict[str, str] = {}
    added: list[str] = []
    for mini_node, feeding in new_nodes:
        temp = session.temp_name()
        temp_of[mini_node.name] = temp
        ins = [_resolve(p, temp_of) for p in feeding]
        owned = id(mini_node.layer) not in session.initial_layers
        node = Node(
            name=temp,
            op_type=mini_node.op_type,
            layer=mini_node.layer,
            config=mini_node.config,
            call_args=mini_node.call_args,
            call_kwargs=dict(mini_node.call_kwargs),
            input_specs=list(mini_node.input_specs),
            output_specs=list(mini_node.output_specs),
            output_structure=mini_node.output_structure,
            meta={"owned": True} if owned else {},
        )
        graph.add_node(node, ins)
        added.append(temp)
    replaced = [_resolve(p, temp_of) for p in replaced]

    # Rewire the consumers of the match outputs.
    moved: list[tuple[str, int, Port]] = []
    added_set = set(added)
    for old, new in zip(match.outputs, replaced):
        if old == new:
            continue
        for use in graph.uses(old):
            if use.consumer not in added_set:
                moved.append((use.consumer, use.arg_index, new))
        graph.replace_uses(old, new, exclude=added_set)

    # Remove what the replacement does not keep (consumers first).
    for name in reversed(removed):
        session.count_layer(graph.node(name), -1)
        try:
            graph.remove_node(name)
        except GraphError as error:
            raise RewriteError(f"Rule {rule.name!r} at {where!r}: {error}") from error

    final_names = _name_new_nodes(session, added)
    moved = [(final_names.get(c, c), a, Port(final_names.get(p.node, p.node), p.index)) for c, a, p in moved]

    # Recompute shapes downstream of the moved uses.
    starts = {consumer for consumer, arg, port in moved if consumer in graph}
    changed = _propagate(session, starts, rule.name)

    new_names = tuple(final_names[t] for t in added)
    region = set(new_names) | starts | {p.node for p in input_ports if p.node in graph} | kept
    touched = member_set | set(new_names) | starts | changed
    return _Outcome(tuple(members), new_names, touched, region)


def _dtype_kind(dtype: str) -> str:
    """The family of a dtype name: bool, int (signed or not), float, complex, or the name itself."""
    for kind in ("bool", "complex", "float", "int"):
        if kind in dtype:
            return kind
    return dtype


def _check_dtypes(graph: Graph, rule: str, match: Any, mini: Graph, replaced: Sequence[Port]) -> None:
    """Refuse a replacement output whose dtype family differs from the output it replaces, if it is read.

    Keras infers shapes but not dtypes strictly (an Embedding accepts float indices symbolically), so a
    float tensor reaching a consumer that read integers, or the reverse, is refused here.
    """
    for old, new in zip(match.outputs, replaced):
        if old == new:
            continue
        if new.node.startswith("\0"):
            new_spec = mini.node(new.node[1:]).output_specs[new.index]
        else:
            new_spec = _input_spec(graph, new)
        old_spec = _input_spec(graph, old)
        if _dtype_kind(old_spec.dtype) == _dtype_kind(new_spec.dtype):
            continue
        readers = sorted({use.consumer for use in graph.uses(old)})
        if readers:  # a model output may change its dtype: that is the rule's business
            raise ShapeMismatchError(
                f"Rule {rule!r}: the replacement at {match.anchor!r} gives {new_spec.dtype} where "
                f"{old.node!r} gave {old_spec.dtype} (shape {old_spec.shape}), read by {', '.join(readers)}. "
                f"Cast the replacement's output back (keras.ops.cast(y, {old_spec.dtype!r})) or rewrite the "
                "consumers too. Nothing was emitted."
            )


@contextlib.contextmanager
def _state_kept(owners: Iterable[Any]) -> Iterator[None]:
    """Restore the non-trainable variables of ``owners`` (layers or models) after a numeric check.

    A layer called with an explicit ``training=True`` updates its statistics (BatchNormalization's moving
    mean) even in a check run in inference mode; the input model and the result must not keep that.
    """
    saved: list[tuple[Any, np.ndarray]] = []
    seen: set[int] = set()
    for owner in owners:
        for variable in getattr(owner, "non_trainable_variables", None) or []:
            if id(variable) not in seen:
                seen.add(id(variable))
                saved.append((variable, keras.ops.convert_to_numpy(variable.value)))
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def _evaluate(graph: Graph, names: Iterable[str], env: dict[Port, Any]) -> None:
    """Run the nodes ``names`` (topological order) eagerly on the arrays in ``env``; add their outputs."""
    for name in names:
        node = graph.node(name)
        if node.is_input:
            continue
        outputs = keras.tree.flatten(call_node(node, [env[p] for p in graph.producers(name)]))
        for index, value in enumerate(outputs):
            env[Port(name, index)] = keras.ops.convert_to_numpy(value)


def _check_locally(session: _Session, rule: str, match: Any, mini: Graph, input_ports: list[Port]) -> None:
    """Compare the matched subgraph with its replacement (inference mode) on the same inputs.

    The inputs are random (of the match's input shapes), or, when the caller passed model inputs, the
    values the current graph computes at the match's inputs from them. A matched part that cannot run on
    its own is noted in ``session.unverified`` (the end-to-end check covers it when it runs).
    """
    graph, atol, rtol = session.graph, session.atol, session.rtol
    involved = [graph.node(name).layer for name in match.nodes] + [node.layer for node in mini.topological()]
    if session.inputs is not None:  # the values at the match come from running its ancestors
        involved += [node.layer for node in graph.topological()]
    with _state_kept(involved):
        try:
            if session.inputs is None:
                rng = np.random.default_rng(0)
                arrays = [
                    _random_array(_input_spec(graph, p).shape, _input_spec(graph, p).dtype, rng)
                    for p in input_ports
                ]
                domain = "random inputs"
            else:
                arrays = _values_at(graph, input_ports, session.inputs)
                domain = "the inputs you passed"
            before = dict(zip(input_ports, arrays))
            _evaluate(graph, match.nodes, before)
            want = [before[p] for p in match.outputs]
        except Exception as error:
            session.unverified.append(
                (rule, str(match.anchor), f"the matched layers cannot run alone: {_brief(error)}")
            )
            return
        after = {Port(name, 0): array for name, array in zip(mini.inputs, arrays)}
        try:
            _evaluate(mini, mini.topological_names(), after)
        except Exception as error:
            raise RewriteError(
                f"Function-preserving rule {rule!r}: the replacement at {match.anchor!r} cannot run on the "
                f"inputs the matched layers take: {_brief(error)}"
            ) from error
    for index, (a, b) in enumerate(zip(want, (after[p] for p in mini.outputs))):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or not np.allclose(b, a, atol=atol, rtol=rtol, equal_nan=True):
            size = float(np.max(np.abs(a.astype("float64") - b))) if a.shape == b.shape and a.size else None
            what = (
                f"differs by up to {size:.3g}" if size is not None else f"has shape {b.shape}, not {a.shape}"
            )
            raise RewriteError(
                f"Function-preserving rule {rule!r} changes what the model computes at {match.anchor!r} "
                f"(nodes {list(match.nodes)}): output {index} of the replacement {what} on {domain} "
                f"(tolerance atol={atol}, rtol={rtol}). Fix the replacement (or its computed weights), or "
                "drop function_preserving=True."
            )


def _values_at(graph: Graph, ports: Sequence[Port], inputs: Any) -> list[np.ndarray]:
    """The values ``graph`` computes at ``ports`` from the model inputs ``inputs`` (eagerly, inference)."""
    names = keras.tree.flatten(graph.input_structure)
    arrays = keras.tree.flatten(inputs)
    if len(names) != len(arrays):
        raise RewriteError(
            f"Expected {len(names)} model input(s) for inputs=. Received: {len(arrays)} array(s)."
        )
    env = {Port(name, 0): keras.ops.convert_to_numpy(array) for name, array in zip(names, arrays)}
    needed = {p.node for p in ports}
    for port in ports:
        needed |= nx.ancestors(graph.nx, port.node)
    _evaluate(graph, [n for n in graph.topological_names() if n in needed], env)
    return [env[p] for p in ports]


def _resolve(port: Port, temp_of: dict[str, str]) -> Port:
    if port.node.startswith("\0"):
        return Port(temp_of[port.node[1:]], port.index)
    return port


def _name_new_nodes(session: _Session, added: list[str]) -> dict[str, str]:
    """Give the new nodes readable names and make layer names unique; return temp name -> final name."""
    graph = session.graph
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for temp in added:
        node = graph.node(temp)
        if node.meta.get("owned"):
            _unique_layer_name(session, node)
        base = node.layer_name if node.layer is not None else node.op_type.lower()
        # A further call of a layer already in the graph is "layer@k"; a new layer's node is "layer_k".
        further_call = node.layer is not None and session.layer_names[node.layer_name][id(node.layer)] > 0
        name = base
        k = 0
        while name in graph or name in taken:
            k += 1
            name = f"{base}@{k}" if further_call or not node.meta.get("owned") else f"{base}_{k}"
        taken.add(name)
        mapping[temp] = name
        session.count_layer(node, +1)
    if mapping:
        nx.relabel_nodes(graph.nx, mapping, copy=False)
        for name in mapping.values():
            graph.node(name).name = name
        graph.output_structure = _map_structure(
            lambda p: Port(mapping.get(p.node, p.node), p.index) if isinstance(p, Port) else p,
            graph.output_structure,
        )
        graph._topo_cache = None
    return mapping


def _unique_layer_name(session: _Session, node: Node) -> None:
    """Rename an owned layer whose name another layer of the graph already has (by a renamed copy)."""
    if id(node.layer) in session.renamed:  # a further call of a layer already copied under a new name
        node.layer = session.renamed[id(node.layer)]
        node.config = dict(node.layer.get_config())
        return
    name = node.layer_name
    others = [lid for lid in session.layer_names.get(name, {}) if lid != id(node.layer)]
    if not others:
        return
    k = 1
    while session.layer_names.get(f"{name}_{k}"):
        k += 1
    new_name = f"{name}_{k}"
    layer = node.layer
    if not isinstance(layer, keras.layers.Layer) or _is_model_layer(layer):
        node.config = {**(node.config or {}), "name": new_name}
        return
    try:
        config = dict(layer.get_config())
        config["name"] = new_name
        copy = type(layer).from_config(config)
        tensors = [keras.KerasTensor(s.shape, dtype=s.dtype) for s in node.input_specs]
        call_node(node, tensors, copy)
        _forget_calls(list(copy._inbound_nodes))
        if layer.weights:
            copy.set_weights(layer.get_weights())
    except Exception as error:
        raise RewriteError(
            f"The new layer {name!r} has the name of another layer of the model and cannot be copied under "
            f"a new name ({error}). Give it a unique name."
        ) from error
    session.renamed[id(layer)] = copy
    node.layer = copy
    node.config = dict(copy.get_config())


# ------------------------------------------------------------------------------------------- shapes


def _specs_of(result: Any) -> list[TensorSpec]:
    return [TensorSpec(tuple(t.shape), str(t.dtype)) for t in keras.tree.flatten(result)]


def _describe_specs(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(str(s) for s in specs) or "-"


def _brief(error: Any) -> str:
    """A Keras error as one readable line: no colour codes, no argument dump, at most 300 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = text.split("Arguments received by")[0]
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _mismatch(rule: str, node: Node, old: Sequence[TensorSpec], new: Sequence[TensorSpec], why: Any) -> Any:
    why = _brief(why)
    return ShapeMismatchError(
        f"Rule {rule!r}: node {node.name!r} ({node.op_type}, layer {node.layer_name!r}) cannot take its new "
        f"input shape(s) {_describe_specs(new)} (it had {_describe_specs(old)}): {why}. Make the "
        f"replacement produce {_describe_specs(old)}, or rewrite {node.name!r} too. Nothing was emitted."
    )


def _infer(node: Node, specs: Sequence[TensorSpec], rule: str) -> tuple[list[TensorSpec], Any, bool]:
    """Output specs of ``node`` on inputs ``specs``; a rebuilt layer and True when its weights must be new."""
    tensors = [keras.KerasTensor(s.shape, dtype=s.dtype) for s in specs]
    layer = node.layer
    weighted = bool(getattr(layer, "weights", None))
    if weighted and node.config is not None and not _is_model_layer(layer):
        try:
            probe = type(layer).from_config(dict(node.config))
            result = call_node(node, tensors, probe)
        except Exception as error:
            raise _mismatch(rule, node, node.input_specs, specs, error) from None
        _forget_calls(list(probe._inbound_nodes))
        same = [tuple(w.shape) for w in probe.weights] == [tuple(w.shape) for w in layer.weights]
        return _specs_of(result), (None if same else probe), not same
    before = len(layer._inbound_nodes)
    try:
        result = call_node(node, tensors)
    except Exception as error:
        raise _mismatch(rule, node, node.input_specs, specs, error) from None
    finally:
        del layer._inbound_nodes[before:]
    return _specs_of(result), None, False


def _propagate(session: _Session, starts: set[str], rule: str) -> set[str]:
    """Recompute specs forward from ``starts`` in topological order; return the nodes whose specs changed."""
    graph = session.graph
    pending = [n for n in starts if _incoming_specs(graph, n) != graph.node(n).input_specs]
    if not pending:
        return set()
    position = {name: i for i, name in enumerate(graph.topological_names())}
    heap = [(position[n], n) for n in pending]
    heapq.heapify(heap)
    done: set[str] = set()
    changed: set[str] = set()
    while heap:
        _, name = heapq.heappop(heap)
        if name in done:
            continue
        done.add(name)
        node = graph.node(name)
        specs = _incoming_specs(graph, name)
        if specs == node.input_specs:
            continue
        outputs, probe, fresh = _infer(node, specs, rule)
        node.input_specs = specs
        changed.add(name)
        if fresh:
            _reinitialize(session, node, probe, rule)
        if outputs != node.output_specs:
            if len(outputs) != len(node.output_specs):
                raise _mismatch(rule, node, node.input_specs, specs, "its number of outputs changed")
            node.output_specs = outputs
            for consumer in graph.consumer_nodes(name):
                heapq.heappush(heap, (position[consumer], consumer))
    return changed


def _incoming_specs(graph: Graph, name: str) -> list[TensorSpec]:
    return [_input_spec(graph, p) for p in graph.producers(name)]


def _reinitialize(session: _Session, node: Node, probe: Any, rule: str) -> None:
    """Give ``node``'s layer (all its calls, if shared) fresh weights of the new shape.

    A call of a shared layer that does not fit the new weights yet is noted, not refused: a later
    application may change its input too (a rule applied at every call of a shared layer). Before emitting,
    `_check_shared_layers` refuses the calls that still disagree.
    """
    graph = session.graph
    calls = graph.calls_of(node.layer)
    for other in calls:
        if other is not node and _misfit(other, probe) is not None:
            session.shared_changes.setdefault(node.layer_name, (rule, node.name))
            break
    _forget_calls(list(probe._inbound_nodes))
    for call in calls:
        if call.meta.get("owned"):
            call.layer = probe
            call.config = dict(probe.get_config())
        else:
            call.meta["reinitialize"] = True
        call.meta.pop("weights", None)
        session.reinitialized[call.layer_name] = None


def _misfit(node: Node, layer: Any) -> str | None:
    """Why ``layer`` cannot be called as ``node`` on ``node``'s input specs, or None when it can."""
    tensors = [keras.KerasTensor(s.shape, dtype=s.dtype) for s in node.input_specs]
    before = len(layer._inbound_nodes)
    try:
        call_node(node, tensors, layer)
    except Exception as error:
        return _brief(error)
    finally:
        del layer._inbound_nodes[before:]
    return None


def _check_shared_layers(session: _Session) -> None:
    """Refuse a shared layer whose calls, after every application, still need different weight shapes."""
    if not session.shared_changes:
        return
    calls_by_layer: dict[str, list[Node]] = collections.defaultdict(list)
    for node in session.graph.topological():
        if not node.is_input and node.layer_name in session.shared_changes:
            calls_by_layer[node.layer_name].append(node)
    for layer_name, calls in calls_by_layer.items():
        first = calls[0]
        if len(calls) < 2 or first.config is None or _is_model_layer(first.layer):
            continue
        probe = type(first.layer).from_config(dict(first.config))
        reason = _misfit(first, probe)
        misfits = [(other, _misfit(other, probe)) for other in calls[1:]] if reason is None else []
        _forget_calls(list(probe._inbound_nodes))
        for other, why in misfits:
            if why is None:
                continue
            rule, changed = session.shared_changes[layer_name]
            raise ShapeMismatchError(
                f"Rule {rule!r}: layer {layer_name!r} is shared by {[c.name for c in calls]}; the new input "
                f"shape of {changed!r} ({_describe_specs(session.graph.node(changed).input_specs)}) needs "
                f"other weights than its call {other.name!r} ({_describe_specs(other.input_specs)}): {why}. "
                "Rewrite every call of the shared layer, or none. Nothing was emitted."
            )


# ------------------------------------------------------------------------------------------- driver


def _pattern_depth(pattern: Any) -> int:
    nodes = getattr(pattern, "nodes", None)
    try:
        return max(1, len(nodes))  # type: ignore[arg-type]
    except TypeError:
        return 8


def _neighbourhood(graph: Graph, seeds: Iterable[str], depth: int, *, both_ways: bool = False) -> set[str]:
    """Where a pattern of ``depth`` nodes may newly match after a change at ``seeds``: the anchors to try.

    A one-sink pattern is anchored at its sink, downstream of every matched node, so the anchor is among
    the consumers (up to ``depth`` steps) of the seeds or of their producers (a change may also change the
    consumers of a producer). A pattern with several sinks is anchored at its first sink, which may sit on
    another branch: then every node within ``depth`` steps either way is a candidate (``both_ways``).
    """
    start = {s for s in seeds if s in graph}
    for name in list(start):
        start.update(graph.producer_nodes(name))
    found = set(start)
    frontier = set(start)
    for _ in range(depth):
        following: set[str] = set()
        for name in frontier:
            neighbours = graph.consumer_nodes(name)
            if both_ways:
                neighbours = [*neighbours, *graph.producer_nodes(name)]
            for neighbour in neighbours:
                if neighbour not in found:
                    found.add(neighbour)
                    following.add(neighbour)
        if not following:
            break
        frontier = following
    return found


def _find(graph: Graph, pattern: Any, anchors: set[str] | None) -> list[Any]:
    from rewriter.match import find

    if anchors is None:
        return list(find(graph, pattern))
    return list(find(graph, pattern, anchors=anchors))


def _count_params(model_or_graph: Any) -> int:
    if isinstance(model_or_graph, keras.Model):
        return int(model_or_graph.count_params())
    seen: set[int] = set()
    total = 0
    for node in model_or_graph.topological():
        layer = node.layer
        if layer is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        total += sum(int(np.prod(w.shape)) for w in getattr(layer, "weights", []))
    return total


def _run_passes(session: _Session, rules: RuleSet, max_passes: int, fixed_point: bool) -> int:
    graph = session.graph
    depth = max((_pattern_depth(rule.pattern) for rule in rules), default=1)
    several_sinks = any(len(getattr(rule.pattern, "sinks", ())) > 1 for rule in rules)
    anchors: set[str] | None = None
    passes = 0
    for pass_index in range(max_passes + 1):
        passes = pass_index + 1
        fired: collections.Counter[str] = collections.Counter()
        region: set[str] = set()
        frozen: set[str] = set()  # matched or created in this pass: not matched again before the next
        for rule in rules:
            if anchors is not None:
                anchors = {a for a in anchors if a in graph}
                if not anchors:
                    break
            round_anchors = anchors
            while True:
                changed_since_find: set[str] = set()
                retry: set[str] = set()
                for match in _find(graph, rule.pattern, round_anchors):
                    members = list(match.nodes)
                    if any(name in frozen or name not in graph for name in members):
                        continue
                    anchor = str(getattr(match, "anchor", members[-1] if members else "?"))
                    if any(name in changed_since_find for name in members):
                        retry.add(anchor)  # found before a neighbouring change: match it again
                        continue
                    reason = rule.veto(match)
                    if reason is not None:
                        session.vetoed.append((rule.name, anchor, reason))
                        continue
                    outcome = _apply(session, rule, match)
                    if outcome is None:
                        continue
                    if isinstance(outcome, str):
                        session.skipped.append((rule.name, anchor, outcome))
                        continue
                    fired[rule.name] += 1
                    session.applications.append(Application(rule.name, outcome.matched, outcome.new))
                    frozen |= set(outcome.matched) | set(outcome.new)
                    changed_since_find |= outcome.touched
                    region |= outcome.region
                    if anchors is not None:
                        anchors |= outcome.region
                round_anchors = {a for a in retry if a in graph and a not in frozen}
                if not round_anchors:
                    break
        if not fired:
            return passes
        if pass_index == max_passes:
            names = ", ".join(f"{name} ({count}x)" for name, count in fired.most_common())
            raise RewriteError(
                f"No fixed point after {max_passes} passes: rules still firing in the last pass: {names}. "
                "A rule whose output matches its own pattern fires forever; add a check= that refuses "
                "already-rewritten places, or pass fixed_point=False for a single pass."
            )
        if not fixed_point:
            return passes
        anchors = _neighbourhood(graph, region, depth, both_ways=several_sinks)
    return passes


def _layer_names(graph: Graph) -> set[str]:
    return {node.layer_name for node in graph.topological() if not node.is_input}


def _renumber_calls(graph: Graph) -> None:
    calls: dict[int, int] = {}
    for node in graph.topological():
        if node.layer is None:
            continue
        node.call_index = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = node.call_index + 1


def _random_array(shape: Sequence[int | None], dtype: str, rng: np.random.Generator) -> np.ndarray:
    concrete = tuple(2 if i == 0 and d is None else (3 if d is None else int(d)) for i, d in enumerate(shape))
    if "int" in dtype:
        return rng.integers(0, 8, size=concrete).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, size=concrete).astype(bool)
    return rng.standard_normal(concrete).astype(dtype)


def _random_inputs(model: keras.Model, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)

    def make(tensor: Any) -> np.ndarray:
        return _random_array(tuple(tensor.shape), str(tensor.dtype), rng)

    structure = getattr(model, "_inputs_struct", None)
    return keras.tree.map_structure(make, structure if structure is not None else model.inputs)


class _FunctionChanged(RewriteError):
    """The end-to-end numeric check of function-preserving rules failed."""


def _verify_function(
    reference: keras.Model, rewritten: keras.Model, inputs: Any, rules: list[str], atol: float, rtol: float
) -> None:
    if inputs is None:
        inputs = _random_inputs(reference)
    with _state_kept([reference, rewritten]):
        want = [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(reference(inputs, training=False))]
        got = [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(rewritten(inputs, training=False))]
    for index, (a, b) in enumerate(zip(want, got)):
        if a.shape != b.shape:
            raise _FunctionChanged(
                f"Function-preserving rule(s) {rules} changed output {index}'s shape from {a.shape} to "
                f"{b.shape}."
            )
        error = float(np.max(np.abs(a.astype("float64") - b.astype("float64")))) if a.size else 0.0
        if not np.allclose(b, a, atol=atol, rtol=rtol):
            raise _FunctionChanged(
                f"Function-preserving rule(s) {rules} changed what the model computes: output {index} "
                f"differs by up to {error:.3g} (tolerance atol={atol}, rtol={rtol}). Check the rule's "
                "replacement (and its computed weights), or drop function_preserving=True."
            )


def rewrite(
    model_or_graph: keras.Model | Graph,
    rules: Rule | RuleSet | Iterable[Rule],
    *,
    max_passes: int = 20,
    fixed_point: bool = True,
    inputs: Any = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    name: str | None = None,
) -> RewriteResult:
    """Apply ``rules`` to a copy of the model's graph until no rule fires, then emit a new model.

    Args:
        model_or_graph: A keras.Model (lifted first) or a `Graph`; neither is changed.
        rules: A rule, a list of rules or a `RuleSet`; earlier rules have priority.
        max_passes: Bound on passes that change the graph. Raise `RewriteError` if rules still fire after it.
        fixed_point: If False, run a single pass (each rule over the graph once, no re-matching).
        inputs: Inputs for the numeric check of function-preserving rules (random inputs otherwise).
        atol: Absolute tolerance of that check.
        rtol: Relative tolerance of that check.
        name: Name of the new model (defaults to the input's).

    Returns:
        A `RewriteResult` (``.model``, ``.graph``, ``.applications``, ``.reinitialized``, ``.report()``).

    Raises:
        RewriteError: A replacement fails; no fixed point within ``max_passes``; a function-preserving
            rule changed the outputs.
        ShapeMismatchError: A replacement's output does not fit a consumer (nothing is emitted).

    Example:
        >>> result = rewriter.rewrite(model, [rewriter.Rule("relu6", "ReLU", rewriter.replace_with(
        ...     lambda m: keras.layers.ReLU(max_value=6.0)))])  # doctest: +SKIP
        >>> print(result.report())  # doctest: +SKIP
    """
    rule_set = as_rule_set(rules)
    if max_passes < 1:
        raise RewriteError(f"Expected max_passes >= 1. Received: max_passes={max_passes}.")
    source_graph, source_model = _source_of(model_or_graph)
    options = (rule_set, max_passes, fixed_point, inputs, atol, rtol, name)
    # When every rule preserves the function, one end-to-end check on the rewritten model says all, and
    # costs one forward pass. Only if it fails is the rewrite run again with a check at each application,
    # which names the rule and the place that changed the function.
    if not all(rule.function_preserving for rule in rule_set):
        return _rewrite_once(source_graph, source_model, options, check_locally=True)
    try:
        return _rewrite_once(source_graph, source_model, options, check_locally=False)
    except _FunctionChanged as end_to_end:
        _rewrite_once(source_graph, source_model, options, check_locally=True)
        raise end_to_end from None


def _rewrite_once(
    source_graph: Graph, source_model: keras.Model | None, options: tuple[Any, ...], *, check_locally: bool
) -> RewriteResult:
    rule_set, max_passes, fixed_point, inputs, atol, rtol, name = options
    session = _Session(source_graph.copy())
    session.atol, session.rtol = atol, rtol
    session.inputs = inputs
    session.check_locally = check_locally
    passes = _run_passes(session, rule_set, max_passes, fixed_point)
    return _finish(session, source_graph, source_model, rule_set, passes, inputs, atol, rtol, name)


def _source_of(model_or_graph: Any) -> tuple[Graph, keras.Model | None]:
    """The graph to rewrite (a model is lifted; neither is changed later) and the model, if one was given."""
    if isinstance(model_or_graph, Graph):
        return model_or_graph, None
    if isinstance(model_or_graph, keras.Model):
        return lift(model_or_graph), model_or_graph
    raise RewriteError(
        f"Expected a keras.Model or a rewriter.Graph. Received: {model_or_graph!r} "
        f"of type {type(model_or_graph).__name__}."
    )


def _finish(
    session: _Session,
    source_graph: Graph,
    source_model: keras.Model | None,
    rules: Sequence[Rule] | None,
    passes: int,
    inputs: Any,
    atol: float,
    rtol: float,
    name: str | None,
) -> RewriteResult:
    graph = session.graph
    _check_shared_layers(session)
    _renumber_calls(graph)
    try:
        graph.verify()
    except GraphError as error:
        raise RewriteError(f"The rewritten graph is inconsistent: {error}") from error
    model = emit(graph, name=name)
    if rules is not None:
        applied = {a.rule for a in session.applications}
        preserving = [r.name for r in rules if r.function_preserving and r.name in applied]
        if preserving and all(r.function_preserving for r in rules if r.name in applied):
            reference = source_model if source_model is not None else emit(source_graph)
            _verify_function(reference, model, inputs, preserving, atol, rtol)
            session.unverified.clear()  # the end-to-end check covered them
    present = _layer_names(graph)
    return RewriteResult(
        model=model,
        graph=graph,
        applications=list(session.applications),
        reinitialized=[name for name in session.reinitialized if name in present],
        vetoed=list(session.vetoed),
        skipped=list(session.skipped),
        unverified=list(session.unverified),
        passes=passes,
        params_before=_count_params(source_model if source_model is not None else source_graph),
        params_after=int(model.count_params()),
    )


def apply_at(
    model_or_graph: keras.Model | Graph,
    sites: Callable[[Graph], Iterable[Any]],
    replacement: Callable[..., Any],
    *,
    label: str,
    name: str | None = None,
) -> RewriteResult:
    """Apply ``replacement`` at hand-made matches (``sites(graph)`` returns `SiteMatch` objects).

    Used by the surgeries; one pass, each site once.

    Example:
        >>> apply_at(model, lambda g: [SiteMatch(g, ["d30"])], bypass(), label="remove")  # doctest: +SKIP
    """
    source_graph, source_model = _source_of(model_or_graph)
    session = _Session(source_graph.copy())
    rule = _SiteRule(label, replacement)
    for site in sites(session.graph):  # a generator: each site is made on the current graph
        outcome = _apply(session, rule, site)  # type: ignore[arg-type]
        if isinstance(outcome, str):
            raise RewriteError(f"{label}: cannot apply at {site.nodes}: {outcome}.")
        if outcome is not None:
            session.applications.append(Application(label, outcome.matched, outcome.new))
    return _finish(session, source_graph, source_model, None, 1, None, 0.0, 0.0, name)


@dataclasses.dataclass
class _SiteRule:
    name: str
    replacement: Callable[..., Any]
    function_preserving: bool = False
