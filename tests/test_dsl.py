"""Tests of the text pattern language (rewriter/dsl.py): syntax, errors, and the patterns it builds."""

from __future__ import annotations

import pytest

from rewriter.dsl import ChainSyntax, GroupSyntax, NodeSyntax, parse_syntax
from rewriter.errors import PatternError

# ------------------------------------------------------------------------------------------ syntax tree


def _node(element: NodeSyntax | GroupSyntax) -> NodeSyntax:
    assert isinstance(element, NodeSyntax)
    return element


def test_chain_of_two_names() -> None:
    tree = parse_syntax("Conv2D -> BatchNormalization")
    assert len(tree.chains) == 1
    names = [_node(e).alternatives[0].name for e in tree.chains[0].elements]
    assert names == ["Conv2D", "BatchNormalization"]


def test_captures_constraints_alternatives_optional() -> None:
    text = (
        'c:Conv2D(kernel_size=(1, 1), padding="same") -> b:BatchNormalization '
        '-> a:(ReLU | Activation(activation="relu"))?'
    )
    conv, bn, act = (_node(e) for e in parse_syntax(text).chains[0].elements)
    assert conv.capture == "c" and not conv.optional
    assert [(c.key, c.kind, c.value) for c in conv.alternatives[0].constraints] == [
        ("kernel_size", "equals", (1, 1)),
        ("padding", "equals", "same"),
    ]
    assert bn.capture == "b" and bn.alternatives[0].constraints == ()
    assert act.capture == "a" and act.optional
    assert [op.name for op in act.alternatives] == ["ReLU", "Activation"]
    assert act.alternatives[1].constraints[0].value == "relu"
    assert (conv.line, conv.column, act.line, act.column) == (1, 1, 1, text.index("a:") + 1)


def test_group_and_wildcard() -> None:
    tree = parse_syntax("[BatchNormalization, Activation] -> Add; DepthwiseConv2D -> _ -> Activation")
    group = tree.chains[0].elements[0]
    assert isinstance(group, GroupSyntax) and not group.open_ended
    assert [_node(item.elements[0]).alternatives[0].name for item in group.items] == [
        "BatchNormalization",
        "Activation",
    ]
    middle = _node(tree.chains[1].elements[1])
    assert middle.alternatives[0].is_wildcard and middle.bare_name is None


def test_references_and_statement_separators() -> None:
    tree = parse_syntax("x:Conv2D; y:Conv2D; [x, y] -> Concatenate")
    assert len(tree.chains) == 3
    group = tree.chains[2].elements[0]
    assert isinstance(group, GroupSyntax)
    assert [_node(item.elements[0]).bare_name for item in group.items] == ["x", "y"]


def test_group_items_are_chains_and_may_be_open_ended() -> None:
    tree = parse_syntax("[Conv2D -> ReLU, _, ...] -> Concatenate")
    group = tree.chains[0].elements[0]
    assert isinstance(group, GroupSyntax) and group.open_ended
    assert isinstance(group.items[0], ChainSyntax) and len(group.items[0].elements) == 2
    assert len(group.items) == 2


def test_literals() -> None:
    text = (
        'Op(a=1, b=-2, c=+3.5, d=-2.5e-3, e=1E4, f=\'s\', g="d\\"q\\n\\u00e9", h=(1,), i=(), j=(7), '
        "k=[1, [2, 3]], l={'x': None, 1: (True, False)}, m=None, n=True, o=False, p=.5, q=_)"
    )
    constraints = _node(parse_syntax(text).chains[0].elements[0]).alternatives[0].constraints
    values = {c.key: c.value for c in constraints}
    assert values == {
        "a": 1,
        "b": -2,
        "c": 3.5,
        "d": -2.5e-3,
        "e": 1e4,
        "f": "s",
        "g": 'd"q\n\u00e9',
        "h": (1,),
        "i": (),
        "j": 7,
        "k": [1, [2, 3]],
        "l": {"x": None, 1: (True, False)},
        "m": None,
        "n": True,
        "o": False,
        "p": 0.5,
        "q": None,
    }
    assert isinstance(values["a"], int) and isinstance(values["e"], float)
    kinds = {c.key: c.kind for c in constraints}
    assert kinds["q"] == "any" and kinds["a"] == "equals"


