"""Small graph-editing helpers shared by the rule modules (private).

They work on a `rewriter.Graph` in place: create a node for a new Keras layer with computed weights, read
a node's current weights, update specs, count layer calls.

Example:
    >>> node = new_layer_node(graph, keras.layers.ReLU(name="r"), [Port("x", 0)], spec)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from rewriter.graph import Graph, Node, Port, TensorRef, TensorSpec

__all__ = [
    "call_counts",
    "current_weights",
    "insert_after",
    "is_float",
    "new_layer_node",
    "set_output_spec",
]


def call_counts(graph: Graph) -> Counter[int]:
    """How many nodes call each layer object (keyed by ``id(layer)``); > 1 means a shared layer."""
    return Counter(id(n.layer) for n in graph.topological() if n.layer is not None)


def current_weights(node: Node) -> list[np.ndarray]:
    """The weights the node will be emitted with: ``meta["weights"]`` if set, else its layer's."""
    if "weights" in node.meta:
        return [np.asarray(w) for w in node.meta["weights"]]
    layer = node.layer
    if layer is None or not getattr(layer, "weights", None):
        return []
    return [np.asarray(w.numpy()) for w in layer.weights]


def is_float(spec: TensorSpec) -> bool:
    """Whether a tensor spec has a floating dtype."""
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
    """Set output 0's spec of ``name`` and the matching input spec of every consumer."""
    node = graph.node(name)
    node.output_specs = [spec, *node.output_specs[1:]]
    for use in graph.uses(Port(name, 0)):
        consumer = graph.node(use.consumer)
        specs = list(consumer.input_specs)
        specs[use.arg_index] = spec
        consumer.input_specs = specs


def with_last_dim(spec: TensorSpec, size: int) -> TensorSpec:
    """``spec`` with its last dimension replaced by ``size``."""
    return dataclasses.replace(spec, shape=(*spec.shape[:-1], size))
