"""`rewriter.explain` on the realistic "why didn't my pattern match?" cases: the key facts of the paragraph.

One small model holds every situation: a wrong config value, a missing (required) activation, an absent
optional node, a conv whose output has an extra consumer, a non-commutative op with its inputs in the other
order, a commutative op (order irrelevant), a Concatenate of three inputs, a node predicate and a where=.
"""

from __future__ import annotations

import keras
import pytest
from keras import layers as L

import rewriter
from rewriter import Graph, Pattern, each, op


@pytest.fixture(scope="module")
def graph() -> Graph:
    x = keras.Input((16, 16, 3), name="x")
    c1 = L.Conv2D(8, 1, padding="same", name="c1")(x)
    b1 = L.BatchNormalization(name="b1")(c1)
    a1 = L.Activation("relu", name="a1")(b1)  # an Activation, not a ReLU
    c2 = L.Conv2D(8, 3, padding="valid", name="c2")(a1)
    b2 = L.BatchNormalization(name="b2")(c2)  # nothing after it but the concatenation
    side = L.ReLU(name="side")(c2)  # a second consumer of c2
    crop = L.Cropping2D(1, name="crop")(a1)
    cat = L.Concatenate(name="cat")([b2, side, crop])
    bn = L.BatchNormalization(name="bn")(cat)
    relu = L.ReLU(name="relu")(cat)
    diff = L.Subtract(name="diff")([bn, relu])  # BN first, then ReLU
    total = L.Add(name="total")([relu, bn])  # ReLU first, then BN: any order for Add
    return rewriter.lift(keras.Model(x, [diff, total]))


def test_wrong_config_value_names_the_key_the_value_and_the_rest(graph: Graph) -> None:
    text = rewriter.explain(
        graph, 'c:Conv2D(kernel_size=(1, 1), padding="same") -> BatchNormalization', at="c2"
    )
    assert "does not match with node 'c2' (Conv2D)" in text
    assert "As c, 'c2' fails its own constraint" in text
    assert "its kernel_size=(3, 3), wanted kernel_size=(1, 1)" in text
    assert "the rest of the pattern matches around it" in text and "'b2' (BatchNormalization)" in text


def test_wrong_config_value_when_the_rest_does_not_match_either(graph: Graph) -> None:
    text = rewriter.explain(graph, "c:Conv2D(filters=16) -> BatchNormalization -> ReLU", at="c1")
    assert "its filters=8, wanted filters=16" in text
    assert "does not match around it either" in text
    assert "'a1': its op is Activation, wanted ReLU" in text


def test_wrong_config_value_seen_from_the_anchor(graph: Graph) -> None:
    text = rewriter.explain(graph, "Conv2D(padding='same') -> b:BatchNormalization", at="b2")
    assert "b = 'b2'" in text and "node 'c2' cannot be Conv2D(padding='same')" in text
    assert "its padding='valid', wanted padding='same'" in text


def test_missing_required_activation(graph: Graph) -> None:
    text = rewriter.explain(graph, "Conv2D -> BatchNormalization -> ReLU", at="c1")
    assert "Deepest partial match (2 of 3 pattern nodes" in text
    assert "Conv2D = 'c1' (Conv2D), BatchNormalization = 'b1' (BatchNormalization)" in text
    assert "no consumer can be ReLU ('a1': its op is Activation, wanted ReLU)" in text


def test_absent_optional_node_is_explained(graph: Graph) -> None:
    pattern = 'Conv2D -> BatchNormalization -> a:(ReLU | Activation(activation="relu"))?'
    present = rewriter.explain(graph, pattern, at="c1")
    assert "matches with node 'c1'" in present and "a = 'a1' (Activation)" in present
    assert "absent" not in present
    absent = rewriter.explain(graph, pattern, at="c2")
    assert "matches with node 'c2' (Conv2D)" in absent
    assert "Optional node a is absent from this match: no consumer of 'b2' can be it" in absent
    assert "'cat': its op is Concatenate, wanted ReLU | Activation" in absent


def test_absent_optional_middle_node_says_the_edge_passes_through(graph: Graph) -> None:
    text = rewriter.explain(graph, "Conv2D -> m:BatchNormalization? -> ReLU", at="c2")
    assert "matches with node 'c2'" in text
    assert "Optional node m is absent from this match: 'c2' feeds 'side' directly" in text


def test_extra_consumer_is_reported_as_an_escaping_output(graph: Graph) -> None:
    text = rewriter.explain(graph, "Conv2D -> BatchNormalization", at="c2")
    assert "matches with node 'c2' (Conv2D) as Conv2D" in text
    assert "Interior output(s) 'c2' are also used outside the match (by 'side')" in text
    quiet = rewriter.explain(graph, "Conv2D -> BatchNormalization", at="c1")
    assert "Interior" not in quiet  # b1 is c1's only consumer


def test_wrong_order_for_a_non_commutative_op(graph: Graph) -> None:
    text = rewriter.explain(graph, "[ReLU, BatchNormalization] -> Subtract", at="diff")
    assert "input 0 of 'diff' is 'bn', which cannot be ReLU" in text
    assert "input 1 ('relu') would fit ReLU" in text and "Subtract is not commutative" in text
    assert len(rewriter.find(graph, "[BatchNormalization, ReLU] -> Subtract")) == 1


def test_commutative_op_takes_either_order(graph: Graph) -> None:
    for text in ("[BatchNormalization, ReLU] -> Add", "[ReLU, BatchNormalization] -> Add"):
        assert "matches with node 'total' (Add)" in rewriter.explain(graph, text, at="total")


def test_wrong_arity(graph: Graph) -> None:
    text = rewriter.explain(graph, "[BatchNormalization, ReLU] -> Concatenate", at="cat")
    assert "node 'cat' (Concatenate) has 3 input(s), the input list of Concatenate wants 2" in text
    assert "end the list with ..." in text
    few = rewriter.explain(graph, op("Concatenate", inputs=each(op("ReLU"), min=4)), at="cat")
    assert "has 3 input(s); each() on Concatenate wants between 4 and any number" in few
    wrong_item = rewriter.explain(graph, op("Concatenate", inputs=each(op("BatchNormalization"))), at="cat")
    assert "input 'side' of 'cat' does not fit each(BatchNormalization): its op is ReLU" in wrong_item


def test_node_whose_op_is_not_in_the_pattern(graph: Graph) -> None:
    text = rewriter.explain(graph, "Conv2D -> BatchNormalization", at="crop")
    assert "no pattern node can be 'crop', whose op Cropping2D is none of the pattern's ops" in text
    assert "(BatchNormalization, Conv2D)" in text


def test_node_predicate_and_where_are_named(graph: Graph) -> None:
    wide = op("Conv2D").where(lambda node: node.config["filters"] >= 16, "at least 16 filters")
    text = rewriter.explain(graph, wide >> op("BatchNormalization"), at="b1")
    assert "the node predicate at least 16 filters returned False" in text
    vetoed = Pattern(op("Conv2D").named("c") >> op("BatchNormalization"), where=lambda m: m["c"].filters > 8)
    assert "the where= predicate rejected the match" in rewriter.explain(graph, vetoed, at="c1")


def test_output_shape_constraint(graph: Graph) -> None:
    text = rewriter.explain(graph, op("Conv2D").output(shape=(None, 16, 16, None)) >> op("ReLU"), at="side")
    assert "output 0 has shape (None, 14, 14, 8), wanted (None, 16, 16, None)" in text
