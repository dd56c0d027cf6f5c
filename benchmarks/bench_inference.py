"""Benchmark: patterns.inference.RULES on keras.applications models against keras.models.clone_model.

For each model (built with ``weights=None``, BatchNorm statistics and all weights set to seeded random,
non-trivial values) it prints: rules applied, BatchNorm / Dropout counts before and after, parameters
before and after, the largest relative output difference (max |a - b| / max |a| on random inputs, logits
without the final softmax), how many foldable BatchNorms remain, and the time `rewriter.rewrite` took
against `keras.models.clone_model` of the same model (median of ``--repeats`` alternated runs; ratio =
rewrite / clone), and how much of the rewrite time the rules' own code took (their checks and replacements:
the patterns' share; the rest is the engine: matching, splicing, numeric checks, emit).

Usage:
    python benchmarks/bench_inference.py [--models ResNet50 MobileNetV2 EfficientNetB0] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np

import rewriter
from patterns import inference


def randomize(model: keras.Model, seed: int) -> None:
    """Non-trivial BatchNorm statistics and small random weights elsewhere."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        path = variable.path
        if "moving_variance" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif "moving_mean" in path or "beta" in path:
            value = rng.normal(0.0, 0.1, shape)
        elif "gamma" in path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            continue
        variable.assign(value.astype(str(variable.dtype)))


def count(model: keras.Model, *names: str) -> int:
    return sum(type(layer).__name__ in names for layer in model.layers)


def _seconds(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_rules(rules: rewriter.RuleSet, clock: list[float]) -> rewriter.RuleSet:
    """``rules`` with each check and replacement adding its own time to ``clock[0]`` (the patterns' share)."""

    def timing(function):
        if function is None:
            return None

        def wrapper(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                clock[0] += time.perf_counter() - start

        return wrapper

    return rewriter.RuleSet(
        rewriter.Rule(
            rule.name,
            rule.pattern,
            timing(rule.replacement),
            check=timing(rule.check),
            function_preserving=rule.function_preserving,
        )
        for rule in rules
    )


def alternated(model: keras.Model, repeats: int) -> tuple[float, float, float, object]:
    """Median seconds of clone_model, of rewrite and of the rules' own code, runs alternated."""
    clones, rewrites, own, result = [], [], [], None
    for _ in range(repeats):
        clones.append(_seconds(lambda: keras.models.clone_model(model))[0])
        clock = [0.0]
        rules = timed_rules(inference.RULES, clock)
        seconds, result = _seconds(lambda rules=rules: rewriter.rewrite(model, rules))
        rewrites.append(seconds)
        own.append(clock[0])
    return statistics.median(clones), statistics.median(rewrites), statistics.median(own), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2", "EfficientNetB0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        builder = getattr(keras.applications, name)
        model = builder(weights=None, input_shape=(args.size, args.size, 3), classifier_activation=None)
        randomize(model, seed=0)
        x = np.random.default_rng(1).normal(size=(2, args.size, args.size, 3)).astype("float32")
        if name.startswith("EfficientNet"):
            x = x * 60.0 + 120.0  # EfficientNet rescales 0..255 inputs itself
        clone_time, rewrite_time, rules_time, result = alternated(model, args.repeats)
        new = result.model
        want = model(x, training=False).numpy()
        got = new(x, training=False).numpy()
        rel = float(np.max(np.abs(want - got)) / np.max(np.abs(want)))
        left = len(inference.foldable_batchnorms(new))
        print(f"\n== {name} ({args.size}x{args.size}) ==")
        print(result.report())
        print(
            f"BatchNormalization {count(model, 'BatchNormalization')} -> {count(new, 'BatchNormalization')}, "
            f"Dropout {count(model, 'Dropout')} -> {count(new, 'Dropout')}, "
            f"params {model.count_params()} -> {new.count_params()}, foldable BN left: {left}"
        )
        rows.append((name, len(result.applications), rel, left, rewrite_time, rules_time, clone_time))
    print(
        "\nmodel           rules applied  max rel diff  foldable BN left  rewrite s  (rules' own code s)"
        "  clone_model s  ratio"
    )
    for name, applied, rel, left, rw, own, cl in rows:
        ratio = rw / cl
        print(
            f"{name:<15} {applied:>13}  {rel:>12.2e}  {left:>16}  {rw:>9.2f}  {own:>19.2f}  {cl:>13.2f}"
            f"  {ratio:>5.2f}x"
        )


if __name__ == "__main__":
    main()
