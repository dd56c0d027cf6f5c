"""Tests of patterns.architecture: each parametrised rule on small models, plus a keras.applications check."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

import rewriter
from patterns import architecture
from tests.helpers import flat_outputs, random_inputs
from tests.patterns_models import layer_types, relative_error
from tests.strategies import randomize_weights

_types = layer_types
_max_relative = relative_error


def _cnn(seed: int = 0, size: int = 8) -> keras.Model:
    x = keras.Input((size, size, 3), name="x")
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.MaxPooling2D(name="pool")(h)
    h = layers.Conv2D(4, 3, padding="same", name="c2")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.ReLU(name="relu")(h)
    h = layers.Flatten(name="flat")(h)
    model = keras.Model(x, layers.Dense(3, activation="relu", name="head")(h), name="cnn")
    randomize_weights(model, seed)
    return model


# --------------------------------------------------------------------------- activations


def test_swap_activation_changes_arguments_and_relu_layers() -> None:
    model = _cnn()
    result = rewriter.rewrite(model, architecture.swap_activation("relu", "gelu"))
    new = result.model
    assert new.get_layer("c1").get_config()["activation"] == "gelu"
    assert new.get_layer("head").get_config()["activation"] == "gelu"
    assert isinstance(new.get_layer("relu"), layers.Activation)
    assert "ReLU" not in _types(new)
    np.testing.assert_array_equal(
        new.get_layer("c1").get_weights()[0], model.get_layer("c1").get_weights()[0]
    )
    assert _max_relative(model, new, random_inputs(model, seed=0)) > 1e-3  # the function did change


def test_swap_activation_rejects_a_loop_and_unknown_names() -> None:
    with pytest.raises(rewriter.RewriteError, match="never end"):
        architecture.swap_activation(("relu", "gelu"), "gelu")
    with pytest.raises(ValueError):
        architecture.swap_activation("relu", "no_such_activation")


@pytest.mark.slow
def test_swap_relu6_family_on_mobilenetv2() -> None:
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=4)
    assert "ReLU" in _types(model)
    result = rewriter.rewrite(model, architecture.swap_activation("relu6", "swish"))
    assert "ReLU" not in _types(result.model)
    activations = [layer for layer in result.model.layers if isinstance(layer, layers.Activation)]
    assert activations and all(layer.activation is keras.activations.swish for layer in activations)
    assert result.model.count_params() == model.count_params()
    out = flat_outputs(result.model, random_inputs(model, seed=0))[0]
    assert out.shape == (2, 4) and np.isfinite(out).all()


# --------------------------------------------------------------------------- separable convolutions


def test_separable_factorisation_is_the_best_rank_m_approximation() -> None:
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 5)).astype("float32")
    for m in (1, 2, 5):
        depthwise, pointwise = architecture.separable_from_conv_weights(kernel, m)
        rebuilt = np.einsum("hwim,im o->hwio".replace(" ", ""), depthwise, pointwise[0, 0].reshape(2, m, 5))
        error = np.linalg.norm(rebuilt - kernel)
        # Eckart-Young: the residual is the norm of the discarded singular values, channel by channel
        expected = np.sqrt(
            sum(
                float(np.sum(np.linalg.svd(kernel[:, :, i, :].reshape(9, 5), compute_uv=False)[m:] ** 2))
                for i in range(2)
            )
        )
        assert error == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_conv_to_separable_exact_with_full_depth_multiplier() -> None:
    model = _cnn()
    result = rewriter.rewrite(model, [architecture.conv_to_separable(depth_multiplier=9)])
    assert _types(result.model).count("SeparableConv2D") == 2 and "Conv2D" not in _types(result.model)
    assert _max_relative(model, result.model, random_inputs(model, seed=1)) < 1e-5


def test_conv_to_separable_rank_one_approximates() -> None:
    model = _cnn()
    result = rewriter.rewrite(model, [architecture.conv_to_separable()])
    assert result.model.count_params() < model.count_params()
    sep = result.model.get_layer("c1")
    assert isinstance(sep, layers.SeparableConv2D) and sep.get_config()["depth_multiplier"] == 1


# --------------------------------------------------------------------------- strided convolutions


def test_conv_pool_becomes_strided_conv() -> None:
    model = _cnn()
    result = rewriter.rewrite(model, [architecture.conv_pool_to_strided_conv()])
    assert "MaxPooling2D" not in _types(result.model)
    assert tuple(result.model.get_layer("c1").get_config()["strides"]) == (2, 2)
    assert result.reinitialized == []  # the downstream shapes are unchanged
    assert result.model.output_shape == model.output_shape
    np.testing.assert_array_equal(
        result.model.get_layer("c1").get_weights()[0], model.get_layer("c1").get_weights()[0]
    )


def test_conv_pool_refused_when_sizes_differ() -> None:
    model = _cnn(size=7)  # "same" conv keeps 7, pooling gives 3, a stride-2 "same" conv would give 4
    result = rewriter.rewrite(model, [architecture.conv_pool_to_strided_conv()])
    assert result.applications == []
    assert "MaxPooling2D" in _types(result.model)


# --------------------------------------------------------------------------- global pooling heads


def test_flatten_dense_becomes_global_pooling_dense() -> None:
    x = keras.Input((4, 4, 3), name="x")
    h = layers.Conv2D(5, 1, name="conv")(x)
    model = keras.Model(x, layers.Dense(2, name="head")(layers.Flatten(name="flat")(h)))
    randomize_weights(model, seed=3)
    result = rewriter.rewrite(model, [architecture.flatten_dense_to_global_pooling()])
    assert _types(result.model) == ["InputLayer", "Conv2D", "GlobalAveragePooling2D", "Dense"]
    assert result.model.get_layer("head").kernel.shape == (5, 2)
    assert result.model.count_params() < model.count_params()
    # documented property: equal on inputs that are constant over positions
    pixel = np.random.default_rng(0).normal(size=(2, 1, 1, 3)).astype("float32")
    constant = np.broadcast_to(pixel, (2, 4, 4, 3)).copy()
    assert _max_relative(model, result.model, constant) < 1e-5


# --------------------------------------------------------------------------- BatchNormalization


def test_insert_batchnorm_is_function_preserving_and_reaches_a_fixed_point() -> None:
    model = _cnn()
    result = rewriter.rewrite(model, [architecture.insert_batchnorm_after_convolutions()])
    types = _types(result.model)
    assert types.count("BatchNormalization") == 2  # c2 already had one
    assert result.model.get_layer("c1").get_config()["activation"] == "linear"
    assert result.model.get_layer("c1_act").get_config()["activation"] == "relu"
    assert _max_relative(model, result.model, random_inputs(model, seed=2)) < 1e-6
    again = rewriter.rewrite(result.model, [architecture.insert_batchnorm_after_convolutions()])
    assert again.applications == []


def test_insert_batchnorm_on_channels_first_uses_axis_1() -> None:
    x = keras.Input((2, 5, 5), name="x")
    model = keras.Model(x, layers.Conv2D(3, 3, data_format="channels_first", name="conv")(x))
    result = rewriter.rewrite(model, [architecture.insert_batchnorm_after_convolutions(["Conv2D"])])
    assert result.model.get_layer("conv_bn").get_config()["axis"] in (1, [1])


# --------------------------------------------------------------------------- residual connections


def test_add_residual_wraps_shape_preserving_blocks_once() -> None:
    x = keras.Input((6, 6, 4), name="x")
    h = layers.Conv2D(4, 3, padding="same", name="a")(x)
    h = layers.ReLU(name="ra")(h)
    h = layers.Conv2D(8, 3, padding="same", name="b")(h)  # changes the channel count: no residual
    h = layers.ReLU(name="rb")(h)
    model = keras.Model(x, h)
    randomize_weights(model, seed=4)
    rule = architecture.add_residual("Conv2D -> ReLU")
    result = rewriter.rewrite(model, [rule])
    assert _types(result.model).count("Add") == 1
    add = next(layer for layer in result.model.layers if isinstance(layer, layers.Add))
    assert {t._keras_history[0].name for t in add.input} == {"ra", "x"}
    np.testing.assert_array_equal(
        result.model.get_layer("a").get_weights()[0], model.get_layer("a").get_weights()[0]
    )
    again = rewriter.rewrite(result.model, [rule])
    assert again.applications == []


def test_inserted_batchnorms_fold_back_into_the_convolutions() -> None:
    from patterns import inference

    model = _cnn()
    with_bn = rewriter.rewrite(model, [architecture.insert_batchnorm_after_convolutions()]).model
    back = rewriter.rewrite(with_bn, inference.RULES).model
    assert "BatchNormalization" not in _types(back)
    assert _types(back) == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense"]
    assert _max_relative(model, back, random_inputs(model, seed=5)) < 1e-5


@pytest.mark.slow
def test_architecture_rules_on_vgg16() -> None:
    model = keras.applications.VGG16(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )
    x = random_inputs(model, seed=0)
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, layers.MaxPooling2D)]
    # head and pooling: the 1x1x512 map makes Flatten and global pooling the same, so the head is exact
    head = rewriter.rewrite(
        model, [architecture.flatten_dense_to_global_pooling(), architecture.conv_pool_to_strided_conv()]
    )
    types = _types(head.model)
    assert "Flatten" not in types and "GlobalAveragePooling2D" in types
    assert types.count("MaxPooling2D") == 0 and len(head.applications) == 1 + len(pools)
    assert head.model.output_shape == model.output_shape
    only_head = rewriter.rewrite(model, [architecture.flatten_dense_to_global_pooling()]).model
    assert _max_relative(model, only_head, x) < 1e-5
    # identity BatchNorms after every convolution: function-preserving (rewrite verifies it too)
    with_bn = rewriter.rewrite(model, [architecture.insert_batchnorm_after_convolutions()]).model
    assert _types(with_bn).count("BatchNormalization") == len(convs)
    assert _max_relative(model, with_bn, x) < 1e-5
    # residuals around every shape-preserving convolution, counted independently
    same = sum(1 for layer in convs if layer.input.shape == layer.output.shape)
    residual = rewriter.rewrite(model, [architecture.add_residual("Conv2D")]).model
    assert _types(residual).count("Add") == same > 0


def test_parameters_of_the_rules_change_their_effect() -> None:
    x = keras.Input((8, 8, 3), name="x")
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = layers.AveragePooling2D(2, name="avg")(h)
    h = layers.Conv2D(4, 3, padding="same", activation="relu6", name="c2")(h)
    model = keras.Model(x, layers.ReLU(max_value=6.0, name="r6")(h))
    randomize_weights(model, seed=6)
    # several activations at once, ReLU layers included
    swapped = rewriter.rewrite(model, architecture.swap_activation(("relu", "relu6"), "tanh")).model
    assert swapped.get_layer("c1").get_config()["activation"] == "tanh"
    assert swapped.get_layer("c2").get_config()["activation"] == "tanh"
    assert swapped.get_layer("r6").get_config()["activation"] == "tanh"
    # average pooling is a pooling the strided-convolution rule takes; restricting `pools` excludes it
    strided = rewriter.rewrite(model, [architecture.conv_pool_to_strided_conv()])
    assert "AveragePooling2D" not in _types(strided.model)
    only_max = rewriter.rewrite(model, [architecture.conv_pool_to_strided_conv(pools=["MaxPooling2D"])])
    assert only_max.applications == []
    # before_activation=False keeps the activation on the convolution, the BN goes after it
    after = rewriter.rewrite(
        model, [architecture.insert_batchnorm_after_convolutions(["Conv2D"], before_activation=False)]
    ).model
    assert after.get_layer("c1").get_config()["activation"] == "relu"
    assert "c1_act" not in [layer.name for layer in after.layers]
    assert _types(after).count("BatchNormalization") == 2
    assert _max_relative(model, after, random_inputs(model, seed=0)) < 1e-5
    # add_residual takes any pattern and a rule name
    rule = architecture.add_residual("Conv2D -> ReLU", name="res")
    assert rule.name == "res"
    assert rewriter.rewrite(model, [rule]).counts() == {"res": 1}
