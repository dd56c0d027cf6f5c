"""Tests of patterns by example (rewriter/by_example.py): explicit arguments only, tracing, matching."""

from __future__ import annotations

import keras
import pytest
from keras import layers, ops

import rewriter
from rewriter import Pattern, op, parse_pattern, pattern_from_example, tensor
from rewriter.by_example import trace_example
from rewriter.errors import PatternError


def _conv_pool(x):
    return layers.MaxPooling2D()(layers.Conv2D(32, 3)(x))


def _conv_pool_model() -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    h = layers.Conv2D(32, 3, name="c1")(inputs)  # matches
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(h)  # matches: padding free
    h = layers.MaxPooling2D(name="p2")(h)
    a = layers.Conv2D(16, 3, name="c3")(h)  # filters differ
    a = layers.MaxPooling2D(name="p3")(a)
    b = layers.Conv2D(32, 5, name="c4")(h)  # kernel differs
    b = layers.MaxPooling2D(name="p4")(b)
    c = layers.Conv2D(32, (3, 3), strides=1, name="c5")(h)  # matches: (3, 3) == 3 after normalization
    c = layers.AveragePooling2D(2, name="p5")(c)  # pooling kind differs
    d = layers.Conv2D(32, (3, 3), name="c6")(h)
    d = layers.MaxPooling2D(pool_size=3, name="p6")(d)  # matches: pool size was not written
    return keras.Model(inputs, [a, b, c, d])


def test_issue_example_constrains_only_explicit_arguments() -> None:
    pattern = pattern_from_example(_conv_pool)
    conv = op("Conv2D", filters=32, kernel_size=(3, 3), inputs=[tensor("x")])
    assert pattern == Pattern(op("MaxPooling2D", inputs=[conv]))
    (conv_choice,) = pattern.nodes[0].choices
    assert dict(conv_choice.config).keys() == {"filters", "kernel_size"}
    assert pattern.nodes[1].choices[0].config == {}


def test_issue_example_finds_the_right_matches() -> None:
    model = _conv_pool_model()
    graph = rewriter.lift(model)
    matches = rewriter.find(graph, pattern_from_example(_conv_pool))
    # Independent computation: Conv2D with 32 filters and a 3x3 kernel feeding a MaxPooling2D.
    expected = [
        (n.name, u.consumer)
        for n in graph.topological()
        if n.op_type == "Conv2D" and n.config["filters"] == 32 and tuple(n.config["kernel_size"]) == (3, 3)
        for u in graph.consumers(n.name)
        if graph.node(u.consumer).op_type == "MaxPooling2D"
    ]
    assert [tuple(m.nodes) for m in matches] == expected == [("c1", "p1"), ("c2", "p2"), ("c6", "p6")]
    assert matches[0].tensors["x"] == rewriter.Port(graph.inputs[0], 0)


def test_same_as_text_pattern() -> None:
    assert pattern_from_example(_conv_pool) == parse_pattern(
        "_c:Conv2D(filters=32, kernel_size=(3, 3)); [$x] -> _c; [_c] -> MaxPooling2D"
    )


def test_explicit_default_value_does_constrain() -> None:
    pattern = pattern_from_example(lambda x: layers.Conv2D(32, 3, padding="valid")(x))
    found = rewriter.find(_conv_pool_model(), pattern)
    assert sorted(m.nodes[0] for m in found) == ["c1", "c5", "c6"]  # c2 has padding="same"


def test_keras_normalizes_values() -> None:
    pattern = pattern_from_example(
        lambda x: layers.Conv2D(8, 1, strides=1, kernel_initializer="zeros", activation="relu")(x)
    )
    config = dict(pattern.sinks[0].choices[0].config)
    assert config["kernel_size"].value == (1, 1)
    assert config["strides"].value == (1, 1)
    reference = layers.Conv2D(8, 1, kernel_initializer="zeros").get_config()["kernel_initializer"]
    assert config["kernel_initializer"].value == reference and reference["class_name"] == "Zeros"
    assert config["activation"].value == "relu"
    assert set(config) == {"filters", "kernel_size", "strides", "kernel_initializer", "activation"}


