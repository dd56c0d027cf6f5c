"""Emit a `Graph` as a new functional `keras.Model` by replaying its layer calls in topological order.

The replay is a loop, not a recursion, so graphs of thousands of layers rebuild at Python's default
recursion limit (Keras's own graph bookkeeping in ``keras.Model(...)`` recurses over depth; emit raises
the limit for the duration of that call only).

Weight policy (default ``share_weights=False``): every layer is rebuilt from its config and receives a
copy of the original weights, so the input model and the result share no variables. Nodes created by a
rewrite carry annotations in ``node.meta`` that refine this:

- ``meta["owned"]``: the node's layer object was created for the new graph; it is used as is.
- ``meta["weights"]``: a list of arrays set on the layer after it is built (computed weights).
- ``meta["reinitialize"]``: rebuild from config with fresh weights (its input shape changed).

Example:
    >>> import numpy as np
    >>> model = keras.applications.MobileNetV2(weights=None)  # doctest: +SKIP
    >>> clone = rewriter.emit(rewriter.lift(model))  # doctest: +SKIP
    >>> x = np.random.rand(1, 224, 224, 3).astype("float32")  # doctest: +SKIP
    >>> bool((clone(x) == model(x)).numpy().all())  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from rewriter.errors import EmitError
from rewriter.graph import Graph, Node, Port, TensorRef, _map_structure

__all__ = ["Replay", "emit", "replay"]


@contextlib.contextmanager
def deep_recursion(depth: int) -> Iterator[None]:
    """Temporarily allow Keras's recursive graph bookkeeping to walk ``depth`` nodes."""
    old = sys.getrecursionlimit()
    wanted = max(old, 8 * depth + 2000)
    if wanted > old:
        sys.setrecursionlimit(wanted)
    try:
        yield
    finally:
        if wanted > old:
            sys.setrecursionlimit(old)


class Replay:
    """The outcome of replaying a graph: the new tensor of every port and the layer of every node.

    Attributes:
        tensors: ``Port -> KerasTensor`` for every output of every replayed node.
        layers: Node name -> the Keras layer (or operation) object that was called for it.
    """

    def __init__(self) -> None:
        self.tensors: dict[Port, Any] = {}
        self.layers: dict[str, Any] = {}


def emit(graph: Graph, *, share_weights: bool = False, name: str | None = None) -> keras.Model:
    """Build a functional `keras.Model` from ``graph``.

    Args:
        graph: The graph to emit; it is not changed.
        share_weights: Reuse the graph's layer objects (and so their variables) instead of new copies.
        name: The model's name; defaults to the graph's name.

    Returns:
        A new functional model with the same layer, input and output names and the same weight order.

    Raises:
        EmitError: A layer cannot be rebuilt or called (the message names the node and its input shapes).

    Example:
        >>> new_model = rewriter.emit(rewriter.lift(model))  # doctest: +SKIP
        >>> new_model.set_weights(model.get_weights())  # doctest: +SKIP
    """
    if graph.meta.get("model_class") == "Sequential" and _is_plain_chain(graph):
        sequential = _emit_sequential(graph, share_weights=share_weights, name=name or graph.name)
        if sequential is not None:
            return sequential
    state = replay(graph, share_weights=share_weights)
    inputs = _map_structure(lambda node_name: state.tensors[Port(node_name, 0)], graph.input_structure)
    outputs = _map_structure(lambda port: state.tensors[port], graph.output_structure)
    with deep_recursion(len(graph)):
        try:
            return keras.Model(inputs=inputs, outputs=outputs, name=name or graph.name)
        except Exception as error:  # Keras raises ValueError/TypeError with its own wording
            raise EmitError(f"Keras refused the rebuilt graph {graph.name!r}: {error}") from error


def _is_plain_chain(graph: Graph) -> bool:
    """Whether ``graph`` is one input feeding a chain of distinct single-tensor layers (a Sequential)."""
    if len(graph.inputs) != 1 or not isinstance(graph.input_structure, str):
        return False
    nodes = graph.topological()
    if not nodes[0].is_input or graph.output_structure != Port(nodes[-1].name, 0):
        return False
    seen: set[int] = set()
    for previous, node in itertools.pairwise(nodes):
        if (
            node.is_input
            or node.layer is None
            or id(node.layer) in seen
            or node.num_outputs != 1
            or node.call_args != (TensorRef(0),)
            or node.call_kwargs
            or graph.producers(node.name) != [Port(previous.name, 0)]
        ):
            return False
        seen.add(id(node.layer))
    return len(nodes) > 1


