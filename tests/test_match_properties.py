"""Property tests: `rewriter.find` against networkx's VF2 subgraph monomorphisms, and application counts.

Semantics being cross-checked. A plain pattern (op-type constraints and ``a >> b`` edges only) says
"``a``'s output is one of ``b``'s inputs"; over the graph collapsed to a simple ``DiGraph`` (a double edge
``ops.add(x, x)`` becomes one edge) that is exactly an edge ``g(a) -> g(b)``, and distinct pattern nodes bind
distinct graph nodes: a subgraph monomorphism. `find` reports one match per *place* (set of matched nodes
plus set of matched edges), so the networkx mappings are reduced to the same keys: mappings that differ
only by a symmetry of the pattern collapse into one place.
"""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms import isomorphism

import rewriter
from rewriter import Graph, Node, Pattern, Port, TensorSpec, any_op, each, op
from tests.strategies import functional_models

OP_TYPES = ["ReLU", "Dense", "Add"]
SPEC = TensorSpec((None, 4), "float32")


# ------------------------------------------------------------------------------------ random graphs


@st.composite
def random_graphs(draw: st.DrawFn, max_nodes: int = 14) -> Graph:
    """A random DAG built directly as a `rewriter.Graph`: node i reads 0..3 tensors of earlier nodes
    (repetitions allowed, so multi-edges appear), op types from a small alphabet."""
    count = draw(st.integers(1, max_nodes))
    graph = Graph("random")
    for i in range(count):
        arity = 0 if i == 0 else draw(st.integers(0, min(3, i)))
        inputs = [Port(f"n{draw(st.integers(0, i - 1))}", 0) for _ in range(arity)]
        op_type = draw(st.sampled_from(OP_TYPES))
        node = Node(
            f"n{i}", op_type, None, {"name": f"n{i}"}, input_specs=[SPEC] * arity, output_specs=[SPEC]
        )
        graph.add_node(node, inputs)
    graph.output_structure = [Port(f"n{count - 1}", 0)]
    return graph


@st.composite
def random_plain_patterns(draw: st.DrawFn) -> tuple[nx.DiGraph, list[str | None]]:
    """A random pattern DAG on 1..4 nodes: op types (None = wildcard) and edges i -> j for i < j."""
    size = draw(st.integers(1, 4))
    types = [draw(st.sampled_from([*OP_TYPES, None])) for _ in range(size)]
    shape = nx.DiGraph()
    shape.add_nodes_from(range(size))
    for j in range(size):
        for i in range(j):
            if draw(st.booleans()):
                shape.add_edge(i, j)
    return shape, types


def build_pattern(shape: nx.DiGraph, types: list[str | None]) -> tuple[Pattern, list[rewriter.OpPattern]]:
    nodes = [op(t) if t is not None else any_op() for t in types]
    for i, j in sorted(shape.edges):
        nodes[i] >> nodes[j]
    sinks = [nodes[i] for i in shape.nodes if shape.out_degree(i) == 0]
    return Pattern(*sinks), nodes


def keys_from_find(graph: Graph, pattern: Pattern) -> list[tuple[frozenset, frozenset]]:
    keys = []
    for match in rewriter.find(graph, pattern):
        nodes = frozenset(match.nodes)
        edges = frozenset(
            (match.bindings[src], match.bindings[dst]) for dst in pattern.nodes for src in dst.feeders
        )
        keys.append((nodes, edges))
    return keys


def keys_from_vf2(
    graph: Graph, shape: nx.DiGraph, types: list[str | None]
) -> set[tuple[frozenset, frozenset]]:
    big = nx.DiGraph(graph.nx)
    small = nx.DiGraph()
    for i, t in enumerate(types):
        small.add_node(i, op_type=t)
    small.add_edges_from(shape.edges)

    def node_match(g_attrs: dict, p_attrs: dict) -> bool:
        return p_attrs["op_type"] is None or g_attrs["op_type"] == p_attrs["op_type"]

    matcher = isomorphism.DiGraphMatcher(big, small, node_match=node_match)
    keys = set()
    for mapping in matcher.subgraph_monomorphisms_iter():
        inverse = {p: g for g, p in mapping.items()}
        keys.add((frozenset(mapping), frozenset((inverse[a], inverse[b]) for a, b in shape.edges)))
    return keys


