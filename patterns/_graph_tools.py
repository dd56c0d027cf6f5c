"""Small graph-editing helpers shared by the rule modules (private).

They work on a `rewriter.Graph` in place (create a node for a new Keras layer with computed weights, read
a node's current weights, update specs, count layer calls), or build a new Keras layer straight from
computed weights (`call_with_weights`) inside a rule's replacement.

Example:
    >>> node = new_layer_node(graph, keras.layers.ReLU(name="r"), [Port("x", 0)], spec)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from rewriter.errors import RewriteError
from rewriter.graph import Graph, Node, Port, TensorRef, TensorSpec

__all__ = [
    "call_counts",
    "call_with_weights",
    "current_weights",
    "escapes",
    "insert_after",
    "is_float",
    "is_shared",
    "layer_values",
    "new_layer_node",
    "rebuilt_call",
    "set_output_spec",
    "with_last_dim",
]


def call_counts(graph: Graph) -> Counter[int]:
    """How many nodes call each layer object (keyed by ``id(layer)``); > 1 means a shared layer.

    Example:
        >>> call_counts(graph)[id(graph.node("conv").layer)]  # doctest: +SKIP
        1
    """
    return Counter(id(n.layer) for n in graph.topological() if n.layer is not None)


def is_shared(graph: Graph, node: Node) -> bool:
    """Whether ``node``'s layer object is called by another node of ``graph`` too.

    Example:
        >>> is_shared(graph, graph.node("conv"))  # doctest: +SKIP
        False
    """
    layer = node.layer
    if layer is None:
        return False
    return sum(1 for item in graph.nx.nodes.values() if item["node"].layer is layer) > 1


def escapes(graph: Graph, producer: str, consumer: str) -> bool:
    """Whether ``producer``'s output is read by anything but ``consumer`` (or is a model output).

    Example:
        >>> escapes(graph, "conv", "bn")  # doctest: +SKIP
        False
    """
    if any(use.consumer != consumer for use in graph.consumers(producer)):
        return True
    return any(port.node == producer for port in graph.outputs)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else np.shape(value)))


def layer_values(layer: Any) -> list[Any]:
    """The current values of ``layer.weights`` as backend tensors (no copy to numpy).

    Example:
        >>> [tuple(v.shape) for v in layer_values(dense)]  # doctest: +SKIP
        [(8, 4), (4,)]
    """
    return [variable.value for variable in layer.weights]


@contextlib.contextmanager
def _variables_from(layer: Any, values: Sequence[np.ndarray], used: dict[int, int]) -> Iterator[None]:
    """While ``layer`` builds, create its k-th variable from ``values[k]`` (no random initialization).

    Records ``id(variable) -> k`` in ``used`` for each variable so created; a variable whose shape does not
    match is initialized as the layer asks (the caller assigns it afterwards).
    """
    add_weight = layer.add_weight
    created = [0]

    def add_weight_from_value(*args: Any, **kwargs: Any) -> Any:
        index = created[0]
        created[0] += 1
        shape = kwargs.get("shape")
        if args or shape is None or index >= len(values) or tuple(shape) != _shape(values[index]):
            return add_weight(*args, **kwargs)
        value = values[index]

        def initializer(shape: Any, dtype: Any = None) -> Any:
            return keras.ops.convert_to_tensor(value, dtype=dtype)

        variable = add_weight(**{**kwargs, "initializer": initializer})
        used[id(variable)] = index
        return variable

    object.__setattr__(layer, "add_weight", add_weight_from_value)  # bypass Keras attribute tracking
    try:
        yield
    finally:
        object.__delattr__(layer, "add_weight")


def call_with_weights(layer: Any, inputs: Any, weights: Sequence[np.ndarray], **kwargs: Any) -> Any:
    """Call the new, unbuilt ``layer`` on ``inputs``; its variables start as ``weights`` (its weight order).

    The variables are created from the given arrays while the layer builds, so no random initialization
    of (possibly large) kernels happens only to be overwritten. Any variable created in another order or
    shape is assigned afterwards, so the result is always ``layer.get_weights() == weights``.

    Args:
        layer: A Keras layer that is not built yet.
        inputs: What to call it on (a symbolic tensor or a list of them).
        weights: One array (or backend tensor) per entry of ``layer.weights``, in that order.
        **kwargs: Extra call arguments.

    Returns:
        The layer's output.

    Raises:
        RewriteError: The built layer has a different number of weights or other shapes.

    Example:
        >>> x = keras.Input((3,))
        >>> dense = keras.layers.Dense(2)
        >>> y = call_with_weights(dense, x, [np.ones((3, 2), "float32"), np.zeros(2, "float32")])
        >>> float(dense.kernel.numpy().sum())
        6.0
    """
    values = [w if hasattr(w, "shape") else np.asarray(w) for w in weights]
    used: dict[int, int] = {}
    if getattr(layer, "built", False):
        outputs = layer(inputs, **kwargs)
    else:
        with _variables_from(layer, values, used):
            outputs = layer(inputs, **kwargs)
    variables = layer.weights
    if len(variables) != len(values):
        raise RewriteError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has {len(variables)} weights, "
            f"but {len(values)} arrays were computed for it."
        )
    for index, (variable, value) in enumerate(zip(variables, values)):
        if tuple(variable.shape) != _shape(value):
            raise RewriteError(
                f"Weight {variable.path!r} of layer {layer.name!r} has shape {tuple(variable.shape)}, "
                f"the computed array {_shape(value)}."
            )
        if used.get(id(variable)) != index:
            variable.assign(value)
    return outputs


def rebuilt_call(
    layer: Any, inputs: Any, *, weights: Sequence[np.ndarray] | None = None, **changes: Any
) -> Any:
    """Call a new copy of ``layer`` (its config updated with ``changes``) on ``inputs``.

    The copy starts with ``weights`` (default: ``layer``'s own current values), created directly from them.

    Example:
        >>> y = rebuilt_call(conv, x, activation="relu")  # doctest: +SKIP
    """
    config = {**layer.get_config(), **changes}
    new = type(layer).from_config(config)
    return call_with_weights(new, inputs, layer_values(layer) if weights is None else weights)


def current_weights(node: Node) -> list[np.ndarray]:
    """The weights the node will be emitted with: ``meta["weights"]`` if set, else its layer's.

    Example:
        >>> [w.shape for w in current_weights(graph.node("dense"))]  # doctest: +SKIP
        [(8, 4), (4,)]
    """
    if "weights" in node.meta:
        return [np.asarray(w) for w in node.meta["weights"]]
    layer = node.layer
    if layer is None or not getattr(layer, "weights", None):
        return []
    return [np.asarray(w.numpy()) for w in layer.weights]


def is_float(spec: TensorSpec) -> bool:
    """Whether a tensor spec has a floating dtype.

    Example:
        >>> is_float(TensorSpec((None, 3), "float32"))
        True
    """
    return "float" in spec.dtype


def new_layer_node(
    graph: Graph,
    layer: Any,
    inputs: list[Port],
    output_spec: TensorSpec,
    *,
    weights: list[np.ndarray] | None = None,
    merge: bool = False,
) -> Node:
    """Add a node calling the new (unbuilt) ``layer`` on ``inputs`` and return it.

    The node records the layer's config; `rewriter.emit` rebuilds the layer from it and sets
    ``weights`` (so emitting twice gives the same values).

    Args:
        graph: The graph to add to (in place).
        layer: A fresh Keras layer whose name is unique in the graph.
        inputs: Ports feeding the call, in argument order.
        output_spec: Spec of the single output.
        weights: Arrays to set after the layer is built (required when the layer has weights).
        merge: The layer takes a list of tensors (Add, Concatenate ...).

    Example:
        >>> spec = TensorSpec((None, 4), "float32")
        >>> node = new_layer_node(graph, keras.layers.ReLU(name="r"), [Port("x", 0)], spec)  # doctest: +SKIP
    """
    specs = [graph.node(p.node).output_specs[p.index] for p in inputs]
    refs = [TensorRef(i) for i in range(len(inputs))]
    call_args: tuple[Any, ...] = (refs,) if merge else tuple(refs)
    node = Node(
        name=layer.name,
        op_type=type(layer).__name__,
        layer=layer,
        config=layer.get_config(),
        call_args=call_args,
        input_specs=specs,
        output_specs=[output_spec],
    )
    if weights is not None:
        node.meta["weights"] = [np.asarray(w) for w in weights]
    graph.add_node(node, inputs)
    return node


def insert_after(graph: Graph, port: Port, layer: Any, output_spec: TensorSpec, **kwargs: Any) -> Node:
    """Insert ``layer`` on ``port``: it reads the port and every former use (and output) reads it.

    Example:
        >>> insert_after(graph, Port("dense", 0), keras.layers.ReLU(name="r"), spec)  # doctest: +SKIP
    """
    node = new_layer_node(graph, layer, [port], output_spec, **kwargs)
    graph.replace_uses(port, Port(node.name, 0), exclude=[node.name])
    return node


def set_output_spec(graph: Graph, name: str, spec: TensorSpec) -> None:
    """Set output 0's spec of ``name`` and the matching input spec of every consumer.

    Example:
        >>> set_output_spec(graph, "dense", TensorSpec((None, 12), "float32"))  # doctest: +SKIP
    """
    node = graph.node(name)
    node.output_specs = [spec, *node.output_specs[1:]]
    for use in graph.uses(Port(name, 0)):
        consumer = graph.node(use.consumer)
        specs = list(consumer.input_specs)
        specs[use.arg_index] = spec
        consumer.input_specs = specs


def with_last_dim(spec: TensorSpec, size: int) -> TensorSpec:
    """``spec`` with its last dimension replaced by ``size``.

    Example:
        >>> with_last_dim(TensorSpec((None, 4, 3), "float32"), 5).shape
        (None, 4, 5)
    """
    return dataclasses.replace(spec, shape=(*spec.shape[:-1], size))