def test_one_of_constraint() -> None:
    (constraint,) = (
        _node(parse_syntax("Conv2D(padding in ['same', 'valid'])").chains[0].elements[0])
        .alternatives[0]
        .constraints
    )
    assert (constraint.kind, constraint.value) == ("one_of", ("same", "valid"))


def test_comments_and_multiline_text() -> None:
    text = """
    # a residual block
    c:Conv2D(
        kernel_size=(3, 3),   # inside brackets new lines are free
        padding="same",
    )
      -> b:BatchNormalization   # a line starting with -> continues the chain
      -> a:ReLU
       | ReLU6 ;

    [a, _] -> Add   # a second chain
    """
    tree = parse_syntax(text)
    assert len(tree.chains) == 2
    first = [_node(e) for e in tree.chains[0].elements]
    assert [n.capture for n in first] == ["c", "b", "a"]
    assert [op.name for op in first[2].alternatives] == ["ReLU", "ReLU6"]
    assert first[0].line == 3 and first[1].line == 7


def test_line_ending_with_arrow_continues() -> None:
    tree = parse_syntax("Conv2D ->\n  ReLU")
    assert len(tree.chains) == 1 and len(tree.chains[0].elements) == 2


def test_dotted_names() -> None:
    node = _node(parse_syntax("keras.layers.Conv2D").chains[0].elements[0])
    assert node.alternatives[0].name == "keras.layers.Conv2D"


# ------------------------------------------------------------------------------------------ syntax errors


def _error(text: str) -> PatternError:
    with pytest.raises(PatternError) as caught:
        parse_syntax(text)
    return caught.value


@pytest.mark.parametrize(
    ("text", "line", "column", "expected_words"),
    [
        ("Conv2D ->", 1, 10, ["'('", "'['", "a name"]),
        ("Conv2D -> -> ReLU", 1, 11, ["'('", "'['", "a name"]),
        ("Conv2D(a=1", 1, 11, ["')'", "','"]),
        ("Conv2D(a=(1, 2) -> ReLU", 1, 17, ["')'", "','"]),
        ("[A, B", 1, 6, ["','", "']'"]),
        ("A B", 1, 3, ["'->'", "'?'", "'|'", "a new line", "the end of the text"]),
        ("A\n  -> B ->\n\n", 2, 10, ["a name"]),
        ("Conv2D(32)", 1, 8, ["')'", "a name"]),
        ("x:", 1, 3, ["'('", "a name"]),
        ("A -> B;\nC -> ;D", 2, 6, ["a name"]),
    ],
)
def test_syntax_error_position_and_expected(
    text: str, line: int, column: int, expected_words: list[str]
) -> None:
    error = _error(text)
    message = str(error)
    assert f"line {line}, column {column}" in message
    assert (error.line, error.column) == (line, column)  # type: ignore[attr-defined]
    expected_part = message.split("Expected", 1)[1].split("\n", 1)[0]
    for word in expected_words:
        assert word in expected_part, (word, message)
    # lark's internal terminal names never leak into the message
    for internal in ("RPAR", "LSQB", "NAME", "_ARROW", "$END", "__ANON"):
        assert internal not in message


def test_syntax_error_shows_offending_line_with_caret() -> None:
    message = str(_error("Conv2D -> ReLU\nBatchNormalization(momentum=0.9 epsilon=1e-3)"))
    lines = message.splitlines()
    assert "line 2, column 33" in lines[0]
    source, caret = lines[1], lines[2]
    assert source.strip() == "BatchNormalization(momentum=0.9 epsilon=1e-3)"
    assert caret.index("^") == source.index("epsilon")


def test_unexpected_character() -> None:
    message = str(_error("Conv2D $ ReLU"))
    assert "line 1, column 8" in message and "'$'" in message and "'->'" in message