@settings(max_examples=60)  # cheap (no Keras): more examples than the suite's default profile
@given(random_graphs(), random_plain_patterns())
def test_find_equals_vf2_monomorphisms(graph: Graph, plain: tuple[nx.DiGraph, list[str | None]]) -> None:
    shape, types = plain
    pattern, _ = build_pattern(shape, types)
    found = keys_from_find(graph, pattern)
    assert len(found) == len(set(found)), "a place was reported twice"
    assert set(found) == keys_from_vf2(graph, shape, types)


@given(random_graphs(), random_plain_patterns())
def test_every_match_is_a_monomorphism(graph: Graph, plain: tuple[nx.DiGraph, list[str | None]]) -> None:
    shape, types = plain
    pattern, nodes = build_pattern(shape, types)
    order = {name: i for i, name in enumerate(graph.topological_names())}
    anchors = []
    for match in rewriter.find(graph, pattern):
        bound = [match.bindings[n] for n in nodes]
        assert len(set(bound)) == len(bound)
        for node, name in zip(nodes, bound):
            assert types[nodes.index(node)] in (None, graph.node(name).op_type)
        for i, j in shape.edges:
            assert bound[i] in graph.producer_nodes(bound[j])
        assert match.nodes == sorted(bound, key=order.__getitem__)
        anchors.append(order[match.anchor])
    assert anchors == sorted(anchors)


@given(functional_models(max_ops=8), st.data())
def test_find_equals_vf2_on_lifted_keras_models(model, data: st.DataObject) -> None:
    """The same cross-check on real lifted Keras models (shared layers, nested models, keras.ops calls,
    multi-output nodes), with pattern op types drawn from the model's own op types."""
    graph = rewriter.lift(model)
    present = sorted({graph.node(n).op_type for n in graph.topological_names()})
    shape, _ = data.draw(random_plain_patterns())
    types = [data.draw(st.sampled_from([*present, None])) for _ in shape.nodes]
    pattern, _ = build_pattern(shape, types)
    found = keys_from_find(graph, pattern)
    assert len(found) == len(set(found))
    assert set(found) == keys_from_vf2(graph, shape, types)


@given(random_graphs(), st.sampled_from(OP_TYPES), st.sampled_from([*OP_TYPES, None]))
def test_commutative_list_reported_once(graph: Graph, first: str, second: str | None) -> None:
    """``[X, Y] -> Add`` (complete list, any order): one match per Add node with exactly two inputs whose
    producers, distinct nodes, fit {X, Y} in some order; counted here by brute force over the graph."""
    x = op(first)
    y = op(second) if second else any_op()
    matches = rewriter.find(graph, op("Add", inputs=[x, y]))
    expected = []
    for name in graph.topological_names():
        node = graph.node(name)
        if node.op_type != "Add":
            continue
        producers = [p.node for p in graph.producers(name)]
        if len(producers) != 2 or producers[0] == producers[1]:
            continue
        kinds = [graph.node(p).op_type for p in producers]

        def fits(kind: str, want: str | None) -> bool:
            return want is None or kind == want

        if (fits(kinds[0], first) and fits(kinds[1], second)) or (
            fits(kinds[1], first) and fits(kinds[0], second)
        ):
            expected.append(name)
    assert [m.anchor for m in matches] == expected


@settings(max_examples=60)  # cheap (no Keras)
@given(random_graphs(), st.lists(st.sampled_from([*OP_TYPES, None]), min_size=3, max_size=3))
def test_three_item_commutative_list_against_brute_force(graph: Graph, types: list[str | None]) -> None:
    """``[X, Y, Z] -> Add`` with repeated types (interchangeable items tried in one order only): one match
    per Add node with three distinct producers that fit the items in some order."""
    items = [op(t) if t else any_op() for t in types]
    found = [m.anchor for m in rewriter.find(graph, op("Add", inputs=items))]
    expected = []
    for name in graph.topological_names():
        producers = [p.node for p in graph.producers(name)]
        if graph.node(name).op_type != "Add" or len(producers) != 3 or len(set(producers)) != 3:
            continue
        kinds = [graph.node(p).op_type for p in producers]
        if any(
            all(want is None or kind == want for kind, want in zip(order, types))
            for order in itertools.permutations(kinds)
        ):
            expected.append(name)
    assert found == expected


