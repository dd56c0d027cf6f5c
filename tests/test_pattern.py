"""Unit tests of the pattern model and its Python DSL (construction, validation, text form)."""

from __future__ import annotations

import keras
import pytest
from keras import layers as L

import rewriter
from rewriter import Node, Pattern, PatternError, TensorSpec, any_op, anything, each, one_of, op, tensor
from rewriter.pattern import (
    COMMUTATIVE_OPS,
    Anything,
    Equals,
    OneOf,
    OpPattern,
    Predicate,
    as_pattern,
    known_op_names,
)

SPEC4 = TensorSpec((None, 8, 8, 4), "float32")


def conv_node(**config: object) -> Node:
    base = {"name": "c", "kernel_size": (1, 1), "padding": "valid", "filters": 4}
    base.update(config)
    return Node("c", "Conv2D", None, base, input_specs=[SPEC4], output_specs=[SPEC4])


# ------------------------------------------------------------------------------------ op names


def test_known_names_cover_layers_ops_and_custom_classes() -> None:
    names = known_op_names()
    for name in (
        "Conv2D",
        "BatchNormalization",
        "Add",
        "Multiply",
        "InputLayer",
        "Functional",
        "Concatenate",
    ):
        assert name in names


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("Conv2d", "Conv2D"), ("BatchNormalisation", "BatchNormalization"), ("Concatenat", "Concatenate")],
)
def test_unknown_class_name_suggests_close_names(typo: str, suggestion: str) -> None:
    with pytest.raises(PatternError, match=f"Unknown op class name '{typo}'.*'{suggestion}'"):
        op(typo)


def test_custom_layer_classes_are_known_once_defined() -> None:
    with pytest.raises(PatternError):
        op("MyVeryOwnLayerForPatterns")

    class MyVeryOwnLayerForPatterns(L.Layer):
        def call(self, x):
            return x

    assert op("MyVeryOwnLayerForPatterns").choices[0].op == "MyVeryOwnLayerForPatterns"


def test_classes_and_alternative_lists_are_accepted() -> None:
    by_class = op(L.Conv2D)
    assert by_class.choices[0].op is L.Conv2D
    assert by_class.op_names() is None  # a class may match subclasses: no name index
    listed = op(["ReLU", L.ELU])
    assert [c.op_name for c in listed.choices] == ["ReLU", "ELU"]
    with pytest.raises(PatternError, match="class name or a Keras layer/operation class"):
        op(3)  # type: ignore[arg-type]
    with pytest.raises(PatternError, match="at least one"):
        op([])


# ------------------------------------------------------------------------------------ constraints


def test_value_constraints_are_built_from_plain_values() -> None:
    node = op(
        "Conv2D", kernel_size=(1, 1), padding=one_of("same", "valid"), filters=lambda f: f > 2, x=anything()
    )
    config = node.choices[0].config
    assert isinstance(config["kernel_size"], Equals)
    assert isinstance(config["padding"], OneOf)
    assert isinstance(config["filters"], Predicate)
    assert isinstance(config["x"], Anything)
    assert node.local_failure(conv_node()) is None
    assert "filters=1" in (node.local_failure(conv_node(filters=1)) or "")
    assert "padding='causal'" in (node.local_failure(conv_node(padding="causal")) or "")
    with pytest.raises(PatternError):
        one_of()


def test_equality_treats_lists_and_tuples_alike() -> None:
    assert Equals((1, 1)).check([1, 1])
    assert Equals([3, 3]).check((3, 3))
    assert not Equals((1, 1)).check((1, 2))
    assert Equals({"a": [1]}).check({"a": (1,)})


def test_config_given_as_dict_and_missing_keys() -> None:
    node = op("Conv2D", config={"kernel_size": (1, 1)})
    assert node.local_failure(conv_node()) is None
    reason = op("Conv2D", groups=1).local_failure(conv_node())
    assert reason is not None and "no config entry 'groups'" in reason


