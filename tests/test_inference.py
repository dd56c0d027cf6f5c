"""Tests of patterns.inference: BatchNorm folding (every layer kind), no-op removal, activation fusion,
reshape merging, the refusals and their reasons, and keras.applications checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import rewriter
from patterns import _algebra, inference
from patterns._graph_tools import call_with_weights
from tests.helpers import random_inputs
from tests.patterns_models import layer_types, randomize_batchnorm, relative_error
from tests.strategies import randomize_weights

RTOL = 1e-5

_relative_error = relative_error
_types = layer_types


def _rewrite(model: keras.Model) -> rewriter.RewriteResult:
    result = rewriter.rewrite(model, inference.RULES)
    result.graph.verify()
    return result


# --------------------------------------------------------------------------- BatchNorm folding

_FOLD_CASES = [
    ("Dense", lambda bias: layers.Dense(5, use_bias=bias), (7,)),
    ("Dense-rank3", lambda bias: layers.Dense(5, use_bias=bias), (3, 7)),
    ("Conv1D", lambda bias: layers.Conv1D(4, 3, use_bias=bias), (9, 3)),
    ("Conv2D", lambda bias: layers.Conv2D(4, 3, strides=2, use_bias=bias), (9, 9, 3)),
    ("Conv3D", lambda bias: layers.Conv3D(3, 2, use_bias=bias), (5, 5, 5, 2)),
    ("Conv1DTranspose", lambda bias: layers.Conv1DTranspose(4, 3, use_bias=bias), (6, 3)),
    ("Conv2DTranspose", lambda bias: layers.Conv2DTranspose(4, 3, strides=2, use_bias=bias), (5, 5, 3)),
    ("Conv3DTranspose", lambda bias: layers.Conv3DTranspose(3, 2, use_bias=bias), (3, 3, 3, 2)),
    ("DepthwiseConv1D", lambda bias: layers.DepthwiseConv1D(3, depth_multiplier=2, use_bias=bias), (9, 3)),
    ("DepthwiseConv2D", lambda bias: layers.DepthwiseConv2D(3, depth_multiplier=3, use_bias=bias), (7, 7, 2)),
    ("SeparableConv1D", lambda bias: layers.SeparableConv1D(4, 3, use_bias=bias), (9, 3)),
    (
        "SeparableConv2D",
        lambda bias: layers.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=bias),
        (7, 7, 3),
    ),
]


_BN_VARIANTS = [
    (True, True, True, 1e-3),
    (False, False, True, 0.01),
    (True, True, False, 0.3),
    (False, False, False, 1e-5),
    (True, False, True, 2.0),
]


@pytest.mark.parametrize(("bias", "center", "scale", "epsilon"), _BN_VARIANTS)
@pytest.mark.parametrize(("label", "make", "shape"), _FOLD_CASES, ids=[c[0] for c in _FOLD_CASES])
def test_batchnorm_folds_into_every_linear_layer_kind(
    label, make, shape, bias, center, scale, epsilon
) -> None:
    x = keras.Input(shape, name="x")
    layer = make(bias)
    h = layer(x)
    h = layers.BatchNormalization(center=center, scale=scale, epsilon=epsilon, name="bn")(h)
    with_activation = epsilon in (1e-3, 0.3)  # the one-step rule; the others exercise the two-step folds
    if with_activation:
        h = layers.Activation("tanh", name="out")(h)
    model = keras.Model(x, h)
    randomize_weights(model, seed=len(label))  # moving mean ~ N(0, 0.5), variance in [0.5, 1.5]
    bn = model.get_layer("bn")
    assert np.max(np.abs(bn.moving_mean.numpy())) > 0.05 and np.ptp(bn.moving_variance.numpy()) > 0.05
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", type(layer).__name__]
    rules = [a.rule for a in result.applications]
    expected = (
        "fold-batchnorm-and-activation" if with_activation else f"fold-batchnorm-into-{type(layer).__name__}"
    )
    assert rules == [expected]
    folded = result.model.get_layer(layer.name)
    assert folded.get_config()["use_bias"] is True
    assert folded.get_config()["activation"] == ("tanh" if with_activation else "linear")
    assert _relative_error(model, result.model, random_inputs(model, seed=3)) < RTOL


def test_batchnorm_folds_into_channels_first_conv_with_axis_1() -> None:
    x = keras.Input((3, 8, 8), name="x")
    h = layers.Conv2D(4, 3, data_format="channels_first", name="conv")(x)
    model = keras.Model(x, layers.BatchNormalization(axis=1, name="bn")(h))
    randomize_weights(model, seed=0)
    assert inference.why_not_folded(model, "bn") is None
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", "Conv2D"]
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


def test_fold_algebra_matches_keras_directly() -> None:
    conv = layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    bn = layers.BatchNormalization(epsilon=0.1)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    want_conv = conv(x)
    bn(want_conv)
    model = keras.Sequential([keras.Input((6, 6, 3)), conv, bn])
    randomize_weights(model, seed=1)
    want = bn(conv(x), training=False).numpy()
    kernel, bias = _algebra.fold_batchnorm(conv, bn)
    folded = layers.DepthwiseConv2D(3, depth_multiplier=2)
    folded.build(x.shape)
    folded.set_weights([kernel, bias])
    np.testing.assert_allclose(folded(x).numpy(), want, rtol=1e-5, atol=1e-5)


def _two_use_model() -> keras.Model:
    x = keras.Input((6, 6, 2), name="x")
    conv = layers.Conv2D(3, 3, padding="same", name="conv")(x)
    bn = layers.BatchNormalization(name="bn")(conv)
    return keras.Model(x, layers.Add(name="add")([bn, conv]))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_two_use_model, "also used outside"),
        (
            lambda: keras.Sequential(
                [
                    keras.Input((5,)),
                    layers.Dense(3, activation="relu", name="d"),
                    layers.BatchNormalization(name="bn"),
                ]
            ),
            "activation 'relu'",
        ),
        (
            lambda: keras.Sequential(
                [
                    keras.Input((4, 4, 2)),
                    layers.Conv2D(3, 1, name="c"),
                    layers.BatchNormalization(axis=1, name="bn"),
                ]
            ),
            "channels are on axis 3",
        ),
    ],
    ids=["escaping-output", "nonlinear-activation", "wrong-axis"],
)
def test_unfoldable_batchnorm_is_left_alone_with_a_reason(build, reason) -> None:
    model = build()
    randomize_weights(model, seed=2)
    why = inference.why_not_folded(model, "bn")
    assert why is not None and reason in why
    assert inference.foldable_batchnorms(model) == []
    result = _rewrite(model)
    assert "BatchNormalization" in _types(result.model)
    assert _relative_error(model, result.model, random_inputs(model, seed=1)) < RTOL


def _shared_and_training_model() -> keras.Model:
    x = keras.Input((5, 5, 2), name="x")
    conv = layers.Conv2D(2, 1, name="conv")
    a = layers.BatchNormalization(name="bn")(conv(x))
    b = conv(a)
    y = keras.Input((4,), name="y")
    d = layers.Dense(3, name="d")(y)
    t = layers.BatchNormalization(name="bn_train")(d, training=True)
    return keras.Model([x, y], [b, t])


def _quantized_model() -> keras.Model:
    x = keras.Input((6,), name="x")
    dense = layers.Dense(4, name="d")
    model = keras.Model(x, layers.BatchNormalization(name="bn")(dense(x)))
    randomize_weights(model, seed=3)
    dense.quantize("int8")
    return model


def _graph_output_model() -> keras.Model:
    x = keras.Input((6,), name="x")
    d = layers.Dense(3, name="d")(x)
    return keras.Model(x, [layers.BatchNormalization(name="bn")(d), d])


def _mixed_precision_model() -> keras.Model:
    x = keras.Input((6, 6, 2), name="x")
    h = layers.Conv2D(3, 3, name="conv", dtype="mixed_float16")(x)
    return keras.Model(x, layers.BatchNormalization(name="bn", dtype="float32")(h))


def _half_precision_batchnorm_model() -> keras.Model:
    x = keras.Input((5,), name="x")
    h = layers.Dense(3, name="d")(x)
    return keras.Model(x, layers.BatchNormalization(name="bn", dtype="mixed_float16")(h))


@pytest.mark.parametrize(
    ("build", "bn", "reason"),
    [
        (_two_use_model, "bn", "also used outside"),
        (_half_precision_batchnorm_model, "bn", "change the tensor's dtype"),
        (_graph_output_model, "bn", "as a model output"),
        (_shared_and_training_model, "bn", "shared"),
        (_shared_and_training_model, "bn_train", "training=True"),
        (_quantized_model, "bn", "quantized"),
        (_mixed_precision_model, "bn", "float16"),
    ],
    ids=["escaping", "bn-dtype", "graph-output", "shared", "training", "quantized", "mixed-precision"],
)
def test_every_fold_refusal_is_the_rules_check(build, bn, reason) -> None:
    """The reason comes from the fold rule's check (Rule.veto), never from inside the replacement."""
    model = build()
    graph = rewriter.lift(model)
    vetoes = [
        (rule.name, rule.veto(match))
        for rule in inference.BATCHNORM_RULES
        for match in rewriter.find(graph, rule.pattern)
        if match.captures["bn"] == bn
    ]
    assert len(vetoes) == 1, vetoes
    rule_name, veto = vetoes[0]
    assert veto is not None and reason in veto
    assert veto == inference.why_not_folded(model, bn)
    result = _rewrite(model)
    assert (rule_name, bn, veto) in result.vetoed
    assert bn in [layer.name for layer in result.model.layers]
    assert reason in result.report()


