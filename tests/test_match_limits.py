"""Limits of the matcher: deep graphs, long patterns, a low recursion limit, and malformed input.

The matcher must not recurse over the graph's depth nor over the pattern's size: these tests lower the
recursion limit far below the sizes involved. Bad input must raise a `rewriter.RewriteError` subclass
saying what is wrong, never a deep traceback from inside the matcher.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import keras
import pytest

import rewriter
from rewriter import Graph, MatchError, Node, Pattern, PatternError, Port, TensorSpec, each, op, tensor
from rewriter.pattern import OpChoice, OpPattern
from tests.helpers import recursion_limit

SPEC = TensorSpec((None, 4), "float32")


def chain_graph(length: int, kinds: tuple[str, ...] = ("ReLU",), tail: str | None = None) -> Graph:
    """input -> kinds[0] -> kinds[1] -> ... (cycled), ``length`` ops, then an optional ``tail`` op."""
    graph = Graph("chain")
    graph.add_node(Node("x", "InputLayer", None, None, output_specs=[SPEC]))
    graph.inputs = ["x"]
    previous = "x"
    steps = [(f"n{i}", kinds[i % len(kinds)]) for i in range(length)]
    if tail is not None:
        steps.append(("tail", tail))
    for name, kind in steps:
        node = Node(name, kind, None, {"name": name}, input_specs=[SPEC], output_specs=[SPEC])
        graph.add_node(node, [Port(previous)])
        previous = name
    graph.output_structure = Port(previous)
    return graph


def chain_pattern(kinds: list[str]) -> OpPattern:
    node = op(kinds[0])
    for kind in kinds[1:]:
        node = node >> op(kind)
    return node


def test_long_chain_pattern_on_a_3000_op_chain() -> None:
    graph = chain_graph(3000)
    pattern = chain_pattern(["ReLU"] * 200)
    with recursion_limit(len(traceback.extract_stack()) + 150):
        matches = rewriter.find(graph, pattern)
    assert len(matches) == 3000 - 200 + 1
    assert matches[0].nodes == [f"n{i}" for i in range(200)]
    assert matches[-1].anchor == "n2999"


def test_pattern_at_the_far_end_of_a_3000_op_chain() -> None:
    graph = chain_graph(3000, kinds=("ReLU", "ELU"), tail="Dense")
    with recursion_limit(len(traceback.extract_stack()) + 150):
        far = rewriter.find(graph, "ELU -> Dense")
        first = rewriter.find(graph, "InputLayer -> ReLU -> ELU")
        text = rewriter.explain(graph, "ReLU -> Dense", at="tail")
    assert [m.nodes for m in far] == [["n2999", "tail"]]
    assert [m.nodes for m in first] == [["x", "n0", "n1"]]
    assert (
        "Dense = 'tail' (Dense)" in text and "node 'n2999' cannot be ReLU: its op is ELU, wanted ReLU" in text
    )


def test_a_1000_node_pattern_needs_no_recursion() -> None:
    graph = chain_graph(1000, tail="Dense")  # the Dense anchor is unique: the cost is the pattern's size
    kinds = ["ReLU"] * 1000 + ["Dense"]
    pattern = Pattern(chain_pattern(kinds))
    text = " -> ".join(kinds)
    with recursion_limit(len(traceback.extract_stack()) + 150):
        matches = rewriter.find(graph, pattern)
        parsed = rewriter.parse_pattern(text)
        assert parsed == pattern and str(parsed) == text
        explained = rewriter.explain(graph, pattern, at="n0")
        longer = rewriter.explain(graph, chain_pattern(["ReLU"] * 1001 + ["Dense"]), at="tail")
    assert [m.anchor for m in matches] == ["tail"] and len(matches[0].nodes) == 1001
    assert "matches with node 'n0'" in explained
    assert "(1001 of 1002 pattern nodes" in longer and "node 'x' cannot be ReLU" in longer


def test_wide_input_lists_need_no_recursion() -> None:
    x = keras.Input((4,), name="x")
    parts = [keras.layers.ReLU(name=f"r{i}")(x) for i in range(300)]
    graph = rewriter.lift(keras.Model(x, keras.layers.Add(name="sum")(parts)))
    items = [op("ReLU") for _ in range(300)]
    with recursion_limit(len(traceback.extract_stack()) + 150):
        matches = rewriter.find(graph, op("Add", inputs=items))
        variadic = rewriter.find(graph, op("Add", inputs=each(op("ReLU"), min=300)))
    assert [m.anchor for m in matches] == ["sum"] and len(matches[0].nodes) == 301
    assert [len(m.nodes) for m in variadic] == [301]


# ------------------------------------------------------------------------------------ malformed input


def _edited(**attributes: Any) -> Callable[[], OpPattern]:
    def build() -> OpPattern:
        node = op("ReLU")
        for key, value in attributes.items():
            setattr(node, key, value)
        return node

    return build


MALFORMED: list[tuple[str, Callable[[], Any], str]] = [
    ("an int", lambda: 5, "Expected a pattern"),
    ("None", lambda: None, "Expected a pattern"),
    ("a list of nodes", lambda: [op("ReLU")], "Expected a pattern"),
    ("a layer object", lambda: keras.layers.ReLU(), "A Keras layer object is not a pattern"),
    ("a non-Keras class", lambda: op(int), "keras.Operation subclass"),
    ("an int op type", lambda: op(3), "class name or a Keras layer/operation class"),
    ("an empty op list", lambda: op([]), "at least one op type"),
    ("config that is not a dict", lambda: op("Dense", config=5), "op\\(config=...\\) takes a dict"),
    ("inputs that are not a list", lambda: op("Add", inputs=5), "inputs= must be a list"),
    ("a list with a number", lambda: op("Add", inputs=[1]), "Input list items must be"),
    ("'>>' to a number", lambda: op("Dense") >> 5, "right side of '>>'"),
    ("a number '>>' a node", lambda: 5 >> op("Dense"), "left side of '>>'"),
    ("'|' with a number", lambda: op("Dense") | 5, "both sides of '\\|'"),
    ("a string rank", lambda: op("Dense").output(rank="two"), "rank='two'"),
    ("an int shape", lambda: op("Dense").output(shape=5), "shape=5"),
    ("a negative output index", lambda: op("Dense").output(index=-1, rank=2), "index=-1"),
    ("a bad tensor shape", lambda: op("Add", inputs=[tensor(shape=("a",))]), "shape=\\('a',\\)"),
    ("a non-callable node predicate", lambda: op("Dense").where(5), "where\\(\\) takes a function"),
    ("a non-callable where=", lambda: Pattern(op("Dense"), where=5), "takes a function of the Match"),
    ("a non-bool optional flag", lambda: op("Dense").optional("no"), "optional\\(\\) takes True or False"),
    ("a non-bool commutative flag", lambda: op("Add", commutative="yes"), "commutative= takes"),
    ("raw choices that are strings", lambda: OpPattern(["Dense"]), "must be OpChoice objects"),
    ("a raw choice with an int op", lambda: OpPattern([OpChoice(5)]), "class name, a class or None"),
    ("a raw choice with a plain config", lambda: OpChoice("Dense", {"units": 3}), "value constraints"),
    ("a junk feeder", _edited(feeders=["Conv2D"]), "chained inputs must be pattern nodes"),
    ("a junk input mode", _edited(input_mode="weird"), "input mode must be"),
    ("each mode without each()", _edited(input_mode="each"), "must be each\\(item\\)"),
    ("a junk list item", _edited(input_mode="list", input_list=[3]), "input list items must be"),
    ("a junk capture name", _edited(name="not a name"), "not a Python identifier"),
]


@pytest.mark.parametrize("build, message", [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_patterns_raise_pattern_error(build: Callable[[], Any], message: str) -> None:
    graph = chain_graph(3)
    with pytest.raises(PatternError, match=message) as caught:
        rewriter.find(graph, build())
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert len(frames) <= 8, "a pattern error should be raised close to the API, not deep in the matcher"
    assert not any(frame.filename.endswith("match.py") and frame.name.startswith("_bind") for frame in frames)


def test_a_pattern_edited_after_it_was_built_is_refused() -> None:
    relu = op("ReLU")
    pattern = Pattern(relu)
    relu.feeders.append(op("Dense"))
    with pytest.raises(PatternError, match="modified after Pattern"):
        rewriter.find(chain_graph(3), pattern)


def test_a_layer_class_is_a_pattern() -> None:
    graph = chain_graph(3)
    assert [m.anchor for m in rewriter.find(graph, keras.layers.ReLU)] == ["n0", "n1", "n2"]


@pytest.mark.parametrize("anchors", ["n0", 5])
def test_anchors_must_be_an_iterable_of_names(anchors: Any) -> None:
    with pytest.raises(MatchError, match=r"anchors=\.\.\.\) takes an iterable of node names"):
        rewriter.find(chain_graph(3), "ReLU", anchors=anchors)


def test_text_language_knows_classes_defined_after_the_first_parse() -> None:
    rewriter.parse_pattern("Conv2D")  # the known class names are scanned once here

    class LateScale(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2

    assert str(rewriter.parse_pattern("Dense -> LateScale")) == "Dense -> LateScale"
    x = keras.Input((4,), name="x")
    model = keras.Model(x, LateScale(name="late")(keras.layers.Dense(4, name="d")(x)))
    assert [m.nodes for m in rewriter.find(model, "Dense -> LateScale")] == [["d", "late"]]
