"""Unit tests of the matcher: every pattern feature through `rewriter.find`, `Match` and `explain`."""

from __future__ import annotations

import keras
import pytest
from keras import layers as L
from keras import ops

import rewriter
from rewriter import (
    Graph,
    MatchError,
    Node,
    Pattern,
    PatternError,
    Port,
    TensorSpec,
    any_op,
    anything,
    each,
    one_of,
    op,
    tensor,
)
from rewriter.match import _GraphIndex

# ------------------------------------------------------------------------------------ models


def conv_block_model() -> keras.Model:
    """x -> c1(1x1) -> b1 -> r1 -> c2(3x3) -> b2 -> a2(Activation relu) -> c3(1x1) -> b3;
    add = b3 + r1; cat = [add, a2, b2]."""
    x = keras.Input((8, 8, 3), name="x")
    c1 = L.Conv2D(4, 1, name="c1")(x)
    b1 = L.BatchNormalization(name="b1")(c1)
    r1 = L.ReLU(name="r1")(b1)
    c2 = L.Conv2D(4, 3, padding="same", name="c2")(r1)
    b2 = L.BatchNormalization(name="b2")(c2)
    a2 = L.Activation("relu", name="a2")(b2)
    c3 = L.Conv2D(4, 1, name="c3")(a2)
    b3 = L.BatchNormalization(name="b3")(c3)
    add = L.Add(name="add")([b3, r1])
    cat = L.Concatenate(name="cat")([add, a2, b2])
    return keras.Model(x, cat, name="blocks")


@pytest.fixture(scope="module")
def blocks() -> keras.Model:
    return conv_block_model()


@pytest.fixture(scope="module")
def graph(blocks: keras.Model) -> Graph:
    return rewriter.lift(blocks)


def names(matches: list[rewriter.Match], key: str | None = None) -> list:
    if key is None:
        return [m.nodes for m in matches]
    return [m.captures.get(key) for m in matches]


# ------------------------------------------------------------------------------------ basics


def test_chain_captures_and_layers(blocks: keras.Model, graph: Graph) -> None:
    matches = rewriter.find(graph, op("Conv2D").named("c") >> op("BatchNormalization").named("b"))
    assert [m.captures for m in matches] == [
        {"c": "c1", "b": "b1"},
        {"c": "c2", "b": "b2"},
        {"c": "c3", "b": "b3"},
    ]
    first = matches[0]
    assert first["c"] is blocks.get_layer("c1")
    assert first.get("b") is blocks.get_layer("b1")
    assert first.get("nope") is None
    assert first.node("c").op_type == "Conv2D"
    assert first.anchor == "b1"
    assert first.graph is graph
    assert "c" in first and "x" not in first
    with pytest.raises(KeyError, match=r"no capture named 'cc'.*Did you mean 'c'"):
        first["cc"]


def test_find_accepts_models_and_leaves_them_alone(blocks: keras.Model) -> None:
    before = [layer.name for layer in blocks.layers]
    weights = [w.copy() for w in blocks.get_weights()]
    matches = rewriter.find(blocks, op("Conv2D") >> op("BatchNormalization"))
    assert len(matches) == 3
    assert [layer.name for layer in blocks.layers] == before
    assert all((a == b).all() for a, b in zip(weights, blocks.get_weights()))


def test_op_pattern_alone_is_a_pattern(graph: Graph) -> None:
    assert [m.anchor for m in rewriter.find(graph, op("BatchNormalization"))] == ["b1", "b2", "b3"]


def test_pattern_text_is_accepted(graph: Graph) -> None:
    from_text = rewriter.find(graph, "c:Conv2D -> BatchNormalization")
    assert names(from_text, "c") == ["c1", "c2", "c3"]


def test_bad_pattern_argument(graph: Graph) -> None:
    with pytest.raises(PatternError, match="Expected a pattern"):
        rewriter.find(graph, 42)


# ------------------------------------------------------------------------------------ constraints


