"""Architecture-search mutations: random, replayable, always-valid edits of a functional model.

Seven operators, each a pure function of a `rewriter.Graph`, a target node and a parameter dict:

============================  ==========================================================  ==================
operator                      what it does                                                function-preserving
============================  ==========================================================  ==================
``insert_layer``              a shape-preserving layer after the target (Dense / ConvND   only the no-op
                              with seeded Glorot weights, BatchNormalization, Activation, kinds (Dropout,
                              Dropout, Identity)                                          Identity)
``remove_layer``              a one-input layer whose output has its input's shape; the   only for inference
                              input goes straight to its consumers                        no-ops
``widen``                     Net2WiderNet on a Dense / ConvND (see below)                 always
``deepen``                    Net2DeeperNet: an identity-initialised Dense / ConvND        always
``add_skip``                  ``Add([target, source])`` from an earlier tensor; through   with the zero
                              a zero-initialised Dense projection when                    projection
                              function-preserving or the channel counts differ
``change_kernel_size``        a "same"-padded convolution gets another kernel size; the   growing odd sizes
                              old kernel is centred in (or cropped from) the new one      at stride 1
``change_activation``         another activation on a layer with an ``activation``        never
============================  ==========================================================  ==================

Algebra. **Net2WiderNet** widens layer ``L`` from ``n`` to ``q`` units with a map ``g`` (identity on the
first ``n`` units, a seeded random choice of an existing unit for each new one): the new unit ``j``
copies the kernel column and bias of ``g(j)``, every per-channel layer between ``L`` and the next linear
layers (BatchNormalization over the channels, elementwise activations, pooling, dropout ...) copies its
per-channel parameters the same way, and each next Dense / ConvND divides the incoming weights of unit
``j`` by the number of replicas of ``g(j)``. A Flatten in between is handled: the next Dense's rows are
``(position, channel)`` pairs and are replicated per position. **Net2DeeperNet** inserts ``I(x) = x``:
a Dense with the identity matrix, or a ConvND with a centred identity tap and "same" padding; its
activation is ``relu`` when the target's output is already non-negative (the target ends in ReLU), else
linear. A **skip** ``Add([t, P(s)])`` with projection ``P = 0`` adds nothing. Centring a ``k``-kernel in
a zero ``k + 2``-kernel with "same" padding at stride 1 computes the same sums.

Validity. An operator lists the targets where it applies (shapes, dtypes, shared layers, data formats
and graph outputs are checked there), so a mutation of a valid model always emits a valid, runnable
model; `mutate` never picks an operator where it cannot apply. Every random choice is drawn from one
``numpy`` generator seeded by ``seed`` and written into the history as plain parameters, so the same seed
gives the same model and `replay` rebuilds it without any randomness. Each record also carries the
`architecture_fingerprint` of the graph it was applied to, so replaying a history on another architecture
raises `MutationError` instead of building something else; a malformed record does too.

Example:
    >>> import keras
    >>> from patterns import mutations
    >>> x = keras.Input((8,))
    >>> model = keras.Model(x, keras.layers.Dense(4, activation="relu")(x))
    >>> result = mutations.mutate(model, seed=1, steps=3, function_preserving=True)
    >>> again = mutations.replay(model, result.history)
    >>> [layer.name for layer in again.layers] == [layer.name for layer in result.model.layers]
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import re
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import networkx as nx
import numpy as np

from patterns import _algebra
from patterns._graph_tools import (
    call_counts,
    current_weights,
    insert_after,
    is_float,
    new_layer_node,
    set_output_spec,
    with_last_dim,
)
from patterns.inference import NOOP_TYPES
from rewriter.emit import emit
from rewriter.errors import GraphError, RewriteError
from rewriter.graph import Graph, Node, Port, TensorSpec
from rewriter.lift import lift

__all__ = [
    "FUNCTION_PRESERVING",
    "architecture_fingerprint",
    "OPERATORS",
    "MutationError",
    "MutationRecord",
    "MutationResult",
    "applicable",
    "apply_mutation",
    "mutate",
    "replay",
]


class MutationError(RewriteError):
    """A mutation cannot be applied (a replayed record does not fit the model, an unknown operator).

    Example:
        >>> mutate(model, seed=0, kinds=["teleport"])  # doctest: +SKIP
        MutationError: Unknown mutation operator(s) ['teleport']; known: insert_layer, remove_layer, ...
    """


@dataclasses.dataclass(frozen=True)
class MutationRecord:
    """One applied mutation: enough to apply it again without randomness.

    Attributes:
        operator: Operator name (a key of `OPERATORS`).
        target: Name of the graph node the operator was applied at.
        parameters: Plain values (numbers, strings, booleans) fixing every choice, new layer names included.
        fingerprint: `architecture_fingerprint` of the graph the step was applied to (None for a record
            written by hand). `replay` refuses a step whose graph has another fingerprint: the history
            belongs to another model (weights do not count, so a retrained parent replays fine).

    Example:
        >>> record = MutationRecord("widen", "dense", {"new_units": 12, "seed": 3})
        >>> MutationRecord(**record.to_dict()) == record
        True
    """

    operator: str
    target: str
    parameters: dict[str, Any]
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (``MutationRecord(**d)`` rebuilds the record)."""
        return {
            "operator": self.operator,
            "target": self.target,
            "parameters": dict(self.parameters),
            "fingerprint": self.fingerprint,
        }


