"""Helpers other test modules import: random inputs for a model and output/weight comparisons.

Example:
    >>> from tests.helpers import assert_same_outputs, random_inputs  # doctest: +SKIP
    >>> assert_same_outputs(model, rewriter.emit(rewriter.lift(model)), random_inputs(model, seed=0))
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from typing import Any

import keras
import numpy as np
from hypothesis import settings

__all__ = [
    "assert_same_outputs",
    "assert_same_weights",
    "flat_outputs",
    "predict",
    "property_settings",
    "random_inputs",
]


def property_settings(minimum: int = 30) -> settings:
    """Hypothesis settings for a core property: at least ``minimum`` examples, more if the profile has more.

    The other settings (derandomized in the ``ci`` profile) come from the loaded profile.

    Example:
        >>> @property_settings()  # doctest: +SKIP
        ... @given(functional_models())
        ... def test_round_trip(model): ...
    """
    return settings(max_examples=max(minimum, settings.default.max_examples))


def _input_array(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if "int" in dtype:
        return rng.integers(0, 8, size=shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def random_inputs(model: keras.Model, seed: int = 0, batch: int = 2) -> Any:
    """Random arrays matching ``model``'s inputs, in the model's own input structure.

    Unknown (None) dimensions other than the batch get length 3. Integer inputs draw from [0, 8), so
    they are valid token ids for any embedding with at least 8 rows.

    Args:
        model: A built functional (or Sequential) model.
        seed: Seed for numpy's generator.
        batch: Batch size.

    Returns:
        One array, a list of arrays, or a dict name -> array, following ``model.inputs``'s structure
        (``model._inputs_struct`` when it is a dict).
    """
    rng = np.random.default_rng(seed)
    structure = getattr(model, "_inputs_struct", None)
    if structure is None:  # Sequential: one input
        structure = model.inputs[0] if len(model.inputs) == 1 else model.inputs

    def make(tensor: Any) -> np.ndarray:
        shape = tuple(
            batch if index == 0 and dim is None else (3 if dim is None else int(dim))
            for index, dim in enumerate(tensor.shape)
        )
        return _input_array(shape, str(tensor.dtype), rng)

    return keras.tree.map_structure(make, structure)


def predict(model: keras.Model, inputs: Any) -> Any:
    """Call ``model`` in inference mode and return numpy outputs in its output structure."""
    outputs = model(inputs, training=False)
    return keras.tree.map_structure(lambda t: keras.ops.convert_to_numpy(t), outputs)


def flat_outputs(model: keras.Model, inputs: Any) -> list[np.ndarray]:
    """The model's outputs on ``inputs`` as a flat list of numpy arrays."""
    return keras.tree.flatten(predict(model, inputs))


def assert_same_outputs(
    first: keras.Model,
    second: keras.Model,
    inputs: Any,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> None:
    """Assert that two models give equal outputs (bit for bit by default) with equal structure.

    Args:
        first: The reference model.
        second: The model to compare (e.g. ``emit(lift(first))``).
        inputs: Inputs accepted by both (see `random_inputs`).
        atol: Absolute tolerance; 0 means exact equality.
        rtol: Relative tolerance; 0 means exact equality.
    """
    expected = predict(first, inputs)
    actual = predict(second, inputs)
    expected_flat = keras.tree.flatten(expected)
    actual_flat = keras.tree.flatten(actual)
    assert len(expected_flat) == len(actual_flat), (len(expected_flat), len(actual_flat))
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(expected) == sorted(actual), (expected.keys(), actual)
    for index, (want, got) in enumerate(zip(expected_flat, actual_flat)):
        assert want.shape == got.shape, f"output {index}: shape {got.shape} != {want.shape}"
        assert want.dtype == got.dtype, f"output {index}: dtype {got.dtype} != {want.dtype}"
        if atol == 0.0 and rtol == 0.0:
            diff = np.max(np.abs(want.astype("float64") - got)) if want.size else 0.0
            assert np.array_equal(want, got, equal_nan=True), f"output {index}: max abs diff {diff}"
        else:
            np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=f"output {index}")


def assert_same_weights(first: keras.Model, second: keras.Model) -> None:
    """Assert that ``get_weights()`` of both models agree in order, shape, dtype and value (exactly)."""
    want = first.get_weights()
    got = second.get_weights()
    assert len(want) == len(got), f"{len(got)} weights != {len(want)}"
    for index, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape, f"weight {index}: shape {b.shape} != {a.shape}"
        assert a.dtype == b.dtype, f"weight {index}: dtype {b.dtype} != {a.dtype}"
        assert np.array_equal(a, b, equal_nan=True), f"weight {index} differs"


@contextlib.contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    """Run the body with Python's recursion limit set to ``limit``, then restore the previous one."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