def test_config_equality_lists_and_tuples(graph: Graph) -> None:
    assert names(rewriter.find(graph, op("Conv2D", kernel_size=(1, 1)).named("c")), "c") == ["c1", "c3"]
    assert names(rewriter.find(graph, op("Conv2D", kernel_size=[3, 3]).named("c")), "c") == ["c2"]
    assert rewriter.find(graph, op("Conv2D", kernel_size=(5, 5))) == []


def test_config_one_of_predicate_anything(graph: Graph) -> None:
    padding = op("Conv2D", padding=one_of("same", "causal")).named("c")
    assert names(rewriter.find(graph, padding), "c") == ["c2"]
    wide = op("Conv2D", kernel_size=lambda k: k[0] > 1).named("c")
    assert names(rewriter.find(graph, wide), "c") == ["c2"]
    free = op("Conv2D", use_bias=anything(), no_such_key=anything()).named("c")
    assert len(rewriter.find(graph, free)) == 3
    missing = op("Conv2D", no_such_key=1)
    assert rewriter.find(graph, missing) == []
    raising = op("Conv2D", kernel_size=lambda k: k.nope)
    assert rewriter.find(graph, raising) == []


def test_config_of_ops_calls_reads_call_arguments() -> None:
    x = keras.Input((4, 3))
    y = ops.concatenate([x, x], axis=1)
    z = ops.concatenate([y, y], axis=-1)
    graph = rewriter.lift(keras.Model(x, z))
    assert len(rewriter.find(graph, op("Concatenate", axis=1))) == 1
    assert len(rewriter.find(graph, op("Concatenate", axis=-1))) == 1


def test_output_constraints(graph: Graph) -> None:
    assert len(rewriter.find(graph, op("Conv2D").output(rank=4))) == 3
    assert rewriter.find(graph, op("Conv2D").output(rank=3)) == []
    assert len(rewriter.find(graph, op("Conv2D").output(shape=(None, None, None, 4)))) == 3
    assert len(rewriter.find(graph, op("Conv2D").output(shape=(None, 8, 8, 4)))) == 3
    assert rewriter.find(graph, op("Conv2D").output(shape=(None, 6, 6, 4))) == []
    assert rewriter.find(graph, op("Conv2D").output(shape=(None, 8, 8))) == []
    assert len(rewriter.find(graph, op("Conv2D").output(dtype="float32"))) == 3
    assert rewriter.find(graph, op("Conv2D").output(dtype="float16")) == []
    assert rewriter.find(graph, op("Conv2D").output(rank=4, index=1)) == []
    assert len(rewriter.find(graph, op("Conv2D").output(rank=one_of(3, 4)))) == 3


def test_node_predicate(graph: Graph) -> None:
    pattern = op("Conv2D").where(lambda node: node.name.endswith("2"), "name ends in 2").named("c")
    assert names(rewriter.find(graph, pattern), "c") == ["c2"]


def test_alternatives(graph: Graph) -> None:
    act = (op("ReLU") | op("Activation", activation="relu")).named("a")
    assert names(rewriter.find(graph, act), "a") == ["r1", "a2"]
    sig = op("ReLU") | op("Activation", activation="sigmoid")
    assert [m.anchor for m in rewriter.find(graph, sig)] == ["r1"]
    listed = op(["ReLU", "Activation"]).named("a")
    assert names(rewriter.find(graph, listed), "a") == ["r1", "a2"]


def test_wildcard_matches_any_single_op(graph: Graph) -> None:
    matches = rewriter.find(graph, op("Conv2D") >> any_op().named("mid") >> op("Activation"))
    assert names(matches, "mid") == ["b2"]
    # the wildcard matches InputLayer nodes too
    assert names(rewriter.find(graph, any_op().named("w") >> op("Conv2D", kernel_size=(1, 1))), "w") == [
        "x",
        "a2",
    ]


class ScaledDense(L.Dense):
    """A custom subclass, to check class constraints."""