def test_name_becomes_a_capture_not_a_constraint() -> None:
    pattern = pattern_from_example(lambda x: layers.MaxPooling2D()(layers.Conv2D(32, 3, name="conv")(x)))
    assert pattern.capture_names == ["conv", "x"]
    assert "name" not in pattern.nodes[0].choices[0].config
    matches = rewriter.find(_conv_pool_model(), pattern)
    assert [m.captures["conv"] for m in matches] == ["c1", "c2", "c6"]
    assert matches[0]["conv"].name == "c1"


def test_shapes_do_not_constrain_unless_asked() -> None:
    def dense_relu(x):
        return layers.ReLU()(layers.Dense(4)(x))

    inputs = keras.Input((10,))
    h = layers.ReLU(name="r1")(layers.Dense(4, name="d1")(inputs))
    seq = keras.Input((5, 7))
    g = layers.ReLU(name="r2")(layers.Dense(4, name="d2")(seq))
    model = keras.Model([inputs, seq], [h, g])

    free = pattern_from_example(dense_relu, (3,))
    assert [m.nodes for m in rewriter.find(model, free)] == [["d1", "r1"], ["d2", "r2"]]
    ranked = pattern_from_example(dense_relu, (3,), shapes="rank")
    assert [m.nodes for m in rewriter.find(model, ranked)] == [["d1", "r1"]]
    exact = pattern_from_example(dense_relu, (5, 7), shapes=True)
    assert [m.nodes for m in rewriter.find(model, exact)] == [["d2", "r2"]]
    assert rewriter.find(model, pattern_from_example(dense_relu, (6, 7), shapes=True)) == []


def _ops_model() -> keras.Model:
    a = keras.Input((4, 6), name="a")
    b = keras.Input((4, 6), name="b")
    conv = layers.Dense(6, name="proj")(a)
    s1 = ops.add(conv, b)  # Dense output first
    s2 = layers.Add(name="add_layer")([b, conv])  # Dense output second
    sq = ops.multiply(s1, s1)  # the same tensor twice
    prod = ops.multiply(s1, s2)  # two different tensors
    red1 = ops.sum(sq, axis=1)
    red2 = ops.sum(prod, axis=1, keepdims=True)
    red3 = ops.sum(prod, axis=2)
    return keras.Model([a, b], [red1, red2, red3])


def test_ops_calls_become_nodes_and_commutative_order_is_free() -> None:
    model = _ops_model()
    graph = rewriter.lift(model)

    def residual(x, y):
        return ops.add(layers.Dense(6)(x), y)

    pattern = pattern_from_example(residual, (4, 6), (4, 6))
    assert pattern == Pattern(op("Add", inputs=[op("Dense", units=6, inputs=[tensor("x")]), tensor("y")]))
    matches = rewriter.find(graph, pattern)
    adds = [n.name for n in graph.topological() if n.op_type == "Add"]
    assert len(adds) == 2
    assert sorted(m.anchor for m in matches) == sorted(adds)  # both orders, each reported once
    for m in matches:
        assert m.tensors["x"] == rewriter.Port("a", 0) and m.tensors["y"] == rewriter.Port("b", 0)


def test_parameter_used_twice_is_the_same_tensor() -> None:
    model = _ops_model()
    graph = rewriter.lift(model)
    squares = rewriter.find(graph, pattern_from_example(lambda x: ops.multiply(x, x)))
    expected = [
        n.name
        for n in graph.topological()
        if n.op_type == "Multiply" and len(set(graph.producers(n.name))) == 1
    ]
    assert [m.anchor for m in squares] == expected and len(expected) == 1
    # two parameters are two boundary tensors, which may or may not be the same tensor
    products = rewriter.find(graph, pattern_from_example(lambda x, y: ops.multiply(x, y)))
    assert sorted(m.anchor for m in products) == sorted(n.name for n in graph.nodes_of_type("Multiply"))
    assert [m.tensors["x"] == m.tensors["y"] for m in products].count(True) == 1


def test_ops_arguments_equal_to_the_function_default_do_not_constrain() -> None:
    pattern = pattern_from_example(lambda x: ops.sum(x, axis=1))
    config = dict(pattern.sinks[0].choices[0].config)
    assert set(config) == {"axis"}  # keepdims was not written
    found = rewriter.find(_ops_model(), pattern)
    assert len(found) == 2  # axis=1 with and without keepdims, not axis=2
    keep = pattern_from_example(lambda x: ops.sum(x, axis=1, keepdims=True))
    assert len(rewriter.find(_ops_model(), keep)) == 1