def test_op_type_failure_text() -> None:
    assert op("ReLU").local_failure(conv_node()) == "its op is Conv2D, wanted ReLU"
    assert any_op().local_failure(conv_node()) is None


def test_output_constraints_on_nodes() -> None:
    node = conv_node()
    assert op("Conv2D").output(rank=4, shape=(None, 8, None, 4), dtype="float32").local_failure(node) is None
    assert "rank 4, wanted 3" in (op("Conv2D").output(rank=3).local_failure(node) or "")
    assert "shape" in (op("Conv2D").output(shape=(None, 8, 8, 5)).local_failure(node) or "")
    assert "dtype" in (op("Conv2D").output(dtype="int32").local_failure(node) or "")
    assert "1 output(s)" in (op("Conv2D").output(rank=4, index=1).local_failure(node) or "")


def test_node_predicates_count_exceptions_as_no() -> None:
    assert op("Conv2D").where(lambda n: n.config["filters"] == 4).local_failure(conv_node()) is None
    reason = op("Conv2D").where(lambda n: n.config["nope"], "has nope").local_failure(conv_node())
    assert reason is not None and "has nope" in reason and "KeyError" in reason


# ------------------------------------------------------------------------------------ structure


def test_chains_return_the_consumer_and_record_feeders() -> None:
    a, b, c = op("Conv2D"), op("BatchNormalization"), op("ReLU")
    assert (a >> b >> c) is c
    assert c.feeders == [b] and b.feeders == [a]
    assert c.input_mode == "free"


def test_complete_lists_and_each() -> None:
    p, q = op("ReLU"), op("ELU")
    add = [p, q] >> op("Add")
    assert add.input_mode == "list" and add.input_list == [p, q] and not add.open_ended
    open_list = op("Concatenate", inputs=[p, ...])
    assert open_list.open_ended and open_list.input_list == [p]
    variadic = op("Concatenate", inputs=each(op("Conv2D"), min=2))
    assert variadic.input_mode == "each" and variadic.each is not None and variadic.each.min == 2
    assert add.is_commutative_for("Add") and not add.is_commutative_for("Subtract")
    assert op("Subtract", commutative=True).is_commutative_for("Subtract")
    assert {"Add", "Multiply", "Maximum", "Minimum", "Average"} == COMMUTATIVE_OPS
    with pytest.raises(PatternError, match="only come last"):
        op("Add", inputs=[..., p])
    with pytest.raises(PatternError, match="inputs= must be a list"):
        op("Add", inputs="ReLU")  # type: ignore[arg-type]


def test_each_item_rules() -> None:
    with pytest.raises(PatternError, match="unnamed"):
        each(op("Conv2D").named("c"))
    with pytest.raises(PatternError, match="unnamed"):
        each(op("Conv2D", inputs=[op("ReLU")]))
    with pytest.raises(PatternError, match="tensor item must be unnamed"):
        each(tensor("t"))
    with pytest.raises(PatternError, match="min <= max"):
        each(op("Conv2D"), min=3, max=2)


def test_alternatives_merge_inputs_and_names() -> None:
    conv = op("Conv2D")
    merged = conv >> op("ReLU") | op("Activation", activation="relu").named("a")  # (conv >> relu) | act
    assert [c.op_name for c in merged.choices] == ["ReLU", "Activation"]
    assert merged.name == "a" and merged.feeders == [conv]
    with pytest.raises(PatternError, match="named 'x' and 'y'"):
        op("ReLU").named("x") | op("ELU").named("y")


def test_capture_names_must_be_identifiers() -> None:
    with pytest.raises(PatternError, match="identifier"):
        op("ReLU").named("not a name")
    with pytest.raises(PatternError, match="identifier"):
        tensor("1x")