def test_class_constraints_match_instances_and_subclasses() -> None:
    x = keras.Input((4,))
    y = ScaledDense(3, name="scaled")(L.Dense(4, name="plain")(x))
    graph = rewriter.lift(keras.Model(x, y))
    assert [m.anchor for m in rewriter.find(graph, op(L.Dense))] == ["plain", "scaled"]
    assert [m.anchor for m in rewriter.find(graph, op(ScaledDense))] == ["scaled"]
    assert [m.anchor for m in rewriter.find(graph, op("ScaledDense"))] == ["scaled"]


# ------------------------------------------------------------------------------------ inputs


def test_complete_list_commutative_both_orders_once() -> None:
    x = keras.Input((4,), name="x")
    bn = L.BatchNormalization(name="bn")(x)
    act = L.Activation("tanh", name="act")(x)
    first = L.Add(name="first")([bn, act])
    second = L.Add(name="second")([act, bn])
    both_bn = L.Add(name="both_bn")([bn, L.BatchNormalization(name="bn2")(x)])
    graph = rewriter.lift(keras.Model(x, [first, second, both_bn]))
    mixed = rewriter.find(graph, op("Add", inputs=[op("BatchNormalization"), op("Activation")]))
    assert [m.anchor for m in mixed] == ["first", "second"]
    twice = rewriter.find(
        graph, op("Add", inputs=[op("BatchNormalization").named("p"), op("BatchNormalization")])
    )
    assert [m.anchor for m in twice] == ["both_bn"]  # reported once, not once per order
    assert twice[0].captures["p"] == "bn"  # argument order preferred
    # the same pattern written with >> on a list
    listed = [op("Activation"), op("BatchNormalization")] >> op("Add")
    assert [m.anchor for m in rewriter.find(graph, listed)] == ["first", "second"]


def test_complete_list_is_ordered_for_non_commutative_ops() -> None:
    x = keras.Input((4,), name="x")
    relu = L.ReLU(name="relu")(x)
    act = L.Activation("tanh", name="act")(x)
    forward = L.Subtract(name="forward")([relu, act])
    backward = L.Subtract(name="backward")([act, relu])
    graph = rewriter.lift(keras.Model(x, [forward, backward]))
    pattern = op("Subtract", inputs=[op("ReLU"), op("Activation")])
    assert [m.anchor for m in rewriter.find(graph, pattern)] == ["forward"]
    forced = op("Subtract", inputs=[op("ReLU"), op("Activation")], commutative=True)
    assert [m.anchor for m in rewriter.find(graph, forced)] == ["forward", "backward"]


def test_complete_list_arity_must_match() -> None:
    x = keras.Input((4,), name="x")
    a, b, c = (L.ReLU(name=n)(x) for n in "abc")
    three = L.Add(name="three")([a, b, c])
    two = L.Add(name="two")([a, b])
    graph = rewriter.lift(keras.Model(x, [three, two]))
    assert [m.anchor for m in rewriter.find(graph, op("Add", inputs=[op("ReLU"), op("ReLU")]))] == ["two"]
    open_ended = rewriter.find(graph, op("Add", inputs=[op("ReLU").named("r"), ...]))
    # open-ended and commutative: one match per (Add, ReLU input) place
    assert sorted((m.anchor, m.captures["r"]) for m in open_ended) == sorted(
        [("three", "a"), ("three", "b"), ("three", "c"), ("two", "a"), ("two", "b")]
    )


def test_keras_ops_are_commutative_too() -> None:
    x = keras.Input((4,), name="x")
    relu = L.ReLU(name="relu")(x)
    tanh = L.Activation("tanh", name="tanh")(x)
    added = ops.add(tanh, relu)
    multiplied = ops.multiply(tanh, relu)
    biggest = ops.maximum(tanh, relu)
    graph = rewriter.lift(keras.Model(x, [added, multiplied, biggest]))
    for kind in ("Add", "Multiply", "Maximum"):
        assert len(rewriter.find(graph, op(kind, inputs=[op("ReLU"), op("Activation")]))) == 1, kind


