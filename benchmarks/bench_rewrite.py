"""Benchmark: `rewriter.rewrite` against `keras.models.clone_model`, and many edits against one.

1. A 3-rule set (fold BatchNormalization into the Conv2D before it with computed weights, ReLU
   activations -> ReLU6, remove Dropout) rewritten on ResNet50 and on a ~1,200-op residual MLP, against
   `keras.models.clone_model` of the same model (target: <= 1.2x). clone_model neither copies weights nor
   changes anything; the rewrite lifts, matches, splices, checks shapes and emits with weight copies.
2. 100 independent one-layer edits (ReLU -> ReLU6 at 100 named places) in one `rewrite` call against a
   single edit on the same ~1,200-op model (target: <= 1.5x: many edits cost about one rebuild).

Runs are alternated and the median ratio is printed. Usage: ``python benchmarks/bench_rewrite.py [repeats]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers

import rewriter
from rewriter import Rule, op

sys.setrecursionlimit(20_000)  # clone_model recurses over depth; the baseline must be able to run


def _fold_bn(match: Any, x: Any) -> Any:
    conv, bn = match["c"], match["b"]
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    bias = keras.ops.convert_to_numpy(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1], "float32")
    gamma = keras.ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
    beta = keras.ops.convert_to_numpy(bn.beta) if bn.center else 0.0
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    var = keras.ops.convert_to_numpy(bn.moving_variance)
    scale = gamma / np.sqrt(var + bn.epsilon)
    config = conv.get_config()
    config.update(name=f"{conv.name}_folded", use_bias=True)
    folded = layers.Conv2D.from_config(config)
    y = folded(x)
    folded.set_weights([kernel * scale, (bias - mean) * scale + beta])
    return y


RULES = rewriter.RuleSet(
    [
        Rule(
            "fold-bn",
            op("Conv2D", activation="linear").named("c") >> op("BatchNormalization").named("b"),
            _fold_bn,
            check=lambda m: m["b"].axis in (-1, 3, [-1], [3]) or "BatchNormalization not on channels",
        ),
        Rule(
            "relu6",
            "Activation(activation='relu') | ReLU(max_value=None)",
            rewriter.replace_with(lambda: layers.ReLU(max_value=6.0)),
        ),
        Rule("no-dropout", "Dropout", rewriter.bypass()),
    ]
)


def residual_mlp(blocks: int = 240, width: int = 16) -> keras.Model:
    """About 5 ops per block: Dense, BatchNormalization, ReLU, Dropout, Add."""
    inputs = keras.Input((width,), name="x")
    h = inputs
    for i in range(blocks):
        y = layers.Dense(width, name=f"dense_{i}")(h)
        y = layers.BatchNormalization(name=f"bn_{i}")(y)
        y = layers.ReLU(name=f"relu_{i}")(y)
        y = layers.Dropout(0.1, name=f"drop_{i}")(y)
        h = layers.Add(name=f"add_{i}")([h, y])
    return keras.Model(inputs, h, name="residual_mlp")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(label: str, candidate: Callable[[], Any], baseline: Callable[[], Any], repeats: int) -> float:
    candidate()
    baseline()  # warm-up (tracing, imports)
    ratios, cand_times, base_times = [], [], []
    for _ in range(repeats):
        c = _timed(candidate)
        b = _timed(baseline)
        cand_times.append(c)
        base_times.append(b)
        ratios.append(c / b)
    ratio = statistics.median(ratios)
    print(
        f"{label:<52} {statistics.median(cand_times):7.3f}s vs {statistics.median(base_times):7.3f}s"
        f"  ratio {ratio:5.2f}x",
        flush=True,
    )
    return ratio


def main(repeats: int = 5) -> None:
    resnet = keras.applications.ResNet50(weights=None)
    mlp = residual_mlp()
    print(f"ResNet50: {len(rewriter.lift(resnet))} ops; residual MLP: {len(rewriter.lift(mlp))} ops")
    result = rewriter.rewrite(resnet, RULES)
    print(result.report().splitlines()[0], result.counts())
    result = rewriter.rewrite(mlp, RULES)
    print(result.report().splitlines()[0], result.counts())
    print("-- rewrite with 3 rules vs keras.models.clone_model (target <= 1.2x)")
    compare(
        "ResNet50: rewrite(3 rules) / clone_model",
        lambda: rewriter.rewrite(resnet, RULES),
        lambda: keras.models.clone_model(resnet),
        repeats,
    )
    compare(
        "residual MLP: rewrite(3 rules) / clone_model",
        lambda: rewriter.rewrite(mlp, RULES),
        lambda: keras.models.clone_model(mlp),
        repeats,
    )

    print("-- 100 independent one-layer edits in one call vs one edit (target <= 1.5x)")
    names = [f"relu_{i}" for i in range(0, 240, 2)][:100]

    def edits(places: list[str]) -> Rule:
        wanted = frozenset(places)
        return Rule(
            f"relu6-at-{len(places)}",
            op("ReLU", max_value=None).where(lambda node: node.name in wanted, "a chosen place"),
            rewriter.replace_with(lambda: layers.ReLU(max_value=6.0)),
        )

    many, one = edits(names), edits(names[:1])
    assert len(rewriter.rewrite(mlp, many).applications) == 100
    compare(
        "residual MLP: 100 edits / 1 edit",
        lambda: rewriter.rewrite(mlp, many),
        lambda: rewriter.rewrite(mlp, one),
        repeats,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