@dataclasses.dataclass
class MutationResult:
    """What `mutate` returns.

    Attributes:
        model: The mutated, runnable keras.Model (a new model; the input is unchanged).
        history: One `MutationRecord` per step, in order; `replay` takes it.
        graph: The mutated graph the model was emitted from.

    Example:
        >>> result = mutate(model, seed=0, steps=2)  # doctest: +SKIP
        >>> child, history = result.model, result.history  # doctest: +SKIP
    """

    model: keras.Model
    history: list[MutationRecord]
    graph: Graph


# --------------------------------------------------------------------------- shared facts

_NOOP_TYPES = frozenset(NOOP_TYPES)
_NON_ELEMENTWISE_ACTIVATIONS = frozenset({"softmax", "log_softmax"})
_ACTIVATION_CHOICES = ("relu", "gelu", "swish", "tanh", "elu", "sigmoid", "selu", "softplus", "linear")
_CONVS = ("Conv1D", "Conv2D", "Conv3D")
_KERNEL_CONVS = (*_CONVS, "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D")
_CHANNELWISE = frozenset(
    {
        *_NOOP_TYPES,
        "BatchNormalization",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "ELU",
        *(f"{kind}Pooling{r}D" for kind in ("Max", "Average") for r in (1, 2, 3)),
        *(f"Global{kind}Pooling{r}D" for kind in ("Max", "Average") for r in (1, 2, 3)),
        *(f"ZeroPadding{r}D" for r in (1, 2, 3)),
        *(f"Cropping{r}D" for r in (1, 2, 3)),
        *(f"UpSampling{r}D" for r in (1, 2, 3)),
    }
)


class _Context:
    """Facts about the graph that every operator needs while choosing targets."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.counts = call_counts(graph)
        self.output_ports = set(graph.outputs)
        self.output_nodes = {p.node for p in graph.outputs}
        self.layer_names = {n.layer_name for n in graph.topological() if not n.is_input}

    def shared(self, node: Node) -> bool:
        return node.layer is not None and self.counts[id(node.layer)] > 1

    def fresh_name(self, base: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", base)
        name = base
        k = 0
        while name in self.graph or name in self.layer_names:
            k += 1
            name = f"{base}_{k}"
        self.layer_names.add(name)
        return name


def _plain_output(node: Node) -> TensorSpec | None:
    """The spec of the node's single float output with all non-batch dimensions known, else None."""
    if node.num_outputs != 1:
        return None
    spec = node.output_specs[0]
    if not is_float(spec) or spec.rank < 2 or any(d is None for d in spec.shape[1:]):
        return None
    return spec


def _channels_last(node: Node) -> bool:
    return (node.config or {}).get("data_format", "channels_last") != "channels_first"


def _activation(node: Node) -> str | None:
    value = (node.config or {}).get("activation")
    return value if isinstance(value, str) else None


def _non_negative(node: Node) -> bool:
    if node.op_type == "ReLU":
        config = node.config or {}
        return not float(config.get("negative_slope") or 0.0) and float(config.get("threshold") or 0.0) >= 0
    return _activation(node) in ("relu", "relu6")


def _kernel_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise MutationError(f"Expected a positive integer kernel size. Received: kernel_size={value!r}.")
    return int(value)


