"""Inference-time optimizations: fold BatchNormalization, drop no-ops, fuse activations and reshapes.

`RULES` is an ordered `rewriter.RuleSet` for `rewriter.rewrite`; every rule is declared
``function_preserving=True`` *in inference mode* (``model(x, training=False)``).

Algebra and reasoning, rule by rule:

**fold-batchnorm-into-<Layer>** (Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D,
SeparableConv1D/2D). In inference mode a BatchNormalization is a per-channel affine map::

    bn(x)_c = gamma_c * (x_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c * x_c + t_c
    s_c = gamma_c / sqrt(var_c + eps)     (gamma = 1 when scale=False)
    t_c = beta_c - s_c * mean_c           (beta = 0 when center=False)

A preceding layer with a linear activation computes ``x_c = <W[..., c], patch> + b_c`` (``b = 0`` without a
bias), so ``bn(x)_c = <s_c * W[..., c], patch> + (s_c * b_c + t_c)``: one layer with kernel ``W'`` (the
output-channel slice ``c`` scaled by ``s_c``) and bias ``b' = s * b + t``. The output channel sits on the
kernel's last axis for Dense and ConvND ``(..., in, out)``, on the second-to-last for ConvNDTranspose
``(..., out, in)``, at ``(i, m)`` of the ``(..., in, depth_multiplier)`` kernel of DepthwiseConvND (output
channel ``c = i * depth_multiplier + m``), and on the pointwise kernel of SeparableConvND. The fold is
refused (and `why_not_folded` says so) when the layer has a non-linear activation, when the BN normalizes
another axis than the layer's channel axis (``channels_first`` convolutions fold with ``axis=1``), when the
layer's output is also used elsewhere (the unnormalized tensor would be lost), when the layer is shared
(folding would change its other calls), when the BN is called with ``training=True``, when the layer
computes in float16/bfloat16 (mixed precision rounds the folded result differently), or when it is
quantized. A LoRA-enabled layer folds with its merged kernel (the folded layer has no adapter).

Every refusal is the ``check=`` of the rule (``rule.veto(match)`` returns the sentence; `rewriter.rewrite`
lists it in ``result.vetoed`` and the report), never an error inside the replacement.

**remove-<NoOp>**: Dropout, SpatialDropout1D/2D/3D, GaussianNoise, GaussianDropout, AlphaDropout,
ActivityRegularization, Identity and ``Activation("linear")`` return their input unchanged at inference;
the input goes straight to their consumers. A call with an explicit ``training=True`` (Monte-Carlo
dropout) is left alone, and so is a layer whose output dtype differs from its input's (mixed precision).

**fold-batchnorm-and-activation**: ``act(bn(L(x)))`` in one application (one new layer instead of two):
the BN fold above with ``activation=act``. Its conditions (those of both steps) are part of its pattern
(``where=``), so it never vetoes; where it does not match, the two-step rules apply and give the reasons.

**fold-activation**: ``act(L(x))`` where ``L`` has ``activation="linear"`` equals ``L'(x)`` with
``activation=act``; standalone Activation, ReLU (plain or ``max_value=6``), LeakyReLU (slope 0.2), ELU
(alpha 1) and Softmax (last axis) layers are expressed as activation strings.

**merge-reshapes**: Reshape and (channels_last) Flatten keep the row-major element order, so
``r2(r1(x))`` is ``r2`` applied to ``x`` directly; a Reshape or Flatten whose output shape equals its input
shape is removed.

Example:
    >>> import rewriter
    >>> from patterns import inference
    >>> result = rewriter.rewrite(model, inference.RULES)  # doctest: +SKIP
    >>> print(result.report())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import keras

from patterns import _algebra
from patterns._graph_tools import call_with_weights, escapes, is_shared, layer_values
from rewriter.errors import RewriteError
from rewriter.graph import Graph, Node, Port
from rewriter.pattern import Pattern, op
from rewriter.rules import Rule, RuleSet, bypass

__all__ = [
    "BATCHNORM_RULES",
    "NOOP_TYPES",
    "RULES",
    "fold_rule",
    "foldable_batchnorms",
    "why_not_folded",
]

#: Layer classes that are the identity in inference mode.
NOOP_TYPES: tuple[str, ...] = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)

# ----------------------------------------------------------------------------- shared checks


def _training_forced(node: Node) -> bool:
    return node.call_kwargs.get("training") is True


def _fold_problem(graph: Graph, layer_node: Node, bn_node: Node) -> str | None:
    """Why ``bn_node`` cannot be folded into ``layer_node`` (its producer), or None."""
    if layer_node.num_outputs != 1 or not layer_node.output_specs:
        return f"{layer_node.name!r} has {layer_node.num_outputs} outputs"
    problem = _algebra.batchnorm_fold_problem(
        layer_node.op_type,
        layer_node.config or {},
        bn_node.config or {},
        layer_node.output_specs[0].rank,
    )
    if problem is not None:
        return problem
    compute_dtype = str(getattr(layer_node.layer, "compute_dtype", "float32"))
    if compute_dtype not in ("float32", "float64"):
        return (
            f"{layer_node.name!r} computes in {compute_dtype} (mixed precision): its rounding would differ "
            "from the BatchNormalization's float32 arithmetic by more than float32 rounding"
        )
    if bn_node.output_specs and bn_node.output_specs[0].dtype != layer_node.output_specs[0].dtype:
        return (
            f"{bn_node.name!r} returns {bn_node.output_specs[0].dtype} but {layer_node.name!r} returns "
            f"{layer_node.output_specs[0].dtype}: the folded layer would change the tensor's dtype"
        )
    quantized = getattr(layer_node.layer, "quantization_mode", None)
    if quantized:
        return (
            f"{layer_node.name!r} is quantized ({quantized}): its stored kernel is not the float kernel the "
            "fold would scale; fold before quantizing"
        )
    if _training_forced(bn_node):
        return f"{bn_node.name!r} is called with training=True, so it uses batch statistics"
    if escapes(graph, layer_node.name, bn_node.name):
        return (
            f"the output of {layer_node.name!r} is also used outside the BatchNormalization "
            f"(by {[u.consumer for u in graph.consumers(layer_node.name) if u.consumer != bn_node.name]}"
            f"{' and as a model output' if graph.is_output(Port(layer_node.name, 0)) else ''}); "
            "folding would lose the unnormalized tensor"
        )
    if is_shared(graph, layer_node):
        return f"layer {layer_node.layer_name!r} is shared by several calls; folding would change all of them"
    if layer_node.layer is None or bn_node.layer is None:
        return "a layer object is missing"
    return None


def why_not_folded(model_or_graph: keras.Model | Graph, bn: str) -> str | None:
    """Why the BatchNormalization node ``bn`` is not folded by `RULES`, or None if it is foldable.

    Args:
        model_or_graph: A model or its lifted graph.
        bn: Name of the BatchNormalization node (its layer name for an unshared layer).

    Returns:
        A sentence giving the reason, or None.

    Example:
        >>> why_not_folded(model, "bn")  # doctest: +SKIP
        "the output of 'conv' is also used outside the BatchNormalization (by ['add']); ..."
    """
    from rewriter.lift import lift

    graph = model_or_graph if isinstance(model_or_graph, Graph) else lift(model_or_graph)
    node = graph.node(bn)
    if node.op_type != "BatchNormalization":
        return f"{bn!r} is a {node.op_type}, not a BatchNormalization"
    producer = graph.producers(bn)[0].node
    return _fold_problem(graph, graph.node(producer), node)


def foldable_batchnorms(model_or_graph: keras.Model | Graph) -> list[str]:
    """Names of the BatchNormalization nodes that `RULES` can fold (none should remain after a rewrite).

    Example:
        >>> foldable_batchnorms(rewriter.rewrite(model, RULES).model)  # doctest: +SKIP
        []
    """
    from rewriter.lift import lift

    graph = model_or_graph if isinstance(model_or_graph, Graph) else lift(model_or_graph)
    return [
        n.name for n in graph.nodes_of_type("BatchNormalization") if why_not_folded(graph, n.name) is None
    ]


# ----------------------------------------------------------------------------- BatchNorm folding


def _check_fold(match: Any) -> str | None:
    return _fold_problem(match.graph, match.node("layer"), match.node("bn"))


def _fold(match: Any, x: Any) -> Any:
    layer = match["layer"]
    folded = type(layer).from_config(_algebra.folded_config(layer.get_config()))
    return call_with_weights(folded, x, _algebra.fold_batchnorm(layer, match["bn"]))


def _fold_rule(layer_type: str) -> Rule:
    pattern = Pattern(op(layer_type).named("layer") >> op("BatchNormalization").named("bn"))
    return Rule(
        f"fold-batchnorm-into-{layer_type}",
        pattern,
        _fold,
        check=_check_fold,
        function_preserving=True,
    )


#: One BatchNorm-folding rule per foldable layer class.
BATCHNORM_RULES: RuleSet = RuleSet(_fold_rule(t) for t in _algebra.BN_FOLDABLE_TYPES)


def fold_rule(layer_type: str) -> Rule:
    """The rule of `RULES` folding a BatchNormalization into a preceding ``layer_type`` layer.

    Its ``check`` gives the reason a match is refused: ``fold_rule("Conv2D").veto(match)``.

    Raises:
        RewriteError: ``layer_type`` is not a class BatchNormalization folds into.

    Example:
        >>> fold_rule("DepthwiseConv2D").name
        'fold-batchnorm-into-DepthwiseConv2D'
    """
    for rule in BATCHNORM_RULES:
        if rule.name == f"fold-batchnorm-into-{layer_type}":
            return rule
    raise RewriteError(
        f"No BatchNorm-folding rule for {layer_type!r}; there is one for each of "
        f"{', '.join(_algebra.BN_FOLDABLE_TYPES)}."
    )


# ----------------------------------------------------------------------------- no-ops


def _check_noop(match: Any) -> str | None:
    node = match.node("noop")
    if _training_forced(node):
        return f"{node.name!r} is called with training=True (active at inference)"
    if node.num_inputs != 1 or node.input_specs[0] != node.output_specs[0]:
        return f"{node.name!r} does not return a tensor of its input's shape"
    return None


def _noop_rule(op_type: str) -> Rule:
    return Rule(
        f"remove-{op_type}",
        Pattern(op(op_type).named("noop")),
        bypass(),
        check=_check_noop,
        function_preserving=True,
    )


def _is_linear_activation(node: Node) -> bool:
    return (node.config or {}).get("activation") in (None, "linear")


REMOVE_LINEAR_ACTIVATION = Rule(
    "remove-linear-Activation",
    Pattern(op("Activation").named("noop").where(_is_linear_activation, "activation is linear")),
    bypass(),
    check=_check_noop,
    function_preserving=True,
)

# ----------------------------------------------------------------------------- activations

_ACTIVATION_HOSTS = (*_algebra.BN_FOLDABLE_TYPES, "EinsumDense")


def _activation_problem(graph: Graph, host: Node, act: Node, feeder: Node) -> str | None:
    """Why ``act`` (reading ``feeder``'s output) cannot become ``host``'s activation, or None."""
    if (host.config or {}).get("activation") not in (None, "linear"):
        return f"{host.name!r} already has activation {(host.config or {}).get('activation')!r}"
    if _algebra.activation_of_layer(act.op_type, act.config or {}) is None:
        return f"{act.name!r} ({act.op_type}) has no equivalent activation string"
    if act.num_inputs != 1:
        return f"{act.name!r} takes {act.num_inputs} tensors"
    host_dtype = str(getattr(host.layer, "compute_dtype", host.output_specs[0].dtype))
    act_dtype = str(getattr(act.layer, "compute_dtype", act.output_specs[0].dtype))
    if host_dtype != act_dtype or host.output_specs[0].dtype != act.output_specs[0].dtype:
        return f"{host.name!r} computes in {host_dtype} and {act.name!r} in {act_dtype}"
    if escapes(graph, feeder.name, act.name):
        return f"the output of {feeder.name!r} is also used elsewhere"
    if is_shared(graph, host):
        return f"layer {host.layer_name!r} is shared"
    return None


def _check_activation(match: Any) -> str | None:
    host = match.node("layer")
    return _activation_problem(match.graph, host, match.node("act"), host)


def _fold_activation(match: Any, x: Any) -> Any:
    host = match["layer"]
    act = match.node("act")
    config = dict(host.get_config())
    config["activation"] = _algebra.activation_of_layer(act.op_type, act.config or {})
    return call_with_weights(type(host).from_config(config), x, layer_values(host))


def _fully_foldable(match: Any) -> bool:
    """Whether both the BN fold and the activation fusion of ``layer -> bn -> act`` are allowed."""
    host, bn = match.node("layer"), match.node("bn")
    graph = match.graph
    return _fold_problem(graph, host, bn) is None and (
        _activation_problem(graph, host, match.node("act"), bn) is None
    )


def _fold_batchnorm_and_activation(match: Any, x: Any) -> Any:
    layer, act = match["layer"], match.node("act")
    config = _algebra.folded_config(layer.get_config())
    config["activation"] = _algebra.activation_of_layer(act.op_type, act.config or {})
    return call_with_weights(type(layer).from_config(config), x, _algebra.fold_batchnorm(layer, match["bn"]))


#: ``layer -> BatchNormalization -> activation`` in one application (one new layer instead of two). Its
#: conditions are part of the pattern (``where=``), so it never vetoes: where it does not match, the
#: two-step rules apply and their checks give the reasons.
FOLD_BATCHNORM_AND_ACTIVATION = Rule(
    "fold-batchnorm-and-activation",
    Pattern(
        op(list(_algebra.BN_FOLDABLE_TYPES)).named("layer")
        >> op("BatchNormalization").named("bn")
        >> op(list(_algebra.ACTIVATION_LAYER_NAMES)).named("act"),
        where=_fully_foldable,
    ),
    _fold_batchnorm_and_activation,
    function_preserving=True,
)

FOLD_ACTIVATION = Rule(
    "fold-activation",
    Pattern(
        op(list(_ACTIVATION_HOSTS)).named("layer") >> op(list(_algebra.ACTIVATION_LAYER_NAMES)).named("act")
    ),
    _fold_activation,
    check=_check_activation,
    function_preserving=True,
)

# ----------------------------------------------------------------------------- reshapes


def _check_merge(match: Any) -> str | None:
    first, second = match.node("first"), match.node("second")
    if escapes(match.graph, first.name, second.name):
        return f"the output of {first.name!r} is also used elsewhere"
    if first.input_specs[0].dtype != second.output_specs[0].dtype:
        return f"the pair changes the dtype {first.input_specs[0].dtype} -> {second.output_specs[0].dtype}"
    merged = _algebra.merged_reshape_target(
        first.op_type, second.op_type, second.config or {}, second.output_specs[0].shape
    )
    if merged is None:
        return "a channels_first Flatten reorders elements"
    if first.op_type == "Flatten" and (first.config or {}).get("data_format") == "channels_first":
        return "a channels_first Flatten reorders elements"
    return None


def _merge_reshapes(match: Any, x: Any) -> Any:
    first, second = match.node("first"), match.node("second")
    merged = _algebra.merged_reshape_target(
        first.op_type, second.op_type, second.config or {}, second.output_specs[0].shape
    )
    assert merged is not None
    kind, target = merged
    if kind == "Flatten":
        return keras.layers.Flatten(name=second.layer_name)(x)
    return keras.layers.Reshape(target, name=second.layer_name)(x)


MERGE_RESHAPES = Rule(
    "merge-reshapes",
    Pattern(op(["Reshape", "Flatten"]).named("first") >> op(["Reshape", "Flatten"]).named("second")),
    _merge_reshapes,
    check=_check_merge,
    function_preserving=True,
)


def _keeps_shape(node: Node) -> bool:
    """Whether a Reshape/Flatten returns its input's (fully known) shape: a no-op."""
    before, after = node.input_specs[0].shape[1:], node.output_specs[0].shape[1:]
    return before == after and None not in before


REMOVE_IDENTITY_RESHAPE = Rule(
    "remove-identity-reshape",
    Pattern(op(["Reshape", "Flatten"]).named("reshape").where(_keeps_shape, "keeps its input's shape")),
    bypass(),
    function_preserving=True,
)

#: The inference rule set, in priority order: no-ops first (so a Dropout between a convolution and its
#: BatchNorm does not block the fold), then ``layer -> BN -> activation`` in one step, then BatchNorm
#: folds, then activation fusion, then reshapes.
RULES: RuleSet = RuleSet(
    [
        *(_noop_rule(t) for t in NOOP_TYPES),
        REMOVE_LINEAR_ACTIVATION,
        FOLD_BATCHNORM_AND_ACTIVATION,
        *BATCHNORM_RULES,
        FOLD_ACTIVATION,
        REMOVE_IDENTITY_RESHAPE,
        MERGE_RESHAPES,
    ]
)
