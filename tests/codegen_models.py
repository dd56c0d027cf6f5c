"""Custom Keras objects for the code generator tests: importable by name, registered with Keras.

Example:
    >>> from tests.codegen_models import ScaleShift  # doctest: +SKIP
    >>> ScaleShift(scale=2.0)(keras.ops.ones((1, 3)))  # doctest: +SKIP
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from typing import Any

import keras
from keras import ops

__all__ = ["ScaleShift", "double_plus_one"]


@keras.saving.register_keras_serializable(package="codegen_tests")
class ScaleShift(keras.layers.Layer):
    """``x * scale + shift`` with a trainable per-feature shift (a custom, registered layer with weights)."""

    def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="shift")

    def call(self, inputs: Any) -> Any:
        return inputs * self.scale + self.shift

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


def double_plus_one(x: Any) -> Any:
    """An importable function for Lambda layers."""
    return ops.add(ops.multiply(x, 2.0), 1.0)
