"""Lift a Keras 3 model (functional, Sequential, nested, multi-I/O) into a `Graph`.

The walk goes backwards from the model's outputs through each tensor's Keras history (the layer call that
produced it), with an explicit stack: a chain of thousands of layers needs no recursion.

Example:
    >>> import keras
    >>> import rewriter
    >>> x = keras.Input((8,), name="x")
    >>> h = keras.layers.Dense(4, name="hidden")(x)
    >>> model = keras.Model(x, keras.layers.ReLU(name="act")(h))
    >>> graph = rewriter.lift(model)
    >>> [(n.name, n.op_type) for n in graph.topological()]
    [('x', 'InputLayer'), ('hidden', 'Dense'), ('act', 'ReLU')]
"""

from __future__ import annotations

from typing import Any

import keras

from rewriter.errors import LiftError
from rewriter.graph import Graph, Node, Port, TensorRef, TensorSpec

__all__ = ["lift"]

_MODEL_CLASSES = ("Functional", "Sequential")


def lift(model: keras.Model, *, inline_nested: bool = False) -> Graph:
    """Lift ``model`` into a `Graph` with one node per layer call.

    Args:
        model: A functional or Sequential Keras 3 model (nested models and shared layers allowed).
        inline_nested: If True, functional and Sequential models called as layers are expanded into their
            layer calls (node names ``"<outer>/<inner>"``); by default each is one opaque node.

    Returns:
        The graph. It refers to the model's layers but never changes them.

    Raises:
        LiftError: ``model`` is not a ``keras.Model``, is a subclassed model whose ``call()`` is Python
            code, or is a Sequential model without a known input shape (the message says what to do).

    Example:
        >>> graph = rewriter.lift(keras.applications.MobileNetV2(weights=None))  # doctest: +SKIP
        >>> graph.verify()  # doctest: +SKIP
    """
    inputs_struct, outputs_struct = _model_structures(model)
    graph = _lift_structures(model.name, inputs_struct, outputs_struct)
    if type(model).__name__ == "Sequential" or isinstance(model, keras.Sequential):
        graph.meta["model_class"] = "Sequential"
    if inline_nested:
        _inline_nested_models(graph)
    return graph


def _model_structures(model: Any) -> tuple[Any, Any]:
    if not isinstance(model, keras.Model):
        raise LiftError(
            f"Expected a keras.Model. Received: model={model!r} of type {type(model).__name__}. "
            "Wrap layers in keras.Model(inputs, outputs) first."
        )
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise LiftError(
                f"Sequential model {model.name!r} has no known input shape, so it has no graph yet. "
                "Give it a keras.Input(...) as first layer, or call model.build(input_shape) first."
            )
        return functional._inputs_struct, functional._outputs_struct
    if not _is_functional(model):
        raise LiftError(
            f"Model {model.name!r} is a subclassed keras.Model ({type(model).__qualname__}) whose call() "
            "is Python code, not a functional graph, so it cannot be lifted. Rebuild it with the "
            "functional API (keras.Model(inputs, outputs)), or call it as a layer inside a functional "
            "model, where it is kept as one opaque node."
        )
    return model._inputs_struct, model._outputs_struct


def _is_functional(obj: Any) -> bool:
    return any(cls.__name__ == "Functional" for cls in type(obj).__mro__) and hasattr(obj, "_outputs_struct")


def _history(tensor: Any, where: str) -> tuple[Any, int, int]:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise LiftError(
            f"Tensor {tensor!r} ({where}) has no Keras history: it was not produced by a layer call "
            "of this model. Build the model from keras.Input tensors only."
        )
    return history.operation, history.node_index, history.tensor_index


def _spec(tensor: Any) -> TensorSpec:
    return TensorSpec(tuple(tensor.shape), str(tensor.dtype))