def test_tensor_placeholders() -> None:
    x = keras.Input((4,), name="x")
    h = L.ReLU(name="h")(x)
    square = ops.multiply(h, h)
    product = ops.multiply(h, x)
    graph = rewriter.lift(keras.Model(x, [square, product]))
    t = tensor("t")
    same = rewriter.find(graph, op("Multiply", inputs=[t, t]))
    assert len(same) == 1
    assert same[0].tensors == {"t": Port("h", 0)}
    with pytest.raises(KeyError, match="tensor placeholder"):
        same[0]["t"]
    assert same[0].inputs == [Port("h", 0)]
    assert same[0].nodes == [same[0].anchor]
    assert len(rewriter.find(graph, op("Multiply", inputs=[tensor(), tensor()]))) == 2
    assert len(rewriter.find(graph, op("Multiply", inputs=[tensor(rank=2), op("InputLayer")]))) == 1
    assert rewriter.find(graph, op("Multiply", inputs=[tensor(rank=3), tensor()])) == []
    anonymous = tensor()  # the same anonymous object twice: two independent tensors
    assert len(rewriter.find(graph, op("Multiply", inputs=[anonymous, anonymous]))) == 2


def test_wide_commutative_lists_do_not_explode() -> None:
    x = keras.Input((4,), name="x")
    relus = [L.ReLU(name=f"r{i}")(x) for i in range(10)]
    graph = rewriter.lift(keras.Model(x, L.Add(name="sum")(relus)))
    # interchangeable items are assigned once, not in 10! orders
    assert len(rewriter.find(graph, op("Add", inputs=[tensor() for _ in range(10)]))) == 1
    assert rewriter.find(graph, op("Add", inputs=[op("ReLU")] * 10)) == []  # one node ten times: no
    three = rewriter.find(graph, op("Add", inputs=[op("ReLU"), op("ReLU"), op("ReLU"), ...]))
    assert len(three) == 120  # one match per set of three ReLU inputs (C(10, 3)), not per order


def test_each_variadic_inputs() -> None:
    x = keras.Input((4,), name="x")
    r = [L.ReLU(name=f"r{i}")(x) for i in range(3)]
    two = L.Concatenate(name="two")(r[:2])
    three = L.Concatenate(name="three")(r)
    mixed = L.Concatenate(name="mixed")([r[0], x])
    graph = rewriter.lift(keras.Model(x, [two, three, mixed]))
    relus = rewriter.find(graph, op("Concatenate", inputs=each(op("ReLU"))))
    assert [m.anchor for m in relus] == ["two", "three"]
    assert relus[1].nodes[-1] == "three" and set(relus[1].nodes[:-1]) == {"r0", "r1", "r2"}
    assert [m.anchor for m in rewriter.find(graph, op("Concatenate", inputs=each(op("ReLU"), min=3)))] == [
        "three"
    ]
    assert [m.anchor for m in rewriter.find(graph, op("Concatenate", inputs=each(op("ReLU"), max=2)))] == [
        "two"
    ]
    any_inputs = rewriter.find(graph, op("Concatenate", inputs=each(tensor())))
    assert [m.anchor for m in any_inputs] == ["two", "three", "mixed"]
    assert any_inputs[2].nodes == ["mixed"]


def test_chain_into_listed_node() -> None:
    x = op("Conv2D").named("x")
    y = op("Conv2D").named("y")
    cat = op("Concatenate", inputs=[x, y])
    assert x >> cat is cat  # already in the list: accepted
    with pytest.raises(PatternError, match="not in it"):
        op("ReLU") >> cat


# ------------------------------------------------------------------------------------ optional nodes