def _emit_sequential(graph: Graph, *, share_weights: bool, name: str) -> keras.Model | None:
    """Rebuild a lifted Sequential as a ``keras.Sequential``; None if Keras cannot build it that way."""
    nodes = graph.topological()
    clones: dict[int, Any] = {}
    chain = [(node, *_layer_for(node, clones, share_weights)) for node in nodes[1:]]
    with contextlib.ExitStack() as hooks, deep_recursion(len(graph)):
        started = [hooks.enter_context(_initialized_from_original(*item)) for item in chain]
        try:
            model = keras.Sequential([_new_input(nodes[0]), *(layer for _, layer, _ in chain)], name=name)
        except Exception:  # fall back to the functional replay, which reports errors per node
            return None
    if getattr(model, "_functional", None) is None:
        return None
    for (node, layer, fresh), started_from in zip(chain, started):
        if fresh:
            _set_weights(node, layer, started_from)
    return model


def replay(graph: Graph, *, share_weights: bool = False) -> Replay:
    """Call every node's layer on new symbolic inputs, in topological order.

    Args:
        graph: The graph to replay.
        share_weights: Reuse the layer objects instead of rebuilding them from their configs.

    Returns:
        A `Replay` with the new tensors and layers.
    """
    state = Replay()
    clones: dict[int, Any] = {}
    for node in graph.topological():
        if node.is_input:
            state.tensors[Port(node.name, 0)] = _new_input(node)
            continue
        tensors = [state.tensors[p] for p in graph.producers(node.name)]
        layer, fresh = _layer_for(node, clones, share_weights)
        args = _fill(node.call_args, tensors)
        kwargs = _fill(node.call_kwargs, tensors)
        try:
            with _initialized_from_original(node, layer, fresh) as started_from:
                result = layer(*args, **kwargs)
        except Exception as error:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise EmitError(
                f"Calling layer {node.layer_name!r} ({node.op_type}) of node {node.name!r} on inputs of "
                f"shape {shapes} failed: {error}"
            ) from error
        if fresh:
            _set_weights(node, layer, started_from)
        outputs = keras.tree.flatten(result)
        if len(outputs) != node.num_outputs and node.num_outputs:
            raise EmitError(
                f"Node {node.name!r} ({node.op_type}) returned {len(outputs)} tensors; "
                f"the graph expects {node.num_outputs}."
            )
        for index, tensor in enumerate(outputs):
            state.tensors[Port(node.name, index)] = tensor
        state.layers[node.name] = layer
    return state


def _new_input(node: Node) -> Any:
    """A new ``keras.Input`` like the input node's: batch shape, dtype, name and sparse/ragged/optional."""
    config = node.config or {}
    spec = node.output_specs[0]
    flags = {flag: True for flag in ("sparse", "ragged", "optional") if config.get(flag)}
    return keras.Input(
        batch_shape=tuple(config.get("batch_shape", spec.shape)),
        dtype=config.get("dtype", spec.dtype),
        name=config.get("name", node.name),
        **flags,
    )


def _fill(template: Any, tensors: list[Any]) -> Any:
    if not tensors:
        return template
    return keras.tree.map_structure(
        lambda item: tensors[item.index] if isinstance(item, TensorRef) else item, template
    )


def _layer_for(node: Node, clones: dict[int, Any], share_weights: bool) -> tuple[Any, bool]:
    """The object to call for ``node`` and whether it is new (so weights still have to be set)."""
    original = node.layer
    if original is None:
        raise EmitError(f"Node {node.name!r} ({node.op_type}) has no layer object to call.")
    if node.meta.get("owned") or share_weights:
        first = id(original) not in clones
        clones.setdefault(id(original), original)
        return original, first and "weights" in node.meta
    if id(original) in clones:
        return clones[id(original)], False
    clone = _clone(node)
    clones[id(original)] = clone
    return clone, True


def _clone(node: Node) -> Any:
    original = node.layer
    from rewriter.lift import _is_model_layer, lift

    if _is_model_layer(original):
        return emit(lift(original), share_weights=False, name=node.layer_name)
    config = node.config
    if config is None:
        if not original.weights:
            return original  # stateless and not serializable: nothing to copy
        raise EmitError(
            f"Layer {node.layer_name!r} ({node.op_type}) has weights but no get_config(), so it "
            "cannot be rebuilt. Implement get_config() (and register the class with "
            "keras.saving.register_keras_serializable), or emit with share_weights=True."
        )
    try:
        return type(original).from_config(dict(config))
    except Exception as error:
        if not getattr(original, "weights", None):
            return original
        raise EmitError(
            f"Layer {node.layer_name!r} ({node.op_type}) cannot be rebuilt from its config: {error}. "
            "Fix its get_config()/from_config(), or emit with share_weights=True."
        ) from error


