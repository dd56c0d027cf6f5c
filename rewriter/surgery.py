"""The classic model surgeries as one-liners, each returning a new keras.Model.

Each takes a model (or a `Graph`) and names the place by layer name, layer object or node name. A shared
layer means every call of it, unless one call is named by its node name (``"dense@1"``). A layer instance
is one layer, as in Keras: put at the calls of a shared layer, it is shared too (a siamese encoder stays
siamese); pass a factory (``lambda: layers.Dense(8)``) for one new layer per call. The inputs of one
multi-input node get one layer each (clones of an instance, weights copied if it was built).

Weights: every layer upstream keeps its weights, and so does every layer downstream whose input shape did
not change (or changed in a way its weights still fit, e.g. a convolution on another spatial size). A
downstream layer whose weight shapes must change is rebuilt with fresh weights; the surgery reports it in
``model.rewrite_result.reinitialized`` (see `RewriteResult`).

Example:
    >>> import keras
    >>> from keras import layers
    >>> import rewriter
    >>> x = keras.Input((100,), name="x")
    >>> h = layers.Dense(50, activation="relu", name="d50")(x)
    >>> h = layers.Dense(30, activation="relu", name="d30")(h)
    >>> model = keras.Model(x, layers.Dense(10, activation="softmax", name="d10")(h))
    >>> smaller = rewriter.remove_layer(model, "d30")
    >>> [layer.name for layer in smaller.layers]
    ['x', 'd50', 'd10']
    >>> smaller.rewrite_result.reinitialized
    ['d10']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import networkx as nx

from rewriter.errors import RewriteError, ShapeMismatchError
from rewriter.graph import Graph, Port
from rewriter.rewrite import SiteMatch, _brief, _source_of, apply_at
from rewriter.rules import (
    LayerSource,
    _LayerPlacer,
    bypass,
    follow_with,
    merge_layer,
    precede_with,
    replace_with,
    replay,
)

__all__ = ["add_skip", "insert_after", "insert_before", "remove_layer", "replace_layer"]

Where = Any
"""A layer name, a node name (``"dense@1"``: one call of a shared layer), or a layer object."""


def _nodes_at(graph: Graph, where: Where, what: str, *, input_ok: bool = False) -> list[str]:
    """Node names designated by ``where`` (all calls of a layer, or one named call; a model input if ok)."""
    if input_ok:
        name = where if isinstance(where, str) else getattr(where, "name", None)
        if name in graph.inputs and (isinstance(where, str) or graph.node(name).layer is where):
            return [name]
    if isinstance(where, str):
        if where in graph and not graph.node(where).is_input and "@" in where:
            return [where]
        calls = [n.name for n in graph.topological() if not n.is_input and n.layer_name == where]
        if calls:
            return calls
        if where in graph:
            node = graph.node(where)
            if node.is_input:
                raise RewriteError(f"{what}: {where!r} is a model input, not a layer; name a layer instead.")
            return [where]
        known = [n.layer_name for n in graph.topological() if not n.is_input]
        raise RewriteError(
            f"{what}: the model has no layer or node named {where!r}. Layers: {', '.join(known[:20])}"
            f"{' ...' if len(known) > 20 else ''}."
        )
    if not isinstance(where, keras.layers.Layer):
        raise RewriteError(
            f"{what}: expected a layer name, a node name ('dense@1') or a layer object of the model. "
            f"Received: {where!r} of type {type(where).__name__}."
        )
    nodes = [n for n in graph.topological() if n.layer is where]
    if nodes and all(n.is_input for n in nodes):
        raise RewriteError(f"{what}: {where.name!r} is a model input, not a layer; name a layer instead.")
    calls = [n.name for n in nodes if not n.is_input]
    if not calls:
        raise RewriteError(
            f"{what}: layer object {where.name!r} is not called in the model. "
            "Pass a layer of this model (model.get_layer(name)) or its name."
        )
    return calls


def _source(model: keras.Model | Graph) -> Graph:
    return _source_of(model)[0]


def _one_layer_for_all_calls(layer: LayerSource) -> _LayerPlacer:
    """A layer instance is used at every call of a shared ``where`` (shared); a factory makes one per call."""
    return _LayerPlacer(layer, share_across_places=True)


def _at_each_call(
    model: keras.Model | Graph, where: Where, template: Any, label: str, names: list[str] | None = None
) -> keras.Model:
    """Apply ``template`` at each node ``where`` designates, in one rewrite; the new model."""
    graph = _source(model)
    if names is None:
        names = _nodes_at(graph, where, label)

    def sites(current: Graph) -> Iterator[SiteMatch]:  # each site is made on the graph as it is then
        for name in names:
            yield SiteMatch(current, [name])

    try:
        return _run(graph, sites, template, label)
    except ShapeMismatchError as error:
        if len(names) < 2 or label == "remove_layer":
            raise
        raise ShapeMismatchError(
            f"{error} ({label} at the {len(names)} calls {names} of a shared layer: a layer instance is "
            "shared by all of them; pass a factory, e.g. lambda: layers.Dense(8), for one layer per call, "
            "or name one call.)"
        ) from None


def _run(
    graph: Graph, sites: Callable[[Graph], Iterator[SiteMatch]], replacement: Any, label: str
) -> keras.Model:
    """One rewrite applying ``replacement`` at ``sites``; the new model, with its `RewriteResult` attached."""
    try:
        result = apply_at(graph, sites, replacement, label=label)
    except RewriteError as error:
        if error.__cause__ is not None and not isinstance(error.__cause__, RewriteError):
            # The message already says what Keras said; keep its traceback (our replacement's) off screen.
            error.__cause__ = None
            error.__suppress_context__ = True
        raise
    model = result.model
    model.rewrite_result = result
    return model


def insert_after(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model with ``layer`` inserted right after ``where``: its consumers now read ``layer``'s output.

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: after each of its calls).
        layer: The layer to insert: an instance (after every call of a shared layer, the same instance:
            shared too) or a factory ``f()`` / ``f(match)`` called once per call.

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult` (fresh weights, applications).

    Example:
        >>> wider = rewriter.insert_after(model, "pool", layers.Dense(128))  # doctest: +SKIP
    """
    return _at_each_call(model, where, follow_with(_one_layer_for_all_calls(layer)), "insert_after")