def _known_activation(value: Any) -> str:
    """``value`` if it names a Keras activation, else `MutationError`."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise MutationError(
            f"Unknown activation {value!r}; use a name keras.activations.get() knows, e.g. "
            f"{', '.join(_ACTIVATION_CHOICES)}."
        ) from error
    return value


def _same_shape_linear(operator: str, target: str, spec: TensorSpec, parameters: dict[str, Any]) -> Any:
    """The Dense or "same"-padded ConvND (``parameters["layer"]``) mapping ``spec`` to itself."""
    kind = parameters["layer"]
    activation = _known_activation(parameters["activation"])
    channels = int(spec.shape[-1])
    if kind == "Dense":
        return keras.layers.Dense(channels, activation=activation, name=parameters["name"])
    if kind in _CONVS and _algebra.conv_rank(kind) + 2 == spec.rank:
        size = _kernel_size(parameters["kernel_size"])
        layer_class = getattr(keras.layers, kind)
        return layer_class(channels, size, padding="same", activation=activation, name=parameters["name"])
    raise MutationError(f"{operator}: a {kind} cannot follow {target!r}, whose output is {spec}.")


def _glorot(rng: np.random.Generator, shape: Sequence[int], fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
    return rng.uniform(-limit, limit, size=tuple(shape)).astype("float32")


# --------------------------------------------------------------------------- operators


class _Operator:
    """Base class: ``targets`` lists where it applies; ``propose`` draws parameters; ``apply`` edits."""

    name: str = ""

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        raise NotImplementedError

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        raise NotImplementedError


class _InsertLayer(_Operator):
    name = "insert_layer"

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        return [n.name for n in ctx.graph.topological() if _plain_output(n) is not None]

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        spec = _plain_output(ctx.graph.node(target))
        assert spec is not None
        kinds = ["Dropout", "Identity"]
        if not function_preserving:
            kinds += ["Dense", "BatchNormalization", "Activation"]
            conv = {3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(spec.rank)
            if conv:
                kinds.append(conv)
        kind = kinds[int(rng.integers(len(kinds)))]
        params: dict[str, Any] = {"layer": kind, "name": ctx.fresh_name(f"{target}_{kind.lower()}")}
        if kind in ("Dense", "Activation", *_CONVS):
            params["activation"] = ("relu", "linear", "tanh", "swish")[int(rng.integers(4))]
        if kind in _CONVS:
            params["kernel_size"] = (1, 3)[int(rng.integers(2))]
        if kind == "Dropout":
            params["rate"] = 0.1
        if kind in ("Dense", *_CONVS):
            params["seed"] = int(rng.integers(2**31))
        return params

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        node = graph.node(target)
        spec = _plain_output(node)
        if spec is None:
            raise MutationError(f"insert_layer: {target!r} has no single float output of known shape.")
        kind = parameters["layer"]
        name = parameters["name"]
        channels = int(spec.shape[-1])
        weights: list[np.ndarray] | None = None
        if kind in ("Dense", *_CONVS):
            layer = _same_shape_linear("insert_layer", target, spec, parameters)
            rng = np.random.default_rng(parameters["seed"])
            size = 1 if kind == "Dense" else int(parameters["kernel_size"])
            rank = _algebra.conv_rank(kind)
            fan = channels * size**rank
            kernel = _glorot(rng, (*(size,) * rank, channels, channels), fan, fan)
            weights = [kernel, np.zeros(channels, "float32")]
        elif kind == "BatchNormalization":
            layer = keras.layers.BatchNormalization(name=name)
            ones, zeros = np.ones(channels, "float32"), np.zeros(channels, "float32")
            weights = [ones, zeros, zeros, ones]
        elif kind == "Activation":
            layer = keras.layers.Activation(_known_activation(parameters["activation"]), name=name)
        elif kind == "Dropout":
            layer = keras.layers.Dropout(float(parameters["rate"]), name=name)
        elif kind == "Identity":
            layer = keras.layers.Identity(name=name)
        else:
            raise MutationError(f"insert_layer: unknown layer kind {kind!r}.")
        insert_after(graph, Port(target, 0), layer, spec, weights=weights)


class _RemoveLayer(_Operator):
    name = "remove_layer"

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        graph = ctx.graph
        found = []
        for node in graph.topological():
            if node.is_input or node.num_inputs != 1 or node.num_outputs != 1:
                continue
            if node.input_specs[0] != node.output_specs[0]:
                continue
            if function_preserving and not (
                node.op_type in _NOOP_TYPES
                or (node.op_type == "Activation" and _activation(node) == "linear")
            ):
                continue
            if node.name in ctx.output_nodes:
                source = graph.producers(node.name)[0]
                if graph.node(source.node).is_input or source in ctx.output_ports:
                    continue
            found.append(node.name)
        return found

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        return {}

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        node = graph.node(target)
        if node.num_inputs != 1 or node.input_specs[0] != node.output_specs[0]:
            raise MutationError(f"remove_layer: {target!r} is not a one-input shape-preserving layer.")
        source = graph.producers(target)[0]
        graph.replace_uses(Port(target, 0), source)
        graph.remove_node(target)


@dataclasses.dataclass
class _WidenPlan:
    intermediates: list[str]
    consumers: list[str]
    flattens: list[tuple[str, int, list[str]]]  # (flatten node, positions, its Dense consumers)


class _Widen(_Operator):
    name = "widen"

    def plan(self, ctx: _Context, name: str) -> _WidenPlan | None:
        """Where the widening must propagate, or None when something in the way cannot follow."""
        graph = ctx.graph
        node = graph.node(name)
        if node.op_type not in ("Dense", *_CONVS) or ctx.shared(node) or name in ctx.output_nodes:
            return None
        config = node.config or {}
        if config.get("groups", 1) != 1 or not _channels_last(node) or node.num_outputs != 1:
            return None
        if _activation(node) in _NON_ELEMENTWISE_ACTIVATIONS or _activation(node) is None:
            return None
        plan = _WidenPlan([], [], [])
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for use in graph.uses(Port(current, 0)):
                consumer = graph.node(use.consumer)
                if consumer.num_inputs != 1 or ctx.shared(consumer) or not _channels_last(consumer):
                    return None
                op = consumer.op_type
                if op in ("Dense", *_CONVS) and (consumer.config or {}).get("groups", 1) == 1:
                    plan.consumers.append(consumer.name)  # its own output keeps its shape
                elif consumer.name in ctx.output_nodes:
                    return None
                elif op == "Flatten":
                    denses = graph.consumer_nodes(consumer.name)
                    if not denses or any(
                        graph.node(d).op_type != "Dense"
                        or ctx.shared(graph.node(d))
                        or graph.node(d).num_inputs != 1
                        for d in denses
                    ):
                        return None
                    shape = consumer.input_specs[0].shape
                    positions = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
                    plan.flattens.append((consumer.name, positions, denses))
                elif op in _CHANNELWISE and consumer.num_outputs == 1:
                    if op == "BatchNormalization":
                        rank = consumer.input_specs[0].rank
                        if _algebra._bn_axes(consumer.config or {}, rank) != [rank - 1]:
                            return None
                    if op == "Activation" and _activation(consumer) in _NON_ELEMENTWISE_ACTIVATIONS:
                        return None
                    if op == "Activation" and _activation(consumer) is None:
                        return None
                    plan.intermediates.append(consumer.name)
                    frontier.append(consumer.name)
                else:
                    return None
        if not plan.consumers and not plan.flattens:
            return None
        return plan

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        return [n.name for n in ctx.graph.topological() if self.plan(ctx, n.name) is not None]

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        units = int(ctx.graph.node(target).output_specs[0].shape[-1])
        extra = int(rng.integers(1, max(1, units // 2) + 1))
        return {"new_units": units + extra, "seed": int(rng.integers(2**31))}

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        ctx = _Context(graph)
        plan = self.plan(ctx, target)
        if plan is None:
            raise MutationError(
                f"widen: {target!r} cannot be widened (its output does not reach only "
                "Dense/ConvND layers through per-channel layers)."
            )
        node = graph.node(target)
        units = int(node.output_specs[0].shape[-1])
        new_units = int(parameters["new_units"])
        if new_units <= units:
            raise MutationError(f"widen: {target!r} has {units} units; new_units={new_units} must be larger.")
        mapping = _algebra.net2wider_mapping(units, new_units, np.random.default_rng(parameters["seed"]))
        # the widened layer
        config = dict(node.config or {})
        config["units" if node.op_type == "Dense" else "filters"] = new_units
        node.config = config
        node.meta["weights"] = _algebra.net2wider_outgoing(node.op_type, current_weights(node), mapping)
        set_output_spec(graph, target, with_last_dim(node.output_specs[0], new_units))
        # per-channel layers in between
        for name in plan.intermediates:
            inner = graph.node(name)
            weights = current_weights(inner)
            if weights:
                inner.meta["weights"] = [_algebra.replicate_channels(w, mapping, axis=0) for w in weights]
            set_output_spec(graph, name, with_last_dim(inner.output_specs[0], new_units))
        # the next linear layers
        for name in plan.consumers:
            consumer = graph.node(name)
            weights = current_weights(consumer)
            weights[0] = _algebra.net2wider_incoming(weights[0], mapping, in_axis=-2)
            consumer.meta["weights"] = weights
        for flatten, positions, denses in plan.flattens:
            flat = graph.node(flatten)
            set_output_spec(graph, flatten, with_last_dim(flat.output_specs[0], positions * new_units))
            for name in denses:
                dense = graph.node(name)
                weights = current_weights(dense)
                weights[0] = _algebra.net2wider_incoming(weights[0], mapping, in_axis=-2, positions=positions)
                dense.meta["weights"] = weights


class _Deepen(_Operator):
    name = "deepen"

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        return [
            n.name
            for n in ctx.graph.topological()
            if (spec := _plain_output(n)) is not None and spec.rank <= 5
        ]

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        node = ctx.graph.node(target)
        spec = _plain_output(node)
        assert spec is not None
        kinds = ["Dense"]
        conv = {3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(spec.rank)
        if conv:
            kinds = [conv] if spec.rank > 3 else ["Dense", conv]
        kind = kinds[int(rng.integers(len(kinds)))]
        params: dict[str, Any] = {
            "layer": kind,
            "activation": "relu" if _non_negative(node) else "linear",
            "name": ctx.fresh_name(f"{target}_deepen"),
        }
        if kind != "Dense":
            params["kernel_size"] = (1, 3)[int(rng.integers(2))]
        return params

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        spec = _plain_output(graph.node(target))
        if spec is None:
            raise MutationError(f"deepen: {target!r} has no single float output of known shape.")
        kind = parameters["layer"]
        channels = int(spec.shape[-1])
        layer = _same_shape_linear("deepen", target, spec, parameters)
        size = 1 if kind == "Dense" else int(parameters["kernel_size"])
        weights = _algebra.identity_weights(kind, channels, size)
        insert_after(graph, Port(target, 0), layer, spec, weights=weights)


class _AddSkip(_Operator):
    name = "add_skip"

    def sources(self, ctx: _Context, target: str) -> list[str]:
        graph = ctx.graph
        spec = _plain_output(graph.node(target))
        if spec is None or graph.node(target).is_input:
            return []
        after = nx.descendants(graph.nx, target)
        found = []
        for node in graph.topological():
            if node.name == target or node.name in after:
                continue
            other = _plain_output(node)
            if other is None or other.rank != spec.rank or other.dtype != spec.dtype:
                continue
            if other.shape[1:-1] != spec.shape[1:-1]:
                continue
            found.append(node.name)
        return found

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        return [n.name for n in ctx.graph.topological() if self.sources(ctx, n.name)]

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        graph = ctx.graph
        sources = self.sources(ctx, target)
        source = sources[int(rng.integers(len(sources)))]
        same = graph.node(source).output_specs[0] == graph.node(target).output_specs[0]
        projection = function_preserving or not same
        params: dict[str, Any] = {
            "source": source,
            "projection": projection,
            "zero_projection": function_preserving,
            "name": ctx.fresh_name(f"{target}_skip_add"),
        }
        if projection:
            params["projection_name"] = ctx.fresh_name(f"{source}_skip_projection")
            params["seed"] = int(rng.integers(2**31))
        return params

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        ctx = _Context(graph)
        source = parameters["source"]
        if source not in self.sources(ctx, target):
            raise MutationError(f"add_skip: {source!r} cannot feed a skip connection into {target!r}.")
        spec = graph.node(target).output_specs[0]
        source_port = Port(source, 0)
        if parameters["projection"]:
            in_channels = int(graph.node(source).output_specs[0].shape[-1])
            out_channels = int(spec.shape[-1])
            layer = keras.layers.Dense(out_channels, name=parameters["projection_name"])
            if parameters["zero_projection"]:
                kernel = np.zeros((in_channels, out_channels), "float32")
            else:
                rng = np.random.default_rng(parameters["seed"])
                kernel = _glorot(rng, (in_channels, out_channels), in_channels, out_channels)
            weights = [kernel, np.zeros(out_channels, "float32")]
            projection = new_layer_node(graph, layer, [source_port], spec, weights=weights)
            source_port = Port(projection.name, 0)
        add = keras.layers.Add(name=parameters["name"])
        merged = new_layer_node(graph, add, [Port(target, 0), source_port], spec, merge=True)
        graph.replace_uses(Port(target, 0), Port(merged.name, 0), exclude=[merged.name])


class _ChangeKernelSize(_Operator):
    name = "change_kernel_size"

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        found = []
        for node in ctx.graph.topological():
            config = node.config or {}
            if node.op_type not in _KERNEL_CONVS or ctx.shared(node) or config.get("padding") != "same":
                continue
            sizes = tuple(config.get("kernel_size", ()))
            if len(set(sizes)) != 1:
                continue
            if function_preserving and (
                any(s != 1 for s in config.get("strides", (1,))) or sizes[0] % 2 == 0
            ):
                continue
            found.append(node.name)
        return found

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        current = int((ctx.graph.node(target).config or {})["kernel_size"][0])
        choices = [current + 2] if function_preserving else [k for k in (1, 3, 5) if k != current]
        return {"kernel_size": choices[int(rng.integers(len(choices)))], "seed": int(rng.integers(2**31))}

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        node = graph.node(target)
        config = dict(node.config or {})
        if node.op_type not in _KERNEL_CONVS or config.get("padding") != "same":
            raise MutationError(f"change_kernel_size: {target!r} is not a 'same'-padded convolution.")
        rank = _algebra.conv_rank(node.op_type)
        old = int(config["kernel_size"][0])
        new = _kernel_size(parameters["kernel_size"])
        weights = current_weights(node)
        kernel = weights[0]
        new_shape = (*(new,) * rank, *kernel.shape[rank:])
        if old % 2 == 1 and new % 2 == 1:
            resized = np.zeros(new_shape, kernel.dtype)
            if new >= old:
                offset = (new - old) // 2
                resized[tuple(slice(offset, offset + old) for _ in range(rank))] = kernel
            else:
                offset = (old - new) // 2
                resized[...] = kernel[tuple(slice(offset, offset + new) for _ in range(rank))]
        else:
            rng = np.random.default_rng(parameters["seed"])
            fan = int(np.prod(new_shape[:-1]))
            resized = _glorot(rng, new_shape, fan, int(new_shape[-1])).astype(kernel.dtype)
        weights[0] = resized
        config["kernel_size"] = (new,) * rank
        node.config = config
        node.meta["weights"] = weights


class _ChangeActivation(_Operator):
    name = "change_activation"

    def targets(self, ctx: _Context, function_preserving: bool) -> list[str]:
        if function_preserving:
            return []
        return [
            n.name
            for n in ctx.graph.topological()
            if _activation(n) is not None
            and not ctx.shared(n)
            and n.num_outputs == 1
            and "activation" in (n.config or {})
        ]

    def propose(
        self, ctx: _Context, target: str, rng: np.random.Generator, function_preserving: bool
    ) -> dict[str, Any]:
        current = _activation(ctx.graph.node(target))
        choices = [a for a in _ACTIVATION_CHOICES if a != current]
        return {"activation": choices[int(rng.integers(len(choices)))]}

    def apply(self, graph: Graph, target: str, parameters: dict[str, Any]) -> None:
        node = graph.node(target)
        if "activation" not in (node.config or {}):
            raise MutationError(f"change_activation: {target!r} has no activation to change.")
        node.config = {**(node.config or {}), "activation": _known_activation(parameters["activation"])}


#: Operator name -> operator, in the fixed order `mutate` considers them.
OPERATORS: dict[str, _Operator] = {
    op.name: op
    for op in (
        _InsertLayer(),
        _RemoveLayer(),
        _Widen(),
        _Deepen(),
        _AddSkip(),
        _ChangeKernelSize(),
        _ChangeActivation(),
    )
}

#: Operators that have function-preserving variants (used when ``function_preserving=True``).
FUNCTION_PRESERVING = ("insert_layer", "remove_layer", "widen", "deepen", "add_skip", "change_kernel_size")


# --------------------------------------------------------------------------- public functions


def _graph_of(model_or_graph: keras.Model | Graph) -> Graph:
    if isinstance(model_or_graph, Graph):
        return model_or_graph.copy()
    return lift(model_or_graph)


def _select(kinds: str | Iterable[str] | None, function_preserving: bool) -> list[_Operator]:
    names = list(OPERATORS) if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in names if k not in OPERATORS]
    if unknown:
        raise MutationError(f"Unknown mutation operator(s) {unknown}; known: {', '.join(OPERATORS)}.")
    if function_preserving:
        kept = [k for k in names if k in FUNCTION_PRESERVING]
        if not kept:
            raise MutationError(
                f"None of kinds={names} has a function-preserving variant; with function_preserving=True "
                f"choose among {', '.join(FUNCTION_PRESERVING)}."
            )
        names = kept
    return [OPERATORS[k] for k in OPERATORS if k in names]


def architecture_fingerprint(model_or_graph: keras.Model | Graph) -> str:
    """A short hash of the architecture: node names, layer classes, output specs and connections.

    Weights and configs do not count, so a retrained model has its parent's fingerprint. `mutate` stores
    the fingerprint of the graph each step was applied to, and `replay` checks it.

    Example:
        >>> architecture_fingerprint(model) == architecture_fingerprint(keras.models.clone_model(model))
        ... # doctest: +SKIP
        True
    """
    graph = model_or_graph if isinstance(model_or_graph, Graph) else lift(model_or_graph)
    digest = hashlib.sha256()
    for node in graph.topological():
        producers = [(p.node, p.index) for p in graph.producers(node.name)]
        specs = [(tuple(spec.shape), spec.dtype) for spec in node.output_specs]
        digest.update(repr((node.name, node.op_type, specs, producers)).encode())
    digest.update(repr([(p.node, p.index) for p in graph.outputs]).encode())
    return digest.hexdigest()[:16]


def applicable(
    model_or_graph: keras.Model | Graph,
    *,
    function_preserving: bool = False,
    kinds: str | Iterable[str] | None = None,
) -> dict[str, list[str]]:
    """Where each operator can apply: operator name -> target node names (operators with none omitted).

    Example:
        >>> sorted(applicable(model, function_preserving=True))  # doctest: +SKIP
        ['add_skip', 'deepen', 'insert_layer']
    """
    ctx = _Context(_graph_of(model_or_graph))
    found = {}
    for op in _select(kinds, function_preserving):
        targets = op.targets(ctx, function_preserving)
        if targets:
            found[op.name] = targets
    return found


def apply_mutation(graph: Graph, record: MutationRecord) -> None:
    """Apply one recorded mutation to ``graph`` in place.

    Raises:
        MutationError: Unknown operator, unknown target, missing or invalid parameters, a record made for
            another graph (its fingerprint differs), or a record that does not fit the graph.

    Example:
        >>> apply_mutation(graph, MutationRecord("widen", "dense", {"new_units": 8, "seed": 0}))
        ... # doctest: +SKIP
    """
    if not isinstance(record, MutationRecord):
        raise MutationError(
            f"Expected a MutationRecord. Received: {record!r} of type {type(record).__name__}."
        )
    op = OPERATORS.get(record.operator)
    if op is None:
        raise MutationError(f"Unknown mutation operator {record.operator!r}; known: {', '.join(OPERATORS)}.")
    if not isinstance(record.target, str) or record.target not in graph:
        raise MutationError(f"{record.operator}: no node named {record.target!r} in graph {graph.name!r}.")
    if record.fingerprint is not None and record.fingerprint != architecture_fingerprint(graph):
        raise MutationError(
            f"{record.operator} at {record.target!r}: the record was made on another architecture "
            f"(fingerprint {record.fingerprint}, this graph {architecture_fingerprint(graph)}); replay a "
            "history on the model it was recorded on."
        )
    if not isinstance(record.parameters, dict):
        raise MutationError(f"{record.operator}: parameters must be a dict. Received: {record.parameters!r}.")
    try:
        op.apply(graph, record.target, dict(record.parameters))
    except KeyError as error:
        raise MutationError(
            f"{record.operator} at {record.target!r}: parameter {error} is missing from {record.parameters}."
        ) from error
    except GraphError as error:
        raise MutationError(f"{record.operator} at {record.target!r}: {error}") from error
    except (TypeError, ValueError) as error:
        raise MutationError(
            f"{record.operator} at {record.target!r}: invalid parameters {record.parameters}: {error}"
        ) from error


def _record(item: Any, step: int) -> MutationRecord:
    if isinstance(item, MutationRecord):
        return item
    if isinstance(item, dict):
        try:
            return MutationRecord(**item)
        except TypeError as error:
            raise MutationError(
                f"Replaying step {step}: {item!r} is not a record (keys operator, target, parameters and "
                f"optionally fingerprint): {error}"
            ) from error
    raise MutationError(
        f"Replaying step {step}: expected a MutationRecord or its to_dict() form. Received: {item!r}."
    )


def mutate(
    model: keras.Model | Graph,
    *,
    seed: int,
    steps: int = 1,
    function_preserving: bool = False,
    kinds: str | Iterable[str] | None = None,
) -> MutationResult:
    """Apply ``steps`` random mutations to ``model`` and return the new model and a replayable history.

    Each step picks an operator uniformly among those that apply somewhere, then one of its targets
    uniformly, then its parameters; all from ``numpy.random.default_rng(seed)``.

    Args:
        model: A functional keras.Model (or a Graph); it is not changed.
        seed: Seed of every random choice: the same seed gives the same model.
        steps: Number of mutations applied one after the other.
        function_preserving: Use only function-preserving operators (and variants): the result computes
            the same function (up to float rounding) with a changed architecture.
        kinds: Restrict to these operator names (keys of `OPERATORS`; one name may be given as a str).

    Returns:
        A `MutationResult` with ``.model``, ``.history`` and ``.graph``.

    Raises:
        MutationError: An unknown kind; no function-preserving kind selected; a seed or steps that is not a
            non-negative integer; no selected operator applies anywhere in the model.
        LiftError: ``model`` is not a functional keras.Model.

    Example:
        >>> result = mutate(model, seed=0, steps=3)  # doctest: +SKIP
        >>> [r.operator for r in result.history]  # doctest: +SKIP
        ['deepen', 'add_skip', 'change_activation']
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise MutationError(
            "Expected a non-negative integer seed (the same seed gives the same model). "
            f"Received: seed={seed!r}."
        )
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise MutationError(f"Expected a non-negative integer number of steps. Received: steps={steps!r}.")
    operators = _select(kinds, function_preserving)
    graph = _graph_of(model)
    rng = np.random.default_rng(int(seed))
    history: list[MutationRecord] = []
    for step in range(steps):
        ctx = _Context(graph)
        options: list[tuple[_Operator, list[str]]] = []
        for op in operators:
            targets = op.targets(ctx, function_preserving)
            if targets:
                options.append((op, targets))
        if not options:
            names = ", ".join(op.name for op in operators)
            raise MutationError(
                f"Step {step}: none of the operators ({names}) applies anywhere in graph {graph.name!r}; "
                "allow more kinds or function_preserving=False."
            )
        op, targets = options[int(rng.integers(len(options)))]
        target = targets[int(rng.integers(len(targets)))]
        parameters = op.propose(ctx, target, rng, function_preserving)
        record = MutationRecord(op.name, target, parameters, architecture_fingerprint(graph))
        op.apply(graph, target, dict(parameters))
        history.append(record)
    graph.verify()
    return MutationResult(model=emit(graph), history=history, graph=graph)


def replay(model: keras.Model | Graph, history: Sequence[MutationRecord | dict[str, Any]]) -> keras.Model:
    """Apply a recorded history to ``model`` again: the same records on the same model give the same model.

    Args:
        model: The model the history was recorded on (or a Graph of it).
        history: `MutationRecord`s, or their `MutationRecord.to_dict` form.

    Returns:
        The mutated keras.Model.

    Raises:
        MutationError: A malformed history, or a step that does not fit (unknown operator or target,
            missing or invalid parameters, a history recorded on another architecture); the message names
            the step.

    Example:
        >>> again = replay(model, result.history)  # doctest: +SKIP
    """
    if isinstance(history, (str, bytes, dict)) or not isinstance(history, Iterable):
        raise MutationError(
            "Expected a history: a list of MutationRecords (or their to_dict() forms). "
            f"Received: {history!r}."
        )
    graph = _graph_of(model)
    for step, item in enumerate(history):
        record = _record(item, step)
        try:
            apply_mutation(graph, record)
        except MutationError as error:
            raise MutationError(f"Replaying step {step}: {error}") from error
    graph.verify()
    return emit(graph)