def test_positional_argument_hint() -> None:
    assert "keyword arguments" in str(_error("Conv2D(32, 3)"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Conv2D(padding=same)", "write strings in quotes"),
        ("Conv2D(padding in 'same')", "needs a list or tuple"),
        ("[..., x] -> Add", "'...' may only be the last item"),
        ("Conv2D(a=1, a=2)", "constrained twice"),
        ("A(s='\\q')", "Unknown escape"),
        ("A(t=(1, _))", "'_' (anything) may only stand alone"),
        ("A(x=1;)", "not closed"),
    ],
)
def test_semantic_syntax_errors(text: str, fragment: str) -> None:
    message = str(_error(text))
    assert fragment in message
    assert "line 1, column" in message and "^" in message


@pytest.mark.parametrize("text", ["", "   \n  # only a comment\n", ";;"])
def test_empty_text_is_an_error(text: str) -> None:
    assert "empty" in str(_error(text))


def test_non_string_is_an_error() -> None:
    with pytest.raises(PatternError, match="str"):
        parse_syntax(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ building patterns

import keras  # noqa: E402
from keras import layers  # noqa: E402

import rewriter  # noqa: E402
from rewriter import Pattern, any_op, anything, each, one_of, op, parse_pattern, tensor  # noqa: E402


def _issue_examples() -> list[tuple[str, Pattern]]:
    x = op("Conv2D").named("x")
    y = op("Conv2D").named("y")
    return [
        ("Conv2D -> BatchNormalization", Pattern(op("Conv2D") >> op("BatchNormalization"))),
        (
            'c:Conv2D(kernel_size=(1, 1), padding="same") -> b:BatchNormalization '
            '-> a:(ReLU | Activation(activation="relu"))?',
            Pattern(
                op("Conv2D", kernel_size=(1, 1), padding="same").named("c")
                >> op("BatchNormalization").named("b")
                >> (op("ReLU") | op("Activation", activation="relu")).named("a").optional()
            ),
        ),
        (
            "[BatchNormalization, Activation] -> Add",
            Pattern(op("Add", inputs=[op("BatchNormalization"), op("Activation")])),
        ),
        (
            "DepthwiseConv2D -> _ -> Activation",
            Pattern(op("DepthwiseConv2D") >> any_op() >> op("Activation")),
        ),
        ("x:Conv2D; y:Conv2D; [x, y] -> Concatenate", Pattern(op("Concatenate", inputs=[x, y]))),
    ]


@pytest.mark.parametrize("index", range(5))
def test_issue_examples_equal_python_dsl(index: int) -> None:
    text, expected = _issue_examples()[index]
    parsed = parse_pattern(text)
    assert parsed == expected
    assert hash(parsed) == hash(expected)
    assert parsed.capture_names == expected.capture_names
    assert parsed.structure() == expected.structure()


def test_structural_differences_are_not_equal() -> None:
    base = parse_pattern('c:Conv2D(padding="same") -> ReLU')
    assert base != parse_pattern('c:Conv2D(padding="valid") -> ReLU')
    assert base != parse_pattern('d:Conv2D(padding="same") -> ReLU')
    assert base != parse_pattern('c:Conv2D(padding="same") -> ReLU?')
    assert base != parse_pattern('c:Conv2D(padding="same") -> ELU')
    assert base != parse_pattern('c:Conv2D(padding="same"); [c] -> ReLU')  # complete list vs. one input
    assert parse_pattern("[BatchNormalization, Activation] -> Add") != parse_pattern(
        "[Activation, BatchNormalization] -> Add"
    )


def test_equal_regardless_of_spelling() -> None:
    assert parse_pattern("A:(ReLU | ELU)") == parse_pattern("A:(ELU | ReLU)")
    assert parse_pattern("Conv2D(kernel_size=[3, 3])") == parse_pattern("Conv2D(kernel_size=(3, 3))")
    assert parse_pattern("a:Conv2D -> _s:Add; b:Dense -> _s") == parse_pattern(
        "b:Dense -> _t:Add; a:Conv2D -> _t"
    )
    multiline = parse_pattern(
        """
        c:Conv2D(
            kernel_size=(1, 1),
            padding="same",   # comment
        )
          -> b:BatchNormalization
          -> a:(ReLU | Activation(activation="relu"))?
        """
    )
    assert multiline == _issue_examples()[1][1]


def test_values_become_the_dsl_constraints() -> None:
    parsed = parse_pattern("Activation(activation in ['relu', 'relu6'], name=_); Dense(units=one_of(8, 16))")
    expected_activation = op("Activation", activation=one_of("relu", "relu6"), name=anything())
    expected_dense = op("Dense", units=one_of(8, 16))
    assert parsed == Pattern(expected_activation, expected_dense)


def test_references_before_definition_and_labels() -> None:
    parsed = parse_pattern("[x, y] -> Concatenate; x:Conv2D; y:Conv2D")
    assert parsed == _issue_examples()[4][1]
    labelled = parse_pattern("_c:Conv2D; [_c, _c] -> Add")  # _-names label without capturing
    conv = op("Conv2D")
    assert labelled == Pattern(op("Add", inputs=[conv, conv]))
    assert labelled.capture_names == []


def test_tensors_open_lists_each_and_outputs() -> None:
    x = tensor("x")
    assert parse_pattern("[$x, $x] -> Multiply") == Pattern(op("Multiply", inputs=[x, x]))
    assert parse_pattern("[*, Conv2D, ...] -> Concatenate") == Pattern(
        op("Concatenate", inputs=[tensor(), op("Conv2D"), ...])
    )
    assert parse_pattern("each(Conv2D | Dense, min=2) -> Concatenate") == Pattern(
        op("Concatenate", inputs=each(op("Conv2D") | op("Dense"), min=2))
    )
    assert parse_pattern("c:Conv2D{output(rank=4, shape=(None, None, None, 8))} -> ReLU") == Pattern(
        op("Conv2D").named("c").output(rank=4, shape=(None, None, None, 8)) >> op("ReLU")
    )


def test_several_sinks_in_order_of_appearance() -> None:
    parsed = parse_pattern("c:Conv2D -> r:ReLU; c -> b:BatchNormalization")
    assert [s.name for s in parsed.sinks] == ["r", "b"]
    assert parsed.anchor.name == "r"


def test_dotted_class_names() -> None:
    assert parse_pattern("keras.layers.Conv2D -> layers.ReLU") == parse_pattern("Conv2D -> ReLU")


def test_where_and_name_pass_through() -> None:
    def check(match: object) -> bool:
        return True

    parsed = parse_pattern("Conv2D", where=check, name="convs")
    assert parsed.where is check and parsed.name == "convs"


@pytest.mark.parametrize(
    "text",
    [
        "c:Conv2D(kernel_size=(1, 1)) -> b:BatchNormalization -> a:(ReLU | Activation(activation='relu'))?",
        "[BatchNormalization, Activation] -> Add",
        "x:Conv2D; y:Conv2D; [x, y] -> Concatenate",
        "[$x, $x, *] -> Multiply",
        "each(Conv2D, min=2, max=3) -> Concatenate",
        "c:Conv2D{output(rank=4, dtype='float32')} -> ReLU",
        "a:Dense(units=one_of(1, 2), use_bias=_, kernel_initializer={'class_name': 'Zeros', 'config': {}})",
        "a:Conv2D -> _x:Add; b:Dense -> _x",
        "Dense; Conv2D -> ReLU",
    ],
)
def test_printed_pattern_parses_back_to_an_equal_pattern(text: str) -> None:
    parsed = parse_pattern(text)
    assert parse_pattern(str(parsed)) == parsed


# ------------------------------------------------------------------------------------ semantic errors


def _pattern_error(text: str) -> str:
    with pytest.raises(PatternError) as caught:
        parse_pattern(text)
    return str(caught.value)


def test_unknown_class_name_suggests_close_names() -> None:
    message = _pattern_error("Conv2D -> BatchNormalisation")
    assert "line 1, column 11" in message
    assert "'BatchNormalisation'" in message and "'BatchNormalization'" in message
    assert message.splitlines()[2].index("^") == message.splitlines()[1].index("BatchNormalisation")


def test_unknown_class_name_on_a_later_line() -> None:
    message = _pattern_error("Conv2D -> ReLU\n  Conv2d -> ReLU")
    assert "line 2, column 3" in message and "'Conv2D'" in message


def test_unknown_reference_suggests_capture() -> None:
    message = _pattern_error("first:Conv2D; second:Conv2D; [first, secnd] -> Concatenate")
    assert "'secnd'" in message and "'second'" in message


def test_unknown_dotted_name() -> None:
    message = _pattern_error("keras.layers.Conv2E")
    assert "'Conv2E'" in message and "'Conv2D'" in message


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("x:Conv2D; x:Dense", "defined twice", 11),
        ("[Conv2D, ReLU]", "must feed a node", 1),
        ("Conv2D -> [ReLU] -> Add", "cannot follow '->'", 11),
        ("each(Conv2D)", "inputs of the node after it", 1),
        ("each($x) -> Concatenate", "must be '*'", 6),
        ("each(Conv2D, mn=2) -> Concatenate", "only min= and max=", 14),
        ("Conv2D{outputs(rank=4)}", "output(rank=", 8),
        ("Conv2D{output(size=3)}", "constrains only", 15),
        ("Conv2D(padding=pick('same'))", "one_of", 16),
        ("ReLU:Conv2D -> ReLU", "also an op class name", 1),
        ("x:Conv2D -> ReLU; x? -> Dense", "refers to a captured node", 19),
    ],
)
def test_structural_errors_have_positions(text: str, fragment: str, column: int) -> None:
    message = _pattern_error(text)
    assert fragment in message
    assert f"line 1, column {column}" in message


