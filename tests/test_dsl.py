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
