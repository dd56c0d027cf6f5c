"""Benchmark: `rewriter.find` with a 3-node chain pattern vs networkx VF2 on the same graphs.

Synthetic residual models of about 1k, 5k and 20k ops (weightless layers, so that building them is quick),
in towers of 250 blocks; each block is ``h + LeakyReLU(Activation("tanh")(ReLU(h)))``, and every fourth
block swaps the first two layers so that not every block matches. The pattern is
``ReLU -> Activation -> LeakyReLU``.

The baseline is ``networkx.algorithms.isomorphism.DiGraphMatcher(G, P, node_match=same op type)
.subgraph_monomorphisms_iter()`` on ``networkx.DiGraph(graph.nx)`` (the same monomorphism semantics).
`find` is timed on a fresh copy of the graph each repeat (no cached topological order), and includes
everything it does (pattern compilation, op index, topological order, match objects).

Targets: ``find`` at most 0.5x VF2's time at ~5k ops; ``find`` at 4x the ops at most 5.5x the time.

Run: ``python benchmarks/bench_match.py`` (about a minute; ``--quick`` stops at 5k ops).
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import networkx as nx
from networkx.algorithms import isomorphism

import rewriter
from rewriter import op

L = keras.layers


def residual_model(num_blocks: int, tower_blocks: int = 250) -> keras.Model:
    """Residual towers of at most ``tower_blocks`` blocks (Keras builds models recursively), summed."""
    x = keras.Input((8,), name="x")
    tops = []
    for start in range(0, num_blocks, tower_blocks):
        h = x
        for i in range(start, min(num_blocks, start + tower_blocks)):
            swapped = i % 4 == 3
            y = L.ReLU()(L.Activation("tanh")(h)) if swapped else L.Activation("tanh")(L.ReLU()(h))
            y = L.LeakyReLU()(y)
            h = L.Add()([h, y])
        tops.append(h)
    return keras.Model(x, tops[0] if len(tops) == 1 else L.Add()(tops))


def timed(fn, *args) -> tuple[float, object]:
    """Wall time of one ``fn(*args)`` call with the GC off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn(*args)
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [250, 1250] if quick else [250, 1250, 5000]  # 4 ops per block: ~1k, 5k, 20k ops
    pattern = rewriter.Pattern(op("ReLU") >> op("Activation") >> op("LeakyReLU"))
    small = nx.DiGraph([(0, 1), (1, 2)])
    for k, t in enumerate(["ReLU", "Activation", "LeakyReLU"]):
        small.nodes[k]["op_type"] = t

    def find(fresh: rewriter.Graph) -> list[rewriter.Match]:
        return rewriter.find(fresh, pattern)

    def vf2(big: nx.DiGraph) -> list[dict]:
        matcher = isomorphism.DiGraphMatcher(big, small, node_match=lambda a, b: a["op_type"] == b["op_type"])
        return list(matcher.subgraph_monomorphisms_iter())

    graphs = []
    for blocks in sizes:
        start = time.perf_counter()
        graphs.append(rewriter.lift(residual_model(blocks)))
        print(f"built and lifted {len(graphs[-1])} ops in {time.perf_counter() - start:.0f} s", flush=True)

    # Rounds over every size, best time of each (robust to other load on the machine: a busy spell
    # slows one round of every size, not one size). find gets a fresh copy of the graph each run (no
    # cached topological order); VF2 gets its DiGraph ready-made.
    repeats = 7
    best = {len(g): [float("inf"), float("inf"), 0, 0] for g in graphs}
    for _ in range(repeats):
        for graph in graphs:
            row = best[len(graph)]
            elapsed, matches = timed(find, graph.copy())
            row[0] = min(row[0], elapsed)
            elapsed, mono = timed(vf2, nx.DiGraph(graph.nx))
            row[1] = min(row[1], elapsed)
            row[2], row[3] = len(matches), len(mono)
    rows = []
    for ops, (find_time, vf2_time, found, monomorphisms) in best.items():
        assert found == monomorphisms, (found, monomorphisms)
        rows.append((ops, found, find_time, vf2_time))
        print(
            f"{ops:6d} ops  {found:5d} matches  find {find_time * 1e3:8.1f} ms  "
            f"VF2 {vf2_time * 1e3:9.1f} ms  find/VF2 = {find_time / vf2_time:.3f}"
        )
    for (n1, _, t1, _), (n2, _, t2, _) in itertools.pairwise(rows):
        print(f"scaling {n1} -> {n2} ops ({n2 / n1:.1f}x): find time x{t2 / t1:.2f}")
    target = min(rows, key=lambda r: abs(r[0] - 5000))
    print(f"at ~5k ops: find/VF2 = {target[2] / target[3]:.3f} (target <= 0.5)")


if __name__ == "__main__":
    main()
