"""emit(lift(model)) is faithful: property tests over random models, plus emit's own guarantees.

Properties (hypothesis, `tests.strategies.functional_models`): bit-identical outputs, equal weights in the
same order, the input model unchanged, ``verify()`` passes, no shared variables by default, names kept,
``to_source`` round-trips. Explicit tests: ``share_weights=True``, deep chains at the default recursion
limit (where ``keras.models.clone_model`` fails), training, saving and loading.
"""

from __future__ import annotations

import sys
from typing import Any

import keras
import numpy as np
import pytest
from hypothesis import given
from keras import layers, ops

import rewriter
from tests.helpers import (
    assert_same_outputs,
    assert_same_weights,
    flat_outputs,
    property_settings,
    random_inputs,
    recursion_limit,
)
from tests.strategies import functional_models, randomize_weights

# ---------------------------------------------------------------------------------------- helpers


def _all_layers(model: keras.Model) -> list[Any]:
    """Every layer of ``model``, nested models' layers included (iterative walk)."""
    seen: dict[int, Any] = {}
    stack = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen[id(layer)] = layer
        stack.extend(getattr(layer, "layers", []))
    return list(seen.values())


def _snapshot(model: keras.Model) -> tuple[list[np.ndarray], dict[str, int], list[str]]:
    """Weights, inbound-node count per layer and the weight paths: what 'unchanged' means."""
    inbound = {f"{id(layer)}:{layer.name}": len(layer._inbound_nodes) for layer in _all_layers(model)}
    return [np.array(w) for w in model.get_weights()], inbound, [v.path for v in model.weights]


def _assert_unchanged(model: keras.Model, before: tuple[list[np.ndarray], dict[str, int], list[str]]) -> None:
    weights, inbound, paths = _snapshot(model)
    assert inbound == before[1], "the input model's layers gained or lost inbound nodes"
    assert paths == before[2]
    assert len(weights) == len(before[0])
    for now, then in zip(weights, before[0]):
        assert np.array_equal(now, then), "an input model weight changed"


def _variable_ids(model: keras.Model) -> set[int]:
    ids = set()
    for variable in model.weights:
        ids.add(id(variable))
        backing = getattr(variable, "value", None)
        if backing is not None:
            ids.add(id(backing))
    return ids


def _names(model: keras.Model) -> dict[str, Any]:
    return {
        "model": model.name,
        "layers": [layer.name for layer in model.layers],
        "inputs": [t.name for t in model.inputs],
        "outputs": list(model.output_names),
        "weights": [v.path for v in model.weights],
    }


def _source_round_trip(model: keras.Model, graph: rewriter.Graph, inputs: Any) -> None:
    """Execute ``rewriter.to_source(graph)``, load the original weights, compare outputs exactly."""
    source = rewriter.to_source(graph)
    assert isinstance(source, str) and "def build_model" in source
    namespace: dict[str, Any] = {"__name__": "generated_model"}
    exec(compile(source, "<rewriter.to_source>", "exec"), namespace)
    rebuilt = namespace["build_model"]()
    rebuilt.set_weights(model.get_weights())
    assert_same_outputs(model, rebuilt, inputs)


# ----------------------------------------------------------------------------- property tests


@property_settings()
@given(functional_models())
def test_emit_of_lift_is_faithful(model: keras.Model) -> None:
    before = _snapshot(model)
    inputs = random_inputs(model, seed=1)
    expected = flat_outputs(model, inputs)

    graph = rewriter.lift(model)
    graph.verify()
    new = rewriter.emit(graph)

    _assert_unchanged(model, before)
    assert_same_outputs(model, new, inputs)  # bit for bit
    assert_same_weights(model, new)  # same order, same values
    assert _names(new) == _names(model)
    assert not _variable_ids(model) & _variable_ids(new), "share_weights=False shared a variable"
    # get_weights order is kept, so set_weights across the two works both ways
    new.set_weights(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(flat_outputs(new, inputs), expected))
    # the two models are independent: changing the copy leaves the original alone
    new.set_weights([w + 1.0 for w in new.get_weights()])
    _assert_unchanged(model, before)