def test_several_returned_tensors_are_several_sinks() -> None:
    def fork(x):
        h = layers.Dense(6)(x)
        return ops.sum(h, axis=1), ops.add(h, x)

    pattern = pattern_from_example(fork, (4, 6))
    assert [s.describe() for s in pattern.sinks] == ["Sum(axis=1)", "Add"]
    model = _ops_model()
    matches = rewriter.find(model, pattern)
    assert matches == []  # in _ops_model the Dense feeds no Sum directly
    x = keras.Input((4, 6))
    h = layers.Dense(6, name="d")(x)
    model = keras.Model(x, [ops.sum(h, axis=1), ops.add(h, x), ops.sum(h, axis=2)])
    (match,) = rewriter.find(model, pattern)
    assert len(match.sinks) == 2 and "d" in match.nodes


def test_layer_built_outside_the_example_constrains_its_whole_config() -> None:
    outside = layers.Dense(6, use_bias=False)
    pattern = pattern_from_example(lambda x: outside(x), (4, 6))
    config = dict(pattern.sinks[0].choices[0].config)
    assert config["use_bias"].value is False and config["units"].value == 6 and "name" not in config


def test_trace_example_reports_explicit_arguments() -> None:
    graph, explicit, parameters = trace_example(
        lambda x, y: layers.Concatenate(axis=1)([x, y]), (3, 4), (5, 4)
    )
    assert parameters == ["x", "y"]
    ((constraints, capture),) = explicit.values()
    assert constraints == {"axis": 1} and capture is None
    assert [n.op_type for n in graph.topological()] == ["InputLayer", "InputLayer", "Concatenate"]


def test_operation_new_is_restored_even_when_the_example_fails() -> None:
    original = keras.Operation.__dict__["__new__"]

    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(PatternError, match="boom"):
        pattern_from_example(broken)
    assert keras.Operation.__dict__["__new__"] is original
    pattern_from_example(_conv_pool)
    assert keras.Operation.__dict__["__new__"] is original


@pytest.mark.parametrize(
    ("fn", "shapes", "fragment"),
    [
        (lambda x, y: layers.ReLU()(x), (), "'y' of example function"),
        (lambda x: x, (), "returns one of its parameters unchanged"),
        (lambda x: 3, (), "must return symbolic tensors"),
        (lambda x: None, (), "returned nothing"),
        (lambda: layers.ReLU(), (), "takes no tensor parameters"),
        (lambda x: layers.Conv3D(2, 3)(x), ((4,),), "with the given input shapes"),
        (lambda x: layers.ReLU()(x), ((4,), (4,)), "1 tensor parameter"),
        (lambda x: layers.ReLU()(x), ("abc",), "must be a tuple of ints"),
    ],
)
def test_errors(fn, shapes, fragment) -> None:
    with pytest.raises(PatternError, match=None) as caught:
        pattern_from_example(fn, *shapes)
    assert fragment in str(caught.value)


def test_bad_shapes_option() -> None:
    with pytest.raises(PatternError, match="shapes must be"):
        pattern_from_example(_conv_pool, shapes="yes")


def test_function_accepted_wherever_a_pattern_is() -> None:
    found = rewriter.find(_conv_pool_model(), _conv_pool)
    assert [m.nodes for m in found] == [["c1", "p1"], ["c2", "p2"], ["c6", "p6"]]


def test_literal_operands_of_ops_calls_must_be_equal() -> None:
    x = keras.Input((4,))
    model = keras.Model(
        x,
        [
            ops.multiply(x, 0.5),
            ops.multiply(2.0, x),
            ops.multiply(x, 2.0),
            ops.subtract(x, 1.0),
            ops.subtract(1.0, x),
        ],
    )
    graph = rewriter.lift(model)
    doubles = rewriter.find(graph, pattern_from_example(lambda t: ops.multiply(t, 2.0)))
    # Multiply is commutative: 2.0 * x and x * 2.0 both match, x * 0.5 does not
    expected = [n.name for n in graph.nodes_of_type("Multiply") if 2.0 in n.call_args]
    assert [m.anchor for m in doubles] == expected and len(expected) == 2
    minus_one = rewriter.find(graph, pattern_from_example(lambda t: ops.subtract(t, 1.0)))
    assert [m.anchor for m in minus_one] == [
        n.name for n in graph.nodes_of_type("Subtract") if n.call_args[1] == 1.0
    ]
    assert len(minus_one) == 1