@given(random_graphs(), st.lists(st.sampled_from([*OP_TYPES, None]), min_size=3, max_size=3))
def test_optional_middle_node_is_greedy(graph: Graph, types: list[str | None]) -> None:
    """``A -> B? -> C``: at each C node, the places with B present if there are any, else the places
    ``A -> C`` directly (the edge passing through); computed here by brute force."""
    kinds = [op(t) if t else any_op() for t in types]
    a, b, c = kinds[0].named("a"), kinds[1].named("b").optional(), kinds[2].named("c")
    found = sorted(tuple(sorted(m.captures.items())) for m in rewriter.find(graph, a >> b >> c))

    def fits(name: str, want: str | None) -> bool:
        return want is None or graph.node(name).op_type == want

    expected = []
    for gc in graph.topological_names():
        if not fits(gc, types[2]):
            continue
        present = [
            (ga, gb)
            for gb in graph.producer_nodes(gc)
            if fits(gb, types[1])
            for ga in graph.producer_nodes(gb)
            if fits(ga, types[0]) and len({ga, gb, gc}) == 3
        ]
        if present:
            expected += [(("a", ga), ("b", gb), ("c", gc)) for ga, gb in present]
        else:
            expected += [
                (("a", ga), ("c", gc)) for ga in graph.producer_nodes(gc) if fits(ga, types[0]) and ga != gc
            ]
    assert found == sorted(expected)


@given(random_graphs(max_nodes=20))
def test_anchors_restrict_and_agree(graph: Graph) -> None:
    pattern = Pattern(any_op() >> op("ReLU"))
    everything = rewriter.find(graph, pattern)
    names = graph.topological_names()[::2]
    restricted = rewriter.find(graph, pattern, anchors=names)
    assert [m._key for m in restricted] == [m._key for m in everything if m.anchor in set(names)]


# ------------------------------------------------------------------------------------ applications


def chains(graph: Graph, types: list[str | None]) -> list[list[str]]:
    """Independently: every chain t0 -> t1 -> ... (distinct nodes, consecutive producer edges; None = any)."""

    def fits(name: str, kind: str | None) -> bool:
        return kind is None or graph.nx.nodes[name]["op_type"] == kind

    paths = [[n] for n in graph.nx.nodes if fits(n, types[0])]
    for kind in types[1:]:
        paths = [
            [*path, nxt]
            for path in paths
            for nxt in set(graph.nx.successors(path[-1]))
            if fits(nxt, kind) and nxt not in path
        ]
    return paths


def count_chains(graph: Graph, types: list[str]) -> int:
    """Independent count of chains t0 -> t1 -> ... (see `chains`)."""
    return len(chains(graph, types))


@pytest.mark.slow
@pytest.mark.parametrize("app", ["ResNet50", "MobileNetV2"])
def test_counts_in_applications(app: str) -> None:
    import keras

    model = getattr(keras.applications, app)(weights=None)
    graph = rewriter.lift(model)
    conv_bn = rewriter.find(model, op("Conv2D") >> op("BatchNormalization"))
    assert len(conv_bn) == count_chains(graph, ["Conv2D", "BatchNormalization"]) > 10
    chain3 = rewriter.find(graph, op("Conv2D") >> op("BatchNormalization") >> op(["ReLU", "Activation"]))
    expected3 = count_chains(graph, ["Conv2D", "BatchNormalization", "ReLU"]) + count_chains(
        graph, ["Conv2D", "BatchNormalization", "Activation"]
    )
    assert len(chain3) == expected3 > 5
    # Add nodes with two BatchNormalization inputs (any order), counted by walking graph.nx.
    adds = rewriter.find(graph, op("Add", inputs=[op("BatchNormalization"), op("BatchNormalization")]))
    expected_adds = 0
    for name, data in graph.nx.nodes(data=True):
        if data["op_type"] != "Add":
            continue
        sources = [src for src, _ in graph.nx.in_edges(name)]
        kinds = [graph.nx.nodes[s]["op_type"] for s in sources]
        if len(sources) == 2 and len(set(sources)) == 2 and kinds == ["BatchNormalization"] * 2:
            expected_adds += 1
    assert len(adds) == expected_adds
    if app == "ResNet50":
        assert expected_adds > 0  # the projection shortcuts
    # [BN, ...] -> Add: a BN among the inputs (any position: Add is commutative), any arity; one match
    # per (Add, BN input) pair, like the chain BN -> Add.
    some_bn = rewriter.find(graph, op("Add", inputs=[op("BatchNormalization"), ...]))
    expected_some = sum(
        1
        for name, data in graph.nx.nodes(data=True)
        if data["op_type"] == "Add"
        for s in set(graph.nx.predecessors(name))
        if graph.nx.nodes[s]["op_type"] == "BatchNormalization"
    )
    assert len(some_bn) == len(rewriter.find(graph, op("BatchNormalization") >> op("Add")))
    assert len(some_bn) == expected_some > 0