@property_settings()
@given(functional_models())
def test_lift_of_emit_gives_the_same_graph(model: keras.Model) -> None:
    graph = rewriter.lift(model)
    again = rewriter.lift(rewriter.emit(graph))
    again.verify()
    assert again.topological_names() == graph.topological_names()
    for old, new in zip(graph.topological(), again.topological()):
        assert (old.op_type, old.call_index, old.output_specs) == (
            new.op_type,
            new.call_index,
            new.output_specs,
        )
        assert graph.producers(old.name) == again.producers(new.name)
    assert again.output_structure == graph.output_structure
    assert again.input_structure == graph.input_structure


@property_settings()
@given(functional_models(max_ops=8))
def test_inline_nested_round_trip(model: keras.Model) -> None:
    before = _snapshot(model)
    graph = rewriter.lift(model, inline_nested=True)
    graph.verify()
    assert not graph.nodes_of_type("Functional", "Sequential")
    new = rewriter.emit(graph)
    _assert_unchanged(model, before)
    assert_same_outputs(model, new, random_inputs(model, seed=5))
    assert len(new.weights) == len(model.weights)
    assert not _variable_ids(model) & _variable_ids(new)


@property_settings()
@given(functional_models(max_ops=6))
def test_share_weights_reuses_layers(model: keras.Model) -> None:
    inputs = random_inputs(model, seed=2)
    new = rewriter.emit(rewriter.lift(model), share_weights=True)
    assert_same_outputs(model, new, inputs)
    assert _variable_ids(new) <= _variable_ids(model)
    originals = {id(layer) for layer in model.layers}
    reused = [layer for layer in new.layers if not isinstance(layer, layers.InputLayer)]
    assert all(id(layer) in originals for layer in reused)


@property_settings()
@given(functional_models())
def test_to_source_round_trips(model: keras.Model) -> None:
    _source_round_trip(model, rewriter.lift(model), random_inputs(model, seed=3))


# ------------------------------------------------------------ weights made during the clone's build


class _VariableOutsideAddWeight(layers.Layer):
    """Makes its first weight with ``keras.Variable``, the second (same shape) with ``add_weight``."""

    def build(self, input_shape: Any) -> None:
        self.scale = keras.Variable(np.ones((input_shape[-1],), "float32"), name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x: Any) -> Any:
        return x * self.scale + self.shift


