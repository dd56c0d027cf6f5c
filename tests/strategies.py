"""Hypothesis strategies that generate random, always shape-valid Keras 3 functional models.

`functional_models()` yields a built ``keras.Model`` (functional API) whose graph is a random DAG:

- 1 to ``max_inputs`` inputs named ``in_0``, ``in_1`` ... of rank 2 ``(batch, f)``, rank 3
  ``(batch, steps, channels)`` or rank 4 ``(batch, h, w, channels)``; as a list, a single tensor or (with
  ``dict_io``) a dict keyed by input name. Every input is used.
- 1 to ``max_ops`` random operations, each applied to tensors drawn from everything built so far
  (so branches and merges appear naturally): Dense, Conv1D, Conv2D, Max/AveragePooling1D/2D,
  GlobalAverage/MaxPooling, BatchNormalization, Activation/ReLU, Dropout, Flatten, Reshape,
  Concatenate, Add, Multiply, and keras.ops calls (``ops.add(x, x)``, ``ops.add(a, b)``, ``x * 0.5``,
  ``x[:, 1:]``). With ``shared`` a Dense layer is sometimes called a second time (two nodes, one
  layer); with ``nested`` a small functional or Sequential model is called as a layer (sometimes twice,
  sometimes with two outputs).
- Outputs: every tensor nobody consumes, plus sometimes an inner tensor; as a single tensor, a list or
  (with ``dict_io``) a dict keyed ``out_0``, ``out_1`` ...
- All weights (including BatchNormalization moving statistics) are set to seeded random values, so a
  lost or misplaced weight copy changes the outputs. Dropout is inactive at inference, so calling the
  model with ``training=False`` is deterministic.

Models are small (a few ms to build). Feed them with ``tests.helpers.random_inputs(model, seed)``.

Example:
    >>> from hypothesis import given
    >>> from tests.strategies import functional_models
    >>> @given(functional_models())
    ... def test_lift_verifies(model):
    ...     rewriter.lift(model).verify()
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from hypothesis import strategies as st
from keras import layers, ops

__all__ = ["functional_models", "randomize_weights"]

_INPUT_SHAPES: dict[int, list[tuple[int, ...]]] = {
    2: [(8,), (6,), (5,)],
    3: [(6, 4), (5, 3), (4, 2)],
    4: [(6, 6, 3), (4, 4, 2), (5, 4, 2)],
}


def randomize_weights(model: keras.Model, seed: int) -> None:
    """Give every variable of ``model`` a seeded random value (variances stay positive).

    Layers that cache tensors computed from their weights (``finalize_state``, e.g. Normalization) are
    refreshed, as Keras does after loading weights.

    Example:
        >>> randomize_weights(model, seed=0)  # doctest: +SKIP
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        dtype = str(variable.dtype)
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0.0, 0.5, size=shape)
        variable.assign(value.astype(dtype))
    for layer in model._flatten_layers(include_self=False):
        if callable(getattr(layer, "finalize_state", None)):
            layer.finalize_state()  # Normalization caches tensors made from its weights (Keras does this too)


