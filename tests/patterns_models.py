"""Helpers shared by the rule-library tests (test_inference.py, test_architecture.py, test_mutations.py).

Example:
    >>> from tests.patterns_models import relative_error  # doctest: +SKIP
    >>> relative_error(model, rewritten, random_inputs(model, seed=0)) < 1e-5  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np

from tests.helpers import flat_outputs

__all__ = ["layer_types", "randomize_batchnorm", "relative_error"]


def relative_error(first: keras.Model, second: keras.Model, inputs: object) -> float:
    """Largest ``max|a - b| / max|a|`` over the outputs of two models on ``inputs`` (inference mode).

    The shapes must agree (asserted); empty outputs are skipped.
    """
    worst = 0.0
    for want, got in zip(flat_outputs(first, inputs), flat_outputs(second, inputs), strict=True):
        assert want.shape == got.shape
        if want.size == 0:
            continue
        scale = max(float(np.max(np.abs(want))), 1e-6)
        worst = max(worst, float(np.max(np.abs(want.astype("float64") - got))) / scale)
    return worst


def layer_types(model: keras.Model) -> list[str]:
    """Class names of ``model.layers`` in order."""
    return [type(layer).__name__ for layer in model.layers]


def randomize_batchnorm(model: keras.Model, seed: int) -> None:
    """Seeded non-trivial BatchNorm statistics (gamma, variance in [0.5, 1.5]; beta, mean ~ N(0, 0.1))."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        path, shape = variable.path, tuple(variable.shape)
        if "moving_variance" in path or "gamma" in path:
            variable.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif "moving_mean" in path or "beta" in path:
            variable.assign(rng.normal(0.0, 0.1, shape).astype("float32"))
