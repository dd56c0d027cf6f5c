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
from tests.rewrite_models import assert_unchanged, same_weights, snapshot


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
    before = snapshot(model)
    new = rewriter.insert_after(model, "pool", layers.Dense(128, activation="relu"))
    assert_unchanged(model, before)
    assert _same_architecture(new, _example1_by_hand())
    assert not _same_architecture(new, model)
    # Upstream weights kept; c2 (input channels 32 -> 128) fresh; `out` still fits (13*13*64 inputs).
    assert same_weights(new.get_layer("c1"), model.get_layer("c1"))
    assert same_weights(new.get_layer("out"), model.get_layer("out"))
    assert new.get_layer("c2").get_weights()[0].shape == (3, 3, 128, 64)
    assert new.rewrite_result.reinitialized == ["c2"]
    assert new.get_layer("c2") is not model.get_layer("c2")
    new.rewrite_result.graph.verify()
    # Wired as the article wires it: original c1/pool/out, the inserted Dense, c2 with fresh weights.
    (dense,) = [layer for layer in new.layers if isinstance(layer, layers.Dense) and layer.name != "out"]
    data = random_inputs(model, seed=6)
    pooled = model.get_layer("pool")(model.get_layer("c1")(data))
    want = model.get_layer("out")(model.get_layer("flat")(new.get_layer("c2")(dense(pooled))))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


def test_replace_layer_with_dense_keeps_what_fits() -> None:
    model = _example1_original()
    before = snapshot(model)
    new = rewriter.replace_layer(model, "c2", layers.Dense(128, activation="relu", name="c2_dense"))
    assert_unchanged(model, before)
    names = [layer.name for layer in new.layers]
    assert names == ["x", "c1", "pool", "c2_dense", "flat", "out"]
    assert new.get_layer("flat").output.shape == (None, 15 * 15 * 128)
    assert new.rewrite_result.reinitialized == ["out"]
    assert new.get_layer("out").get_weights()[0].shape == (15 * 15 * 128, 10)
    assert same_weights(new.get_layer("c1"), model.get_layer("c1"))
    application = new.rewrite_result.applications[0]
    assert application.matched == ("c2",) and application.new == ("c2_dense",)