def test_optional_middle_node_passes_through(graph: Graph) -> None:
    pattern = (
        op("Conv2D").named("c") >> op("BatchNormalization").named("b").optional() >> op("ReLU").named("r")
    )
    matches = rewriter.find(graph, pattern)
    assert [m.captures for m in matches] == [{"c": "c1", "b": "b1", "r": "r1"}]
    x = keras.Input((8, 8, 3), name="x")
    direct = L.ReLU(name="r")(L.Conv2D(2, 1, name="c")(x))
    bare = rewriter.lift(keras.Model(x, direct))
    matches = rewriter.find(bare, pattern)
    assert [m.captures for m in matches] == [{"c": "c", "r": "r"}]
    assert matches[0].get("b") is None
    with pytest.raises(KeyError, match="absent"):
        matches[0]["b"]


def test_optional_is_greedy_not_reported_twice() -> None:
    # wildcard source: without greediness "_ -> ReLU" would also match (bn, relu) with the BN absent
    x = keras.Input((4,), name="x")
    relu = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Dense(4, name="dense")(x)))
    graph = rewriter.lift(keras.Model(x, relu))
    pattern = any_op().named("src") >> op("BatchNormalization").named("bn").optional() >> op("ReLU")
    matches = rewriter.find(graph, pattern)
    assert [m.captures for m in matches] == [{"src": "dense", "bn": "bn"}]


def test_optional_sink_is_greedy(graph: Graph) -> None:
    act = (op("ReLU") | op("Activation", activation="relu")).named("a").optional()
    pattern = op("Conv2D").named("c") >> op("BatchNormalization").named("b") >> act
    matches = rewriter.find(graph, pattern)
    assert [m.captures for m in matches] == [
        {"c": "c1", "b": "b1", "a": "r1"},
        {"c": "c2", "b": "b2", "a": "a2"},
        {"c": "c3", "b": "b3"},
    ]
    assert matches[2].anchor == "b3"
    assert matches[2].outputs == [Port("b3", 0)]
    assert matches[1].outputs == [Port("a2", 0)]
    # anchors= restricts where the (effective) sink may be, and greediness still holds
    assert rewriter.find(graph, pattern, anchors=["b1"]) == []


def test_optional_source() -> None:
    x = keras.Input((4,), name="x")
    with_bn = L.ReLU(name="r1")(L.BatchNormalization(name="bn")(x))
    without = L.ReLU(name="r2")(x)
    graph = rewriter.lift(keras.Model(x, [with_bn, without]))
    matches = rewriter.find(graph, op("BatchNormalization").named("bn").optional() >> op("ReLU").named("r"))
    assert [m.captures for m in matches] == [{"bn": "bn", "r": "r1"}, {"r": "r2"}]


def test_optional_node_rules() -> None:
    a = op("ReLU").optional()
    with pytest.raises(PatternError, match="may feed at most one"):
        Pattern(a >> op("Dense"), a >> op("Dense"))
    two_inputs = op("Add", inputs=[op("ReLU"), op("ReLU")]).optional()
    with pytest.raises(PatternError, match="at most one pattern input"):
        Pattern(two_inputs >> op("Dense"))
    with pytest.raises(PatternError, match="at least one non-optional"):
        Pattern(op("ReLU").optional())


# ------------------------------------------------------------------------------------ captures, sinks


def test_capture_used_twice_is_one_node() -> None:
    x = keras.Input((4,), name="x")
    h = L.Dense(4, name="h")(x)
    a = L.ReLU(name="a")(h)
    b = L.Activation("tanh", name="b")(h)
    other = L.Activation("tanh", name="other")(L.Dense(4, name="h2")(x))
    graph = rewriter.lift(keras.Model(x, [a, b, other]))
    shared = op("Dense").named("h")
    pattern = Pattern(shared >> op("ReLU").named("a"), shared >> op("Activation").named("b"))
    matches = rewriter.find(graph, pattern)
    assert [m.captures for m in matches] == [{"h": "h", "a": "a", "b": "b"}]
    assert matches[0].outputs == [Port("a", 0), Port("b", 0)]
    assert matches[0].escaping == []
    with pytest.raises(PatternError, match="Two different pattern nodes are named 'h'"):
        Pattern(op("Dense").named("h") >> op("ReLU"), op("Dense").named("h") >> op("Activation"))