class _PositionalAddWeight(layers.Layer):
    """Calls ``add_weight`` Keras-2 style (shape and initializer positional) before a keyword call."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight((input_shape[-1],), "ones")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x: Any) -> Any:
        return x * self.scale + self.shift


class _SubLayer(layers.Layer):
    """A layer with a weight of its own and a Dense sub-layer of the same kernel shape."""

    def build(self, input_shape: Any) -> None:
        self.inner = layers.Dense(input_shape[-1], name="inner")
        self.inner.build(input_shape)
        self.kernel = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="kernel")

    def call(self, x: Any) -> Any:
        return self.inner(x) @ self.kernel


def test_weights_created_in_unexpected_ways_are_copied_to_the_right_place() -> None:
    """emit starts a clone's variables from the original's values; an odd build order must not fool it."""
    x = inputs = keras.Input((3,), name="x")
    x = _VariableOutsideAddWeight(name="outside")(layers.Dense(3, name="d")(x))
    x = _PositionalAddWeight(name="positional")(x)
    model = keras.Model(inputs, _SubLayer(name="with_sublayer")(x), name="odd_builds")
    randomize_weights(model, seed=0)  # every weight distinct, so a swap changes the outputs
    new = rewriter.emit(rewriter.lift(model))
    assert_same_weights(model, new)
    assert_same_outputs(model, new, random_inputs(model, seed=0))
    assert all("add_weight" not in vars(layer) for layer in new.layers), "the build hook was left behind"


@pytest.mark.parametrize("variant", ["int8", "lora"])
def test_quantized_and_lora_layers_round_trip(variant: str) -> None:
    """Weights whose order or trainable flag Keras changes after the build (quantize, enable_lora)."""
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(3, name="d2")(layers.Dense(4, name="d1")(x)), name=variant)
    randomize_weights(model, seed=3)
    if variant == "int8":
        model.quantize("int8")  # kernels become non-trainable int8 variables listed after the bias
    else:
        model.get_layer("d1").enable_lora(2)  # the kernel is frozen, two trainable factors are added
        randomize_weights(model, seed=4)
    new = rewriter.emit(rewriter.lift(model))
    assert [(w.path, w.dtype, w.trainable) for w in new.weights] == [
        (w.path, w.dtype, w.trainable) for w in model.weights
    ]
    assert_same_weights(model, new)
    assert_same_outputs(model, new, random_inputs(model, seed=3))


def test_mixed_precision_model_round_trips() -> None:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tokens = keras.Input((6,), dtype="int32", name="tokens")
        x = layers.Embedding(10, 4, name="embed")(tokens)
        x = layers.Conv1D(4, 3, padding="same", name="conv")(x)
        x = layers.BatchNormalization(name="bn")(x)
        x = layers.LSTM(4, return_sequences=True, name="lstm")(x)
        x = layers.MultiHeadAttention(num_heads=2, key_dim=2, name="mha")(x, x)
        out = layers.Dense(2, dtype="float32", name="head")(layers.LayerNormalization(name="norm")(x))
        model = keras.Model(tokens, out, name="mixed")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    randomize_weights(model, seed=1)
    new = rewriter.emit(rewriter.lift(model))
    assert [layer.dtype_policy.name for layer in new.layers[1:]] == [
        layer.dtype_policy.name for layer in model.layers[1:]
    ]
    conv = new.get_layer("conv")
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert_same_weights(model, new)
    assert_same_outputs(model, new, random_inputs(model, seed=1))


def test_weights_set_after_build_refresh_state_cached_from_them() -> None:
    """Normalization caches its mean and variance as tensors: emit refreshes them after copying weights."""
    x = keras.Input((3,), name="x")
    norm = layers.Normalization(name="norm")
    norm.adapt(np.array([[0.0, 1.0, 2.0], [2.0, 5.0, 8.0]], "float32"))
    model = keras.Model(x, norm(x), name="normalized")
    data = random_inputs(model, seed=2)
    assert_same_outputs(model, rewriter.emit(rewriter.lift(model)), data)  # adapted statistics copied

    graph = rewriter.lift(model)
    mean, variance = np.array([1.0, 2.0, 3.0], "float32"), np.array([4.0, 1.0, 9.0], "float32")
    count = np.array(norm.get_weights()[2])
    graph.node("norm").meta["weights"] = [mean, variance, count]  # weights computed by a rewrite
    new = rewriter.emit(graph)
    np.testing.assert_allclose(
        ops.convert_to_numpy(new(data)), (data - mean) / np.sqrt(variance), rtol=1e-6, atol=1e-6
    )


class _ForgetsAnArgument(layers.Layer):
    """Its get_config() omits ``with_bias``, which decides how many weights it has."""

    def __init__(self, with_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.with_bias = with_bias

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1],), name="kernel")
        if self.with_bias:
            self.bias = self.add_weight(shape=(input_shape[-1],), name="bias")

    def call(self, x: Any) -> Any:
        return x * self.kernel + (self.bias if self.with_bias else 0.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("with_bias", None)  # the bug under test (Keras would otherwise record it itself)
        return config


def test_emit_reports_a_config_that_does_not_rebuild_the_weights() -> None:
    x = keras.Input((3,), name="x")
    model = keras.Model(x, _ForgetsAnArgument(with_bias=True, name="forgetful")(x))
    with pytest.raises(rewriter.EmitError, match=r"'forgetful'.*rebuilt with 1 weights but 2.*get_config"):
        rewriter.emit(rewriter.lift(model))
    assert_same_outputs(model, rewriter.emit(rewriter.lift(model), share_weights=True), random_inputs(model))


# ---------------------------------------------------------------------------- deep chains


def _chain(depth: int, width: int = 4) -> keras.Model:
    """A ``depth``-op chain: a Dense every tenth op, ReLU otherwise (stateless ops keep the test fast)."""
    x = inputs = keras.Input((width,), name="x")
    for index in range(depth):
        if index % 10 == 0:
            x = layers.Dense(width, name=f"dense_{index}")(x)
        else:
            x = layers.ReLU(name=f"relu_{index}")(x)
    return keras.Model(inputs, x, name=f"chain_{depth}")


_DEFAULT_LIMIT = 1000  # Python's default; importing TensorFlow raises it to 3000
_BUILD_LIMIT = 20000  # only for building the test models and calling them (Keras recurses over depth)


def test_clone_model_fails_on_a_1200_op_chain() -> None:
    """The claim emit improves on: Keras's own cloning recurses over depth."""
    with recursion_limit(_BUILD_LIMIT):
        model = _chain(1200)
    with recursion_limit(_DEFAULT_LIMIT), pytest.raises(RecursionError):
        keras.models.clone_model(model)