def test_pattern_collects_nodes_topologically() -> None:
    x, y = op("Conv2D").named("x"), op("Conv2D").named("y")
    cat = op("Concatenate", inputs=[x, y, tensor("t")]).named("cat")
    pattern = Pattern(cat >> op("ReLU").named("out"))
    assert [n.name for n in pattern.nodes] == ["x", "y", "cat", "out"]
    assert pattern.capture_names == ["x", "y", "cat", "out", "t"]
    assert pattern.anchor.name == "out"
    assert pattern.consumers_of(x) == [cat]
    assert pattern.node_named("y") is y
    with pytest.raises(PatternError, match="no node named 'z'"):
        pattern.node_named("z")


def test_pattern_rejects_cycles_and_bad_sinks() -> None:
    a, b = op("ReLU"), op("ELU")
    a >> b
    b >> a
    with pytest.raises(PatternError, match="cycle"):
        Pattern(b)
    with pytest.raises(PatternError, match="at least one sink"):
        Pattern()
    with pytest.raises(PatternError, match="op patterns"):
        Pattern(tensor("x"))  # type: ignore[arg-type]


def test_optional_sink_may_not_feed_from_optional_node() -> None:
    with pytest.raises(PatternError, match="may not feed from another optional"):
        Pattern(op("ReLU").optional() >> op("ELU").optional())


def test_pattern_is_frozen_against_later_edits() -> None:
    relu = op("ReLU")
    pattern = Pattern(relu)
    as_pattern(pattern)  # unchanged: fine
    op("Conv2D") >> relu
    with pytest.raises(PatternError, match="modified after Pattern"):
        as_pattern(pattern)


def test_text_form() -> None:
    chain = Pattern(
        op("Conv2D", kernel_size=(1, 1)).named("c") >> op("BatchNormalization") >> op("ReLU").optional()
    )
    assert str(chain) == "c:Conv2D(kernel_size=(1, 1)) -> BatchNormalization -> ReLU?"
    alt = Pattern(op("ReLU") | op("Activation", activation=one_of("relu", "relu6")))
    assert str(alt) == "(ReLU | Activation(activation=one_of('relu', 'relu6')))"
    listed = Pattern(op("Add", inputs=[op("ReLU").named("r"), any_op()]))
    assert str(listed) == "[r:ReLU, _] -> Add"
    nested = Pattern(op("Add", inputs=[op("Conv2D") >> op("ReLU"), op("BatchNormalization")]))
    assert str(nested) == "[Conv2D -> ReLU, BatchNormalization] -> Add"
    r = op("ReLU").named("r")
    shared = Pattern(op("Add", inputs=[r, op("Dense")]), op("Softmax", inputs=[r]))  # r feeds two places
    assert str(shared) == "r:ReLU; _0:Dense; _1:Add; _2:Softmax; [r, _0] -> _1; [r] -> _2"
    for pattern in (chain, alt, listed, nested, shared):
        assert rewriter.parse_pattern(str(pattern)) == pattern
    assert repr(op("Dense").named("d")) == "d:Dense"


def test_as_pattern() -> None:
    relu = op("ReLU")
    assert isinstance(as_pattern(relu), Pattern)
    assert isinstance(as_pattern("Conv2D -> ReLU"), Pattern)
    with pytest.raises(PatternError, match="Expected a pattern"):
        as_pattern(3.5)


def test_public_names_are_exported() -> None:
    public = ["Pattern", "OpPattern", "op", "any_op", "tensor", "each", "one_of", "anything"]
    for name in [*public, "Match", "find", "explain"]:
        assert name in rewriter.__all__ and hasattr(rewriter, name)
    assert rewriter.OpPattern is OpPattern


def test_pattern_from_example_function_through_as_pattern() -> None:
    def conv_pool(x):
        return L.MaxPooling2D()(L.Conv2D(8, 3)(x))

    pattern = as_pattern(conv_pool)
    assert [c.op_name for n in pattern.nodes for c in n.choices] == ["Conv2D", "MaxPooling2D"]
    x = keras.Input((16, 16, 3))
    model = keras.Model(x, L.MaxPooling2D()(L.Conv2D(8, 3)(L.Conv2D(8, 1)(x))))
    assert len(rewriter.find(model, conv_pool)) == 1