@contextlib.contextmanager
def _initialized_from_original(node: Node, layer: Any, fresh: bool) -> Iterator[dict[int, tuple[Any, Any]]]:
    """While a fresh clone builds, create its own variables from the original layer's values.

    This skips the random initialization and most of the later copy, the main cost of copying weights.
    The ``k``-th trainable (non-trainable) variable the clone creates with ``add_weight`` starts from the
    original's ``k``-th own trainable (non-trainable) variable when shapes and dtypes agree; otherwise it
    is initialized normally.

    Yields:
        ``{id(new variable): (new variable, original variable whose value it started from)}``.
        `_set_weights` skips the copy into a variable only when it started from exactly the original
        weight that ``get_weights`` order pairs it with, so a surprising creation order (variables made
        outside ``add_weight``, a different build path, sub-layers) costs a copy, never a wrong weight.
    """
    started_from: dict[int, tuple[Any, Any]] = {}
    original = node.layer
    if (
        not fresh
        or layer is original
        or getattr(layer, "built", True)
        or node.meta.get("reinitialize")
        or "weights" in node.meta
        or not isinstance(layer, keras.layers.Layer)
    ):
        yield started_from
        return
    own = {
        True: list(getattr(original, "_trainable_variables", [])),
        False: list(getattr(original, "_non_trainable_variables", [])),
    }
    taken = {True: 0, False: 0}
    add_weight = layer.add_weight

    def add_weight_from_original(*args: Any, **kwargs: Any) -> Any:
        trainable = bool(kwargs.get("trainable", True))
        index = taken[trainable]
        shape = kwargs.get("shape")
        if args or shape is None or index >= len(own[trainable]):
            return add_weight(*args, **kwargs)
        source = own[trainable][index]
        if tuple(source.shape) != tuple(shape):
            return add_weight(*args, **kwargs)
        taken[trainable] = index + 1
        variable = add_weight(**{**kwargs, "initializer": lambda shape, dtype=None: _value_as(source, dtype)})
        if str(variable.dtype) == str(source.dtype):
            started_from[id(variable)] = (variable, source)
        return variable

    object.__setattr__(layer, "add_weight", add_weight_from_original)  # bypass Keras attribute tracking
    try:
        yield started_from
    finally:
        object.__delattr__(layer, "add_weight")


def _value_as(variable: Any, dtype: Any) -> Any:
    value = variable.value
    return value if dtype is None or str(dtype) == str(variable.dtype) else keras.ops.cast(value, dtype)


def _set_weights(node: Node, layer: Any, started_from: dict[int, tuple[Any, Any]] | None = None) -> None:
    """Copy the original's weights (or ``meta["weights"]``) into ``layer``, in ``get_weights`` order.

    A target variable that `_initialized_from_original` created from the very weight it is paired with
    here already holds that value and is skipped.
    """
    if node.meta.get("reinitialize"):
        return
    if "weights" in node.meta:
        values = list(node.meta["weights"])
    elif node.layer is not layer and getattr(node.layer, "weights", None):
        values = node.layer.weights
    else:
        return
    targets = layer.weights
    if len(targets) != len(values):
        raise EmitError(
            f"Layer {node.layer_name!r} ({node.op_type}) was rebuilt with {len(targets)} weights "
            f"but {len(values)} are to be copied into it. Check that its get_config() records every "
            "constructor argument that decides its weights, or emit with share_weights=True."
        )
    started_from = started_from or {}
    assigned = False
    for target, value in zip(targets, values):
        shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
        if tuple(target.shape) != tuple(shape):
            raise EmitError(
                f"Weight {target.path!r} of layer {node.layer_name!r} has shape {tuple(target.shape)}, "
                f"the value to copy has shape {tuple(shape)}."
            )
        already = started_from.get(id(target))
        if already is None or already[0] is not target or already[1] is not value:
            target.assign(value)
            assigned = True
    finalize_state = getattr(layer, "finalize_state", None)
    if assigned and callable(finalize_state):
        finalize_state()  # as Keras does after loading: Normalization & co. cache tensors made from weights