class _Builder:
    """Mutable state while drawing one model: the pool of tensors and the reusable layers."""

    def __init__(self, draw: Callable[[Any], Any], shared: bool, nested: bool) -> None:
        self.draw = draw
        self.shared = shared
        self.nested = nested
        self.pool: list[Any] = []
        self.consumed: set[int] = set()
        self.dense_by_width: dict[int, list[Any]] = {}
        self.nested_by_width: dict[int, list[Any]] = {}

    # ------------------------------------------------------------- helpers
    def pick(self, candidates: list[Any]) -> Any:
        return candidates[self.draw(st.integers(0, len(candidates) - 1))]

    def use(self, *tensors: Any) -> None:
        for tensor in tensors:
            self.consumed.add(id(tensor))

    def add(self, *tensors: Any) -> None:
        self.pool.extend(tensors)

    # ------------------------------------------------------------- operations
    def unary_choices(self, x: Any) -> list[str]:
        shape = tuple(x.shape[1:])
        rank = len(shape) + 1
        common = ["activation", "relu", "batchnorm", "dropout", "scale", "ops_add_self", "dense"]
        if self.shared:  # Dense acts on the last axis of any rank
            common.extend(["dense_twice", "dense_twice"])
            if self.dense_by_width.get(shape[-1]):
                common.append("shared_dense")
        if rank == 2:
            (width,) = shape
            choices = [*common, "dense"]
            if width >= 2:
                choices.append("slice")
            if width % 2 == 0 and width >= 4:
                choices.append("reshape")
            if self.nested:
                choices.extend(["nested", "nested_two_outputs"])
                if self.nested_by_width.get(width):
                    choices.append("shared_nested")
            return choices
        if rank == 3:
            steps, _ = shape
            choices = [*common, "conv1d", "conv1d", "gap1d", "flatten"]
            if steps >= 2:
                choices.extend(["pool1d", "slice"])
            return choices
        height, width, _ = shape
        choices = [*common, "conv2d", "conv2d", "gap2d", "flatten", "reshape"]
        if height >= 2 and width >= 2:
            choices.append("pool2d")
        return choices

    def apply_unary(self, op: str, x: Any) -> list[Any]:
        draw = self.draw
        shape = tuple(x.shape[1:])
        if op == "activation":
            return [layers.Activation(draw(st.sampled_from(["tanh", "sigmoid", "relu", "gelu"])))(x)]
        if op == "relu":
            return [layers.ReLU()(x)]
        if op == "batchnorm":
            return [layers.BatchNormalization()(x)]
        if op == "dropout":
            return [layers.Dropout(0.5)(x)]
        if op == "scale":
            return [x * 0.5]
        if op == "ops_add_self":
            return [ops.add(x, x)]
        if op == "slice":
            return [x[:, 1:]]
        if op == "dense":
            layer = layers.Dense(draw(st.integers(2, 6)), activation=draw(st.sampled_from([None, "relu"])))
            self.dense_by_width.setdefault(shape[-1], []).append(layer)
            return [layer(x)]
        if op == "dense_twice":  # one layer, two calls: on x and on another tensor of the same shape
            layer = layers.Dense(draw(st.integers(2, 6)))
            self.dense_by_width.setdefault(shape[-1], []).append(layer)
            other = self.pick([t for t in self.pool if tuple(t.shape[1:]) == shape])
            self.use(other)
            return [layer(x), layer(other)]
        if op == "shared_dense":
            return [self.pick(self.dense_by_width[shape[-1]])(x)]
        if op == "reshape":
            if len(shape) == 1:
                return [layers.Reshape((2, shape[0] // 2))(x)]
            return [layers.Reshape((shape[0] * shape[1], shape[2]))(x)]
        if op == "flatten":
            return [layers.Flatten()(x)]
        if op == "conv1d":
            padding = draw(st.sampled_from(["same", "valid"])) if shape[0] >= 2 else "same"
            return [
                layers.Conv1D(draw(st.integers(2, 4)), 2 if padding == "valid" else 3, padding=padding)(x)
            ]
        if op == "conv2d":
            valid = shape[0] >= 2 and shape[1] >= 2 and draw(st.booleans())
            return [
                layers.Conv2D(
                    draw(st.integers(2, 4)), 2 if valid else 3, padding="valid" if valid else "same"
                )(x)
            ]
        if op == "pool1d":
            kind = draw(st.sampled_from([layers.MaxPooling1D, layers.AveragePooling1D]))
            return [kind(2)(x)]
        if op == "pool2d":
            kind = draw(st.sampled_from([layers.MaxPooling2D, layers.AveragePooling2D]))
            return [kind(2)(x)]
        if op == "gap1d":
            kind = draw(st.sampled_from([layers.GlobalAveragePooling1D, layers.GlobalMaxPooling1D]))
            return [kind()(x)]
        if op == "gap2d":
            kind = draw(st.sampled_from([layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D]))
            return [kind()(x)]
        if op == "nested":
            model = self.nested_model(shape[0], draw(st.integers(2, 5)), two_outputs=False)
            self.nested_by_width.setdefault(shape[0], []).append(model)
            return [model(x)]
        if op == "shared_nested":
            return [self.pick(self.nested_by_width[shape[0]])(x)]
        if op == "nested_two_outputs":
            model = self.nested_model(shape[0], draw(st.integers(2, 5)), two_outputs=True)
            return list(model(x))
        raise AssertionError(op)

    def nested_model(self, width: int, units: int, *, two_outputs: bool) -> keras.Model:
        if not two_outputs and self.draw(st.booleans()):
            return keras.Sequential(
                [keras.Input((width,)), layers.Dense(units), layers.Activation("tanh")],
            )
        inner_in = keras.Input((width,))
        hidden = layers.Dense(units, activation="relu")(inner_in)
        if two_outputs:
            return keras.Model(inner_in, [layers.Dense(units)(hidden), hidden * 0.5])
        return keras.Model(inner_in, layers.BatchNormalization()(hidden))

    def binary_candidates(self) -> list[tuple[str, Any, Any]]:
        """Pairs of pool tensors that can be merged, with the merge kinds allowed."""
        pairs = []
        for i, a in enumerate(self.pool):
            for b in self.pool[i:]:
                sa, sb = tuple(a.shape[1:]), tuple(b.shape[1:])
                if sa == sb:
                    pairs.append(("same", a, b))
                elif len(sa) == len(sb) and sa[:-1] == sb[:-1]:
                    pairs.append(("concat", a, b))
        return pairs

    def apply_binary(self, kind: str, a: Any, b: Any) -> Any:
        if kind == "concat":
            return layers.Concatenate()([a, b])
        op = self.draw(st.sampled_from(["add", "multiply", "ops_add", "concat", "subtract"]))
        if op == "add":
            return layers.Add()([a, b])
        if op == "multiply":
            return layers.Multiply()([a, b])
        if op == "subtract":
            return layers.Subtract()([a, b])
        if op == "concat":
            return layers.Concatenate()([a, b])
        return ops.add(a, b)


@st.composite
def functional_models(
    draw: Callable[[Any], Any],
    *,
    max_inputs: int = 3,
    max_ops: int = 10,
    shared: bool = True,
    nested: bool = True,
    dict_io: bool = True,
) -> keras.Model:
    """Draw a random, shape-valid functional model (see the module docstring for what it contains).

    Args:
        draw: Supplied by ``hypothesis.strategies.composite``.
        max_inputs: Largest number of model inputs (at least 1).
        max_ops: Largest number of random operations after the inputs (at least 1).
        shared: Allow a Dense layer (or a nested model) to be called twice.
        nested: Allow functional/Sequential models called as layers.
        dict_io: Allow dict inputs and dict outputs.

    Returns:
        A built functional ``keras.Model`` with seeded random weights.

    Example:
        >>> model = functional_models(max_ops=4).example()  # doctest: +SKIP
    """
    # Keras seeds its initializers from Python's global `random`; restore it so hypothesis stays in charge.
    random_state = random.getstate()
    try:
        return _draw_model(draw, max_inputs, max_ops, shared, nested, dict_io)
    finally:
        random.setstate(random_state)


def _draw_model(
    draw: Callable[[Any], Any], max_inputs: int, max_ops: int, shared: bool, nested: bool, dict_io: bool
) -> keras.Model:
    builder = _Builder(draw, shared, nested)
    num_inputs = draw(st.integers(1, max_inputs))
    inputs = []
    for index in range(num_inputs):
        rank = draw(st.sampled_from([2, 3, 4]))
        shape = draw(st.sampled_from(_INPUT_SHAPES[rank]))
        inputs.append(keras.Input(shape, name=f"in_{index}"))
    builder.add(*inputs)

    num_ops = draw(st.integers(max(2, num_inputs), max(max_ops, num_inputs, 2)))
    for step in range(num_ops):
        if step < num_inputs:  # every input is used at least once
            x = inputs[step]
            builder.add(*builder.apply_unary(draw(st.sampled_from(builder.unary_choices(x))), x))
            builder.use(x)
            continue
        pairs = builder.binary_candidates()
        if pairs and draw(st.integers(0, 3)) == 0:
            kind, a, b = builder.pick(pairs)
            builder.add(builder.apply_binary(kind, a, b))
            builder.use(a, b)
        else:
            x = builder.pick(builder.pool)
            builder.add(*builder.apply_unary(draw(st.sampled_from(builder.unary_choices(x))), x))
            builder.use(x)

    input_ids = {id(t) for t in inputs}
    outputs = [t for t in builder.pool if id(t) not in builder.consumed and id(t) not in input_ids]
    inner = [t for t in builder.pool if id(t) in builder.consumed and id(t) not in input_ids]
    if inner and draw(st.booleans()):
        outputs.append(builder.pick(inner))
    if not outputs:  # cannot happen (the last op's result is unconsumed) but stay total
        outputs = [builder.pool[-1]]

    input_style = draw(st.sampled_from(["list", "dict"] if dict_io else ["list"]))
    if num_inputs == 1 and input_style == "list" and draw(st.booleans()):
        model_inputs: Any = inputs[0]
    elif input_style == "dict":
        model_inputs = {t.name: t for t in inputs}
    else:
        model_inputs = inputs
    output_style = draw(st.sampled_from(["list", "dict"] if dict_io else ["list"]))
    if output_style == "dict":
        model_outputs: Any = {f"out_{i}": t for i, t in enumerate(outputs)}
    elif len(outputs) == 1 and draw(st.booleans()):
        model_outputs = outputs[0]
    else:
        model_outputs = outputs
    model = keras.Model(model_inputs, model_outputs, name=f"generated_{draw(st.integers(0, 999))}")
    randomize_weights(model, seed=draw(st.integers(0, 2**16)))
    return model