def test_model_validation_errors_are_pattern_errors() -> None:
    message = _pattern_error("a:ReLU? -> Dense; a -> Conv2D")
    assert "Optional node" in message and "line 1" in message


def test_text_accepted_wherever_a_pattern_is() -> None:
    assert rewriter.as_pattern("Conv2D -> ReLU") == parse_pattern("Conv2D -> ReLU")


# ------------------------------------------------------------------------------------ matching real models


def _conv_bn_model() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 1, padding="same", name="c1")(inputs)
    h = layers.BatchNormalization(name="b1")(h)
    h = layers.ReLU(name="r1")(h)
    h = layers.Conv2D(8, 3, padding="same", name="c2")(h)
    h = layers.BatchNormalization(name="b2")(h)  # no activation after this one
    skip = layers.Conv2D(8, 1, padding="same", name="c3")(inputs)
    skip = layers.BatchNormalization(name="b3")(skip)
    skip = layers.Activation("relu", name="a3")(skip)
    h = layers.Add(name="add")([h, skip])
    h = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = layers.BatchNormalization(name="b4")(h)
    h = layers.Activation("relu6", name="a4")(h)
    left = layers.Conv2D(4, 1, name="l")(h)
    right = layers.Conv2D(4, 1, name="r")(h)
    out = layers.Concatenate(name="cat")([left, right])
    return keras.Model(inputs, out)


