"""Architecture edits as parametrised rules: each factory returns rules for `rewriter.rewrite`.

Effects and reasoning, factory by factory:

`swap_activation(old, new)`
    Every layer whose ``activation`` is one of ``old`` (Dense, ConvND, ... and ``Activation`` layers) gets
    ``new`` instead, with its weights; a ``ReLU`` layer (plain, or ``max_value=6`` for ``"relu6"``) becomes
    ``Activation(new)``. Changes the function (by design). ``new`` must not be in ``old`` (the rules would
    never reach a fixed point).

`conv_to_separable(depth_multiplier=1)`
    ``Conv2D(f, k)`` becomes ``SeparableConv2D(f, k, depth_multiplier=m)`` with the same strides, padding,
    dilation, activation and bias. Weights: the best rank-``m`` approximation of the kernel, per input
    channel ``i``. A separable convolution computes ``sum_i conv(x_i, sum_j D[:, :, i, j] P[i*m + j, :])``,
    i.e. it restricts each input channel's ``(k*k, f)`` kernel slice ``W_i`` to rank ``m``; the truncated
    SVD ``W_i ~ U_m S_m V_m^T`` gives ``D[:, :, i, :] = U_m sqrt(S_m)`` and
    ``P[i*m:(i+1)*m, :] = sqrt(S_m) V_m^T`` (Eckart-Young: the closest in Frobenius norm). Exact when
    ``m >= min(k*k, f)`` (always for 1x1 kernels).

`conv_pool_to_strided_conv()`
    ``Conv2D(stride 1) -> MaxPooling2D/AveragePooling2D(p, strides p)`` becomes one ``Conv2D(strides=p)``
    with the convolution's weights: the convolution is evaluated only where the pooling window starts
    instead of pooling over every position (the classic "all-convolutional" simplification; it changes the
    function and saves the pooling and ``p*p - 1`` of every ``p*p`` convolution evaluations). Refused when
    the output size would differ (an input size not divisible by ``p`` with "same" padding, for example).

`flatten_dense_to_global_pooling()`
    ``Flatten -> Dense`` on a ``(batch, *spatial, C)`` tensor becomes ``GlobalAveragePoolingND -> Dense``.
    With ``K_p`` the rows of the Dense kernel for position ``p``, the new kernel is ``sum_p K_p``: since the
    pooled input is ``mean_p x_p``, the head gives the same result as before on inputs that are constant
    over positions, and it is translation invariant; the parameter count drops by a factor ``P``.

`insert_batchnorm_after_convolutions(kinds, before_activation=True)`
    After every convolution not already followed by a BatchNormalization, a BatchNormalization over its
    channel axis initialised to the identity in inference mode (``gamma = 1, beta = 0, mean = 0,
    var = 1 - eps``, so ``sqrt(var + eps) = 1``). With ``before_activation`` a non-linear activation is
    moved after the BN: ``Conv(act)`` becomes ``Conv -> BN -> Activation(act)``. Function-preserving.

`add_residual(pattern)`
    Every match of ``pattern`` (one input, one output of the input's shape and dtype) is wrapped as
    ``Add([block(x), x])``: a residual connection around a shape-preserving block, keeping the block's
    weights. A block whose output is already added to its input is left alone.

Example:
    >>> import rewriter
    >>> from patterns import architecture
    >>> rules = [*architecture.swap_activation("relu", "swish"), architecture.conv_to_separable()]
    >>> result = rewriter.rewrite(model, rules)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from patterns import _algebra
from patterns._graph_tools import call_with_weights, escapes, is_shared, rebuilt_call
from rewriter.errors import RewriteError
from rewriter.graph import Port
from rewriter.pattern import Pattern, as_pattern, one_of, op
from rewriter.rules import Rule, RuleSet, residual

__all__ = [
    "ACTIVATION_HOSTS",
    "CONVOLUTIONS",
    "add_residual",
    "conv_pool_to_strided_conv",
    "conv_to_separable",
    "flatten_dense_to_global_pooling",
    "insert_batchnorm_after_convolutions",
    "separable_from_conv_weights",
    "swap_activation",
]

#: Layer classes that carry an ``activation`` argument.
ACTIVATION_HOSTS: tuple[str, ...] = (*_algebra.BN_FOLDABLE_TYPES, "EinsumDense", "Activation")

#: Convolution classes `insert_batchnorm_after_convolutions` handles by default.
CONVOLUTIONS: tuple[str, ...] = (
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "SeparableConv1D",
    "SeparableConv2D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)


# ----------------------------------------------------------------------------- activation family


def _canonical(name: str) -> str:
    """The name Keras writes into configs for activation ``name`` (raises for an unknown name)."""
    return str(keras.activations.serialize(keras.activations.get(name)))


def swap_activation(old: str | Sequence[str] = "relu", new: str = "swish") -> RuleSet:
    """Rules that replace activation(s) ``old`` by ``new`` everywhere (layers' and standalone ones).

    Args:
        old: An activation name or several (``("relu", "relu6")``).
        new: The activation name to use instead (``"swish"``, ``"gelu"`` ...).

    Returns:
        A `RuleSet` (one rule for ``activation=`` arguments, one for ReLU layers when relevant).

    Raises:
        RewriteError: ``new`` is among ``old``.

    Example:
        >>> rewriter.rewrite(model, swap_activation("relu", "gelu")).model  # doctest: +SKIP
    """
    given = (old,) if isinstance(old, str) else tuple(old)
    label = "-".join(given)
    # configs store the canonical name ("swish" is serialized as "silu"): match both spellings
    olds = tuple(dict.fromkeys([*given, *(_canonical(a) for a in given)]))
    if new in olds or _canonical(new) in olds:
        raise RewriteError(f"swap_activation: new={new!r} is among old={given!r}; the swap would never end.")

    def replace_argument(match: Any, x: Any) -> Any:
        return rebuilt_call(match["layer"], x, activation=new)

    rules = [
        Rule(
            f"swap-activation-{label}-to-{new}",
            Pattern(op(list(ACTIVATION_HOSTS), activation=one_of(*olds)).named("layer")),
            replace_argument,
        )
    ]
    relu_forms = {"relu": None, "relu6": 6.0}
    wanted = [relu_forms[a] for a in olds if a in relu_forms]
    if wanted:

        def plain(node: Any) -> bool:
            config = node.config or {}
            if float(config.get("negative_slope") or 0.0) or float(config.get("threshold") or 0.0):
                return False
            max_value = config.get("max_value")
            return (None if max_value is None else float(max_value)) in wanted

        def replace_layer(match: Any, x: Any) -> Any:
            return keras.layers.Activation(new, name=match["relu"].name)(x)

        rules.append(
            Rule(
                f"swap-ReLU-layer-to-{new}",
                Pattern(op("ReLU").named("relu").where(plain, f"is {label}")),
                replace_layer,
            )
        )
    return RuleSet(rules)


# ----------------------------------------------------------------------------- separable convolutions


def separable_from_conv_weights(kernel: np.ndarray, depth_multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise and pointwise kernels whose separable convolution best approximates ``kernel``.

    Args:
        kernel: A Conv2D kernel ``(kh, kw, in, out)``.
        depth_multiplier: ``m``: rank kept per input channel.

    Returns:
        ``(depthwise (kh, kw, in, m), pointwise (1, 1, in * m, out))``.

    Example:
        >>> d, p = separable_from_conv_weights(np.ones((3, 3, 2, 4), "float32"), 1)
        >>> d.shape, p.shape
        ((3, 3, 2, 1), (1, 1, 2, 4))
    """
    kh, kw, channels, filters = kernel.shape
    m = depth_multiplier
    depthwise = np.zeros((kh, kw, channels, m), np.float64)
    pointwise = np.zeros((1, 1, channels * m, filters), np.float64)
    for i in range(channels):
        matrix = kernel[:, :, i, :].reshape(kh * kw, filters).astype(np.float64)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = min(m, s.shape[0])
        root = np.sqrt(s[:rank])
        depthwise[:, :, i, :rank] = (u[:, :rank] * root).reshape(kh, kw, rank)
        pointwise[0, 0, i * m : i * m + rank, :] = root[:, None] * vt[:rank]
    return depthwise.astype(kernel.dtype), pointwise.astype(kernel.dtype)


def conv_to_separable(*, depth_multiplier: int = 1) -> Rule:
    """A rule replacing each Conv2D by a SeparableConv2D initialised to its best approximation.

    Args:
        depth_multiplier: Depthwise channels per input channel (rank of the approximation).

    Example:
        >>> rewriter.rewrite(model, [conv_to_separable(depth_multiplier=2)])  # doctest: +SKIP
    """

    def check(match: Any) -> str | None:
        config = match.node("conv").config or {}
        if config.get("groups", 1) != 1:
            return "grouped convolution"
        return None

    def replacement(match: Any, x: Any) -> Any:
        conv = match["conv"]
        config = conv.get_config()
        separable = keras.layers.SeparableConv2D(
            config["filters"],
            config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
            depth_multiplier=depth_multiplier,
            activation=config["activation"],
            use_bias=config["use_bias"],
            name=conv.name,
        )
        depthwise, pointwise = separable_from_conv_weights(np.asarray(conv.kernel.numpy()), depth_multiplier)
        weights = [depthwise, pointwise]
        if config["use_bias"]:
            weights.append(np.asarray(conv.bias.numpy()))
        return call_with_weights(separable, x, weights)

    return Rule(
        f"conv2d-to-separable-x{depth_multiplier}",
        Pattern(op("Conv2D").named("conv")),
        replacement,
        check=check,
    )


# ----------------------------------------------------------------------------- strided convolutions


def _conv_length(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def conv_pool_to_strided_conv(*, pools: Sequence[str] = ("MaxPooling2D", "AveragePooling2D")) -> Rule:
    """A rule turning ``Conv2D -> Pooling2D(p, strides=p)`` into one ``Conv2D(strides=p)``.

    Example:
        >>> rewriter.rewrite(model, [conv_pool_to_strided_conv()])  # doctest: +SKIP
    """

    def check(match: Any) -> str | None:
        conv, pool = match.node("conv"), match.node("pool")
        cconf, pconf = conv.config or {}, pool.config or {}
        if any(s != 1 for s in cconf.get("strides", (1, 1))) or any(
            d != 1 for d in cconf.get("dilation_rate", (1, 1))
        ):
            return f"{conv.name!r} already has strides or dilation"
        pool_size, strides = tuple(pconf.get("pool_size", ())), tuple(pconf.get("strides") or ())
        if pool_size != strides or len(set(pool_size)) != 1:
            return (
                f"{pool.name!r} has pool_size {pool_size} and strides {strides}; they must be equal squares"
            )
        if cconf.get("data_format") == "channels_first" or pconf.get("data_format") == "channels_first":
            return "channels_first is not supported"
        if escapes(match.graph, conv.name, pool.name):
            return f"the output of {conv.name!r} is also used elsewhere"
        size_in = conv.input_specs[0].shape[1:3]
        want = pool.output_specs[0].shape[1:3]
        if None in size_in:
            return "unknown spatial size"
        got = tuple(
            _conv_length(n, k, pool_size[0], cconf["padding"])
            for n, k in zip(size_in, cconf["kernel_size"], strict=True)
        )
        if got != tuple(want):
            return f"a strided convolution would give spatial size {got}, the pooling gives {tuple(want)}"
        return None

    def replacement(match: Any, x: Any) -> Any:
        pool_size = tuple((match.node("pool").config or {})["pool_size"])
        return rebuilt_call(match["conv"], x, strides=pool_size)

    return Rule(
        "conv-pool-to-strided-conv",
        Pattern(op("Conv2D").named("conv") >> op(list(pools)).named("pool")),
        replacement,
        check=check,
    )


# ----------------------------------------------------------------------------- global pooling heads


def flatten_dense_to_global_pooling() -> Rule:
    """A rule replacing ``Flatten -> Dense`` on feature maps by ``GlobalAveragePoolingND -> Dense``.

    Example:
        >>> rewriter.rewrite(model, [flatten_dense_to_global_pooling()])  # doctest: +SKIP
    """

    def check(match: Any) -> str | None:
        flatten, dense = match.node("flatten"), match.node("dense")
        shape = flatten.input_specs[0].shape
        if len(shape) not in (3, 4, 5) or None in shape[1:]:
            return f"{flatten.name!r} flattens a {shape} tensor; a (batch, *spatial, channels) one is needed"
        if (flatten.config or {}).get("data_format") == "channels_first":
            return "channels_first Flatten"
        if dense.input_specs[0].rank != 2:
            return "the Dense does not read the flat vector"
        if escapes(match.graph, flatten.name, dense.name):
            return f"the output of {flatten.name!r} is also used elsewhere"
        return None

    def replacement(match: Any, x: Any) -> Any:
        flatten = match.node("flatten")
        dense = match["dense"]
        shape = flatten.input_specs[0].shape
        rank = len(shape) - 2
        pooling = getattr(keras.layers, f"GlobalAveragePooling{rank}D")(name=f"{flatten.layer_name}_gap")
        positions = int(np.prod(shape[1:-1]))
        weights = dense.get_weights()
        kernel = weights[0]
        weights[0] = kernel.reshape(positions, shape[-1], kernel.shape[-1]).sum(axis=0)
        return rebuilt_call(dense, pooling(x), weights=weights)

    return Rule(
        "flatten-dense-to-global-pooling",
        Pattern(op("Flatten").named("flatten") >> op("Dense").named("dense")),
        replacement,
        check=check,
    )


# ----------------------------------------------------------------------------- BatchNormalization


def insert_batchnorm_after_convolutions(
    kinds: Sequence[str] = CONVOLUTIONS, *, before_activation: bool = True
) -> Rule:
    """A function-preserving rule adding an identity BatchNormalization after each convolution.

    Args:
        kinds: Convolution class names to handle.
        before_activation: Move a non-linear activation of the convolution after the new BN.

    Example:
        >>> rewriter.rewrite(model, [insert_batchnorm_after_convolutions(["Conv2D"])])  # doctest: +SKIP
    """

    def check(match: Any) -> str | None:
        graph = match.graph
        conv = match.node("conv")
        if conv.num_outputs != 1:
            return "several outputs"
        consumers = graph.consumer_nodes(conv.name)
        if any(graph.node(c).op_type == "BatchNormalization" for c in consumers):
            return f"{conv.name!r} is already followed by a BatchNormalization"
        if is_shared(graph, conv):
            return f"layer {conv.layer_name!r} is shared"
        return None

    def replacement(match: Any, x: Any) -> Any:
        node = match.node("conv")
        conv = match["conv"]
        config = conv.get_config()
        activation = config.get("activation")
        move = before_activation and activation not in (None, "linear")
        y = rebuilt_call(conv, x, activation="linear") if move else rebuilt_call(conv, x)
        rank = node.output_specs[0].rank
        axis = _algebra.channel_axis(node.op_type, config, rank)
        epsilon = 1e-3
        bn = keras.layers.BatchNormalization(axis=axis, epsilon=epsilon, name=f"{conv.name}_bn")
        channels = int(y.shape[axis])
        ones = np.ones(channels, "float32")
        zeros = np.zeros(channels, "float32")
        variance = np.full(channels, np.float32(1.0) - np.float32(epsilon), "float32")
        z = call_with_weights(bn, y, [ones, zeros, zeros, variance])
        if move:
            z = keras.layers.Activation(activation, name=f"{conv.name}_act")(z)
        return z

    return Rule(
        "insert-batchnorm-after-convolutions",
        Pattern(op(list(kinds)).named("conv")),
        replacement,
        check=check,
        function_preserving=True,
    )


# ----------------------------------------------------------------------------- residual connections


def add_residual(pattern: Any = "Conv2D -> BatchNormalization -> ReLU", *, name: str | None = None) -> Rule:
    """A rule wrapping each match of ``pattern`` (a shape-preserving block) in ``Add([block(x), x])``.

    Args:
        pattern: A `rewriter.Pattern` or pattern text; each match must have one input and one output.
        name: Rule name (default ``"add-residual"``).

    Example:
        >>> rewriter.rewrite(model, [add_residual("Conv2D -> ReLU")])  # doctest: +SKIP
    """
    compiled = as_pattern(pattern)

    def check(match: Any) -> str | None:
        graph = match.graph
        if len(match.inputs) != 1 or len(match.outputs) != 1:
            return (
                f"the block has {len(match.inputs)} inputs and {len(match.outputs)} outputs; it needs 1 and 1"
            )
        source, out = match.inputs[0], match.outputs[0]
        before = graph.node(source.node).output_specs[source.index]
        after = graph.node(out.node).output_specs[out.index]
        if before != after:
            return f"the block changes its input {before} into {after}; a residual needs the same shape"
        for use in graph.uses(out):
            merge = graph.node(use.consumer)
            if merge.op_type == "Add" and Port(source.node, source.index) in graph.producers(merge.name):
                return "the block's output is already added to its input"
        return None

    return Rule(name or "add-residual", compiled, residual(), check=check)
