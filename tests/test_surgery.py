"""The surgery one-liners against the three hand-built examples of the reference article.

Reference: shared/reference/replacing-intermediate-layers.md. Each test builds the article's original model
and its hand-modified model, runs the surgery on the original, and compares architectures (isomorphic
graphs with the same op types, output shapes and activations) and weights (upstream kept, downstream kept
where shapes fit, fresh and reported otherwise).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import networkx as nx
import numpy as np
import pytest
from keras import layers

import rewriter
from tests.helpers import predict, random_inputs


def _snapshot(model: keras.Model) -> tuple[list[np.ndarray], dict[str, tuple[int, int]]]:
    weights = [w.copy() for w in model.get_weights()]
    bookkeeping = {
        layer.name: (len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers
    }
    return weights, bookkeeping


def _assert_unchanged(
    model: keras.Model, snapshot: tuple[list[np.ndarray], dict[str, tuple[int, int]]]
) -> None:
    weights, bookkeeping = snapshot
    now = model.get_weights()
    assert len(now) == len(weights)
    for a, b in zip(weights, now):
        assert np.array_equal(a, b)
    assert {
        layer.name: (len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers
    } == bookkeeping


def _same_architecture(first: keras.Model, second: keras.Model) -> bool:
    """Isomorphic layer graphs: same op types, output shapes, activations and argument positions."""

    def node_match(a: dict, b: dict) -> bool:
        na, nb = a["node"], b["node"]
        act_a = (na.config or {}).get("activation")
        act_b = (nb.config or {}).get("activation")
        return na.op_type == nb.op_type and na.output_specs == nb.output_specs and act_a == act_b

    def edge_match(a: dict, b: dict) -> bool:
        return sorted(d["arg_index"] for d in a.values()) == sorted(d["arg_index"] for d in b.values())

    ga, gb = rewriter.lift(first), rewriter.lift(second)
    return nx.is_isomorphic(ga.nx, gb.nx, node_match=node_match, edge_match=edge_match)


def _weights_equal(a: keras.layers.Layer, b: keras.layers.Layer) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))


# ------------------------------------------------------------------------------ article, example 1


def _example1_original() -> keras.Model:
    inputs = layers.Input(shape=(32, 32, 3), name="x")
    x = layers.Conv2D(32, (3, 3), activation="relu", name="c1")(inputs)
    x = layers.MaxPool2D((2, 2), name="pool")(x)
    x = layers.Conv2D(64, (3, 3), activation="relu", name="c2")(x)
    out = layers.Flatten(name="flat")(x)
    out = layers.Dense(10, activation="softmax", name="out")(out)
    return keras.Model(inputs, out)


def _example1_by_hand() -> keras.Model:
    inputs = layers.Input(shape=(32, 32, 3))
    x = layers.Conv2D(32, (3, 3), activation="relu")(inputs)
    intermediate = layers.MaxPool2D((2, 2))(x)
    new_intermediate = layers.Dense(128, activation="relu")(intermediate)
    x = layers.Conv2D(64, (3, 3), activation="relu")(new_intermediate)
    out = layers.Flatten()(x)
    out = layers.Dense(10, activation="softmax")(out)
    return keras.Model(inputs, out)


def test_insert_after_reproduces_article_example_1() -> None:
    model = _example1_original()
    before = _snapshot(model)
    new = rewriter.insert_after(model, "pool", layers.Dense(128, activation="relu"))
    _assert_unchanged(model, before)
    assert _same_architecture(new, _example1_by_hand())
    assert not _same_architecture(new, model)
    # Upstream weights kept; c2 (input channels 32 -> 128) fresh; `out` still fits (13*13*64 inputs).
    assert _weights_equal(new.get_layer("c1"), model.get_layer("c1"))
    assert _weights_equal(new.get_layer("out"), model.get_layer("out"))
    assert new.get_layer("c2").get_weights()[0].shape == (3, 3, 128, 64)
    assert new.rewrite_result.reinitialized == ["c2"]
    assert new.get_layer("c2") is not model.get_layer("c2")
    new.rewrite_result.graph.verify()


def test_replace_layer_with_dense_keeps_what_fits() -> None:
    model = _example1_original()
    before = _snapshot(model)
    new = rewriter.replace_layer(model, "c2", layers.Dense(128, activation="relu", name="c2_dense"))
    _assert_unchanged(model, before)
    names = [layer.name for layer in new.layers]
    assert names == ["x", "c1", "pool", "c2_dense", "flat", "out"]
    assert new.get_layer("flat").output.shape == (None, 15 * 15 * 128)
    assert new.rewrite_result.reinitialized == ["out"]
    assert new.get_layer("out").get_weights()[0].shape == (15 * 15 * 128, 10)
    assert _weights_equal(new.get_layer("c1"), model.get_layer("c1"))
    application = new.rewrite_result.applications[0]
    assert application.matched == ("c2",) and application.new == ("c2_dense",)


def test_replace_layer_same_shape_keeps_downstream_weights_and_computes_the_replacement() -> None:
    model = _example1_original()
    new = rewriter.replace_layer(model, "c2", layers.Conv2D(64, (3, 3), activation="tanh", name="c2_tanh"))
    assert new.rewrite_result.reinitialized == []
    assert _weights_equal(new.get_layer("out"), model.get_layer("out"))
    data = random_inputs(model, seed=3)
    # Recompute by hand with the inserted layer's own weights.
    pooled = keras.Model(model.input, model.get_layer("pool").output)(data)
    conv = new.get_layer("c2_tanh")(pooled)
    want = model.get_layer("out")(model.get_layer("flat")(conv))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ article, example 2


def _example2_original() -> keras.Model:
    inputs = layers.Input(shape=(100,), name="x")
    x = layers.Dense(50, activation="relu", name="d50")(inputs)
    x = layers.Dense(30, activation="relu", name="d30")(x)
    x = layers.Dense(10, activation="softmax", name="d10")(x)
    return keras.Model(inputs, x)


def _example2_by_hand() -> keras.Model:
    inputs = layers.Input(shape=(100,))
    intermediate = layers.Dense(50, activation="relu")(inputs)
    x = layers.Dense(10, activation="softmax")(intermediate)
    return keras.Model(inputs, x)


def test_remove_layer_reproduces_article_example_2() -> None:
    model = _example2_original()
    before = _snapshot(model)
    new = rewriter.remove_layer(model, "d30")
    _assert_unchanged(model, before)
    assert _same_architecture(new, _example2_by_hand())
    assert [layer.name for layer in new.layers] == ["x", "d50", "d10"]
    assert _weights_equal(new.get_layer("d50"), model.get_layer("d50"))
    assert new.get_layer("d10").get_weights()[0].shape == (50, 10)
    assert new.rewrite_result.reinitialized == ["d10"]
    assert "d10" in new.rewrite_result.report()


def test_remove_layer_by_layer_object_and_same_shape_is_exact() -> None:
    inputs = layers.Input(shape=(6,), name="x")
    h = layers.Dense(6, name="a")(inputs)
    h = layers.Dense(6, name="b")(h)
    model = keras.Model(inputs, layers.Dense(3, name="c")(h))
    new = rewriter.remove_layer(model, model.get_layer("b"))
    assert new.rewrite_result.reinitialized == []
    data = random_inputs(model, seed=1)
    want = model.get_layer("c")(model.get_layer("a")(data))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ article, example 3


def _example3_original() -> keras.Model:
    inputs = layers.Input(shape=(32, 32, 3), name="x")
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same", name="c1")(inputs)
    x = layers.Conv2D(64, (3, 3), activation="relu", padding="same", name="c2")(x)
    x = layers.Conv2D(128, (3, 3), activation="relu", padding="same", name="c3")(x)
    out = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(10, activation="softmax", name="out")(out)
    return keras.Model(inputs, out)


def _example3_by_hand() -> keras.Model:
    inputs = layers.Input(shape=(32, 32, 3))
    intermediate = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(inputs)
    shortcut = layers.Conv2D(128, (1, 1), padding="same")(intermediate)
    x = layers.Conv2D(64, (3, 3), activation="relu", padding="same")(intermediate)
    x = layers.Conv2D(128, (3, 3), activation="relu", padding="same")(x)
    x = layers.concatenate([shortcut, x])
    out = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax")(out)
    return keras.Model(inputs, out)


def test_add_skip_reproduces_article_example_3() -> None:
    model = _example3_original()
    before = _snapshot(model)
    projection = layers.Conv2D(128, (1, 1), padding="same", name="shortcut")
    new = rewriter.add_skip(model, source="c1", target="c3", merge="concat", projection=projection)
    _assert_unchanged(model, before)
    assert _same_architecture(new, _example3_by_hand())
    for name in ("c1", "c2", "c3"):
        assert _weights_equal(new.get_layer(name), model.get_layer(name))
    assert new.get_layer("out").get_weights()[0].shape == (256, 10)
    assert new.rewrite_result.reinitialized == ["out"]
    assert new.get_layer("shortcut") is projection  # the instance given is used at its (only) place


def test_add_skip_add_computes_the_sum() -> None:
    inputs = layers.Input(shape=(8, 8, 4), name="x")
    c1 = layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    c2 = layers.Conv2D(4, 3, padding="same", name="c2")(c1)
    c3 = layers.Conv2D(4, 3, padding="same", name="c3")(c2)
    model = keras.Model(inputs, layers.ReLU(name="act")(c3))
    new = rewriter.add_skip(model, source="c1", target="c3", merge="add")
    assert new.rewrite_result.reinitialized == []
    data = random_inputs(model, seed=2)
    probe = keras.Model(model.input, [model.get_layer("c1").output, model.get_layer("c3").output])
    first, third = (keras.ops.convert_to_numpy(t) for t in probe(data))
    np.testing.assert_allclose(predict(new, data), np.maximum(first + third, 0.0), rtol=1e-5, atol=1e-5)


def test_add_skip_errors() -> None:
    model = _example3_original()
    with pytest.raises(rewriter.RewriteError, match="does not come after"):
        rewriter.add_skip(model, source="c3", target="c1")
    with pytest.raises(rewriter.ShapeMismatchError, match="projection"):
        rewriter.add_skip(model, source="c1", target="c3", merge="add")
    with pytest.raises(rewriter.RewriteError, match="no layer or node named 'c9'"):
        rewriter.add_skip(model, source="c9", target="c3")


# ------------------------------------------------------------------------------ places and sharing


def _shared_model() -> keras.Model:
    a = layers.Input(shape=(4,), name="a")
    b = layers.Input(shape=(4,), name="b")
    shared = layers.Dense(4, name="shared")
    merged = layers.Add(name="add")([shared(a), shared(b)])
    return keras.Model([a, b], layers.Dense(2, name="head")(merged))


def test_shared_layer_means_every_call_unless_one_call_is_named() -> None:
    model = _shared_model()
    every = rewriter.insert_after(model, "shared", layers.ReLU(name="relu"))
    graph = every.rewrite_result.graph
    assert len(graph.nodes_of_type("ReLU")) == 2
    relu_names = sorted(layer.name for layer in every.layers if isinstance(layer, layers.ReLU))
    assert relu_names == ["relu", "relu_1"]  # the instance first, then a renamed clone
    shared_calls = [n for n in graph.topological() if n.layer_name == "shared"]
    assert len(shared_calls) == 2  # the shared layer stays shared
    one = rewriter.insert_after(model, "shared@1", layers.ReLU(name="relu"))
    assert len(one.rewrite_result.graph.nodes_of_type("ReLU")) == 1
    (consumer,) = one.rewrite_result.graph.consumer_nodes("shared@1")
    assert one.rewrite_result.graph.node(consumer).op_type == "ReLU"
    data = random_inputs(model, seed=0)
    shared = model.get_layer("shared")
    want = model.get_layer("head")(shared(data[0]) + keras.ops.relu(shared(data[1])))
    np.testing.assert_allclose(predict(one, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


def test_insert_before_a_merge_puts_one_layer_per_input() -> None:
    model = _shared_model()
    new = rewriter.insert_before(model, "add", lambda: layers.Dense(4, kernel_initializer="identity"))
    graph = new.rewrite_result.graph
    assert [graph.node(p.node).op_type for p in graph.producers("add")] == ["Dense", "Dense"]
    assert new.rewrite_result.reinitialized == []
    assert _weights_equal(new.get_layer("head"), model.get_layer("head"))


def test_remove_layer_that_breaks_a_merge_raises_and_changes_nothing() -> None:
    inputs = layers.Input(shape=(8,), name="x")
    left = layers.Dense(4, name="left")(inputs)
    right = layers.Dense(4, name="right")(inputs)
    model = keras.Model(inputs, layers.Add(name="add")([left, right]))
    before = _snapshot(model)
    with pytest.raises(rewriter.ShapeMismatchError, match="'add'"):
        rewriter.remove_layer(model, "left")
    _assert_unchanged(model, before)


def test_unknown_place_and_input_place_are_clear_errors() -> None:
    model = _example2_original()
    with pytest.raises(rewriter.RewriteError, match="d30"):
        rewriter.remove_layer(model, "nope")
    with pytest.raises(rewriter.RewriteError, match="model input"):
        rewriter.insert_after(model, "x", layers.ReLU())
    with pytest.raises(rewriter.RewriteError, match="not called in the model"):
        rewriter.insert_after(model, layers.ReLU(), layers.ReLU())


def test_surgery_result_trains_and_saves(tmp_path: os.PathLike) -> None:
    model = _example2_original()
    new = rewriter.insert_after(model, "d50", layers.Dropout(0.1, name="drop"))
    new.compile(optimizer="sgd", loss="categorical_crossentropy")
    data = random_inputs(model, seed=0, batch=4)
    new.fit(data, np.eye(10)[:4], epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    new.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(loaded, data), predict(new, data), rtol=1e-6, atol=1e-6)