def test_find_with_text_patterns_on_a_real_model() -> None:
    model = _conv_bn_model()
    graph = rewriter.lift(model)

    # Independent count: every Conv2D whose output feeds a BatchNormalization.
    expected = sorted(
        n.name
        for n in graph.topological()
        if n.op_type == "Conv2D"
        and any(graph.node(u.consumer).op_type == "BatchNormalization" for u in graph.consumers(n.name))
    )
    found = rewriter.find(graph, "c:Conv2D -> BatchNormalization")
    assert sorted(m.captures["c"] for m in found) == expected == ["c1", "c2", "c3"]

    block = (
        'c:Conv2D(kernel_size=(1, 1), padding="same") -> b:BatchNormalization '
        '-> a:(ReLU | Activation(activation="relu"))?'
    )
    matches = rewriter.find(model, block)
    assert sorted((m.captures["c"], m.captures["b"], m.captures.get("a")) for m in matches) == [
        ("c1", "b1", "r1"),
        ("c3", "b3", "a3"),
    ]
    assert matches[0]["c"] is model.get_layer(matches[0].captures["c"])

    adds = rewriter.find(model, "[BatchNormalization, Activation] -> a:Add")
    assert [m.captures["a"] for m in adds] == ["add"]
    assert rewriter.find(model, "[BatchNormalization, ReLU] -> Add") == []
    # Add is commutative: the listed order may differ from the argument order, reported once
    swapped = rewriter.find(model, "[Activation, BatchNormalization] -> a:Add")
    assert [m.captures["a"] for m in swapped] == ["add"]

    dw = rewriter.find(model, "DepthwiseConv2D -> _ -> a:Activation")
    assert [m.captures["a"] for m in dw] == ["a4"]

    cat = rewriter.find(model, "x:Conv2D; y:Conv2D; [x, y] -> Concatenate")
    assert [(m.captures["x"], m.captures["y"]) for m in cat] == [("l", "r")]