def insert_before(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model with ``layer`` inserted right before ``where`` (on each of its tensor inputs).

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: before each of its calls).
        layer: The layer to insert (an instance, or a factory). A node with several inputs gets one layer
            per input (clones of an instance); the calls of a shared layer share them.

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult`.

    Example:
        >>> normed = rewriter.insert_before(model, "d10", layers.LayerNormalization())  # doctest: +SKIP
    """
    return _at_each_call(model, where, precede_with(_one_layer_for_all_calls(layer)), "insert_before")


def replace_layer(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model where ``layer`` takes the place of ``where`` (same inputs, same consumers).

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: each call is replaced, by the same
            instance, so the replacement is shared as the layer was).
        layer: The new layer (an instance, or a factory ``f(match)`` that can read ``match[name]``, called
            once per call).

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult`.

    Example:
        >>> dense = rewriter.replace_layer(model, "c2", layers.Dense(128))  # doctest: +SKIP
    """
    return _at_each_call(model, where, replace_with(_one_layer_for_all_calls(layer)), "replace_layer")


def remove_layer(model: keras.Model | Graph, where: Where, *, input_index: int | None = None) -> keras.Model:
    """A new model without ``where``: its input goes straight to its consumers.

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: every call is removed).
        input_index: For a layer with several tensor inputs (an ``Add``), which one replaces its output;
            required there, since dropping the others is a choice only the caller can make.

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult` (downstream layers given fresh
        weights because their input shape changed are in ``.reinitialized``).

    Raises:
        RewriteError: The layer has several outputs, no tensor input, or several inputs and no
            ``input_index``.
        ShapeMismatchError: A consumer cannot take the input's shape.

    Example:
        >>> smaller = rewriter.remove_layer(model, "d30")  # doctest: +SKIP
    """
    graph = _source(model)
    names = _nodes_at(graph, where, "remove_layer")
    for name in names:
        node = graph.node(name)
        if node.num_outputs != 1 or node.num_inputs == 0:
            raise RewriteError(
                f"remove_layer: {name!r} ({node.op_type}) has {node.num_inputs} input(s) and "
                f"{node.num_outputs} output(s); only a layer with an input and one output can be bypassed."
            )
        if input_index is None and node.num_inputs > 1:
            raise RewriteError(
                f"remove_layer: {name!r} ({node.op_type}) has {node.num_inputs} inputs "
                f"({', '.join(p.node for p in graph.producers(name))}); pass input_index=0..."
                f"{node.num_inputs - 1} to choose the one its consumers read instead."
            )
        if input_index is not None and not 0 <= input_index < node.num_inputs:
            raise RewriteError(
                f"remove_layer: input_index={input_index}, but {name!r} has {node.num_inputs} input(s)."
            )
    return _at_each_call(graph, where, bypass(input_index or 0), "remove_layer", names)


def add_skip(
    model: keras.Model | Graph,
    source: Where,
    target: Where,
    *,
    merge: str | LayerSource = "add",
    projection: LayerSource | None = None,
) -> keras.Model:
    """A new model with a shortcut: ``source``'s output (through ``projection``) merged with ``target``'s.

    The consumers of ``target`` read ``merge([projection(source), target])`` afterwards (the shortcut first,
    as in ``concatenate([shortcut, x])``).

    Args:
        model: The model (not changed).
        source: Where the shortcut starts (layer name, node name or layer object; one call; or a model
            input's name).
        target: Whose output it joins (one call); must come after ``source``.
        merge: ``"add"``, ``"concat"``, ``"multiply"``, ``"average"``, ``"maximum"``, or a merge layer.
        projection: Optional layer applied to the shortcut (e.g. a 1x1 Conv2D to match channels).

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult`.

    Raises:
        RewriteError: ``target`` does not come after ``source``, or either names several calls.
        ShapeMismatchError: The merge cannot combine the two shapes (give a ``projection``).

    Example:
        >>> skip = rewriter.add_skip(model, source="c1", target="c3", merge="concat",
        ...                          projection=layers.Conv2D(128, (1, 1), padding="same"))  # doctest: +SKIP
    """
    graph = _source(model)
    sources = _nodes_at(graph, source, "add_skip source", input_ok=True)
    targets = _nodes_at(graph, target, "add_skip target")
    if len(sources) != 1 or len(targets) != 1:
        raise RewriteError(
            f"add_skip: source {source!r} and target {target!r} must each be one layer call; they are "
            f"{sources} and {targets}. Name one call of a shared layer (e.g. 'dense@1')."
        )
    source_name, target_name = sources[0], targets[0]
    if source_name == target_name or nx.has_path(graph.nx, target_name, source_name):
        raise RewriteError(
            f"add_skip: target {target_name!r} does not come after source {source_name!r} "
            f"({source_name!r} depends on {target_name!r}), so the shortcut would form a cycle; a skip "
            "connection goes from an earlier layer to a later one: swap source and target."
        )
    for role, name in (("source", source_name), ("target", target_name)):
        if graph.node(name).num_outputs != 1:
            raise RewriteError(
                f"add_skip: {role} {name!r} has {graph.node(name).num_outputs} outputs; it needs exactly one."
            )
    if isinstance(merge, str) or not callable(merge):
        merge_layer(merge)  # an unknown merge name fails here, before any work
    placer = None if projection is None else _LayerPlacer(projection)

    def replacement(match: Any, *inputs: Any) -> Any:
        *target_inputs, shortcut = inputs
        env = replay(match, target_inputs)
        main = env[match.outputs[0]]
        if placer is not None:
            shortcut = placer.apply(match, shortcut)
        try:
            return merge_layer(merge, match)([shortcut, main])
        except ValueError as error:
            raise ShapeMismatchError(
                f"add_skip: cannot merge ({merge!r}) the shortcut from {source_name!r} of shape "
                f"{tuple(shortcut.shape)} with {target_name!r} of shape {tuple(main.shape)}: {_brief(error)} "
                "Give a projection= layer that maps the shortcut to a compatible shape (e.g. a 1x1 Conv2D "
                "or a Dense with the target's channels). The model was not changed."
            ) from None

    def sites(current: Graph) -> Iterator[SiteMatch]:
        inputs = [*current.producers(target_name), Port(source_name, 0)]
        yield SiteMatch(current, [target_name], inputs=inputs, outputs=[Port(target_name, 0)])

    return _run(graph, sites, replacement, "add_skip")