def test_disconnected_sinks_pair_up() -> None:
    x = keras.Input((4,), name="x")
    outs = [L.ReLU(name="r1")(x), L.ReLU(name="r2")(x), L.Activation("tanh", name="t")(x)]
    graph = rewriter.lift(keras.Model(x, outs))
    matches = rewriter.find(graph, Pattern(op("ReLU").named("r"), op("Activation").named("t")))
    assert [m.captures for m in matches] == [{"r": "r1", "t": "t"}, {"r": "r2", "t": "t"}]


def test_where_predicate(graph: Graph) -> None:
    pattern = Pattern(
        op("Conv2D").named("c") >> op("BatchNormalization"),
        where=lambda m: m["c"].kernel_size == (3, 3),
    )
    assert names(rewriter.find(graph, pattern), "c") == ["c2"]
    broken = Pattern(op("Conv2D").named("c"), where=lambda m: m["missing"])
    with pytest.raises(PatternError, match=r"where= predicate .* raised KeyError"):
        rewriter.find(graph, broken)


# ------------------------------------------------------------------------------------ Match structure


def test_match_inputs_outputs_escaping(graph: Graph) -> None:
    pattern = op("Conv2D") >> op("BatchNormalization") >> op("Activation")
    (m,) = rewriter.find(graph, pattern)
    assert m.nodes == ["c2", "b2", "a2"]
    assert m.inputs == [Port("r1", 0)]
    assert m.outputs == [Port("a2", 0)]
    assert m.escaping == [Port("b2", 0)]  # b2 also feeds the Concatenate
    assert m.sinks == ["a2"]


def test_match_ports_read_the_graph_as_it_is_now(graph: Graph) -> None:
    edited = graph.copy()
    (m,) = rewriter.find(edited, op("Conv2D") >> op("BatchNormalization") >> op("Activation"))
    assert m.escaping == [Port("b2", 0)]
    edited.set_inputs("cat", [Port("add"), Port("a2"), Port("a2")])  # b2 no longer used outside
    assert m.escaping == []
    assert m.inputs == [Port("r1", 0)]


def test_match_inputs_order_and_graph_outputs() -> None:
    x = keras.Input((4,), name="x")
    y = keras.Input((4,), name="y")
    inner = L.ReLU(name="inner")(y)
    summed = L.Add(name="sum")([x, inner])
    out = L.Multiply(name="mul")([summed, x])
    graph = rewriter.lift(keras.Model([x, y], [out, inner]))
    (m,) = rewriter.find(graph, op("ReLU") >> op("Add") >> op("Multiply"))
    assert m.nodes == ["inner", "sum", "mul"]
    assert m.inputs == [Port("y", 0), Port("x", 0)]
    assert m.escaping == [Port("inner", 0)]  # a graph output


def test_multi_output_sink_lists_every_output() -> None:
    x = keras.Input((6,), name="x")
    parts = ops.split(L.ReLU(name="r")(x), 2, axis=-1)
    graph = rewriter.lift(keras.Model(x, [parts[0], parts[1]]))
    (m,) = rewriter.find(graph, op("ReLU") >> any_op().named("split"))
    assert m.outputs == [Port(m.captures["split"], 0), Port(m.captures["split"], 1)]


def test_order_is_topological_by_anchor_and_deterministic(graph: Graph) -> None:
    pattern = any_op() >> any_op()
    first = rewriter.find(graph, pattern)
    again = rewriter.find(graph.copy(), pattern)
    assert [m._key for m in first] == [m._key for m in again]
    order = {n: i for i, n in enumerate(graph.topological_names())}
    anchors = [order[m.anchor] for m in first]
    assert anchors == sorted(anchors)
    assert _GraphIndex(graph.copy()).order == graph.topological_names()


