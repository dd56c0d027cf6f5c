"""keras.applications models (weights=None) survive emit(lift(model)) bit for bit with equal weights.

Small input shapes keep the suite fast: 32x32 is the minimum most applications accept with
``weights=None``; InceptionV3 needs at least 75x75. ``classes=10`` keeps the classifier small. Every
weight (BatchNormalization statistics and zero-initialized biases included) first gets a seeded random
value, so a weight that is not copied, or copied to the wrong place, changes the outputs.
"""

from __future__ import annotations

import keras
import pytest

import rewriter
from tests.helpers import assert_same_outputs, assert_same_weights, random_inputs
from tests.strategies import randomize_weights

APPLICATIONS = {
    "ResNet50": 32,
    "MobileNetV2": 32,
    "EfficientNetB0": 32,
    "InceptionV3": 75,
    "NASNetMobile": 32,
    "DenseNet121": 32,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_application_round_trip(name: str) -> None:
    size = APPLICATIONS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    randomize_weights(model, seed=0)
    inbound_before = {layer.name: len(layer._inbound_nodes) for layer in model.layers}

    graph = rewriter.lift(model)
    graph.verify()
    lifted_layers = [layer for layer in graph.layers() if isinstance(layer, keras.layers.Layer)]
    assert sorted(id(layer) for layer in lifted_layers) == sorted(id(layer) for layer in model.layers)
    new = rewriter.emit(graph)

    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == inbound_before
    assert new.name == model.name
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    assert_same_weights(model, new)
    assert_same_outputs(model, new, random_inputs(model, seed=0, batch=2))