@pytest.mark.slow
def test_variadic_and_open_list_counts_in_inception() -> None:
    import keras

    graph = rewriter.lift(keras.applications.InceptionV3(weights=None))
    concats = [n for n, d in graph.nx.nodes(data=True) if d["op_type"] == "Concatenate"]
    sources = {
        n: [src for src, _, _ in sorted(graph.nx.in_edges(n, data="arg_index"), key=lambda e: e[2])]
        for n in concats
    }
    kinds = {n: [graph.nx.nodes[s]["op_type"] for s in sources[n]] for n in concats}
    # each(): every input an Activation, at least three of them (the mixed blocks of four branches)
    expected_each = sorted(n for n in concats if len(kinds[n]) >= 3 and set(kinds[n]) == {"Activation"})
    found = rewriter.find(graph, op("Concatenate", inputs=each(op("Activation"), min=3)))
    assert sorted(m.anchor for m in found) == expected_each and len(expected_each) >= 5
    assert all(len(m.nodes) == 1 + len(sources[m.anchor]) for m in found)
    # exactly two inputs, whatever they are
    pairs = rewriter.find(graph, "[_, _] -> Concatenate")
    assert sorted(m.anchor for m in pairs) == sorted(
        n for n in concats if len(set(sources[n])) == 2 == len(sources[n])
    )
    # an open list: an Activation first, then anything (Concatenate is not commutative)
    first_act = rewriter.find(graph, "[Activation, ...] -> Concatenate")
    assert sorted(m.anchor for m in first_act) == sorted(n for n in concats if kinds[n][0] == "Activation")


@pytest.mark.slow
def test_greedy_optional_counts_in_mobilenet() -> None:
    import keras

    graph = rewriter.lift(keras.applications.MobileNetV2(weights=None))
    matches = rewriter.find(graph, "c:Conv2D -> b:BatchNormalization -> a:ReLU?")
    # independently: each Conv2D -> BN pair once per ReLU consumer of the BN, or once without one
    expected: list[tuple[str, str, str | None]] = []
    for conv, bn in [(p[0], p[1]) for p in chains(graph, ["Conv2D", "BatchNormalization"])]:
        relus = sorted(c for c in set(graph.nx.successors(bn)) if graph.nx.nodes[c]["op_type"] == "ReLU")
        expected += [(conv, bn, relu) for relu in relus] or [(conv, bn, None)]
    found = sorted((m.captures["c"], m.captures["b"], m.captures.get("a")) for m in matches)
    assert found == sorted(expected, key=lambda t: (t[0], t[1], t[2] or ""))
    assert any(a is None for _, _, a in found) and any(a is not None for _, _, a in found)
    # a wildcard in the middle: DepthwiseConv2D -> _ -> ReLU
    dw = rewriter.find(graph, "DepthwiseConv2D -> _ -> ReLU")
    expected_dw = [p for p in chains(graph, ["DepthwiseConv2D", None, "ReLU"])]
    assert sorted(m.nodes for m in dw) == sorted(expected_dw) and len(expected_dw) > 10