def test_anchors_restrict_candidate_sinks(graph: Graph) -> None:
    pattern = op("Conv2D") >> op("BatchNormalization")
    assert [m.anchor for m in rewriter.find(graph, pattern, anchors=["b2", "c1", "gone"])] == ["b2"]
    assert rewriter.find(graph, pattern, anchors=[]) == []


def test_deep_chain_needs_no_recursion() -> None:
    graph = Graph("deep")
    spec = TensorSpec((None, 4), "float32")
    graph.add_node(Node("x", "InputLayer", None, None, output_specs=[spec]))
    graph.inputs = ["x"]
    previous = "x"
    for i in range(4000):
        name = f"r{i}"
        graph.add_node(
            Node(name, "ReLU", None, {"name": name}, input_specs=[spec], output_specs=[spec]),
            [Port(previous)],
        )
        previous = name
    graph.output_structure = Port(previous)
    matches = rewriter.find(graph, op("ReLU") >> op("ReLU") >> op("ReLU"))
    assert len(matches) == 3998
    assert matches[0].nodes == ["r0", "r1", "r2"]
    text = rewriter.explain(graph, op("InputLayer") >> op("Dense"), at="r3999")
    assert "does not match" in text


# ------------------------------------------------------------------------------------ explain


def test_explain_reports_the_failed_constraint(graph: Graph) -> None:
    pattern = op("Conv2D") >> op("BatchNormalization") >> op("ReLU")
    text = rewriter.explain(graph, pattern, at="c2")
    assert "does not match" in text
    assert "'b2'" in text and "'a2'" in text and "its op is Activation, wanted ReLU" in text
    deeper = rewriter.explain(graph, pattern, at="a2")
    assert "no pattern node can be 'a2'" in deeper and "(BatchNormalization, Conv2D, ReLU)" in deeper


def test_explain_config_failure_at_anchor(graph: Graph) -> None:
    pattern = op("Conv2D", kernel_size=(1, 1)).named("c") >> op("BatchNormalization").named("b")
    text = rewriter.explain(graph, pattern, at="b2")
    assert "b = 'b2'" in text
    assert "kernel_size=(3, 3), wanted kernel_size=(1, 1)" in text


def test_explain_where_and_input_list_failures(graph: Graph) -> None:
    where = Pattern(op("Conv2D").named("c"), where=lambda m: False)
    assert "where= predicate rejected" in rewriter.explain(graph, where, at="c1")
    arity = op("Add", inputs=[op("BatchNormalization"), op("ReLU"), op("ReLU")])
    assert "has 2 input(s)" in rewriter.explain(graph, arity, at="add")


def test_explain_when_it_matches(graph: Graph, blocks: keras.Model) -> None:
    pattern = op("Conv2D").named("c") >> op("BatchNormalization").named("b")
    text = rewriter.explain(graph, pattern, at="c1")
    assert "matches with node 'c1' (Conv2D) as c" in text and "'b1'" in text
    assert "matches" in rewriter.explain(graph, pattern, at=blocks.get_layer("b3"))
    assert "matches" in rewriter.explain(graph, pattern, at=graph.node("b2"))


def test_explain_unknown_node(graph: Graph) -> None:
    with pytest.raises(MatchError, match=r"no node or layer named 'b9'.*Did you mean"):
        rewriter.explain(graph, op("ReLU"), at="b9")
    with pytest.raises(MatchError):
        rewriter.explain(graph, op("ReLU"), at=object())


def test_explain_resolves_layer_names_of_shared_layers() -> None:
    x = keras.Input((4,), name="x")
    dense = L.Dense(4, name="shared")
    out = L.ReLU(name="r")(dense(dense(x)))
    graph = rewriter.lift(keras.Model(x, out))
    text = rewriter.explain(graph, op("Dense") >> op("Softmax"), at="shared")
    assert "node 'shared' (Dense)" in text