def test_find_with_values_one_of_and_open_lists() -> None:
    model = _conv_bn_model()
    assert sorted(
        m.captures["c"] for m in rewriter.find(model, "c:Conv2D(kernel_size in [(3, 3), (5, 5)])")
    ) == ["c2"]
    assert sorted(
        m.captures["a"] for m in rewriter.find(model, "a:Activation(activation=one_of('relu6', 'gelu'))")
    ) == ["a4"]
    assert len(rewriter.find(model, "[x:Conv2D(filters=4), ...] -> Concatenate")) == 1
    assert rewriter.find(model, "[*, *, *] -> Concatenate") == []


# ------------------------------------------------------------------------------------ property: round trip

from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = ["Conv2D", "Dense", "ReLU", "BatchNormalization", "Activation", "Add", "Concatenate", "_"]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
)
_values = st.recursive(
    _scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3), max_leaves=5
)


@st.composite
def _random_patterns(draw: st.DrawFn) -> Pattern:
    nodes = []
    for index in range(draw(st.integers(1, 6))):
        config = {
            key: draw(
                st.one_of(_values, st.builds(lambda *v: one_of(*v), _scalars, _scalars), st.just(anything()))
            )
            for key in draw(
                st.lists(st.sampled_from(["units", "padding", "axis", "rate"]), max_size=2, unique=True)
            )
        }
        kinds = draw(st.lists(st.sampled_from(_OPS), min_size=1, max_size=2, unique=True))
        node = None
        for kind in kinds:
            choice = any_op(**config) if kind == "_" else op(kind, **config)
            node = choice if node is None else node | choice
        if draw(st.booleans()):
            node.named(f"n{index}")
        if draw(st.integers(0, 4)) == 0:
            node.output(rank=draw(st.integers(1, 4)))
        if nodes:
            mode = draw(st.sampled_from(["chain", "list", "none"]))
            if mode == "chain":
                draw(st.sampled_from(nodes)) >> node
            elif mode == "list":
                picks = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3))
                extra = [tensor("t")] if draw(st.booleans()) else []
                node.set_inputs([*picks, *extra, ...] if draw(st.booleans()) else [*picks, *extra])
        nodes.append(node)
    consumed = {i.uid for n in nodes for i in n.inputs}
    sinks = [n for n in nodes if n.uid not in consumed]
    try:
        return Pattern(*sinks)
    except PatternError:
        assume(False)
        raise


@given(_random_patterns())
def test_random_patterns_print_and_parse_back_equal(pattern: Pattern) -> None:
    text = str(pattern)
    parsed = parse_pattern(text)
    assert parsed == pattern, text
    assert str(parsed) == text
