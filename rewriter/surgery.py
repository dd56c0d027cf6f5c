"""The classic model surgeries as one-liners, each returning a new keras.Model.

Each takes a model (or a `Graph`) and names the place by layer name, layer object or node name. A shared
layer means every call of it, unless one call is named by its node name (``"dense@1"``). A layer instance
to insert at several places is used at the first and cloned (weights copied) at the others; pass a
factory (``lambda: layers.Dense(8)``) to build one per place yourself.

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

from collections.abc import Iterator
from typing import Any

import keras

from rewriter.errors import RewriteError, ShapeMismatchError
from rewriter.graph import Graph, Port
from rewriter.lift import lift
from rewriter.rewrite import RewriteResult, SiteMatch, apply_at
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


def _nodes_at(graph: Graph, where: Where, what: str) -> list[str]:
    """Node names designated by ``where`` (all calls of a layer, or one named call)."""
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
    calls = [n.name for n in graph.topological() if n.layer is where and not n.is_input]
    if not calls:
        raise RewriteError(
            f"{what}: layer object {getattr(where, 'name', where)!r} is not called in the model. "
            "Pass a layer of this model (model.get_layer(name)) or its name."
        )
    return calls


def _source(model: keras.Model | Graph) -> Graph:
    if isinstance(model, Graph):
        return model
    return lift(model)


def _finish(result: RewriteResult) -> keras.Model:
    model = result.model
    model.rewrite_result = result
    return model


def _lazy_sites(graph: Graph, names: list[str]) -> Iterator[SiteMatch]:
    for name in names:
        yield SiteMatch(graph, [name])


def insert_after(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model with ``layer`` inserted right after ``where``: its consumers now read ``layer``'s output.

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: after each of its calls).
        layer: The layer to insert (an instance, or a factory ``f()`` / ``f(match)`` returning one).

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult` (fresh weights, applications).

    Example:
        >>> wider = rewriter.insert_after(model, "pool", layers.Dense(128))  # doctest: +SKIP
    """
    graph = _source(model)
    names = _nodes_at(graph, where, "insert_after")
    template = follow_with(layer)
    return _finish(apply_at(graph, lambda g: _lazy_sites(g, names), template, label="insert_after"))


def insert_before(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model with ``layer`` inserted right before ``where`` (on each of its tensor inputs).

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: before each of its calls).
        layer: The layer to insert (an instance, or a factory). A node with several inputs gets one copy
            per input.

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult`.

    Example:
        >>> normed = rewriter.insert_before(model, "d10", layers.LayerNormalization())  # doctest: +SKIP
    """
    graph = _source(model)
    names = _nodes_at(graph, where, "insert_before")
    template = precede_with(layer)
    return _finish(apply_at(graph, lambda g: _lazy_sites(g, names), template, label="insert_before"))


def replace_layer(model: keras.Model | Graph, where: Where, layer: LayerSource) -> keras.Model:
    """A new model where ``layer`` takes the place of ``where`` (same inputs, same consumers).

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: each call is replaced; an instance is
            cloned per call, so pass the shared instance's calls one by one to share it).
        layer: The new layer (an instance, or a factory ``f(match)`` that can read ``match[name]``).

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult`.

    Example:
        >>> dense = rewriter.replace_layer(model, "c2", layers.Dense(128))  # doctest: +SKIP
    """
    graph = _source(model)
    names = _nodes_at(graph, where, "replace_layer")
    template = replace_with(layer)
    return _finish(apply_at(graph, lambda g: _lazy_sites(g, names), template, label="replace_layer"))


def remove_layer(model: keras.Model | Graph, where: Where, *, input_index: int = 0) -> keras.Model:
    """A new model without ``where``: its input ``input_index`` goes straight to its consumers.

    Args:
        model: The model (not changed).
        where: Layer name, node name or layer object (a shared layer: every call is removed).
        input_index: Which tensor input replaces the removed output (for layers with several inputs).

    Returns:
        The new model; ``model.rewrite_result`` holds the `RewriteResult` (downstream layers given fresh
        weights because their input shape changed are in ``.reinitialized``).

    Raises:
        RewriteError: The layer has several outputs, or no tensor input.
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
    return _finish(
        apply_at(graph, lambda g: _lazy_sites(g, names), bypass(input_index), label="remove_layer")
    )


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
        source: Where the shortcut starts (layer name, node name or layer object; one call).
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
    sources = _nodes_at(graph, source, "add_skip source")
    targets = _nodes_at(graph, target, "add_skip target")
    if len(sources) != 1 or len(targets) != 1:
        raise RewriteError(
            f"add_skip: source {source!r} and target {target!r} must each be one layer call; they are "
            f"{sources} and {targets}. Name one call of a shared layer (e.g. 'dense@1')."
        )
    source_name, target_name = sources[0], targets[0]
    import networkx as nx

    if source_name == target_name or not nx.has_path(graph.nx, source_name, target_name):
        raise RewriteError(
            f"add_skip: target {target_name!r} does not come after source {source_name!r}; a skip connection "
            "goes from an earlier layer to a later one."
        )
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
                f"{tuple(shortcut.shape)} with {target_name!r} of shape {tuple(main.shape)}: {error}. "
                "Give a projection= layer that maps the shortcut to a compatible shape."
            ) from error

    def sites(g: Graph) -> Iterator[SiteMatch]:
        node = g.node(target_name)
        if node.num_outputs != 1:
            raise RewriteError(
                f"add_skip: target {target_name!r} has {node.num_outputs} outputs; it needs one."
            )
        inputs = [*g.producers(target_name), Port(source_name, 0)]
        yield SiteMatch(g, [target_name], inputs=inputs, outputs=[Port(target_name, 0)])

    return _finish(apply_at(graph, sites, replacement, label="add_skip"))
