"""The weight algebra behind the rule library, as pure functions of Keras layers and numpy arrays.

Nothing here touches a graph or a model: each function reads a layer's config and weights and returns
new arrays (or the reason why it cannot). The rule modules (`patterns.inference`,
`patterns.architecture`, `patterns.mutations`) call these and only wire the results into a graph.

BatchNormalization folding (inference mode). For a channel ``c`` BatchNormalization computes::

    y_c = gamma_c * (x_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c * x_c + t_c
    s_c = gamma_c / sqrt(var_c + eps)          (gamma_c = 1 when scale=False)
    t_c = beta_c - s_c * mean_c                (beta_c = 0 when center=False)

If ``x_c = sum(W[..., c] * patch) + b_c`` is a linear layer's output channel ``c``, then
``y_c = sum((s_c * W[..., c]) * patch) + (s_c * b_c + t_c)``: scale the kernel's output-channel slice by
``s_c`` and set the bias to ``s_c * b + t`` (``b = 0`` without bias). Where output channel ``c`` lives in
the kernel depends on the layer: last axis for Dense and ConvND ``(..., in, out)``, second to last for
ConvNDTranspose ``(..., out, in)``, and for DepthwiseConvND ``(..., in, depth_multiplier)`` output channel
``c = i * depth_multiplier + m`` so ``s`` is reshaped to ``(in, depth_multiplier)``.

Net2WiderNet (Chen et al., 2016). Widen layer ``L`` from ``n`` to ``q > n`` units with a mapping
``g: {0..q-1} -> {0..n-1}`` (``g(j) = j`` for ``j < n``, random otherwise): unit ``j`` of the new layer
copies unit ``g(j)`` (kernel slice and bias), every per-channel layer in between copies its per-channel
parameters the same way, and the next linear layer's incoming weights for unit ``j`` are those of
``g(j)`` divided by ``|{k : g(k) = g(j)}|``. The replicas carry equal values, so their shares sum to the
original contribution: the function is unchanged.

Net2DeeperNet. Insert a layer initialised to the identity (Dense: identity matrix and zero bias; ConvND:
a delta kernel, identity over channels at the centre tap, "same" padding, stride 1). With a linear
activation that is exact; with ReLU it is exact when its input is already non-negative (``relu(relu(x)) ==
relu(x)``), which holds when the preceding layer ends in ReLU.

Example:
    >>> import keras, numpy as np
    >>> conv = keras.layers.Conv2D(4, 3)
    >>> conv.build((None, 8, 8, 3))
    >>> bn = keras.layers.BatchNormalization()
    >>> bn.build((None, 6, 6, 4))
    >>> kernel, bias = fold_batchnorm(conv, bn)
    >>> kernel.shape, bias.shape
    ((3, 3, 3, 4), (4,))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ACTIVATION_LAYER_NAMES",
    "BN_FOLDABLE_TYPES",
    "activation_of_layer",
    "batchnorm_fold_problem",
    "batchnorm_scale_shift",
    "channel_axis",
    "conv_rank",
    "fold_batchnorm",
    "folded_config",
    "identity_weights",
    "merged_reshape_target",
    "net2wider_incoming",
    "net2wider_mapping",
    "net2wider_outgoing",
    "replicate_channels",
]

#: Layer classes whose output channel is a linear function of the kernel, so a following BN folds in.
BN_FOLDABLE_TYPES: tuple[str, ...] = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
)

_LINEAR = (None, "linear")

#: Activation layer classes that `activation_of_layer` can express as an activation string.
ACTIVATION_LAYER_NAMES: tuple[str, ...] = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")


def conv_rank(op_type: str) -> int:
    """Number of spatial dimensions of a layer class (0 for Dense).

    Example:
        >>> conv_rank("Conv2DTranspose"), conv_rank("Dense")
        (2, 0)
    """
    for rank in (1, 2, 3):
        if f"{rank}D" in op_type:
            return rank
    return 0


def channel_axis(op_type: str, config: dict[str, Any], output_rank: int) -> int:
    """The (non-negative) axis of the layer's output that holds its channels / units.

    Args:
        op_type: Layer class name.
        config: The layer's config (``data_format`` is read for convolutions).
        output_rank: Rank of the layer's output, batch axis included.

    Example:
        >>> channel_axis("Conv2D", {"data_format": "channels_first"}, 4)
        1
    """
    if op_type != "Dense" and config.get("data_format") == "channels_first":
        return 1
    return output_rank - 1


def batchnorm_scale_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``(s, t)`` with ``bn(x) == s * x + t`` in inference mode, in float64.

    Args:
        bn: A built ``keras.layers.BatchNormalization``.

    Example:
        >>> s, t = batchnorm_scale_shift(bn)  # doctest: +SKIP
    """
    mean = np.asarray(bn.moving_mean.numpy(), dtype=np.float64)
    var = np.asarray(bn.moving_variance.numpy(), dtype=np.float64)
    gamma = np.asarray(bn.gamma.numpy(), dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), dtype=np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(bn.epsilon))
    return scale, beta - scale * mean


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _bn_axes(bn_config: dict[str, Any], rank: int) -> list[int]:
    axis = bn_config.get("axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return sorted(int(a) % rank for a in axes)


def batchnorm_fold_problem(
    op_type: str,
    config: dict[str, Any],
    bn_config: dict[str, Any],
    output_rank: int,
) -> str | None:
    """Why a BatchNormalization cannot be folded into the layer before it, or None when it can.

    This checks the layers alone; whether the layer's output is also used elsewhere is a graph question
    the rule's check answers.

    Args:
        op_type: Class name of the layer before the BN.
        config: That layer's config.
        bn_config: The BN's config.
        output_rank: Rank of the layer's output (batch axis included).

    Example:
        >>> batchnorm_fold_problem("Conv2D", {"activation": "relu"}, {"axis": -1}, 4)
        "the Conv2D has activation 'relu' between its linear part and the BatchNormalization"
    """
    if op_type not in BN_FOLDABLE_TYPES:
        kinds = ", ".join(BN_FOLDABLE_TYPES)
        return f"{op_type} is not a layer BatchNormalization folds into (one of {kinds})"
    activation = config.get("activation")
    if activation not in _LINEAR:
        return (
            f"the {op_type} has activation {activation!r} between its linear part and the BatchNormalization"
        )
    if config.get("groups", 1) not in (1, None) and op_type.endswith("Transpose"):
        return f"grouped {op_type} is not supported"
    wanted = channel_axis(op_type, config, output_rank)
    axes = _bn_axes(bn_config, output_rank)
    if axes != [wanted]:
        return (
            f"the BatchNormalization normalizes axis {bn_config.get('axis')!r} of a rank-{output_rank} "
            f"tensor, but the {op_type}'s channels are on axis {wanted}; only a per-channel BN folds"
        )
    return None


def _out_axis(op_type: str) -> int:
    return -2 if op_type.endswith("Transpose") else -1


def fold_batchnorm(layer: Any, bn: Any) -> list[np.ndarray]:
    """The weights of ``layer`` with ``bn`` folded in, in the weight order of `folded_config`'s layer.

    Args:
        layer: A built Dense / ConvND / ConvNDTranspose / DepthwiseConvND / SeparableConvND layer with a
            linear activation (see `batchnorm_fold_problem`).
        bn: A built BatchNormalization over that layer's channel axis.

    Returns:
        ``[kernel, bias]``, or ``[depthwise_kernel, pointwise_kernel, bias]`` for a separable convolution,
        in the dtype of the layer's kernel. The bias always exists (``use_bias=True`` in the folded layer).

    Example:
        >>> kernel, bias = fold_batchnorm(dense, bn)  # doctest: +SKIP
    """
    op_type = type(layer).__name__
    scale, shift = batchnorm_scale_shift(bn)
    bias = (
        np.asarray(_numpy(layer.bias), dtype=np.float64)
        if getattr(layer, "bias", None) is not None
        else np.zeros_like(scale)
    )
    new_bias = scale * bias + shift
    if op_type.startswith("SeparableConv"):
        depthwise = _numpy(layer.depthwise_kernel)
        pointwise = _numpy(layer.pointwise_kernel)
        dtype = pointwise.dtype
        folded = pointwise * scale.astype(dtype)
        return [depthwise, folded.astype(dtype, copy=False), new_bias.astype(dtype)]
    kernel = _numpy(layer.kernel)  # with LoRA enabled: the merged kernel
    dtype = kernel.dtype
    # s in float64, rounded once to the kernel's dtype: the product is within 2 ulp of the exact W * s
    # (float64 for the whole kernel would cost a float64 copy of every big kernel for 1 ulp)
    factor = scale.astype(dtype)
    if op_type.startswith("DepthwiseConv"):
        in_channels, multiplier = kernel.shape[-2], kernel.shape[-1]
        folded = kernel * factor.reshape(in_channels, multiplier)
    else:
        axis = _out_axis(op_type)
        shape = [1] * kernel.ndim
        shape[axis] = scale.shape[0]
        folded = kernel * factor.reshape(shape)
    return [folded.astype(dtype, copy=False), new_bias.astype(dtype)]


def folded_config(config: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """A copy of a layer config with a bias (where BN's shift goes), no LoRA adapter, optionally renamed.

    `fold_batchnorm` reads ``layer.kernel``, which already includes a LoRA update, so the folded layer
    carries the merged kernel and needs no adapter.

    Example:
        >>> folded_config({"name": "c", "use_bias": False})["use_bias"]
        True
    """
    new = dict(config)
    new["use_bias"] = True
    for key in ("lora_rank", "lora_alpha"):  # the fold reads the merged kernel (LoRA update included)
        if key in new:
            new[key] = None
    if name is not None:
        new["name"] = name
    return new


# --------------------------------------------------------------------------- activations


def activation_of_layer(op_type: str, config: dict[str, Any]) -> str | None:
    """The activation string equivalent to a standalone activation layer, or None if there is none.

    ``ReLU()`` is ``"relu"``, ``ReLU(max_value=6)`` is ``"relu6"``, ``LeakyReLU(0.2)`` is ``"leaky_relu"``
    (Keras's default slope), ``ELU(alpha=1)`` is ``"elu"``, ``Softmax(axis=-1)`` is ``"softmax"`` and
    ``Activation(a)`` is ``a`` when it is a string.

    Example:
        >>> activation_of_layer("ReLU", {"max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0})
        'relu6'
    """
    if op_type == "Activation":
        activation = config.get("activation")
        return activation if isinstance(activation, str) else None
    if op_type == "ReLU":
        slope = float(config.get("negative_slope") or 0.0)
        threshold = float(config.get("threshold") or 0.0)
        max_value = config.get("max_value")
        if slope != 0.0 or threshold != 0.0:
            return None
        if max_value is None:
            return "relu"
        return "relu6" if float(max_value) == 6.0 else None
    if op_type == "LeakyReLU":
        slope = config.get("negative_slope", config.get("alpha"))
        return "leaky_relu" if slope is not None and abs(float(slope) - 0.2) < 1e-12 else None
    if op_type == "ELU":
        return "elu" if float(config.get("alpha", 1.0)) == 1.0 else None
    if op_type == "Softmax":
        axis = config.get("axis", -1)
        return "softmax" if axis in (-1, [-1], (-1,)) else None
    return None


# --------------------------------------------------------------------------- reshapes


def merged_reshape_target(
    first_type: str,
    second_type: str,
    second_config: dict[str, Any],
    output_shape: Sequence[int | None],
) -> tuple[str, tuple[int, ...]] | None:
    """The single layer equivalent to ``second(first(x))`` for two Reshape/Flatten layers.

    A reshape only depends on the element order, which neither layer changes (channels_last Flatten),
    so the pair is the last layer's reshape applied directly: a Flatten when the second one is a
    Flatten, otherwise a Reshape to the second one's target shape.

    Returns:
        ``("Flatten", ())`` or ``("Reshape", target_shape)``; None when a channels_first Flatten (which
        transposes) is involved.

    Example:
        >>> merged_reshape_target("Flatten", "Reshape", {"target_shape": (4, 2)}, (None, 4, 2))
        ('Reshape', (4, 2))
    """
    del output_shape
    for op_type, config in ((first_type, {}), (second_type, second_config)):
        if op_type not in ("Reshape", "Flatten"):
            return None
        if op_type == "Flatten" and config.get("data_format") == "channels_first":
            return None
    if second_type == "Flatten":
        return ("Flatten", ())
    return ("Reshape", tuple(int(d) for d in second_config["target_shape"]))


# --------------------------------------------------------------------------- Net2Net


def net2wider_mapping(units: int, new_units: int, rng: np.random.Generator) -> np.ndarray:
    """The Net2WiderNet replication map ``g``: identity on the first ``units``, random after.

    Example:
        >>> net2wider_mapping(3, 5, np.random.default_rng(0)).tolist()[:3]
        [0, 1, 2]
    """
    if new_units < units:
        raise ValueError(f"Net2WiderNet widens: new_units={new_units} < units={units}.")
    extra = rng.integers(0, units, size=new_units - units)
    return np.concatenate([np.arange(units), extra]).astype(np.int64)


def replicate_channels(array: np.ndarray, mapping: np.ndarray, axis: int = -1) -> np.ndarray:
    """Copy channel ``mapping[j]`` of ``array`` (along ``axis``) into channel ``j`` of the result.

    Example:
        >>> replicate_channels(np.array([1.0, 2.0]), np.array([0, 1, 1])).tolist()
        [1.0, 2.0, 2.0]
    """
    return np.take(array, mapping, axis=axis)


def net2wider_outgoing(op_type: str, weights: Sequence[np.ndarray], mapping: np.ndarray) -> list[np.ndarray]:
    """Weights of the widened layer itself: replicate its output units (kernel slices and bias).

    Args:
        op_type: ``"Dense"`` or ``"ConvND"``; kernels ``(..., in, out)``.
        weights: ``[kernel]`` or ``[kernel, bias]``.
        mapping: The map from `net2wider_mapping`.

    Example:
        >>> mapping = np.array([0, 1, 2, 0])
        >>> [w.shape for w in net2wider_outgoing("Dense", [np.ones((2, 3)), np.ones(3)], mapping)]
        [(2, 4), (4,)]
    """
    del op_type
    out = [replicate_channels(weights[0], mapping, axis=-1)]
    out.extend(replicate_channels(w, mapping, axis=0) for w in weights[1:])
    return out


def net2wider_incoming(
    kernel: np.ndarray,
    mapping: np.ndarray,
    *,
    in_axis: int = -2,
    positions: int = 1,
) -> np.ndarray:
    """The next layer's kernel for widened inputs: replicate rows and divide by replica counts.

    Args:
        kernel: The consumer's kernel; its input channels are on ``in_axis`` (``-2`` for Dense and ConvND).
        mapping: The map from `net2wider_mapping` (length: the new channel count).
        in_axis: Axis of the kernel that indexes input features.
        positions: For a Dense after a channels_last Flatten: how many spatial positions each channel
            repeats over (the kernel's rows are ``(positions, channels)`` in C order).

    Example:
        >>> net2wider_incoming(np.ones((2, 1)), np.array([0, 1, 1])).ravel().tolist()
        [1.0, 0.5, 0.5]
    """
    counts = np.bincount(mapping, minlength=int(mapping.max()) + 1).astype(np.float64)
    factor = 1.0 / counts[mapping]
    axis = in_axis % kernel.ndim
    if positions == 1:
        taken = np.take(kernel.astype(np.float64), mapping, axis=axis)
        shape = [1] * kernel.ndim
        shape[axis] = mapping.shape[0]
        return (taken * factor.reshape(shape)).astype(kernel.dtype)
    old_channels = kernel.shape[axis] // positions
    split = (*kernel.shape[:axis], positions, old_channels, *kernel.shape[axis + 1 :])
    grid = kernel.astype(np.float64).reshape(split)
    taken = np.take(grid, mapping, axis=axis + 1)
    shape = [1] * taken.ndim
    shape[axis + 1] = mapping.shape[0]
    taken = taken * factor.reshape(shape)
    merged = (*kernel.shape[:axis], positions * mapping.shape[0], *kernel.shape[axis + 1 :])
    return taken.reshape(merged).astype(kernel.dtype)


def identity_weights(
    op_type: str, channels: int, kernel_size: int | Sequence[int] = 1, dtype: str = "float32"
) -> list[np.ndarray]:
    """Net2DeeperNet weights: ``[kernel, bias]`` of a Dense or ConvND that computes the identity.

    A ConvND kernel is zero except the centre tap, which is the identity over channels; use it with
    ``padding="same"``, ``strides=1`` and odd kernel sizes.

    Example:
        >>> kernel, bias = identity_weights("Conv2D", 2, 3)
        >>> kernel.shape, float(kernel[1, 1].trace())
        ((3, 3, 2, 2), 2.0)
    """
    rank = conv_rank(op_type)
    eye = np.eye(channels, dtype=dtype)
    bias = np.zeros(channels, dtype=dtype)
    if rank == 0:
        return [eye, bias]
    sizes = (kernel_size,) * rank if isinstance(kernel_size, int) else tuple(kernel_size)
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(f"An identity convolution needs odd kernel sizes; got {sizes}.")
    kernel = np.zeros((*sizes, channels, channels), dtype=dtype)
    kernel[tuple(k // 2 for k in sizes)] = eye
    return [kernel, bias]
