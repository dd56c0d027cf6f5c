"""Tests of patterns.mutations: each operator, Net2Net algebra, determinism, replay, and a property test.

The property tests run random 3-step mutation chains: 200 over random functional models
(``tests.strategies.functional_models``, about 40 s) and 40 over random Dense/Conv chains where the Net2Net
operators apply. ``MUTATION_CHAINS=N python -m pytest tests/test_mutations.py -k chains`` runs N each.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import layers

import rewriter
from patterns import _algebra, mutations
from tests.helpers import flat_outputs, random_inputs
from tests.patterns_models import relative_error
from tests.strategies import functional_models, randomize_weights

RTOL = 1e-5


_relative_error = relative_error


def _cnn(seed: int = 0) -> keras.Model:
    x = keras.Input((8, 8, 3), name="image")
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.MaxPooling2D(name="pool")(h)
    a = layers.Conv2D(5, 3, padding="same", name="c2")(h)
    b = layers.Flatten(name="flat")(h)
    b = layers.Dense(3, name="side")(b)
    g = layers.GlobalAveragePooling2D(name="gap")(a)
    d = layers.Dense(6, activation="relu", name="d1")(g)
    d = layers.Dropout(0.2, name="drop")(d)
    out = layers.Dense(2, name="head")(d)
    model = keras.Model(x, [out, b], name="cnn")
    randomize_weights(model, seed)
    return model


def _mlp(seed: int = 0) -> keras.Model:
    x = keras.Input((6,), name="x")
    h = layers.Dense(5, activation="relu", name="d1")(x)
    h = layers.Dense(4, activation="tanh", name="d2")(h)
    out = layers.Dense(3, name="d3")(h)
    model = keras.Model(x, out, name="mlp")
    randomize_weights(model, seed)
    return model


# --------------------------------------------------------------------------- Net2Net algebra


def test_net2wider_algebra_preserves_a_two_layer_product() -> None:
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=(3, 2))
    mapping = _algebra.net2wider_mapping(3, 7, rng)
    assert mapping[:3].tolist() == [0, 1, 2] and mapping.max() < 3
    new_w1, new_b1 = _algebra.net2wider_outgoing("Dense", [w1, b1], mapping)
    new_w2 = _algebra.net2wider_incoming(w2, mapping)
    x = rng.normal(size=(5, 4))
    want = np.maximum(x @ w1 + b1, 0) @ w2
    got = np.maximum(x @ new_w1 + new_b1, 0) @ new_w2
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_net2wider_incoming_through_flatten_positions() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 3, 3, 2))  # positions 9, channels 2
    kernel = rng.normal(size=(18, 4))
    mapping = np.array([0, 1, 1, 0, 1])
    wide = np.take(features, mapping, axis=-1)
    new_kernel = _algebra.net2wider_incoming(kernel, mapping, in_axis=-2, positions=9)
    np.testing.assert_allclose(wide.reshape(2, -1) @ new_kernel, features.reshape(2, -1) @ kernel, rtol=1e-12)


def test_identity_weights_are_the_identity() -> None:
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 3)).astype("float32")
    conv = layers.Conv2D(3, 3, padding="same")
    conv.build(x.shape)
    conv.set_weights(_algebra.identity_weights("Conv2D", 3, 3))
    np.testing.assert_array_equal(conv(x).numpy(), x)
    with pytest.raises(ValueError, match="odd"):
        _algebra.identity_weights("Conv2D", 3, 2)


# --------------------------------------------------------------------------- operators one by one


def test_widen_goes_through_batchnorm_pooling_flatten_and_keeps_outputs() -> None:
    model = _cnn()
    x = random_inputs(model, seed=3)
    assert set(mutations.applicable(model, kinds=["widen"])["widen"]) == {"c1", "c2", "d1"}
    record = mutations.MutationRecord("widen", "c1", {"new_units": 7, "seed": 11})
    wide = mutations.replay(model, [record])
    assert wide.get_layer("c1").output.shape[-1] == 7
    assert wide.get_layer("bn1").moving_mean.shape == (7,)
    assert wide.get_layer("side").kernel.shape == (16 * 7, 3)
    assert _relative_error(model, wide, x) < RTOL


def test_widen_refuses_where_widening_cannot_propagate() -> None:
    x = keras.Input((4,))
    a = layers.Dense(3, name="a")(x)
    out = layers.Add(name="add")([a, layers.Dense(3, name="b")(x)])
    model = keras.Model(x, out)
    assert "widen" not in mutations.applicable(model, kinds=["widen"])
    with pytest.raises(mutations.MutationError, match="cannot be widened"):
        mutations.replay(model, [mutations.MutationRecord("widen", "a", {"new_units": 5, "seed": 0})])


def test_deepen_inserts_identity_with_relu_after_relu() -> None:
    model = _mlp()
    record = mutations.MutationRecord(
        "deepen", "d1", {"layer": "Dense", "activation": "relu", "name": "d1_deepen"}
    )
    deep = mutations.replay(model, [record])
    assert len(deep.layers) == len(model.layers) + 1
    assert deep.get_layer("d1_deepen").get_config()["activation"] == "relu"
    x = random_inputs(model, seed=1)
    assert _relative_error(model, deep, x) == 0.0


def test_deepen_conv_identity_is_exact() -> None:
    model = _cnn()
    result = mutations.mutate(model, seed=5, steps=2, kinds=["deepen"], function_preserving=True)
    assert [r.operator for r in result.history] == ["deepen", "deepen"]
    assert len(result.model.layers) == len(model.layers) + 2
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


def test_add_skip_function_preserving_uses_zero_projection() -> None:
    model = _mlp()
    result = mutations.mutate(model, seed=0, kinds=["add_skip"], function_preserving=True)
    record = result.history[0]
    assert record.parameters["zero_projection"] is True
    add_layers = [layer for layer in result.model.layers if isinstance(layer, layers.Add)]
    assert len(add_layers) == 1
    assert _relative_error(model, result.model, random_inputs(model, seed=4)) < RTOL


def test_add_skip_never_creates_a_cycle() -> None:
    model = _mlp()
    ctx_sources = {
        target: set(mutations.OPERATORS["add_skip"].sources(mutations._Context(rewriter.lift(model)), target))
        for target in ("d1", "d2", "d3")
    }
    assert "d3" not in ctx_sources["d1"] and "d2" not in ctx_sources["d1"]
    assert ctx_sources["d3"] == {"x", "d1", "d2"}  # same rank, channels projected


def test_change_kernel_size_growing_is_function_preserving() -> None:
    model = _cnn()
    result = mutations.mutate(model, seed=2, kinds=["change_kernel_size"], function_preserving=True)
    record = result.history[0]
    assert record.parameters["kernel_size"] == 5
    conv = result.model.get_layer(record.target)
    assert tuple(conv.kernel.shape[:2]) == (5, 5)
    assert _relative_error(model, result.model, random_inputs(model, seed=1)) < RTOL


def test_change_activation_and_remove_layer_change_the_architecture() -> None:
    model = _mlp()
    result = mutations.mutate(model, seed=3, kinds=["change_activation"])
    record = result.history[0]
    old = model.get_layer(record.target).get_config()["activation"]
    new = result.model.get_layer(record.target).get_config()["activation"]
    assert new == record.parameters["activation"] != old
    removed = mutations.replay(_cnn(), [mutations.MutationRecord("remove_layer", "drop", {})])
    assert "drop" not in [layer.name for layer in removed.layers]
    # a layer that changes the shape is never a removal target
    assert "c1" not in mutations.applicable(_cnn(), kinds=["remove_layer"]).get("remove_layer", [])


def test_insert_layer_keeps_weights_elsewhere() -> None:
    model = _cnn()
    result = mutations.mutate(model, seed=8, steps=1, kinds=["insert_layer"])
    assert len(result.model.layers) == len(model.layers) + 1
    for layer in model.layers:
        for a, b in zip(layer.get_weights(), result.model.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- mutate / replay contract


def test_same_seed_same_model_and_replay_reproduces() -> None:
    model = _cnn()
    first = mutations.mutate(model, seed=42, steps=4)
    second = mutations.mutate(model, seed=42, steps=4)
    assert first.history == second.history
    x = random_inputs(model, seed=0)
    for a, b in zip(flat_outputs(first.model, x), flat_outputs(second.model, x), strict=True):
        np.testing.assert_array_equal(a, b)
    replayed = mutations.replay(model, [r.to_dict() for r in first.history])
    assert [layer.name for layer in replayed.layers] == [layer.name for layer in first.model.layers]
    for a, b in zip(flat_outputs(first.model, x), flat_outputs(replayed, x), strict=True):
        np.testing.assert_array_equal(a, b)


def _assert_same_weights(first: keras.Model, second: keras.Model) -> None:
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]
    for a, b in zip(first.layers, second.layers, strict=True):
        assert type(a) is type(b)
        assert a.get_config() == b.get_config()
        for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("preserving", [False, True])
def test_replay_from_json_gives_the_same_architecture_and_weights(preserving: bool) -> None:
    model = _cnn()
    result = mutations.mutate(model, seed=9, steps=5, function_preserving=preserving)
    stored = json.loads(json.dumps([record.to_dict() for record in result.history]))
    again = mutations.replay(model, stored)
    _assert_same_weights(result.model, again)
    assert all(record.fingerprint for record in result.history)


def test_replay_on_a_retrained_parent_keeps_its_new_weights() -> None:
    parent = _cnn(seed=0)
    result = mutations.mutate(parent, seed=4, steps=3, function_preserving=True)
    retrained = _cnn(seed=1)  # same architecture, other weights
    child = mutations.replay(retrained, result.history)
    assert _relative_error(retrained, child, random_inputs(retrained, seed=0)) < RTOL
    assert _relative_error(parent, child, random_inputs(parent, seed=0)) > 1e-3


def test_history_of_another_model_is_refused() -> None:
    x = keras.Input((6,), name="x")
    h = layers.Dense(7, activation="tanh", name="d1")(x)  # same names as _mlp, other widths
    other = keras.Model(x, layers.Dense(3, name="d3")(layers.Dense(4, name="d2")(h)))
    history = mutations.mutate(_mlp(), seed=0, steps=2).history
    with pytest.raises(mutations.MutationError, match="another architecture"):
        mutations.replay(other, history)


_BAD_RECORDS = [
    ({"operator": "widen", "target": "d1", "parameters": {}}, "parameter 'new_units' is missing"),
    ({"op": "widen"}, "is not a record"),
    ({"operator": "teleport", "target": "d1", "parameters": {}}, "Unknown mutation operator"),
    ({"operator": "widen", "target": "nope", "parameters": {}}, "no node named"),
    (
        {"operator": "change_activation", "target": "d1", "parameters": {"activation": "nope"}},
        "Unknown activation",
    ),
    (
        {
            "operator": "deepen",
            "target": "d1",
            "parameters": {"layer": "Dense", "activation": "relu", "name": "d2"},
        },
        "already exists",
    ),
    (
        {
            "operator": "insert_layer",
            "target": "d1",
            "parameters": {"layer": "Conv2D", "name": "q", "kernel_size": 3, "activation": "relu", "seed": 1},
        },
        "cannot follow",
    ),
    ({"operator": "widen", "target": "d1", "parameters": {"new_units": 2, "seed": 0}}, "must be larger"),
    ({"operator": "add_skip", "target": "d1", "parameters": {"source": "d3"}}, "cannot feed a skip"),
]


@pytest.mark.parametrize(("record", "message"), _BAD_RECORDS, ids=[m for _, m in _BAD_RECORDS])
def test_bad_records_raise_mutation_error_naming_the_step(record, message) -> None:
    model = _mlp()
    with pytest.raises(mutations.MutationError, match=message) as caught:
        mutations.replay(model, [record])
    assert "step 0" in str(caught.value)


def test_bad_arguments_raise_mutation_error() -> None:
    model = _mlp()
    for kwargs, message in [
        ({"seed": None}, "integer seed"),
        ({"seed": 1.5}, "integer seed"),
        ({"seed": 0, "steps": -1}, "number of steps"),
        ({"seed": 0, "kinds": ["change_activation"], "function_preserving": True}, "function-preserving"),
    ]:
        with pytest.raises(mutations.MutationError, match=message):
            mutations.mutate(model, **kwargs)
    with pytest.raises(mutations.MutationError, match="Expected a history"):
        mutations.replay(model, "widen")
    assert [r.operator for r in mutations.mutate(model, seed=0, kinds="widen").history] == ["widen"]
    assert mutations.mutate(model, seed=0, steps=0).history == []


def test_input_model_unchanged_and_errors_are_clear() -> None:
    model = _cnn()
    before = [w.copy() for w in model.get_weights()]
    mutations.mutate(model, seed=1, steps=3)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(mutations.MutationError, match="Unknown mutation operator"):
        mutations.mutate(model, seed=0, kinds=["teleport"])
    with pytest.raises(mutations.MutationError, match="no node named"):
        mutations.replay(model, [mutations.MutationRecord("remove_layer", "nope", {})])
    assert issubclass(mutations.MutationError, rewriter.RewriteError)


def test_function_preserving_excludes_activation_changes() -> None:
    found = mutations.applicable(_mlp(), function_preserving=True)
    assert "change_activation" not in found
    assert {"deepen", "widen"} <= set(found)


# --------------------------------------------------------------------------- property: random chains

_CHAINS = int(os.environ.get("MUTATION_CHAINS", "0"))


def _chain_settings(default: int) -> settings:
    """Hypothesis settings for the chain properties: ``MUTATION_CHAINS`` overrides ``default`` examples."""
    return settings(max_examples=_CHAINS or default)


@_chain_settings(200)
@given(functional_models(max_ops=8), st.integers(0, 2**31 - 1), st.booleans())
def test_random_three_step_chains_stay_runnable(model: keras.Model, seed: int, preserving: bool) -> None:
    x = random_inputs(model, seed=1)
    before = [w.copy() for w in model.get_weights()]
    result = mutations.mutate(model, seed=seed, steps=3, function_preserving=preserving)
    assert len(result.history) == 3
    reference = flat_outputs(model, x)
    mutated = flat_outputs(result.model, x)
    assert [a.shape for a in mutated] == [a.shape for a in reference]
    if preserving:
        assert _relative_error(model, result.model, x) < RTOL, result.history
    again = mutations.replay(model, result.history)
    for a, b in zip(flat_outputs(again, x), mutated, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@st.composite
def _plain_nets(draw: st.DrawFn) -> keras.Model:
    """Chains of Dense or Conv2D layers with BN / pooling / dropout in between: where Net2Net applies."""
    conv = draw(st.booleans())
    x = keras.Input((6, 6, 2) if conv else (5,))
    h = x
    for _ in range(draw(st.integers(2, 4))):
        width = draw(st.integers(2, 5))
        act = draw(st.sampled_from(["relu", "linear", "tanh"]))
        h = (
            layers.Conv2D(width, 3, padding="same", activation=act)(h)
            if conv
            else layers.Dense(width, activation=act)(h)
        )
        extra = draw(st.sampled_from(["", "bn", "drop", "pool"] if conv else ["", "bn", "drop"]))
        if extra == "bn":
            h = layers.BatchNormalization()(h)
        elif extra == "drop":
            h = layers.Dropout(0.3)(h)
        elif extra == "pool" and h.shape[1] >= 2:
            h = layers.MaxPooling2D()(h)
    if conv:
        h = draw(st.sampled_from([layers.Flatten, layers.GlobalAveragePooling2D]))()(h)
    model = keras.Model(x, layers.Dense(2)(h))
    randomize_weights(model, draw(st.integers(0, 1000)))
    return model


@pytest.mark.filterwarnings("ignore:Do not use the `random` module")  # Keras seeds its initializers
@_chain_settings(40)
@given(_plain_nets(), st.integers(0, 2**31 - 1))
def test_random_function_preserving_chains_on_plain_nets(model: keras.Model, seed: int) -> None:
    result = mutations.mutate(model, seed=seed, steps=3, function_preserving=True)
    assert _relative_error(model, result.model, random_inputs(model, seed=2)) < RTOL, result.history


def test_no_applicable_operator_is_a_clear_error() -> None:
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(3, name="only")(x))  # its output is the model output
    with pytest.raises(mutations.MutationError, match="none of the operators"):
        mutations.mutate(model, seed=0, kinds=["widen"])


@pytest.mark.slow
def test_function_preserving_mutations_on_mobilenetv2() -> None:
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None
    )
    found = mutations.applicable(model, function_preserving=True)
    assert {"widen", "deepen", "add_skip", "change_kernel_size"} <= set(found)
    result = mutations.mutate(model, seed=3, steps=3, function_preserving=True)
    assert len(result.model.layers) >= len(model.layers)
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL
