"""Hypothesis properties of `rewriter.rewrite` on random functional models with random shape-preserving rules.

Rules (each function-preserving, applied at one randomly drawn node):

- insert an ``Activation("linear")`` after the node;
- wrap the node ``f`` in an identity residual with a zero branch: ``f(x) + Rescaling(0)(x)``;
- swap the two inputs of a commutative op (Add, Multiply, Maximum, Minimum, Average).

Properties: same output shapes; the same outputs (the rewrite verifies it and so does the test); the input
model's weights and Keras bookkeeping unchanged; the rewritten graph verifies. Also: several of these rules
at random places in one rewrite (one application per distinct node), and a shape-preserving rule that does
not preserve the function (``Activation("tanh")`` after a node): same output shapes, no fresh weights,
every weight of the input kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Any

import keras
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from keras import layers

import rewriter
from rewriter import Rule, any_op
from tests.helpers import flat_outputs, random_inputs
from tests.rewrite_models import assert_unchanged, snapshot
from tests.strategies import functional_models

_SWAPPABLE = {"Add", "Multiply", "Maximum", "Minimum", "Average"}
_OPS = {
    "Add": keras.ops.add,
    "Multiply": keras.ops.multiply,
    "Maximum": keras.ops.maximum,
    "Minimum": keras.ops.minimum,
    "Average": lambda a, b: (a + b) / 2,
}


def _at(name: str) -> Any:
    return any_op().where(lambda node: node.name == name, f"node {name!r}")


def _is_float(node: rewriter.Node) -> bool:
    return all("float" in spec.dtype for spec in node.output_specs)


def _check(model: keras.Model, rule: Rule) -> None:
    before = snapshot(model)
    result = rewriter.rewrite(model, [rule], fixed_point=False)
    assert result.counts() == {rule.name: 1}
    result.graph.verify()
    assert_unchanged(model, before)
    data = random_inputs(model, seed=7)
    want = flat_outputs(model, data)
    got = flat_outputs(result.model, data)
    assert [w.shape for w in want] == [g.shape for g in got]
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@given(model=functional_models(max_ops=8), data=st.data())
def test_insert_linear_activation_preserves_the_function(model: keras.Model, data: st.DataObject) -> None:
    graph = rewriter.lift(model)
    places = [n.name for n in graph.topological() if not n.is_input and _is_float(n)]
    assume(places)
    target = data.draw(st.sampled_from(places), label="node")
    rule = Rule(
        "linear-after",
        _at(target),
        rewriter.follow_with(lambda: layers.Activation("linear")),
        function_preserving=True,
    )
    _check(model, rule)


@given(model=functional_models(max_ops=8), data=st.data())
def test_zero_residual_preserves_the_function(model: keras.Model, data: st.DataObject) -> None:
    graph = rewriter.lift(model)
    places = _same_shape_places(graph)
    assume(places)
    target = data.draw(st.sampled_from(places), label="node")
    rule = Rule(
        "zero-residual",
        _at(target),
        rewriter.residual(branch=lambda: layers.Rescaling(0.0)),
        function_preserving=True,
    )
    _check(model, rule)


def _same_shape_places(graph: rewriter.Graph) -> list[str]:
    """Float nodes with one output shaped like their first input: where ``f(x) + 0 * x`` is valid."""
    return [
        n.name
        for n in graph.topological()
        if not n.is_input
        and n.num_outputs == 1
        and n.num_inputs >= 1
        and _is_float(n)
        and graph.node(graph.producers(n.name)[0].node).output_specs[graph.producers(n.name)[0].index]
        == n.output_specs[0]
    ]


def _swap(match: Any, *inputs: Any) -> Any:
    graph = match.graph
    node = graph.node(match.anchor)
    tensor_of = dict(zip(match.inputs, inputs))
    first, second = (tensor_of[p] for p in graph.producers(node.name))
    if isinstance(node.layer, keras.layers.Layer):
        return type(node.layer)()([second, first])
    return _OPS[node.op_type](second, first)


@given(model=functional_models(max_ops=10), data=st.data())
def test_swapping_commutative_inputs_preserves_the_function(model: keras.Model, data: st.DataObject) -> None:
    graph = rewriter.lift(model)
    places = [n.name for n in graph.topological() if n.op_type in _SWAPPABLE and n.num_inputs == 2]
    assume(places)
    target = data.draw(st.sampled_from(places), label="node")
    _check(model, Rule("swap", _at(target), _swap, function_preserving=True))


@given(model=functional_models(max_ops=8), data=st.data())
def test_shape_preserving_change_keeps_shapes_and_every_untouched_weight(
    model: keras.Model, data: st.DataObject
) -> None:
    """A non-preserving but shape-preserving rule: same output shapes, no fresh weights, weights kept."""
    graph = rewriter.lift(model)
    places = [n.name for n in graph.topological() if not n.is_input and _is_float(n) and n.num_outputs == 1]
    assume(places)
    target = data.draw(st.sampled_from(places), label="node")
    before = snapshot(model)
    rule = Rule("tanh-after", _at(target), rewriter.follow_with(lambda: layers.Activation("tanh")))
    result = rewriter.rewrite(model, [rule], fixed_point=False)
    assert result.counts() == {"tanh-after": 1} and result.reinitialized == []
    result.graph.verify()
    assert_unchanged(model, before)
    inputs = random_inputs(model, seed=3)
    assert [o.shape for o in flat_outputs(result.model, inputs)] == [
        o.shape for o in flat_outputs(model, inputs)
    ]
    for layer in model.layers:
        if layer.weights:
            new = result.model.get_layer(layer.name)
            assert all(
                np.array_equal(a, b) for a, b in zip(new.get_weights(), layer.get_weights(), strict=True)
            )


_FP_RULES = ("linear-after", "zero-residual", "swap")


@given(model=functional_models(max_ops=10), data=st.data())
def test_several_preserving_rules_in_one_rewrite(model: keras.Model, data: st.DataObject) -> None:
    """Random preserving rules at random places, all in one call: never two at one node, same outputs."""
    graph = rewriter.lift(model)
    candidates = {
        "linear-after": [n.name for n in graph.topological() if not n.is_input and _is_float(n)],
        "zero-residual": _same_shape_places(graph),
        "swap": [n.name for n in graph.topological() if n.op_type in _SWAPPABLE and n.num_inputs == 2],
    }
    drawn = data.draw(
        st.lists(st.sampled_from([k for k in _FP_RULES if candidates[k]]), min_size=1, max_size=3)
        if any(candidates.values())
        else st.nothing(),
        label="rules",
    )
    templates = {
        "linear-after": rewriter.follow_with(lambda: layers.Activation("linear")),
        "zero-residual": rewriter.residual(branch=lambda: layers.Rescaling(0.0)),
        "swap": _swap,
    }
    rules, targets = [], []
    for index, kind in enumerate(drawn):
        target = data.draw(st.sampled_from(candidates[kind]), label=f"{kind} at")
        targets.append(target)
        rules.append(Rule(f"{kind}-{index}", _at(target), templates[kind], function_preserving=True))
    before = snapshot(model)
    result = rewriter.rewrite(model, rules, fixed_point=False)
    assert_unchanged(model, before)
    result.graph.verify()
    assert sum(result.counts().values()) == len(set(targets))  # one application per distinct node
    inputs = random_inputs(model, seed=9)
    for want, got in zip(flat_outputs(model, inputs), flat_outputs(result.model, inputs), strict=True):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
