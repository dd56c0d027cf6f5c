"""Benchmark: lift, emit and lift+emit against keras.models.clone_model.

Models: ResNet50, EfficientNetB0 (keras.applications, weights=None) and a 900-op Dense/ReLU chain.
For each model the four measurements are alternated within each repeat (clone_model, lift, emit,
lift+emit), so machine load affects them alike; the script prints the median time of each and the
median ratio against clone_model. Target: lift+emit <= 1.0x clone_model, although emit copies the
weights and clone_model does not.

Run:
    python benchmarks/bench_lift_emit.py            # 5 repeats
    python benchmarks/bench_lift_emit.py --repeats 9 --models chain900
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewriter


def _chain(depth: int = 900, width: int = 32) -> keras.Model:
    x = inputs = keras.Input((width,), name="x")
    for index in range(depth // 2):
        x = keras.layers.Dense(width, name=f"dense_{index}")(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
    return keras.Model(inputs, x, name=f"chain_{depth}")


MODELS: dict[str, Callable[[], keras.Model]] = {
    "ResNet50": lambda: keras.applications.ResNet50(weights=None),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(weights=None),
    "chain900": _chain,
}


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def bench(name: str, repeats: int) -> dict[str, float]:
    model = MODELS[name]()
    graph = rewriter.lift(model)
    rewriter.emit(graph)  # warm-up (first-call caches in Keras/TF)
    keras.models.clone_model(model)
    times: dict[str, list[float]] = {"clone_model": [], "lift": [], "emit": [], "lift+emit": []}
    ratios: dict[str, list[float]] = {"lift": [], "emit": [], "lift+emit": []}
    for _ in range(repeats):
        clone = _timed(lambda: keras.models.clone_model(model))
        lift = _timed(lambda: rewriter.lift(model))
        emit = _timed(lambda: rewriter.emit(graph))
        both = _timed(lambda: rewriter.emit(rewriter.lift(model)))
        for key, value in (("clone_model", clone), ("lift", lift), ("emit", emit), ("lift+emit", both)):
            times[key].append(value)
        for key, value in (("lift", lift), ("emit", emit), ("lift+emit", both)):
            ratios[key].append(value / clone)
    medians = {key: statistics.median(values) for key, values in times.items()}
    ratio_medians = {key: statistics.median(values) for key, values in ratios.items()}
    print(
        f"{name:15s} layers={len(model.layers):4d}  "
        + "  ".join(f"{key} {medians[key] * 1000:7.0f} ms" for key in times)
        + "  |  ratio vs clone_model: "
        + "  ".join(f"{key} {ratio_medians[key]:.2f}x" for key in ratios),
        flush=True,
    )
    return ratio_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))  # clone_model recurses over depth
    summary = {name: bench(name, args.repeats) for name in args.models}
    print("\nmedian lift+emit / clone_model:")
    for name, ratio in summary.items():
        verdict = "meets" if ratio["lift+emit"] <= 1.0 else "misses"
        print(f"  {name:15s} {ratio['lift+emit']:.2f}x  ({verdict} the <= 1.0x target)")


if __name__ == "__main__":
    main()