def _lift_structures(name: str, inputs_struct: Any, outputs_struct: Any) -> Graph:
    """Walk back from ``outputs_struct`` to the inputs; build the graph in a topological order."""
    flat_outputs = keras.tree.flatten(outputs_struct)
    flat_inputs = keras.tree.flatten(inputs_struct)

    # Iterative post-order DFS over Keras nodes (layer calls), keyed by (operation id, node index).
    order: list[tuple[Any, Any]] = []  # (operation, keras node)
    state: dict[tuple[int, int], int] = {}  # 1 = on stack, 2 = done
    stack: list[tuple[Any, int, bool]] = []
    for tensor in reversed(flat_outputs + flat_inputs):
        op, node_index, _ = _history(tensor, "a model output or input")
        stack.append((op, node_index, False))
    while stack:
        op, node_index, expanded = stack.pop()
        key = (id(op), node_index)
        if expanded:
            if state.get(key) != 2:
                state[key] = 2
                order.append((op, op._inbound_nodes[node_index]))
            continue
        if state.get(key):
            continue
        state[key] = 1
        stack.append((op, node_index, True))
        keras_node = op._inbound_nodes[node_index]
        for tensor in reversed(keras_node.arguments.keras_tensors):
            parent_op, parent_index, _ = _history(tensor, f"an input of {op.name!r}")
            if not state.get((id(parent_op), parent_index)):
                stack.append((parent_op, parent_index, False))

    # Model inputs come first, in the model's order.
    input_ops = {id(_history(t, "a model input")[0]) for t in flat_inputs}
    order.sort(key=lambda item: 0 if id(item[0]) in input_ops else 1)
    input_rank = {id(_history(t, "a model input")[0]): i for i, t in enumerate(flat_inputs)}
    head = sorted(order[: len(input_rank)], key=lambda item: input_rank.get(id(item[0]), 0))
    order = head + order[len(input_rank) :]

    graph = Graph(name)
    ports: dict[int, Port] = {}  # id(KerasTensor) -> Port
    calls: dict[int, int] = {}
    taken_names: set[str] = set()
    for op, keras_node in order:
        call_index = calls.get(id(op), 0)
        calls[id(op)] = call_index + 1
        node_name = op.name if call_index == 0 else f"{op.name}@{call_index}"
        while node_name in taken_names:
            node_name += "_"
        taken_names.add(node_name)

        args, kwargs, tensors = _template(keras_node.arguments.args, keras_node.arguments.kwargs)
        for tensor in tensors:
            if id(tensor) not in ports:
                raise LiftError(
                    f"Layer call {node_name!r} reads a tensor that is not produced inside the model "
                    f"({tensor!r}). The model's inputs must be keras.Input tensors."
                )
        outputs = list(keras_node.outputs)
        node = Node(
            name=node_name,
            op_type=type(op).__name__,
            layer=op,
            config=_config_of(op),
            call_args=args,
            call_kwargs=kwargs,
            input_specs=[_spec(t) for t in tensors],
            output_specs=[_spec(t) for t in outputs],
            output_structure=_output_structure(op, len(outputs)),
            call_index=call_index,
        )
        graph.add_node(node, [ports[id(t)] for t in tensors])
        for index, tensor in enumerate(outputs):
            ports[id(tensor)] = Port(node_name, index)

    graph.inputs = [ports[id(t)].node for t in flat_inputs]
    graph.input_structure = keras.tree.map_structure(lambda t: ports[id(t)].node, inputs_struct)
    graph.output_structure = keras.tree.map_structure(lambda t: ports[id(t)], outputs_struct)
    return graph


def _output_structure(op: Any, count: int) -> Any:
    """Output indices in the structure ``op`` returns: a nested model's own (dict, list...), else flat."""
    if _is_model_layer(op):
        structure = _model_structures(op)[1]
        if len(keras.tree.flatten(structure)) == count:
            return keras.tree.pack_sequence_as(structure, list(range(count)))
    return 0 if count == 1 else list(range(count))


def _template(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any], list[Any]]:
    """Replace the KerasTensors inside ``(args, kwargs)`` by `TensorRef` placeholders, in flatten order."""
    flat = keras.tree.flatten((tuple(args), dict(kwargs)))
    tensors: list[Any] = []
    replaced = []
    for item in flat:
        if isinstance(item, keras.KerasTensor):
            replaced.append(TensorRef(len(tensors)))
            tensors.append(item)
        else:
            replaced.append(item)
    if not tensors:
        return tuple(args), dict(kwargs), tensors
    new_args, new_kwargs = keras.tree.pack_sequence_as((tuple(args), dict(kwargs)), replaced)
    return tuple(new_args), dict(new_kwargs), tensors


def _config_of(op: Any) -> dict[str, Any] | None:
    if _is_functional(op) or isinstance(op, keras.Sequential):
        return {"name": op.name}
    try:
        config = op.get_config()
    except (NotImplementedError, TypeError, AttributeError):
        return None
    return dict(config) if isinstance(config, dict) else None


def _inline_nested_models(graph: Graph) -> None:
    """Expand nested functional/Sequential model nodes into their layer calls (outer graph in place)."""
    pending = [n.name for n in graph.topological() if _is_model_layer(n.layer)]
    while pending:
        name = pending.pop(0)
        outer = graph.node(name)
        inner_struct_in, inner_struct_out = _model_structures(outer.layer)
        inner = _lift_structures(outer.layer.name, inner_struct_in, inner_struct_out)
        feeding = graph.producers(name)
        port_map: dict[Port, Port] = {}
        for i, input_name in enumerate(inner.inputs):
            port_map[Port(input_name, 0)] = feeding[i]
        calls: dict[int, int] = {}
        names_in_use: dict[str, int] = {}
        for existing in graph.topological():
            if existing.layer is not None:
                calls[id(existing.layer)] = calls.get(id(existing.layer), 0) + 1
                names_in_use.setdefault(existing.layer_name, id(existing.layer))
        for node in inner.topological():
            if node.is_input:
                continue
            inner_name = node.name
            ins = [port_map[p] for p in inner.producers(inner_name)]
            node.name = graph.unique_name(f"{name}/{inner_name}")
            node.call_index = calls.get(id(node.layer), 0)
            calls[id(node.layer)] = node.call_index + 1
            node.meta["inlined_from"] = name
            owner = names_in_use.setdefault(node.layer_name, id(node.layer))
            if node.config is not None and owner != id(node.layer):
                node.config = {**node.config, "name": f"{name}_{node.layer_name}"}
            graph.add_node(node, ins)
            for k in range(node.num_outputs):
                port_map[Port(inner_name, k)] = Port(node.name, k)
            if _is_model_layer(node.layer):
                pending.append(node.name)
        for index, port in enumerate(inner.outputs):
            graph.replace_uses(Port(name, index), port_map[port])
        graph.nx.remove_node(name)
        graph._topo_cache = None


def _is_model_layer(layer: Any) -> bool:
    return _is_functional(layer) or (
        isinstance(layer, keras.Sequential) and getattr(layer, "_functional", None) is not None
    )
