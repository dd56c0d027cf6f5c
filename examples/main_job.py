"""The main job: lift a keras.applications model, round-trip it, and optimize it for inference.

Run ``python examples/main_job.py --model EfficientNetB0 --out out``. Steps:

1. build the model with ``weights=None`` (no download) and give its BatchNorm layers random, non-trivial
   statistics, so that folding them is a real test;
2. lift it into a graph, print the graph summary, emit it again and print the round-trip difference, and
   write the generated Python source;
3. apply ``patterns.inference.RULES`` with ``rewriter.rewrite``, print the report (rules fired, BatchNorm
   and Dropout counts before and after, parameters before and after, largest output difference), and
   write the rewritten model (``.keras``) and its generated source.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import rewriter
from patterns import inference


def build_application(name: str, image_size: int) -> keras.Model:
    """Build ``keras.applications.<name>`` without weights and randomize its BatchNorm statistics."""
    model = getattr(keras.applications, name)(weights=None, input_shape=(image_size, image_size, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for weight in layer.weights:
                shape = tuple(weight.shape)
                if weight.path.endswith("moving_variance"):
                    values.append(rng.uniform(0.5, 2.0, shape))
                elif weight.path.endswith("gamma"):
                    values.append(rng.uniform(0.5, 1.5, shape))
                else:
                    values.append(rng.normal(0.0, 0.2, shape))
            layer.set_weights([v.astype("float32") for v in values])
    return model


def count_types(graph: rewriter.Graph, *op_types: str) -> int:
    """Number of nodes whose op type is one of ``op_types``."""
    return len(graph.nodes_of_type(*op_types))


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the largest magnitude of ``a``."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


def main() -> None:
    """Run the job from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="EfficientNetB0", help="a keras.applications model name")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", default="out", help="directory for the generated files")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = build_application(args.model, args.image_size)
    images = np.random.default_rng(1).uniform(-1, 1, (2, args.image_size, args.image_size, 3))
    images = images.astype("float32")
    reference = np.asarray(model(images, training=False))

    print(f"== 1. lift {args.model}")
    graph = rewriter.lift(model)
    graph.verify()
    graph.summary(print_fn=print)

    print("\n== 2. emit and round-trip")
    clone = rewriter.emit(graph)
    round_trip = np.asarray(clone(images, training=False))
    print(f"round-trip max |difference|: {float(np.max(np.abs(round_trip - reference))):.3g}")
    source_path = out / f"{model.name}.py"
    source_path.write_text(rewriter.to_source(graph))
    print(f"generated source: {source_path}")

    print("\n== 3. apply patterns.inference.RULES")
    start = time.perf_counter()
    result = rewriter.rewrite(model, inference.RULES)
    seconds = time.perf_counter() - start
    print(result.report())
    optimized = np.asarray(result.model(images, training=False))
    print(f"rewrite took {seconds:.2f} s")
    counted = {"BatchNormalization": ("BatchNormalization",), "no-op (Dropout...)": inference.NOOP_TYPES}
    for label, types in counted.items():
        print(f"{label} layers: {count_types(graph, *types)} -> {count_types(result.graph, *types)}")
    print(f"parameters: {model.count_params():,} -> {result.model.count_params():,}")
    print(f"largest relative output difference: {relative_difference(reference, optimized):.3g}")
    keras_path = out / f"{model.name}_inference.keras"
    result.model.save(keras_path)
    (out / f"{model.name}_inference.py").write_text(rewriter.to_source(result.graph))
    print(f"wrote {keras_path} and {out / f'{model.name}_inference.py'}")


if __name__ == "__main__":
    main()
