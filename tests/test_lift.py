"""lift: every model kind of issue 2 point 2 becomes a faithful graph, and the Graph API behaves.

Each case lifts a small real model, checks the graph's structure (nodes, edges, ports, specs), verifies
it, emits it and compares outputs bit for bit and weights exactly with the input model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import networkx as nx
import numpy as np
import pytest
from keras import layers, ops

import rewriter
from rewriter import Graph, GraphError, LiftError, Port, TensorRef, TensorSpec, Use
from tests.helpers import assert_same_outputs, assert_same_weights, random_inputs
from tests.strategies import randomize_weights


def _round_trip(model: keras.Model, inputs: Any = None, **lift_options: Any) -> tuple[Graph, keras.Model]:
    """Lift, verify, emit; assert identical outputs (and weights unless inlining reorders them)."""
    graph = rewriter.lift(model, **lift_options)
    graph.verify()
    new = rewriter.emit(graph)
    inputs = random_inputs(model, seed=0) if inputs is None else inputs
    assert_same_outputs(model, new, inputs)
    if not lift_options.get("inline_nested"):
        assert_same_weights(model, new)
    return graph, new


# -------------------------------------------------------------------------------- Sequential


def test_sequential_lifts_to_a_chain_and_emits_a_sequential() -> None:
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            layers.Dense(4, name="d1"),
            layers.ReLU(name="r"),
            layers.Dense(2),
        ],
        name="seq",
    )
    randomize_weights(model, seed=0)
    graph, new = _round_trip(model)
    assert graph.meta["model_class"] == "Sequential"
    assert [n.op_type for n in graph.topological()] == ["InputLayer", "Dense", "ReLU", "Dense"]
    assert graph.inputs == ["features"]
    assert isinstance(new, keras.Sequential)
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    assert new.name == "seq"


def test_sequential_built_later_and_unbuilt_sequential() -> None:
    model = keras.Sequential([layers.Dense(3), layers.Dense(2)])
    with pytest.raises(LiftError, match=r"no known input shape.*keras.Input"):
        rewriter.lift(model)
    model.build((None, 5))
    _round_trip(model)


# ------------------------------------------------------------------------------ nested models


def _nested_model() -> tuple[keras.Model, keras.Model, keras.Model]:
    inner_in = keras.Input((6,), name="inner_in")
    inner = keras.Model(
        inner_in, layers.Dense(4, activation="relu", name="inner_dense")(inner_in), name="inner"
    )
    seq = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="seq_dense")], name="head")
    x = keras.Input((6,), name="x")
    y = keras.Input((6,), name="y")
    a = inner(x)
    b = inner(y)  # the nested model is shared: called twice
    out = seq(layers.Add(name="merge")([a, b]))
    model = keras.Model([x, y], out, name="outer")
    randomize_weights(model, seed=1)
    return model, inner, seq


def test_nested_models_are_opaque_nodes_by_default() -> None:
    model, inner, _ = _nested_model()
    graph, new = _round_trip(model)
    assert [(n.name, n.op_type, n.call_index) for n in graph.topological()] == [
        ("x", "InputLayer", 0),
        ("y", "InputLayer", 0),
        ("inner", "Functional", 0),
        ("inner@1", "Functional", 1),
        ("merge", "Add", 0),
        ("head", "Sequential", 0),
    ]
    assert graph.node("inner").layer is inner and graph.node("inner@1").layer is inner
    assert graph.calls_of(inner) == [graph.node("inner"), graph.node("inner@1")]
    emitted_inner = new.get_layer("inner")
    assert emitted_inner is not inner and len(emitted_inner._inbound_nodes) == 2
    assert isinstance(new.get_layer("head"), keras.Sequential)


def test_nested_models_inline() -> None:
    model, inner, seq = _nested_model()
    graph, new = _round_trip(model, inline_nested=True)
    ops_by_name = {n.name: n.op_type for n in graph.topological()}
    assert "Functional" not in ops_by_name.values() and "Sequential" not in ops_by_name.values()
    inner_dense = inner.get_layer("inner_dense")
    calls = graph.calls_of(inner_dense)
    assert [n.call_index for n in calls] == [0, 1]
    assert all(n.meta["inlined_from"] in {"inner", "inner@1"} for n in calls)
    assert graph.node("head/seq_dense").layer is seq.get_layer("seq_dense")
    # the inlined model owns the same set of weights (shared layer counted once)
    assert len(new.weights) == len(model.weights)
    assert sorted(float(np.sum(w)) for w in new.get_weights()) == sorted(
        float(np.sum(w)) for w in model.get_weights()
    )


# ------------------------------------------------------------------------------ shared layers


def test_shared_layer_gives_two_nodes_and_one_layer() -> None:
    a = keras.Input((5,), name="a")
    b = keras.Input((5,), name="b")
    shared = layers.Dense(3, name="shared")
    out = layers.Concatenate(name="cat")([shared(a), shared(b)])
    model = keras.Model([a, b], out)
    randomize_weights(model, seed=2)
    graph, new = _round_trip(model)
    first, second = graph.node("shared"), graph.node("shared@1")
    assert first.layer is second.layer is shared
    assert (first.call_index, second.call_index) == (0, 1)
    assert graph.producers("cat") == [Port("shared", 0), Port("shared@1", 0)]
    assert len(graph.layers()) == 4  # a, b, shared, cat
    assert len(new.get_layer("shared")._inbound_nodes) == 2
    assert len(new.weights) == 2


# ------------------------------------------------------------------------- multi-input / output


def test_dict_inputs_and_dict_outputs_keep_their_structure() -> None:
    image = keras.Input((4, 4, 2), name="image")
    tabular = keras.Input((3,), name="tabular")
    features = layers.Flatten(name="flat")(layers.Conv2D(2, 3, padding="same", name="conv")(image))
    both = layers.Concatenate(name="both")([features, tabular])
    outputs = {"score": layers.Dense(1, name="score")(both), "embedding": layers.Dense(4, name="emb")(both)}
    model = keras.Model({"tabular": tabular, "image": image}, outputs, name="dicts")
    randomize_weights(model, seed=3)
    graph, new = _round_trip(model)
    assert graph.input_structure == {"tabular": "tabular", "image": "image"}
    assert graph.output_structure == {"score": Port("score", 0), "embedding": Port("emb", 0)}
    assert sorted(new.output_names) == sorted(model.output_names)
    result = new(random_inputs(model, seed=1))
    assert sorted(result) == ["embedding", "score"]


def test_list_inputs_and_outputs_keep_their_order() -> None:
    a = keras.Input((3,), name="a")
    b = keras.Input((3,), name="b")
    total = layers.Add(name="total")([a, b])
    model = keras.Model(
        [b, a], [layers.Dense(2, name="second")(total), total, layers.Dense(1, name="first")(a)]
    )
    graph, new = _round_trip(model)
    assert graph.inputs == ["b", "a"]
    assert graph.outputs == [Port("second", 0), Port("total", 0), Port("first", 0)]
    assert [t.name for t in new.inputs] == ["b", "a"]


# ------------------------------------------------------------------------- multi-output layers


def test_lstm_with_return_state_has_three_outputs() -> None:
    x = keras.Input((5, 3), name="seq")
    sequence, state_h, state_c = layers.LSTM(4, return_sequences=True, return_state=True, name="lstm")(x)
    pooled = layers.GlobalAveragePooling1D(name="pool")(sequence)
    out = layers.Concatenate(name="cat")([pooled, state_h, state_c])
    model = keras.Model(x, out)
    randomize_weights(model, seed=5)  # biases and forget gates too: a lost copy changes the outputs
    graph, _ = _round_trip(model)
    lstm = graph.node("lstm")
    assert lstm.num_outputs == 3
    assert lstm.output_specs == [
        TensorSpec((None, 5, 4), "float32"),
        TensorSpec((None, 4), "float32"),
        TensorSpec((None, 4), "float32"),
    ]
    assert graph.producers("cat") == [Port("pool", 0), Port("lstm", 1), Port("lstm", 2)]
    assert graph.uses(Port("lstm", 2)) == [Use("cat", 2, 2)]
    assert "pool, lstm[1], lstm[2]" in graph.summary()


def test_multi_head_attention_returning_scores() -> None:
    query = keras.Input((4, 8), name="query")
    value = keras.Input((6, 8), name="value")
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")
    attended, scores = attention(query, value, return_attention_scores=True)
    model = keras.Model([query, value], [attended, scores])
    randomize_weights(model, seed=6)  # the projections' biases too
    graph, _ = _round_trip(model)
    node = graph.node("mha")
    assert node.num_outputs == 2
    # the spec is Keras's own symbolic shape (Keras 3.15 infers (None, 2, 4, 4) here, not (None, 2, 4, 6))
    assert node.output_specs == [
        TensorSpec(tuple(attended.shape), "float32"),
        TensorSpec(tuple(scores.shape), "float32"),
    ]
    assert node.call_kwargs.get("return_attention_scores") is True
    assert graph.producers("mha") == [Port("query", 0), Port("value", 0)]
    assert graph.outputs == [Port("mha", 0), Port("mha", 1)]


# ------------------------------------------------------------------------------ keras.ops calls


def test_ops_add_of_the_same_tensor_keeps_both_edges() -> None:
    x = keras.Input((4,), name="x")
    h = layers.Dense(4, name="h")(x)
    model = keras.Model(x, ops.add(h, h))
    graph, _ = _round_trip(model)
    (add,) = graph.nodes_of_type("Add")
    assert isinstance(graph.nx, nx.MultiDiGraph) and graph.nx.number_of_edges("h", add.name) == 2
    edges = graph.nx.get_edge_data("h", add.name)
    assert len(edges) == 2
    assert sorted(data["arg_index"] for data in edges.values()) == [0, 1]
    assert graph.producers(add.name) == [Port("h", 0), Port("h", 0)]
    assert add.layer is not None and add.call_args == (TensorRef(0), TensorRef(1))


def test_slicing_and_scalar_arithmetic() -> None:
    x = keras.Input((5, 3), name="x")
    sliced = x[:, 1:]
    scaled = sliced * 0.5
    model = keras.Model(x, layers.Dense(2, name="d")(scaled))
    graph, _ = _round_trip(model)
    (get_item,) = graph.nodes_of_type("GetItem")
    assert get_item.output_specs[0].shape == (None, 4, 3)
    assert any(isinstance(item, slice) for item in keras.tree.flatten(get_item.call_args))
    (multiply,) = graph.nodes_of_type("Multiply")
    assert multiply.num_inputs == 1 and 0.5 in keras.tree.flatten(multiply.call_args)
    assert graph.producers(multiply.name) == [Port(get_item.name, 0)]


# ------------------------------------------------------------------- non-tensor call arguments


def test_non_tensor_call_arguments_and_tensor_keyword_arguments() -> None:
    x = keras.Input((4, 3), name="x")
    keep = keras.Input((4,), dtype="bool", name="keep")
    noisy = layers.Dropout(0.5, name="mc_dropout")(x, training=True)  # Monte Carlo dropout
    summed = ops.sum(noisy, axis=1)
    pair = ops.concatenate([summed, summed], axis=-1)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=2, name="mha")
    attended = attention(query=x, value=noisy, attention_mask=ops.expand_dims(keep, 1), use_causal_mask=True)
    model = keras.Model([x, keep], [pair, attended])
    randomize_weights(model, seed=8)
    graph = rewriter.lift(model)
    graph.verify()

    dropout = graph.node("mc_dropout")
    assert dropout.call_kwargs == {"training": True} and dropout.non_tensor_arguments() == {"training": True}
    (sum_node,) = graph.nodes_of_type("Sum")
    assert sum_node.config["axis"] == 1 and sum_node.call_args == (TensorRef(0),)
    (concat,) = graph.nodes_of_type("Concatenate")
    assert concat.call_args == ([TensorRef(0), TensorRef(1)],)  # the list argument keeps its structure
    assert graph.producers(concat.name) == [Port(sum_node.name, 0), Port(sum_node.name, 0)]
    mha = graph.node("mha")
    ports = graph.producers("mha")  # keyword tensors are numbered in keras.tree.flatten order
    assert ports[mha.call_kwargs["query"].index] == Port("x", 0)
    assert ports[mha.call_kwargs["value"].index] == Port("mc_dropout", 0)
    assert mha.non_tensor_arguments() == {"use_causal_mask": True}
    assert len(mha.input_specs) == 3 and TensorSpec((None, 1, 4), "bool") in mha.input_specs

    new = rewriter.emit(graph)
    assert rewriter.lift(new).node("mc_dropout").call_kwargs == {"training": True}
    inputs = random_inputs(model, seed=0)
    # called without a training flag (Keras lets an explicit outer flag override it), the recorded
    # training=True keeps the dropout active in the emitted model, as in the input model
    pair_a, _ = (ops.convert_to_numpy(t) for t in new(inputs))
    pair_b, _ = (ops.convert_to_numpy(t) for t in new(inputs))
    assert not np.array_equal(pair_a, pair_b), "training=True was lost: dropout is inactive"
    without_dropout = keras.Model(model.inputs, model.outputs[1])
    assert_same_outputs(without_dropout, keras.Model(new.inputs, new.outputs[1]), inputs)


def test_explicit_mask_argument_is_a_tensor_edge() -> None:
    x = keras.Input((5, 3), name="x")
    keep = keras.Input((5,), dtype="bool", name="keep")
    model = keras.Model([x, keep], layers.LSTM(2, name="lstm")(x, mask=keep))
    randomize_weights(model, seed=9)
    graph, _ = _round_trip(model)
    lstm = graph.node("lstm")
    assert lstm.call_kwargs["mask"] == TensorRef(1) and lstm.non_tensor_arguments() == {}
    assert graph.producers("lstm") == [Port("x", 0), Port("keep", 0)]


# -------------------------------------------------------------------- unusual but valid models


def test_model_on_an_intermediate_tensor_lifts_keras_own_input() -> None:
    x = keras.Input((4,), name="x")
    hidden = layers.Dense(4, name="hidden")(x)
    model = keras.Model(hidden, layers.Dense(2, name="head")(hidden))  # Keras clones an Input for `hidden`
    graph, _ = _round_trip(model)
    assert [n.op_type for n in graph.topological()] == ["InputLayer", "Dense"]
    assert graph.node(graph.inputs[0]).is_input and graph.producer_nodes("head") == graph.inputs


def test_sequential_built_by_calling_it_and_identity_and_unused_inputs() -> None:
    seq = keras.Sequential([layers.Dense(3, name="s1"), layers.Dense(2, name="s2")], name="called")
    seq(np.zeros((2, 5), "float32"))
    graph, new = _round_trip(seq)
    assert graph.node(graph.inputs[0]).output_specs[0].shape == (2, 5)  # Keras records the data's shape
    assert isinstance(new, keras.Sequential)

    a = keras.Input((3,), name="a")
    graph, _ = _round_trip(keras.Model(a, a, name="identity"))
    assert graph.outputs == [Port("a", 0)] and len(graph) == 1

    b = keras.Input((3,), name="b")
    c = keras.Input((2,), name="c")  # never used
    graph, new = _round_trip(keras.Model([b, c], layers.Dense(2, name="d")(b)))
    assert graph.inputs == ["b", "c"] and [t.name for t in new.inputs] == ["b", "c"]


def test_nested_model_node_keeps_its_output_structure() -> None:
    inner_in = keras.Input((3,), name="inner_in")
    inner = keras.Model(
        inner_in,
        {"b": layers.Dense(2, name="b")(inner_in), "a": [layers.Dense(1, name="a0")(inner_in), inner_in]},
        name="inner",
    )
    x = keras.Input((3,), name="x")
    out = inner(x)
    model = keras.Model(x, {"first": out["a"][0], "second": out["b"]})
    graph, _ = _round_trip(model)
    node = graph.node("inner")
    assert node.output_structure == {"b": 2, "a": [0, 1]}  # indices in keras.tree.flatten order
    assert [s.shape for s in node.output_specs] == [(None, 1), (None, 3), (None, 2)]
    assert graph.output_structure == {"first": Port("inner", 0), "second": Port("inner", 2)}


# ------------------------------------------------------------------------------------- masks


def test_embedding_mask_feeds_the_rnn() -> None:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedded = layers.Embedding(10, 4, mask_zero=True, name="embed")(tokens)
    state = layers.GRU(3, name="gru")(embedded)
    model = keras.Model(tokens, layers.Dense(2, name="out")(state))
    randomize_weights(model, seed=4)
    padded = np.array([[3, 5, 7, 0, 0], [2, 0, 0, 0, 0]], dtype="int32")
    graph, new = _round_trip(model, padded)
    assert graph.node("embed").config["mask_zero"] is True
    # the mask is explicit: a NotEqual node on the tokens feeds the GRU's mask= argument
    (mask_node,) = graph.nodes_of_type("NotEqual")
    assert graph.producers(mask_node.name) == [Port("tokens", 0)]
    assert graph.producers("gru") == [Port("embed", 0), Port(mask_node.name, 0)]
    assert graph.node("gru").call_kwargs["mask"] == TensorRef(1)
    # the mask really survives: trailing padding changes nothing in the emitted model
    short = np.array([[3, 5, 7]], dtype="int32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(new(padded[:1])), ops.convert_to_numpy(new(short)), rtol=0, atol=1e-6
    )
    unmasked = keras.Model(tokens, layers.Dense(2)(layers.GRU(3)(layers.Embedding(10, 4)(tokens))))
    assert not np.allclose(ops.convert_to_numpy(unmasked(padded[:1])), ops.convert_to_numpy(unmasked(short)))


# ------------------------------------------------------------------------------ custom layers


@keras.saving.register_keras_serializable(package="rewriter_tests")
class Gate(layers.Layer):
    """A registered custom layer with a constructor argument and a weight."""

    def __init__(self, bias: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bias = bias

    def build(self, input_shape: Any) -> None:
        self.gate = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="gate")

    def call(self, x: Any) -> Any:
        return x * ops.sigmoid(self.gate + self.bias)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias": self.bias}


def test_registered_custom_layer_is_an_opaque_node() -> None:
    x = keras.Input((4,), name="x")
    gate = Gate(bias=0.25, name="gate")
    model = keras.Model(x, gate(layers.Dense(4, name="d")(x)))
    graph, new = _round_trip(model)
    node = graph.node("gate")
    assert node.op_type == "Gate" and node.layer is gate and node.config["bias"] == 0.25
    assert graph.producers("gate") == [Port("d", 0)]
    assert type(new.get_layer("gate")) is Gate and new.get_layer("gate") is not gate


# ------------------------------------------------------------------------------ keras_hub


@pytest.mark.slow
def test_keras_hub_bert_backbone() -> None:
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=10,
        name="tiny_bert",
    )
    randomize_weights(backbone, seed=7)  # layer norms and biases too
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, 30, size=(2, 7)).astype("int32"),
        "segment_ids": rng.integers(0, 2, size=(2, 7)).astype("int32"),
        "padding_mask": np.array([[1] * 7, [1] * 4 + [0] * 3], dtype="int32"),
    }
    graph, new = _round_trip(backbone, inputs)
    assert sorted(graph.input_structure) == ["padding_mask", "segment_ids", "token_ids"]
    assert sorted(graph.output_structure) == ["pooled_output", "sequence_output"]
    assert any(n.op_type == "TransformerEncoder" for n in graph.topological())
    assert new.name == "tiny_bert"


# ------------------------------------------------------------------------------ lift errors


class _Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = layers.Dense(2)

    def call(self, x: Any) -> Any:
        return self.dense(x) * 2.0


def test_subclassed_model_raises_a_helpful_lift_error() -> None:
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(LiftError, match=r"subclassed.*_Subclassed.*functional API") as caught:
        rewriter.lift(model)
    assert isinstance(caught.value, rewriter.RewriteError)


def test_subclassed_model_inside_a_functional_model_is_one_opaque_node() -> None:
    inner = _Subclassed()
    x = keras.Input((3,), name="x")
    model = keras.Model(x, inner(layers.Dense(3, name="d")(x)))
    graph = rewriter.lift(model)
    graph.verify()
    assert graph.node(inner.name).op_type == "_Subclassed"
    new = rewriter.emit(graph, share_weights=True)
    assert_same_outputs(model, new, random_inputs(model, seed=0))


def test_lifting_something_else_raises_lift_error() -> None:
    with pytest.raises(LiftError, match=r"Expected a keras\.Model"):
        rewriter.lift(layers.Dense(3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- Graph API


def _diamond() -> tuple[keras.Model, Graph]:
    x = keras.Input((4,), name="x")
    left = layers.Dense(4, name="left")(x)
    right = layers.Dense(4, name="right")(x)
    total = layers.Add(name="sum")([left, right])
    model = keras.Model(x, layers.ReLU(name="relu")(total), name="diamond")
    return model, rewriter.lift(model)


def test_topological_order_producers_and_consumers() -> None:
    _, graph = _diamond()
    order = graph.topological_names()
    assert order == ["x", "left", "right", "sum", "relu"]
    position = {name: i for i, name in enumerate(order)}
    for src, dst in graph.nx.edges():
        assert position[src] < position[dst]
    assert graph.producers("sum") == [Port("left", 0), Port("right", 0)]
    assert graph.consumers("x") == [Use("left", 0, 0), Use("right", 0, 0)]
    assert graph.consumer_nodes("sum") == ["relu"]
    assert graph.producer_nodes("relu") == ["sum"]
    assert graph.outputs == [Port("relu", 0)] and graph.output_nodes() == ["relu"]
    assert [n.name for n in graph.nodes_of_type("Dense")] == ["left", "right"]
    assert graph.nx.nodes["sum"]["op_type"] == "Add"
    assert graph.node("left").input_specs == [TensorSpec((None, 4), "float32")]
    with pytest.raises(GraphError, match="No node named 'nope'"):
        graph.node("nope")


def test_summary_is_readable() -> None:
    _, graph = _diamond()
    text = graph.summary()
    assert text.splitlines()[0] == 'Graph "diamond": 5 nodes, 5 edges'
    for name in ("x", "left", "right", "sum", "relu"):
        assert name in text
    assert "(None, 4) float32" in text and "left, right" in text
    printed: list[str] = []
    graph.summary(print_fn=printed.append)
    assert printed == [text]


def test_verify_catches_a_cycle() -> None:
    _, graph = _diamond()
    graph.nx.add_edge("relu", "left", out_index=0, arg_index=1)
    graph._topo_cache = None
    with pytest.raises(GraphError, match="cycle"):
        graph.verify()


def test_verify_catches_an_unconnected_argument() -> None:
    _, graph = _diamond()
    key = next(iter(graph.nx.get_edge_data("right", "sum")))
    graph.nx.remove_edge("right", "sum", key)
    graph._topo_cache = None
    with pytest.raises(GraphError, match=r"'sum'.*\[1\].*not connected"):
        graph.verify()


def test_verify_catches_a_shape_mismatch() -> None:
    _, graph = _diamond()
    node = graph.node("left")
    node.output_specs = [TensorSpec((None, 7), "float32")]
    with pytest.raises(GraphError, match=r"Shape mismatch on edge 'left'\[0\] -> 'sum'"):
        graph.verify()


def test_verify_catches_duplicate_layer_names_and_bad_outputs() -> None:
    _, graph = _diamond()
    right = graph.node("right")
    right.config = {**right.config, "name": "left"}
    with pytest.raises(GraphError, match=r"Two different layers .*named 'left' \(node 'right'\)"):
        graph.verify()
    _, graph = _diamond()
    relu = graph.node("relu")
    relu.config = {**relu.config, "name": "x"}  # Keras also refuses a layer named like an input
    with pytest.raises(GraphError, match=r"named 'x' \(node 'relu'\)"):
        graph.verify()
    _, graph = _diamond()
    graph.output_structure = Port("relu", 3)
    with pytest.raises(GraphError, match="out of range"):
        graph.verify()


def test_verify_catches_bad_graph_inputs() -> None:
    _, graph = _diamond()
    graph.inputs = ["left"]
    with pytest.raises(GraphError, match="'left' is not an InputLayer"):
        graph.verify()


def test_summary_marks_shared_calls() -> None:
    a = keras.Input((5,), name="a")
    shared = layers.Dense(5, name="shared")
    graph = rewriter.lift(keras.Model(a, shared(shared(a)), name="twice"))
    rows = {line.split()[0]: line for line in graph.summary().splitlines()[3:-1]}
    assert "Dense (shared)" in rows["shared@1"] and "(shared)" not in rows["shared"]
    assert graph.summary().splitlines()[-1] == "inputs: a    outputs: shared@1[0]"


def test_verify_catches_an_argument_fed_twice() -> None:
    _, graph = _diamond()
    graph.nx.add_edge("x", "sum", out_index=0, arg_index=0)
    with pytest.raises(GraphError, match="fed twice"):
        graph.verify()


def test_graph_copy_is_independent() -> None:
    _, graph = _diamond()
    clone = graph.copy()
    clone.node("left").meta["touched"] = True
    clone.node("left").config["units"] = 9
    assert "touched" not in graph.node("left").meta and graph.node("left").config["units"] == 4
    assert clone.topological_names() == graph.topological_names()
    assert clone.node("left").layer is graph.node("left").layer
    new = dataclasses.replace(clone.node("relu"), name="relu2")
    clone.add_node(new, [Port("sum", 0)])
    assert "relu2" not in graph
    clone.verify()