def test_lora_dense_folds_with_its_merged_kernel() -> None:
    x = keras.Input((6,), name="x")
    dense = layers.Dense(4, name="d")
    model = keras.Model(x, layers.BatchNormalization(name="bn")(dense(x)))
    dense.enable_lora(2)
    randomize_weights(model, seed=4)  # lora_kernel_b != 0: the adapter changes the output
    assert len(dense.weights) == 4
    result = _rewrite(model)
    folded = result.model.get_layer("d")
    assert _types(result.model) == ["InputLayer", "Dense"]
    assert folded.get_config().get("lora_rank") is None and len(folded.weights) == 2
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


def test_new_layers_are_built_from_the_computed_weights_without_random_initialization() -> None:
    def refuse(shape, dtype=None):
        raise AssertionError("random initialization should not run")

    x = keras.Input((3,))
    dense = layers.Dense(2, kernel_initializer=refuse, bias_initializer=refuse)
    kernel, bias = np.arange(6, dtype="float32").reshape(3, 2), np.array([1.0, -1.0], "float32")
    y = call_with_weights(dense, x, [kernel, bias])
    assert tuple(y.shape) == (None, 2)
    np.testing.assert_array_equal(dense.kernel.numpy(), kernel)
    np.testing.assert_array_equal(dense.bias.numpy(), bias)
    with pytest.raises(rewriter.RewriteError, match="2 weights"):
        call_with_weights(layers.Dense(2), x, [kernel])


