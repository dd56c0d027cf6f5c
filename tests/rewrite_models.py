"""Helpers of the rewrite and surgery tests: a full snapshot of a model's state, weight comparisons.

Example:
    >>> before = snapshot(model)  # doctest: +SKIP
    >>> rewriter.remove_layer(model, "d30")  # doctest: +SKIP
    >>> assert_unchanged(model, before)  # doctest: +SKIP
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
from typing import Any

import keras
import numpy as np

__all__ = ["Snapshot", "assert_unchanged", "same_weights", "snapshot"]


@dataclasses.dataclass
class Snapshot:
    """Everything a rewrite must not change in its input model."""

    weights: list[np.ndarray]
    configs: dict[str, Any]
    bookkeeping: dict[str, tuple[int, int]]
    outputs: list[int]
    layers: list[int]


def snapshot(model: keras.Model) -> Snapshot:
    """Weights (by value), layer configs, Keras call bookkeeping, output tensors and layer objects."""
    return Snapshot(
        weights=[np.array(w, copy=True) for w in model.get_weights()],
        configs={layer.name: repr(layer.get_config()) for layer in model.layers},
        bookkeeping={
            layer.name: (len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers
        },
        outputs=[id(t) for t in model.outputs],
        layers=[id(layer) for layer in model.layers],
    )


def assert_unchanged(model: keras.Model, before: Snapshot) -> None:
    """Assert that ``model`` is exactly as it was when ``before`` was taken."""
    after = snapshot(model)
    assert len(after.weights) == len(before.weights)
    for index, (a, b) in enumerate(zip(before.weights, after.weights)):
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), f"weight {index} changed"
    assert after.configs == before.configs
    assert after.bookkeeping == before.bookkeeping
    assert after.outputs == before.outputs
    assert after.layers == before.layers


def same_weights(a: keras.layers.Layer, b: keras.layers.Layer) -> bool:
    """Whether two layers hold equal weights (same count, shapes and values)."""
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))