def test_replace_layer_same_shape_keeps_downstream_weights_and_computes_the_replacement() -> None:
    model = _example1_original()
    new = rewriter.replace_layer(model, "c2", layers.Conv2D(64, (3, 3), activation="tanh", name="c2_tanh"))
    assert new.rewrite_result.reinitialized == []
    assert same_weights(new.get_layer("out"), model.get_layer("out"))
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
    before = snapshot(model)
    new = rewriter.remove_layer(model, "d30")
    assert_unchanged(model, before)
    assert _same_architecture(new, _example2_by_hand())
    assert [layer.name for layer in new.layers] == ["x", "d50", "d10"]
    assert same_weights(new.get_layer("d50"), model.get_layer("d50"))
    assert new.get_layer("d10").get_weights()[0].shape == (50, 10)
    assert new.rewrite_result.reinitialized == ["d10"]
    assert "d10" in new.rewrite_result.report()
    data = random_inputs(model, seed=8)
    want = new.get_layer("d10")(model.get_layer("d50")(data))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


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
    before = snapshot(model)
    projection = layers.Conv2D(128, (1, 1), padding="same", name="shortcut")
    new = rewriter.add_skip(model, source="c1", target="c3", merge="concat", projection=projection)
    assert_unchanged(model, before)
    assert _same_architecture(new, _example3_by_hand())
    for name in ("c1", "c2", "c3"):
        assert same_weights(new.get_layer(name), model.get_layer(name))
    assert new.get_layer("out").get_weights()[0].shape == (256, 10)
    assert new.rewrite_result.reinitialized == ["out"]
    assert new.get_layer("shortcut") is projection  # the instance given is used at its (only) place
    data = random_inputs(model, seed=7)
    c1 = model.get_layer("c1")(data)
    main = model.get_layer("c3")(model.get_layer("c2")(c1))
    merged = keras.ops.concatenate([projection(c1), main], axis=-1)
    want = new.get_layer("out")(model.get_layer("gap")(merged))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-5)


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
    before = snapshot(model)
    post = layers.Dense(4, name="post")
    every = rewriter.insert_after(model, "shared", post)
    assert_unchanged(model, before)
    graph = every.rewrite_result.graph
    # One instance after every call of a shared layer: one new layer, shared like the layer it follows.
    post_calls = [n for n in graph.topological() if n.layer_name == "post"]
    assert [n.name for n in post_calls] == ["post", "post@1"] and post_calls[0].layer is post_calls[1].layer
    assert [layer.name for layer in every.layers].count("post") == 1
    assert len(every.get_layer("post")._inbound_nodes) == 2
    assert len([n for n in graph.topological() if n.layer_name == "shared"]) == 2  # still shared
    data = random_inputs(model, seed=0)
    shared, new_post = model.get_layer("shared"), every.get_layer("post")
    want = model.get_layer("head")(new_post(shared(data[0])) + new_post(shared(data[1])))
    np.testing.assert_allclose(predict(every, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)
    # A factory: one layer per call.
    per_call = rewriter.insert_after(model, "shared", lambda: layers.Dense(4))
    dense_after = [n for n in per_call.rewrite_result.graph.topological() if n.op_type == "Dense"][1:3]
    assert dense_after[0].layer is not dense_after[1].layer
    # One named call.
    one = rewriter.insert_after(model, "shared@1", layers.ReLU(name="relu"))
    assert len(one.rewrite_result.graph.nodes_of_type("ReLU")) == 1
    (consumer,) = one.rewrite_result.graph.consumer_nodes("shared@1")
    assert one.rewrite_result.graph.node(consumer).op_type == "ReLU"
    want = model.get_layer("head")(shared(data[0]) + keras.ops.relu(shared(data[1])))
    np.testing.assert_allclose(predict(one, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


def test_replacing_a_shared_layer_keeps_the_replacement_shared() -> None:
    model = _shared_model()
    before = snapshot(model)
    new = rewriter.replace_layer(model, model.get_layer("shared"), layers.Dense(4, name="tied"))
    assert_unchanged(model, before)
    tied = new.get_layer("tied")
    assert [layer.name for layer in new.layers].count("tied") == 1 and len(tied._inbound_nodes) == 2
    assert new.rewrite_result.reinitialized == []
    assert same_weights(new.get_layer("head"), model.get_layer("head"))
    data = random_inputs(model, seed=4)
    want = model.get_layer("head")(tied(data[0]) + tied(data[1]))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)


def test_inserting_after_a_shared_encoder_widens_a_shared_head() -> None:
    a = layers.Input(shape=(4,), name="a")
    b = layers.Input(shape=(4,), name="b")
    encoder, head = layers.Dense(4, name="enc"), layers.Dense(2, name="head")
    model = keras.Model([a, b], layers.Add(name="add")([head(encoder(a)), head(encoder(b))]))
    before = snapshot(model)
    new = rewriter.insert_after(model, "enc", layers.Dense(8, name="wide"))
    assert_unchanged(model, before)
    assert new.rewrite_result.reinitialized == ["head"]
    assert new.get_layer("head").get_weights()[0].shape == (8, 2)
    assert len(new.get_layer("head")._inbound_nodes) == 2 and len(new.get_layer("wide")._inbound_nodes) == 2
    assert same_weights(new.get_layer("enc"), encoder)


def test_insert_before_a_merge_puts_one_layer_per_input() -> None:
    model = _shared_model()
    new = rewriter.insert_before(model, "add", lambda: layers.Dense(4, kernel_initializer="identity"))
    graph = new.rewrite_result.graph
    assert [graph.node(p.node).op_type for p in graph.producers("add")] == ["Dense", "Dense"]
    assert new.rewrite_result.reinitialized == []
    assert same_weights(new.get_layer("head"), model.get_layer("head"))


def test_remove_layer_that_breaks_a_merge_raises_and_changes_nothing() -> None:
    inputs = layers.Input(shape=(8,), name="x")
    left = layers.Dense(4, name="left")(inputs)
    right = layers.Dense(4, name="right")(inputs)
    model = keras.Model(inputs, layers.Add(name="add")([left, right]))
    before = snapshot(model)
    with pytest.raises(rewriter.ShapeMismatchError, match="'add'"):
        rewriter.remove_layer(model, "left")
    assert_unchanged(model, before)


def _merge_model() -> keras.Model:
    inputs = layers.Input(shape=(8,), name="x")
    left = layers.Dense(4, name="left")(inputs)
    right = layers.Dense(4, name="right")(inputs)
    merged = layers.Add(name="add")([left, right])
    return keras.Model(inputs, layers.Dense(2, name="head")(merged))


_BAD_CALLS = {
    "unknown layer name": (
        lambda m: rewriter.remove_layer(m, "nope"),
        rewriter.RewriteError,
        r"no layer or node named 'nope'\. Layers: left, right, add, head",
    ),
    "unknown layer object": (
        lambda m: rewriter.insert_after(m, layers.ReLU(name="stray"), layers.ReLU()),
        rewriter.RewriteError,
        r"'stray' is not called in the model\. Pass a layer of this model",
    ),
    "remove an input by name": (
        lambda m: rewriter.remove_layer(m, "x"),
        rewriter.RewriteError,
        r"'x' is a model input, not a layer",
    ),
    "remove an input by object": (
        lambda m: rewriter.remove_layer(m, m.get_layer("x")),
        rewriter.RewriteError,
        r"'x' is a model input, not a layer",
    ),
    "remove a layer with two inputs": (
        lambda m: rewriter.remove_layer(m, "add"),
        rewriter.RewriteError,
        r"'add' \(Add\) has 2 inputs \(left, right\); pass input_index=0\.\.\.1",
    ),
    "input_index out of range": (
        lambda m: rewriter.remove_layer(m, "add", input_index=2),
        rewriter.RewriteError,
        r"input_index=2, but 'add' has 2 input",
    ),
    "add_skip unknown merge": (
        lambda m: rewriter.add_skip(m, source="left", target="head", merge="foo"),
        rewriter.RewriteError,
        r"Unknown merge 'foo'; expected one of \['add', 'average', 'concat'",
    ),
    "add_skip to an input": (
        lambda m: rewriter.add_skip(m, source="left", target="x"),
        rewriter.RewriteError,
        r"'x' is a model input",
    ),
    "add_skip shapes without projection": (
        lambda m: rewriter.add_skip(m, source="left", target="head", merge="add"),
        rewriter.ShapeMismatchError,
        r"shortcut from 'left' of shape \(None, 4\) with 'head' of shape \(None, 2\).*projection=",
    ),
    "add_skip backwards": (
        lambda m: rewriter.add_skip(m, source="head", target="left"),
        rewriter.RewriteError,
        r"target 'left' does not come after source 'head'",
    ),
    "replace breaks a merge": (
        lambda m: rewriter.replace_layer(m, "left", layers.Dense(5)),
        rewriter.ShapeMismatchError,
        r"'replace_layer': node 'add' \(Add, layer 'add'\) cannot take its new input shape\(s\) "
        r"\(None, 5\) float32, \(None, 4\) float32",
    ),
    "not a model": (
        lambda m: rewriter.insert_after("model.keras", "left", layers.ReLU()),
        rewriter.RewriteError,
        r"Expected a keras\.Model or a rewriter\.Graph",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_bad_input_is_a_clear_error_and_changes_nothing(case: str) -> None:
    call, error_type, message = _BAD_CALLS[case]
    model = _merge_model()
    before = snapshot(model)
    with pytest.raises(error_type, match=message) as info:
        call(model)
    assert_unchanged(model, before)
    # The error is ours, with the Keras exception (if any) out of the printed traceback.
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, rewriter.RewriteError)


def test_add_skip_from_a_model_input() -> None:
    model = _merge_model()
    new = rewriter.add_skip(model, source="x", target="add", merge="concat")
    assert new.rewrite_result.reinitialized == ["head"]
    assert new.get_layer("head").get_weights()[0].shape == (12, 2)
    (concat,) = new.rewrite_result.graph.nodes_of_type("Concatenate")
    assert new.rewrite_result.graph.producer_nodes(concat.name) == ["x", "add"]


def test_remove_one_input_of_a_merge_when_asked() -> None:
    model = _merge_model()
    new = rewriter.remove_layer(model, "add", input_index=1)
    assert new.rewrite_result.graph.producer_nodes("head") == ["right"]
    assert new.rewrite_result.reinitialized == []
    data = random_inputs(model, seed=5)
    want = model.get_layer("head")(model.get_layer("right")(data))
    np.testing.assert_allclose(predict(new, data), keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-6)


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