def test_shared_conv_and_training_true_are_refused() -> None:
    model = _shared_and_training_model()
    assert inference.foldable_batchnorms(model) == []
    assert _rewrite(model).applications == []


# --------------------------------------------------------------------------- no-ops


@pytest.mark.parametrize(
    "noop",
    [
        layers.Dropout(0.5),
        layers.SpatialDropout1D(0.5),
        layers.GaussianNoise(1.0),
        layers.GaussianDropout(0.5),
        layers.AlphaDropout(0.5),
        layers.ActivityRegularization(l1=0.1),
        layers.Identity(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_inference_noops_are_removed(noop) -> None:
    x = keras.Input((4, 6), name="x")
    h = layers.Dense(6, name="d")(x)
    model = keras.Model(x, layers.Dense(2, name="head")(noop(h)))
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", "Dense", "Dense"]
    assert [a.rule for a in result.applications] == [f"remove-{type(noop).__name__}"]
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) == 0.0


def test_linear_activation_layers_are_removed_everywhere() -> None:
    x = keras.Input((4,), name="x")
    added = layers.Add(name="add")([x, x])
    model = keras.Model(x, layers.Dense(2, name="head")(layers.Activation("linear", name="lin")(added)))
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", "Add", "Dense"]
    assert [a.rule for a in result.applications] == ["remove-linear-Activation"]
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) == 0.0


def test_spatial_dropout_2d_3d_removed_and_mc_dropout_kept() -> None:
    x = keras.Input((4, 4, 2), name="x")
    h = layers.SpatialDropout2D(0.3)(x)
    h = layers.Reshape((2, 2, 4, 2))(h)
    h = layers.SpatialDropout3D(0.3)(h)
    kept = layers.Dropout(0.5, name="mc")(h, training=True)
    model = keras.Model(x, kept)
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", "Reshape", "Dropout"]


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (layers.ReLU(), "relu"),
        (layers.ReLU(max_value=6.0), "relu6"),
        (layers.Activation("gelu"), "gelu"),
        (layers.LeakyReLU(negative_slope=0.2), "leaky_relu"),
        (layers.ELU(), "elu"),
        (layers.Softmax(), "softmax"),
        (layers.LeakyReLU(negative_slope=0.3), None),
        (layers.ReLU(threshold=0.5), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, layers.Layer) else str(v),
)
def test_activation_layer_folds_into_linear_layer(act, expected) -> None:
    x = keras.Input((6, 6, 2), name="x")
    model = keras.Model(x, act(layers.Conv2D(3, 3, name="conv")(x)))
    randomize_weights(model, seed=5)
    result = _rewrite(model)
    if expected is None:
        assert len(result.model.layers) == 3
    else:
        assert _types(result.model) == ["InputLayer", "Conv2D"]
        assert result.model.get_layer("conv").get_config()["activation"] == expected
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


