"""`rewriter.explain` given a Rule: the pattern's verdict and the rule's check() verdict."""

from __future__ import annotations

import keras
import pytest
from keras import layers

import rewriter
from patterns import inference

FOLD_CONV2D = next(rule for rule in inference.RULES if rule.name == "fold-batchnorm-into-Conv2D")


def _conv_bn(*, axis: int = -1, side_branch: bool = False) -> keras.Model:
    x = keras.Input((8, 8, 3), name="x")
    conv = layers.Conv2D(4, 3, name="conv")(x)
    bn = layers.BatchNormalization(axis=axis, name="bn")(conv)
    outputs = [bn, layers.ReLU(name="side")(conv)] if side_branch else bn
    return keras.Model(x, outputs)


def test_explain_reports_the_check_veto_for_a_conv_feeding_other_layers() -> None:
    text = rewriter.explain(_conv_bn(side_branch=True), FOLD_CONV2D, at="bn")
    assert "fold-batchnorm-into-Conv2D" in text
    assert "refuses" in text and "'side'" in text


def test_explain_reports_the_check_veto_for_another_axis() -> None:
    text = rewriter.explain(_conv_bn(axis=1), FOLD_CONV2D, at="bn")
    assert "refuses" in text and "axis 1" in text


def test_explain_says_when_the_rule_applies() -> None:
    model = _conv_bn()
    text = rewriter.explain(model, FOLD_CONV2D, at="conv")
    assert "accepts the match" in text
    assert rewriter.rewrite(model, [FOLD_CONV2D]).counts() == {"fold-batchnorm-into-Conv2D": 1}


def test_explain_with_a_rule_whose_pattern_does_not_match() -> None:
    x = keras.Input((8, 8, 3), name="x")
    model = keras.Model(x, layers.BatchNormalization(name="bn")(layers.ReLU(name="relu")(x)))
    text = rewriter.explain(model, FOLD_CONV2D, at="bn")
    assert "does not match" in text and "Conv2D" in text


def test_explain_with_a_custom_rule_check() -> None:
    rule = rewriter.Rule(
        "no-wide-dense",
        "d:Dense",
        rewriter.bypass(),
        check=lambda m: "too wide" if m["d"].units > 4 else None,
    )
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(8, name="wide")(layers.Dense(4, name="narrow")(x)))
    assert "too wide" in rewriter.explain(model, rule, at="wide")
    assert "accepts" in rewriter.explain(model, rule, at="narrow")
    with pytest.raises(rewriter.MatchError):
        rewriter.explain(model, rule, at="nowhere")