def test_3000_op_chain_lifts_and_emits_at_the_defaultrecursion_limit() -> None:
    with recursion_limit(_BUILD_LIMIT):
        model = _chain(3000)
    with recursion_limit(_DEFAULT_LIMIT):
        graph = rewriter.lift(model)
        graph.verify()
        new = rewriter.emit(graph)
        assert sys.getrecursionlimit() == _DEFAULT_LIMIT
    assert len(graph) == 3001
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    assert len(new.layers) == 3001
    with recursion_limit(_BUILD_LIMIT):
        assert_same_outputs(model, new, random_inputs(model, seed=0))
    assert_same_weights(model, new)


# -------------------------------------------------------------------- train / save / load


def _small_model() -> keras.Model:
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Concatenate(name="concat")([x, layers.Dense(4, name="meta_dense")(meta)])
    x = layers.Dropout(0.2, name="drop")(x)
    out = layers.Dense(3, name="logits")(x * 0.5)
    return keras.Model({"image": image, "meta": meta}, {"logits": out, "features": x}, name="small")


def test_emitted_model_trains_one_step() -> None:
    model = _small_model()
    new = rewriter.emit(rewriter.lift(model))
    new.compile(optimizer="sgd", loss={"logits": "mse", "features": "mse"})
    data = random_inputs(model, seed=4, batch=4)
    targets = {"logits": np.ones((4, 3), "float32"), "features": np.zeros((4, 8), "float32")}
    before = [np.array(w) for w in new.get_weights()]
    history = new.fit(data, targets, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = new.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "fit changed no weight"
    # the original did not train along
    assert_same_weights(model, rewriter.emit(rewriter.lift(model)))


def test_emitted_model_saves_and_loads(tmp_path: Any) -> None:
    model = _small_model()
    new = rewriter.emit(rewriter.lift(model))
    path = tmp_path / "emitted.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: none were needed by the input
    inputs = random_inputs(model, seed=5)
    assert_same_outputs(model, loaded, inputs)
    assert_same_weights(model, loaded)
    assert loaded.name == model.name


@keras.saving.register_keras_serializable(package="rewriter_tests")
class Scale(layers.Layer):
    """A custom registered layer with one weight."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x: Any) -> Any:
        return x * self.scale


def test_emitted_model_with_a_registered_custom_layer_saves_and_loads(tmp_path: Any) -> None:
    x = inputs = keras.Input((6,), name="x")
    x = layers.Dense(6, name="d")(x)
    custom = Scale(name="scale")
    custom.build((None, 6))
    custom.scale.assign(np.arange(6, dtype="float32"))
    model = keras.Model(inputs, custom(x), name="with_custom")
    new = rewriter.emit(rewriter.lift(model))
    assert type(new.get_layer("scale")) is Scale
    path = tmp_path / "custom.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)  # found through the registration, like the input model
    assert_same_outputs(model, loaded, random_inputs(model, seed=6))


def test_emit_keeps_the_output_structure_of_dicts() -> None:
    model = _small_model()
    new = rewriter.emit(rewriter.lift(model))
    out = new(random_inputs(model, seed=7))
    assert isinstance(out, dict) and sorted(out) == ["features", "logits"]
    assert isinstance(new._inputs_struct, dict) and sorted(new._inputs_struct) == ["image", "meta"]


class _AddIfGiven(layers.Layer):
    """Adds its second argument when it is given (an optional model input may be None)."""

    def call(self, a: Any, b: Any = None) -> Any:
        return a if b is None else a + b


def test_optional_input_stays_optional() -> None:
    x = keras.Input((3,), name="x")
    maybe = keras.Input((3,), name="maybe", optional=True)
    model = keras.Model([x, maybe], _AddIfGiven(name="add_if_given")(x, maybe), name="optional_input")
    new = rewriter.emit(rewriter.lift(model))
    assert new.get_layer("maybe").get_config()["optional"] is True
    data = np.arange(6, dtype="float32").reshape(2, 3)
    assert np.array_equal(ops.convert_to_numpy(new([data, None])), data)
    assert_same_outputs(model, new, [data, data])


def test_emit_name_argument_and_error_on_unbuildable_graph() -> None:
    model = _small_model()
    graph = rewriter.lift(model)
    assert rewriter.emit(graph, name="renamed").name == "renamed"
    broken = graph.copy()
    broken.node("logits").layer = None
    with pytest.raises(rewriter.EmitError, match="logits"):
        rewriter.emit(broken)