def test_conv_bn_relu_becomes_one_conv() -> None:
    x = keras.Input((6, 6, 2), name="x")
    h = layers.Conv2D(3, 3, use_bias=False, name="conv")(x)
    h = layers.Dropout(0.1)(h)
    h = layers.BatchNormalization()(h)
    model = keras.Model(x, layers.ReLU()(h))
    randomize_weights(model, seed=7)
    result = _rewrite(model)
    assert _types(result.model) == ["InputLayer", "Conv2D"]
    assert result.model.get_layer("conv").get_config()["activation"] == "relu"
    assert {a.rule for a in result.applications} == {
        "remove-Dropout",
        "fold-batchnorm-and-activation",
    }
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


# --------------------------------------------------------------------------- reshapes


def test_reshape_and_flatten_chains_merge() -> None:
    x = keras.Input((4, 3, 2), name="x")
    a = layers.Reshape((12, 2))(x)
    a = layers.Reshape((6, 4))(a)
    a = layers.Flatten(name="flat_a")(a)
    b = layers.Flatten()(x)
    b = layers.Reshape((2, 12), name="back")(b)
    c = layers.Reshape((4, 3, 2))(x)  # a no-op
    c = layers.Dense(2, name="d")(c)
    model = keras.Model(x, [a, b, c])
    randomize_weights(model, seed=0)
    result = _rewrite(model)
    assert sorted(_types(result.model)) == ["Dense", "Flatten", "InputLayer", "Reshape"]
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) == 0.0


def test_every_rule_is_function_preserving_and_named_uniquely() -> None:
    names = [rule.name for rule in inference.RULES]
    assert len(names) == len(set(names)) >= 20
    assert all(rule.function_preserving for rule in inference.RULES)


# --------------------------------------------------------------------------- keras.applications


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_applications_fold_every_batchnorm_and_keep_outputs(name: str) -> None:
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    randomize_batchnorm(model, seed=0)
    bn_before = _types(model).count("BatchNormalization")
    assert len(inference.foldable_batchnorms(model)) == bn_before > 40
    result = _rewrite(model)
    assert _types(result.model).count("BatchNormalization") == 0
    assert _types(result.model).count("Dropout") == 0
    assert inference.foldable_batchnorms(result.model) == []
    assert result.counts().get("fold-batchnorm-and-activation", 0) > 0
    assert result.model.count_params() < model.count_params()
    assert _relative_error(model, result.model, random_inputs(model, seed=1)) < RTOL


def test_one_step_fold_never_vetoes_and_leaves_refusals_to_the_two_step_rules() -> None:
    x = keras.Input((6, 6, 2), name="x")
    a = layers.BatchNormalization(name="bn_a")(layers.Conv2D(3, 3, name="conv_a")(x))
    a = layers.LeakyReLU(negative_slope=0.3, name="leaky")(a)  # no activation string: BN folds, act stays
    b = layers.BatchNormalization(name="bn_b")(layers.Conv2D(3, 3, name="conv_b")(x))
    c = layers.ReLU(name="relu_b")(b)
    model = keras.Model(x, [a, c, b])  # bn_b's output is also a model output: its ReLU cannot be fused
    randomize_weights(model, seed=8)
    result = _rewrite(model)
    assert result.counts() == {"fold-batchnorm-into-Conv2D": 2}
    assert not [v for v in result.vetoed if v[0] == "fold-batchnorm-and-activation"]
    assert any(v[0] == "fold-activation" and "also used elsewhere" in v[2] for v in result.vetoed)
    assert sorted(_types(result.model)) == ["Conv2D", "Conv2D", "InputLayer", "LeakyReLU", "ReLU"]
    assert _relative_error(model, result.model, random_inputs(model, seed=0)) < RTOL


def test_refusal_reasons_appear_in_the_report() -> None:
    model = _two_use_model()
    report = _rewrite(model).report()
    assert "fold-batchnorm-into-Conv2D" in report and "also used outside" in report


def test_mixed_precision_layers_are_not_folded() -> None:
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = keras.Input((6, 6, 2), name="x")
        h = layers.Conv2D(3, 3, name="conv")(x)
        h = layers.BatchNormalization(name="bn")(h)
        c = layers.Conv2D(3, 3, name="conv2")(x)
        a = layers.Activation("relu", dtype="float32", name="act")(c)
        model = keras.Model(x, [h, a])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert "float16" in inference.why_not_folded(model, "bn")
    result = _rewrite(model)
    assert result.applications == []
