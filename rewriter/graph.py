"""The graph: one node per layer *call*, edges from an output of a producer to an argument of a consumer.

A `Graph` wraps a networkx `MultiDiGraph` (exposed as `graph.nx`) whose nodes are keyed by unique names
and carry a `Node` record under the attribute ``"node"``. Each edge carries ``out_index`` (which output of
the producer) and ``arg_index`` (which tensor argument of the consumer). A `MultiDiGraph` keeps both
edges of ``ops.add(x, x)``.

Example:
    >>> import keras
    >>> import rewriter
    >>> x = keras.Input((4,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(2, name="d")(x))
    >>> graph = rewriter.lift(model)
    >>> [node.name for node in graph.topological()]
    ['x', 'd']
    >>> graph.producers("d")
    [Port(node='x', index=0)]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import networkx as nx

from rewriter.errors import GraphError

__all__ = ["Graph", "Node", "Port", "TensorRef", "TensorSpec", "Use"]


class Port(NamedTuple):
    """One output tensor of a node: ``Port("conv", 0)`` is the first output of node ``conv``."""

    node: str
    index: int = 0


class Use(NamedTuple):
    """One use of a tensor: node ``consumer`` reads it as its tensor argument ``arg_index``."""

    consumer: str
    arg_index: int
    out_index: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Placeholder for the ``index``-th tensor argument inside a node's recorded call arguments."""

    index: int

    def __repr__(self) -> str:
        return f"<tensor {self.index}>"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor; ``None`` in the shape is an unknown dimension (usually the batch)."""

    shape: tuple[int | None, ...]
    dtype: str

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def compatible_with(self, other: TensorSpec) -> bool:
        """Whether two specs can describe the same tensor (``None`` matches any size)."""
        if self.dtype != other.dtype or len(self.shape) != len(other.shape):
            return False
        return all(a is None or b is None or a == b for a, b in zip(self.shape, other.shape))

    def __str__(self) -> str:
        dims = ", ".join("None" if d is None else str(d) for d in self.shape)
        return f"({dims}{',' if len(self.shape) == 1 else ''}) {self.dtype}"


@dataclasses.dataclass(eq=False)
class Node:
    """One call of a Keras layer or operation.

    Attributes:
        name: Unique name in the graph. The first call of a layer is named after the layer; further calls
            of a shared layer are named ``"<layer>@<k>"``.
        op_type: Class name of the operation (``"Conv2D"``, ``"Add"`` for ``ops.add``, ``"InputLayer"``).
        layer: The Keras layer or operation object (a read-only reference; never mutated by the engine).
            ``None`` for a node created by a rewrite until it is emitted.
        config: The layer's ``get_config()`` (``None`` when the layer has none).
        call_args: Positional call arguments, with tensors replaced by `TensorRef` placeholders.
        call_kwargs: Keyword call arguments (``training``, ``mask``, ``axis`` ...), tensors as `TensorRef`.
        input_specs: Spec of each tensor argument, in `TensorRef` order.
        output_specs: Spec of each output, in flattened order.
        output_structure: Output indices (into ``output_specs``) in the structure the call returns: a
            nested model's own structure (for example ``{"b": 2, "a": [0, 1]}``), a flat list of indices
            for other multi-output layers, ``0`` for a single tensor.
        call_index: Which call of a shared layer this is, within the graph (0 for the first).
        meta: Free-form annotations (for example ``{"reinitialize": True}`` after a rewrite).
    """

    name: str
    op_type: str
    layer: Any
    config: dict[str, Any] | None
    call_args: tuple[Any, ...] = ()
    call_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_specs: list[TensorSpec] = dataclasses.field(default_factory=list)
    output_specs: list[TensorSpec] = dataclasses.field(default_factory=list)
    output_structure: Any = 0
    call_index: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_input(self) -> bool:
        """Whether this node is a model input."""
        return self.op_type == "InputLayer"

    @property
    def num_inputs(self) -> int:
        """Number of tensor arguments."""
        return len(self.input_specs)

    @property
    def num_outputs(self) -> int:
        """Number of (flattened) outputs."""
        return len(self.output_specs)

    @property
    def layer_name(self) -> str:
        """Name of the Keras layer (shared by every call of a shared layer) as it will be emitted."""
        if self.config and isinstance(self.config.get("name"), str):
            return self.config["name"]
        return getattr(self.layer, "name", None) or self.name

    def non_tensor_arguments(self) -> dict[str, Any]:
        """Call keyword arguments that are not tensors (``training``, ``axis`` ...).

        Example:
            >>> node.non_tensor_arguments()  # doctest: +SKIP
            {'training': False}
        """
        return {k: v for k, v in self.call_kwargs.items() if not _contains_ref(v)}

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op_type})"


def _contains_ref(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            return True
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


class Graph:
    """A Keras model as a networkx `MultiDiGraph` of layer calls.

    Args:
        name: The model's name.

    Attributes:
        nx: The underlying ``networkx.MultiDiGraph``; each node has a `Node` under ``"node"`` and its
            ``op_type``; each edge has ``out_index`` and ``arg_index``.
        name: Model name.
        inputs: Input node names, in the model's flattened input order.
        input_structure: The model's input structure (a name, list or dict of input node names).
        output_structure: The model's output structure, with a `Port` for each output tensor.
        meta: Free-form annotations (``model_class`` is ``"Sequential"`` for a lifted Sequential).
    """

    def __init__(self, name: str = "model") -> None:
        self.nx: nx.MultiDiGraph = nx.MultiDiGraph()
        self.name = name
        self.inputs: list[str] = []
        self.input_structure: Any = None
        self.output_structure: Any = None
        self.meta: dict[str, Any] = {}
        self._order_counter = itertools.count()
        self._topo_cache: list[str] | None = None

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __contains__(self, name: object) -> bool:
        return name in self.nx

    def __iter__(self) -> Iterator[Node]:
        return iter(self.topological())

    def node(self, name: str) -> Node:
        """The `Node` called ``name``.

        Raises:
            GraphError: No node has that name.

        Example:
            >>> graph.node("d").config["units"]  # doctest: +SKIP
            2
        """
        try:
            return self.nx.nodes[name]["node"]
        except KeyError:
            raise GraphError(
                f"No node named {name!r} in graph {self.name!r}. "
                f"Known nodes include: {', '.join(list(self.nx.nodes)[:8])}."
            ) from None

    @property
    def outputs(self) -> list[Port]:
        """Output ports in the model's flattened output order."""
        return [p for p in _flatten(self.output_structure) if isinstance(p, Port)]

    def topological(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties broken by insertion order).

        Example:
            >>> [n.op_type for n in graph.topological()]  # doctest: +SKIP
            ['InputLayer', 'Conv2D', 'ReLU']
        """
        return [self.nx.nodes[n]["node"] for n in self.topological_names()]

    def topological_names(self) -> list[str]:
        """Node names in the order of `topological`."""
        if self._topo_cache is None:
            order = self.nx.nodes
            try:
                self._topo_cache = list(
                    nx.lexicographical_topological_sort(self.nx, key=lambda n: order[n]["order"])
                )
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(self.nx)
                raise GraphError(
                    f"Graph {self.name!r} has a cycle through {[e[0] for e in cycle]}; "
                    "a Keras functional model must be acyclic."
                ) from None
        return list(self._topo_cache)

    def nodes_of_type(self, *op_types: str) -> list[Node]:
        """Nodes whose ``op_type`` is one of ``op_types``, in topological order."""
        wanted = set(op_types)
        return [n for n in self.topological() if n.op_type in wanted]

    def producers(self, name: str) -> list[Port]:
        """The port feeding each tensor argument of ``name``, in argument order.

        Raises:
            GraphError: An argument is unconnected (the graph is broken).

        Example:
            >>> graph.producers("add")  # ops.add(h, h): both arguments read h  # doctest: +SKIP
            [Port(node='h', index=0), Port(node='h', index=0)]
        """
        node = self.node(name)
        ports: list[Port | None] = [None] * node.num_inputs
        for src, _, data in self.nx.in_edges(name, data=True):
            ports[data["arg_index"]] = Port(src, data["out_index"])
        missing = [i for i, p in enumerate(ports) if p is None]
        if missing:
            raise GraphError(f"Node {name!r} has unconnected tensor arguments {missing}.")
        return ports  # type: ignore[return-value]

    def producer_nodes(self, name: str) -> list[str]:
        """Distinct producer node names of ``name``, in argument order."""
        return list(dict.fromkeys(p.node for p in self.producers(name)))

    def uses(self, port: Port) -> list[Use]:
        """Every use of output ``port`` by other nodes (not counting graph outputs).

        Example:
            >>> graph.uses(Port("lstm", 2))  # who reads the LSTM's cell state  # doctest: +SKIP
            [Use(consumer='cat', arg_index=2, out_index=2)]
        """
        return sorted(
            Use(dst, data["arg_index"], data["out_index"])
            for _, dst, data in self.nx.out_edges(port.node, data=True)
            if data["out_index"] == port.index
        )

    def consumers(self, name: str) -> list[Use]:
        """Every use of any output of ``name``, sorted by consumer then argument.

        Example:
            >>> graph.consumers("x")  # doctest: +SKIP
            [Use(consumer='left', arg_index=0, out_index=0), Use(consumer='right', arg_index=0, out_index=0)]
        """
        return sorted(
            Use(dst, data["arg_index"], data["out_index"])
            for _, dst, data in self.nx.out_edges(name, data=True)
        )

    def consumer_nodes(self, name: str) -> list[str]:
        """Distinct consumer node names of ``name``."""
        return list(dict.fromkeys(u.consumer for u in self.consumers(name)))

    def is_output(self, port: Port) -> bool:
        """Whether ``port`` is one of the graph's outputs."""
        return port in self.outputs

    def output_nodes(self) -> list[str]:
        """Names of nodes that produce a graph output."""
        return list(dict.fromkeys(p.node for p in self.outputs))

    def calls_of(self, layer: Any) -> list[Node]:
        """Every node calling the Keras object ``layer`` (several for a shared layer).

        Example:
            >>> [n.name for n in graph.calls_of(model.get_layer("shared"))]  # doctest: +SKIP
            ['shared', 'shared@1']
        """
        return [n for n in self.topological() if n.layer is layer]

    def layers(self) -> list[Any]:
        """Distinct Keras layer objects in topological order of their first call."""
        seen: dict[int, Any] = {}
        for n in self.topological():
            if n.layer is not None and id(n.layer) not in seen:
                seen[id(n.layer)] = n.layer
        return list(seen.values())

    # ----------------------------------------------------------------- editing

    def add_node(self, node: Node, inputs: Iterable[Port] = ()) -> Node:
        """Add ``node`` with its tensor arguments connected to ``inputs`` (in argument order).

        Raises:
            GraphError: The name is taken or an input port does not exist.

        Example:
            >>> relu = keras.layers.ReLU(name="relu")  # doctest: +SKIP
            >>> spec = graph.node("d").output_specs[0]  # doctest: +SKIP
            >>> node = Node("relu", "ReLU", relu, relu.get_config(), call_args=(TensorRef(0),),
            ...             input_specs=[spec], output_specs=[spec])  # doctest: +SKIP
            >>> graph.add_node(node, [Port("d", 0)])  # doctest: +SKIP
        """
        if node.name in self.nx:
            raise GraphError(f"A node named {node.name!r} already exists in graph {self.name!r}.")
        inputs = list(inputs)
        for port in inputs:
            self._check_port(port)
        self.nx.add_node(node.name, node=node, op_type=node.op_type, order=next(self._order_counter))
        for arg_index, port in enumerate(inputs):
            self.nx.add_edge(port.node, node.name, out_index=port.index, arg_index=arg_index)
        self._topo_cache = None
        return node

    def remove_node(self, name: str) -> None:
        """Remove ``name`` and its edges. Its consumers must be rewired first.

        Raises:
            GraphError: The node still has consumers or produces a graph output.

        Example:
            >>> graph.replace_uses(Port("relu", 0), Port("d", 0))  # doctest: +SKIP
            >>> graph.remove_node("relu")  # doctest: +SKIP
        """
        if self.nx.out_degree(name):
            raise GraphError(
                f"Cannot remove {name!r}: it still feeds {self.consumer_nodes(name)}. "
                "Rewire its uses first (Graph.replace_uses)."
            )
        if any(p.node == name for p in self.outputs):
            raise GraphError(f"Cannot remove {name!r}: it produces a graph output.")
        self.nx.remove_node(name)
        if name in self.inputs:
            self.inputs.remove(name)
        self._topo_cache = None

    def set_inputs(self, name: str, inputs: Iterable[Port]) -> None:
        """Reconnect the tensor arguments of ``name`` to ``inputs``, in argument order.

        Example:
            >>> graph.set_inputs("sum", [Port("right", 0), Port("left", 0)])  # doctest: +SKIP
        """
        inputs = list(inputs)
        for port in inputs:
            self._check_port(port)
        self.nx.remove_edges_from(list(self.nx.in_edges(name, keys=True)))
        for arg_index, port in enumerate(inputs):
            self.nx.add_edge(port.node, name, out_index=port.index, arg_index=arg_index)
        self._topo_cache = None

    def replace_uses(self, old: Port, new: Port, *, exclude: Iterable[str] = ()) -> None:
        """Make every consumer of ``old`` (and the graph outputs) read ``new`` instead.

        Args:
            old: The port whose uses move.
            new: The port that takes its place.
            exclude: Consumers that keep reading ``old`` (e.g. the new node itself when inserting).

        Example:
            >>> graph.add_node(relu_node, [Port("d", 0)])  # doctest: +SKIP
            >>> graph.replace_uses(Port("d", 0), Port("relu", 0), exclude=["relu"])  # doctest: +SKIP
        """
        self._check_port(new)
        skip = set(exclude)
        moved = [
            (dst, key, data)
            for _, dst, key, data in self.nx.out_edges(old.node, keys=True, data=True)
            if data["out_index"] == old.index and dst not in skip
        ]
        for dst, key, data in moved:
            self.nx.remove_edge(old.node, dst, key)
            self.nx.add_edge(new.node, dst, out_index=new.index, arg_index=data["arg_index"])
        self.output_structure = _map_structure(lambda p: new if p == old else p, self.output_structure)
        self._topo_cache = None

    def unique_name(self, base: str) -> str:
        """A node name starting with ``base`` that is not yet used in the graph.

        Example:
            >>> graph.unique_name("dense")  # "dense" is taken  # doctest: +SKIP
            'dense_1'
        """
        if base not in self.nx:
            return base
        for k in itertools.count(1):
            candidate = f"{base}_{k}"
            if candidate not in self.nx:
                return candidate
        raise AssertionError("unreachable")

    def copy(self) -> Graph:
        """A structural copy: new networkx graph and new `Node` records, same Keras layer references.

        Each node's ``config``, ``call_kwargs``, specs and ``meta`` are shallow copies, so editing them (or
        adding and removing nodes) in the copy leaves this graph as it was.

        Example:
            >>> trial = graph.copy()  # doctest: +SKIP
            >>> trial.node("dense").config["units"] = 8  # doctest: +SKIP
        """
        new = Graph(self.name)
        for name in self.topological_names():
            node = self.node(name)
            clone = dataclasses.replace(
                node,
                config=None if node.config is None else dict(node.config),
                call_kwargs=dict(node.call_kwargs),
                input_specs=list(node.input_specs),
                output_specs=list(node.output_specs),
                meta=dict(node.meta),
            )
            new.nx.add_node(name, node=clone, op_type=clone.op_type, order=next(new._order_counter))
        for src, dst, data in self.nx.edges(data=True):
            new.nx.add_edge(src, dst, **data)
        new.inputs = list(self.inputs)
        new.input_structure = self.input_structure
        new.output_structure = self.output_structure
        new.meta = dict(self.meta)
        return new

    def _check_port(self, port: Port) -> None:
        if port.node not in self.nx:
            raise GraphError(f"Port {port} refers to no node of graph {self.name!r}.")
        node = self.node(port.node)
        if not 0 <= port.index < node.num_outputs:
            raise GraphError(f"Port {port} is out of range: {port.node!r} has {node.num_outputs} output(s).")

    # ---------------------------------------------------------------- checking

    def verify(self) -> None:
        """Check the graph's invariants; raise `GraphError` naming the first broken one.

        Checks: acyclic; every tensor argument connected exactly once; every edge and output refers to an
        existing output; distinct layer objects (inputs included) have distinct names; inputs are
        `InputLayer` nodes; the spec of every producer output is compatible with the spec its consumer
        expects.

        Example:
            >>> graph.verify()  # doctest: +SKIP
        """
        self.topological_names()
        names: dict[str, int] = {}
        for node in self.topological():
            name = node.name
            if self.nx.nodes[name]["op_type"] != node.op_type:
                raise GraphError(f"Node {name!r}: op_type attribute out of sync with its Node.")
            seen_args: dict[int, tuple[str, int]] = {}
            for src, _, data in self.nx.in_edges(name, data=True):
                arg = data["arg_index"]
                if arg in seen_args:
                    raise GraphError(
                        f"Node {name!r}: tensor argument {arg} is fed twice "
                        f"(by {seen_args[arg]} and {(src, data['out_index'])})."
                    )
                if not 0 <= arg < node.num_inputs:
                    raise GraphError(
                        f"Node {name!r}: edge from {src!r} targets argument {arg}, "
                        f"but the node has {node.num_inputs} tensor argument(s)."
                    )
                seen_args[arg] = (src, data["out_index"])
                producer = self.node(src)
                out = data["out_index"]
                if not 0 <= out < producer.num_outputs:
                    raise GraphError(
                        f"Edge {src!r} -> {name!r} reads output {out}, "
                        f"but {src!r} has {producer.num_outputs} output(s)."
                    )
                got, want = producer.output_specs[out], node.input_specs[arg]
                if not got.compatible_with(want):
                    raise GraphError(
                        f"Shape mismatch on edge {src!r}[{out}] -> {name!r} argument {arg}: "
                        f"produces {got}, consumer expects {want}."
                    )
            if len(seen_args) != node.num_inputs:
                missing = sorted(set(range(node.num_inputs)) - set(seen_args))
                raise GraphError(f"Node {name!r}: tensor arguments {missing} are not connected.")
            if node.layer is not None:
                layer_name = node.layer_name
                other = names.setdefault(layer_name, id(node.layer))
                if other != id(node.layer):
                    raise GraphError(
                        f"Two different layers (or an input and a layer) are named {layer_name!r} "
                        f"(node {name!r}); Keras needs unique names. Rename one in its node's config."
                    )
        for name in self.inputs:
            if name not in self.nx or not self.node(name).is_input:
                raise GraphError(f"Graph input {name!r} is not an InputLayer node of the graph.")
        for port in self.outputs:
            self._check_port(port)

    def summary(self, print_fn: Callable[[str], None] | None = None) -> str:
        """A readable table of the graph: one row per node with its inputs and output specs.

        Args:
            print_fn: If given, called with the text (e.g. ``print``).

        Returns:
            The summary text.

        Example:
            >>> graph.summary(print_fn=print)  # doctest: +SKIP
            Graph "diamond": 5 nodes, 5 edges
            node   op          inputs       outputs
            ...
        """
        rows = [("node", "op", "inputs", "outputs")]
        for node in self.topological():
            ins = ", ".join(
                p.node if p.index == 0 else f"{p.node}[{p.index}]" for p in self.producers(node.name)
            )
            outs = "; ".join(str(s) for s in node.output_specs)
            op = node.op_type if node.call_index == 0 else f"{node.op_type} (shared)"
            rows.append((node.name, op, ins or "-", outs))
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(3)]
        lines = [f'Graph "{self.name}": {len(self)} nodes, {self.nx.number_of_edges()} edges']
        for i, row in enumerate(rows):
            cells = [row[c].ljust(widths[c]) if len(row[c]) <= widths[c] else row[c] for c in range(3)]
            lines.append("  ".join(cells) + "  " + row[3])
            if i == 0:
                lines.append("-" * (sum(widths) + 6 + len("outputs")))
        out_text = ", ".join(f"{p.node}[{p.index}]" for p in self.outputs)
        lines.append(f"inputs: {', '.join(self.inputs)}    outputs: {out_text}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, nodes={len(self)}, edges={self.nx.number_of_edges()})"


def _flatten(structure: Any) -> list[Any]:
    """Flatten lists, tuples and dicts (dicts in sorted key order, like keras.tree), iteratively."""
    out: list[Any] = []
    stack = [structure]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item[k] for k in reversed(sorted(item)))
        elif isinstance(item, (list, tuple)) and not isinstance(item, Port):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _map_structure(fn: Callable[[Any], Any], structure: Any) -> Any:
    """Apply ``fn`` to each leaf of a (shallow, user-written) structure of lists, tuples and dicts."""
    if isinstance(structure, dict):
        return {k: _map_structure(fn, v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)) and not isinstance(structure, Port):
        return type(structure)(_map_structure(fn, v) for v in structure)
    return fn(structure)
