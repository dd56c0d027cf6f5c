"""The text pattern language: ``rewriter.parse_pattern("Conv2D -> BatchNormalization")``.

The grammar is written for lark (LALR, never ``eval``). A text is one or more *chains* separated by
``;`` or new lines::

    # a comment
    c:Conv2D(kernel_size=(1, 1), padding="same")
      -> b:BatchNormalization
      -> a:(ReLU | Activation(activation="relu"))?
    [BatchNormalization, Activation] -> Add
    x:Conv2D; y:Conv2D; [x, y] -> Concatenate

Meaning:

* ``A -> B``: an output of ``A`` is one of ``B``'s inputs (``B`` may have others).
* ``[P, Q] -> C``: ``P`` and ``Q`` are ``C``'s complete input list, in that order (any order when ``C``
  is commutative). Each item of the list may itself be a chain: ``[Conv2D -> ReLU, _] -> Add``. A last
  item ``...`` leaves the list open: ``[x, ...] -> Concatenate`` means "``x`` first, then any inputs".
* ``$x`` in an input list is a tensor entering the match (the same tensor wherever ``$x`` appears), ``*``
  any tensor; ``each(Conv2D, min=2) -> Concatenate`` gives variadic inputs.
* ``name:`` captures a node; a bare name used again refers to the same node (even before its
  definition). A name starting with ``_`` (``_c:Conv2D``) labels a node for reuse without capturing it.
* ``?`` after a node marks it optional; ``_`` is any single op; ``A | B`` are alternatives.
* ``Op(key=value, ...)`` constrains config values: ``key=literal`` (equality), ``key in [a, b]`` or
  ``key=one_of(a, b)`` (one of), ``key=_`` or ``key=anything()`` (anything). Literals are Python
  literals parsed by the grammar: numbers (negative, float, scientific), strings, tuples, lists, dicts,
  ``None``, ``True``, ``False``.
* ``Op{output(rank=4, shape=(None, 8), dtype="float32", index=0)}`` constrains outputs.
* ``# ...`` is a comment. A line continues when it ends, or the next one starts, with ``->`` or ``|``;
  new lines inside brackets never end a chain.

``str(pattern)`` prints any pattern (without Python predicates) in this language, and parsing the printed
text gives an equal pattern.

Parsing happens in two layers: `parse_syntax` turns the text into a small syntax tree (`PatternSyntax`,
independent of the pattern model) and reports syntax errors with line, column, a caret and what was
expected; `parse_pattern` then builds the `rewriter.Pattern`.

Example:
    >>> import rewriter
    >>> pattern = rewriter.parse_pattern("c:Conv2D(padding='same') -> BatchNormalization")
    >>> conv = rewriter.op("Conv2D", padding="same").named("c")
    >>> pattern == rewriter.Pattern(conv >> rewriter.op("BatchNormalization"))
    True
    >>> syntax = parse_syntax("x:Conv2D; [x, x] -> Add")
    >>> [len(chain.elements) for chain in syntax.chains]
    [1, 2]
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from rewriter.errors import PatternError
from rewriter.pattern import (
    Equals,
    OpPattern,
    Pattern,
    TensorPattern,
    any_op,
    anything,
    each,
    known_op_names,
    one_of,
    op,
    tensor,
)

__all__ = [
    "ChainSyntax",
    "ConstraintSyntax",
    "EachSyntax",
    "GroupSyntax",
    "NodeSyntax",
    "OpSyntax",
    "PatternSyntax",
    "TensorSyntax",
    "parse_pattern",
    "parse_syntax",
]

# --------------------------------------------------------------------------------------------- grammar

_GRAMMAR = r"""
program: [chain (_SEP chain)*]

chain: element (_ARROW element)*
?element: node | group | each_inputs

group: "[" [group_item ("," group_item)* [","]] "]"
?group_item: chain | tensor | ELLIPSIS
tensor: TENSOR_NAME | STAR
each_inputs: EACH "(" each_item ("," argument)* [","] ")"
?each_item: alternatives | tensor

node: [NAME ":"] alternatives [output_block] [QMARK]
alternatives: alternative ("|" alternative)*
?alternative: op | "(" alternatives ")"
op: dotted_name [arguments]
dotted_name: NAME ("." NAME)*
arguments: "(" [argument ("," argument)* [","]] ")"
argument: NAME "=" value    -> equals
        | NAME _IN value    -> one_of
output_block: "{" op ("," op)* [","] "}"

?value: NUMBER              -> number
      | STRING              -> string
      | NAME                -> constant
      | NAME "(" [value ("," value)* [","]] ")" -> call
      | "(" [value (COMMA value)* [COMMA]] ")" -> parenthesized
      | "[" [value ("," value)* [","]] "]"    -> list
      | "{" [pair ("," pair)* [","]] "}"      -> dict
pair: value ":" value

_ARROW: "->"
_IN.2: /in(?![A-Za-z0-9_])/
EACH.2: /each(?=[ \t]*\()/
QMARK: "?"
STAR: "*"
COMMA: ","
ELLIPSIS: "..."
TENSOR_NAME: /\$[A-Za-z_][A-Za-z0-9_]*/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?/
STRING: /"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'/
SEMICOLON: ";"
NEWLINE: /\r?\n/
COMMENT: /#[^\n]*/
%declare _SEP
%ignore COMMENT
%ignore /[ \t\f]+/
%ignore /\\\r?\n/
"""

_OPENERS = {"LPAR", "LSQB", "LBRACE"}
_CLOSERS = {"RPAR", "RSQB", "RBRACE"}
# A new line right after these tokens (or right before the first two) continues the chain.
_CONTINUE_AFTER = {"_ARROW", "VBAR", "COLON"}
_CONTINUE_BEFORE = {"_ARROW", "VBAR"}

# Readable words for lark's terminal names, used in "expected ..." messages.
_READABLE = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_ARROW": "'->'",
    "_IN": "'in'",
    "$END": "the end of the text",
    "ELLIPSIS": "'...'",
    "QMARK": "'?'",
    "COMMA": "','",
    "SEMICOLON": "';'",
    "NEWLINE": "a new line",
}


class _Layout:
    """Lark post-lexer: new lines and ``;`` become statement separators ``_SEP`` outside brackets.

    New lines inside brackets are dropped; a new line after ``->``, ``|`` or ``:`` or before ``->`` or
    ``|`` continues the chain; runs of separators collapse, leading and trailing ones are dropped.
    """

    always_accept = ("NEWLINE", "SEMICOLON")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        previous: str | None = None  # type of the last emitted token
        pending: Token | None = None  # a separator waiting for the next token
        for token in stream:
            kind = token.type
            if kind in ("NEWLINE", "SEMICOLON"):
                if depth > 0:
                    if kind == "SEMICOLON":
                        yield token  # a ';' inside brackets is a syntax error: let the parser say so
                    continue
                if previous is None or previous == "_SEP":
                    continue
                if kind == "NEWLINE" and previous in _CONTINUE_AFTER:
                    continue
                if pending is None or (pending.type == "NEWLINE" and kind == "SEMICOLON"):
                    pending = token
                continue
            if pending is not None:
                if not (pending.type == "NEWLINE" and kind in _CONTINUE_BEFORE):
                    yield Token.new_borrow_pos("_SEP", pending.value, pending)
                    previous = "_SEP"
                pending = None
            if kind in _OPENERS:
                depth += 1
            elif kind in _CLOSERS:
                depth = max(depth - 1, 0)
            previous = kind
            yield token


# ------------------------------------------------------------------------------------------- syntax tree


@dataclasses.dataclass(frozen=True)
class ConstraintSyntax:
    """One config constraint inside ``Op(...)``.

    Attributes:
        key: The config key.
        kind: ``"equals"`` (``key=value``), ``"one_of"`` (``key in [a, b]``) or ``"any"`` (``key=_``).
        value: The literal (a tuple of candidates for ``"one_of"``, ``None`` for ``"any"``).
        line: Line of the key (1-based).
        column: Column of the key (1-based).
    """

    key: str
    kind: str
    value: Any
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class OpSyntax:
    """One operation alternative: ``Conv2D(padding="same")`` or ``_`` (``name`` is ``"_"``).

    Attributes:
        name: Class name as written (may be dotted: ``layers.Conv2D``).
        constraints: Config constraints in the order written.
        has_arguments: Whether parentheses were written (``Op()`` versus ``Op``).
        line: Line of the name (1-based).
        column: Column of the name (1-based).
    """

    name: str
    constraints: tuple[ConstraintSyntax, ...]
    has_arguments: bool
    line: int
    column: int

    @property
    def is_wildcard(self) -> bool:
        """Whether this is ``_`` (any op)."""
        return self.name == "_"


@dataclasses.dataclass(frozen=True)
class NodeSyntax:
    """A node: ``capture:alternatives?``.

    A node with one bare alternative, no capture and no ``?`` (``x``) may be a reference to a captured
    node; the builder decides (see `NodeSyntax.bare_name`).

    Attributes:
        capture: The capture name, or ``None``.
        alternatives: The op alternatives (one for a plain ``Op``).
        optional: Whether ``?`` follows the node.
        line: Line where the node starts (1-based).
        column: Column where the node starts (1-based).
        outputs: Output constraints ``{output(rank=4), ...}``, each as an `OpSyntax` named ``output``.
    """

    capture: str | None
    alternatives: tuple[OpSyntax, ...]
    optional: bool
    line: int
    column: int
    outputs: tuple[OpSyntax, ...] = ()

    @property
    def bare_name(self) -> str | None:
        """The name if the node is one identifier alone (``x`` or ``Conv2D``), else ``None``."""
        if self.capture is None and len(self.alternatives) == 1 and not self.optional and not self.outputs:
            op = self.alternatives[0]
            if not op.has_arguments and "." not in op.name and op.name != "_":
                return op.name
        return None


@dataclasses.dataclass(frozen=True)
class TensorSyntax:
    """A boundary tensor in an input list: ``$x`` (named: the same tensor wherever it appears) or ``*``.

    Attributes:
        name: The name without ``$``, or ``None`` for ``*``.
        line: Line (1-based).
        column: Column (1-based).
    """

    name: str | None
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class EachSyntax:
    """Variadic inputs ``each(Conv2D, min=2)``: every input matches the item.

    Attributes:
        item: The op alternatives every producer must match, or a `TensorSyntax` (any inputs).
        minimum: Least number of inputs.
        maximum: Largest number of inputs, or ``None``.
        line: Line (1-based).
        column: Column (1-based).
    """

    item: tuple[OpSyntax, ...] | TensorSyntax
    minimum: int
    maximum: int | None
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class GroupSyntax:
    """A bracketed input list ``[P, Q, ...]``: the complete inputs of the node that follows.

    Attributes:
        items: One chain (or boundary tensor) per input, in order.
        open_ended: Whether the list ends with ``...`` (more inputs may follow).
        line: Line of ``[`` (1-based).
        column: Column of ``[`` (1-based).
    """

    items: tuple[ChainSyntax | TensorSyntax, ...]
    open_ended: bool
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class ChainSyntax:
    """A chain ``e1 -> e2 -> ...`` of nodes and groups.

    Attributes:
        elements: The elements, in order.
        line: Line where the chain starts (1-based).
        column: Column where the chain starts (1-based).
    """

    elements: tuple[NodeSyntax | GroupSyntax | EachSyntax, ...]
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class PatternSyntax:
    """The syntax tree of a whole pattern text.

    Attributes:
        chains: The chains, in the order written.
        text: The source text (for error messages).
    """

    chains: tuple[ChainSyntax, ...]
    text: str


def _items(children: list[Any]) -> list[Any]:
    """Children without the ``None`` of absent optionals and without ``,`` tokens."""
    return [c for c in children if c is not None and not (isinstance(c, Token) and c.type == "COMMA")]


class _SyntaxError(Exception):
    """Raised inside the transformer with a position; turned into a `PatternError`."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)


def _decode_string(token: Token) -> str:
    body = token.value[1:-1]

    def replace(found: re.Match[str]) -> str:
        code = found.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise _SyntaxError(
            f"Unknown escape sequence '\\{code}' in string {token.value}", token.line, token.column
        )

    return _ESCAPE_RE.sub(replace, body)


def _decode_number(token: Token) -> int | float:
    text = token.value
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


_CONSTANTS: dict[str, Any] = {"None": None, "True": True, "False": False}
_ANY = object()  # the value ``_`` inside arguments
_OUTPUT_KEYS = ("index", "rank", "shape", "dtype")


class _Literal:
    """A parsed literal value (wrapped so that the literal ``None`` is not taken for an absent optional)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _unwrap(item: Any) -> Any:
    return item.value if isinstance(item, _Literal) else item


@dataclasses.dataclass(frozen=True)
class _OneOfValue:
    """The value ``one_of(a, b)`` (only valid as a whole constraint value)."""

    values: tuple[Any, ...]


@v_args(meta=True)
class _ToSyntax(Transformer):
    """Lark tree -> `PatternSyntax` pieces."""

    def program(self, meta: Any, chains: list[Any]) -> tuple[ChainSyntax, ...]:
        return tuple(_items(chains))

    def chain(self, meta: Any, elements: list[Any]) -> ChainSyntax:
        return ChainSyntax(tuple(elements), meta.line, meta.column)

    def group(self, meta: Any, items: list[Any]) -> GroupSyntax:
        items = _items(items)
        open_ended = False
        for position, item in enumerate(items):
            if isinstance(item, Token) and item.type == "ELLIPSIS":
                if position != len(items) - 1:
                    raise _SyntaxError(
                        "'...' may only be the last item of an input list", item.line, item.column
                    )
                open_ended = True
        chains = tuple(i for i in items if isinstance(i, (ChainSyntax, TensorSyntax)))
        return GroupSyntax(chains, open_ended, meta.line, meta.column)

    def tensor(self, meta: Any, children: list[Token]) -> TensorSyntax:
        token = children[0]
        name = token.value[1:] if token.type == "TENSOR_NAME" else None
        return TensorSyntax(name, token.line, token.column)

    def each_inputs(self, meta: Any, children: list[Any]) -> EachSyntax:
        _, item, *rest = _items(children)
        bounds = {"min": 1, "max": None}
        for constraint in rest:
            if constraint.key not in bounds or constraint.kind != "equals":
                raise _SyntaxError(
                    f"each(...) takes only min= and max= after the item; got {constraint.key!r}",
                    constraint.line,
                    constraint.column,
                )
            value = constraint.value
            if not (value is None and constraint.key == "max") and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0
            ):
                raise _SyntaxError(
                    f"each(..., {constraint.key}=...) needs a count (an int >= 0), got {value!r}",
                    constraint.line,
                    constraint.column,
                )
            bounds[constraint.key] = value
        if isinstance(item, list):
            item = tuple(item)
        return EachSyntax(item, bounds["min"], bounds["max"], meta.line, meta.column)

    def output_block(self, meta: Any, children: list[Any]) -> list[OpSyntax]:
        outputs = _items(children)
        for output in outputs:
            if output.name != "output":
                raise _SyntaxError(
                    f"Inside {{...}} after a node, write output(rank=..., shape=..., dtype=..., index=...); "
                    f"got {output.name!r}",
                    output.line,
                    output.column,
                )
            for constraint in output.constraints:
                if constraint.key not in _OUTPUT_KEYS:
                    raise _SyntaxError(
                        f"output(...) constrains only {', '.join(_OUTPUT_KEYS)}; got {constraint.key!r}",
                        constraint.line,
                        constraint.column,
                    )
        return outputs

    def node(self, meta: Any, children: list[Any]) -> NodeSyntax:
        capture, alternatives, outputs, qmark = children
        return NodeSyntax(
            capture=None if capture is None else str(capture),
            alternatives=tuple(alternatives),
            optional=qmark is not None,
            line=meta.line,
            column=meta.column,
            outputs=tuple(outputs or ()),
        )

    def alternatives(self, meta: Any, children: list[Any]) -> list[OpSyntax]:
        flat: list[OpSyntax] = []
        for child in children:
            flat.extend(child if isinstance(child, list) else [child])
        return flat

    def op(self, meta: Any, children: list[Any]) -> OpSyntax:
        name, arguments = children
        return OpSyntax(
            name=name,
            constraints=tuple(arguments or ()),
            has_arguments=arguments is not None,
            line=meta.line,
            column=meta.column,
        )

    def dotted_name(self, meta: Any, names: list[Token]) -> str:
        return ".".join(str(n) for n in names)

    def arguments(self, meta: Any, children: list[Any]) -> list[ConstraintSyntax]:
        constraints = _items(children)
        seen: set[str] = set()
        for constraint in constraints:
            if constraint.key in seen:
                raise _SyntaxError(
                    f"Config key {constraint.key!r} is constrained twice", constraint.line, constraint.column
                )
            seen.add(constraint.key)
        return constraints

    def equals(self, meta: Any, children: list[Any]) -> ConstraintSyntax:
        key, value = children[0], _unwrap(children[1])
        if value is _ANY:
            return ConstraintSyntax(str(key), "any", None, key.line, key.column)
        if isinstance(value, _OneOfValue):
            return ConstraintSyntax(str(key), "one_of", value.values, key.line, key.column)
        return ConstraintSyntax(str(key), "equals", value, key.line, key.column)

    def one_of(self, meta: Any, children: list[Any]) -> ConstraintSyntax:
        key, value = children[0], _unwrap(children[1])
        if not isinstance(value, (list, tuple)) or _ANY in value:
            raise _SyntaxError(
                f"'{key} in ...' needs a list or tuple of candidate values, e.g. {key} in ['same', 'valid']",
                key.line,
                key.column,
            )
        return ConstraintSyntax(str(key), "one_of", tuple(value), key.line, key.column)

    # ----------------------------------------------------------------- literals

    def number(self, meta: Any, children: list[Token]) -> _Literal:
        return _Literal(_decode_number(children[0]))

    def string(self, meta: Any, children: list[Token]) -> _Literal:
        return _Literal(_decode_string(children[0]))

    def constant(self, meta: Any, children: list[Token]) -> Any:
        token = children[0]
        if token.value == "_":
            return _ANY
        if token.value in _CONSTANTS:
            return _Literal(_CONSTANTS[token.value])
        raise _SyntaxError(
            f"Unknown value {token.value!r}: values are literals (numbers, strings, tuples, lists, dicts, "
            f"None, True, False) or _ for anything; write strings in quotes, e.g. {token.value!r}",
            token.line,
            token.column,
        )

    def call(self, meta: Any, children: list[Any]) -> Any:
        function, *wrapped = _items(children)
        self._no_any(wrapped, meta)
        arguments = [_unwrap(a) for a in wrapped]
        if function.value == "one_of" and arguments:
            return _OneOfValue(tuple(arguments))
        if function.value == "anything" and not arguments:
            return _ANY
        raise _SyntaxError(
            f"Unknown value {function.value}(...): the only calls allowed as values are one_of(a, b, ...) "
            "and anything()",
            function.line,
            function.column,
        )

    def parenthesized(self, meta: Any, children: list[Any]) -> Any:
        values = _items(children)
        commas = sum(1 for c in children if isinstance(c, Token) and c.type == "COMMA")
        if len(values) == 1 and commas == 0:
            return values[0]
        self._no_any(values, meta)
        return _Literal(tuple(_unwrap(v) for v in values))

    def list(self, meta: Any, children: list[Any]) -> _Literal:
        values = _items(children)
        self._no_any(values, meta)
        return _Literal([_unwrap(v) for v in values])

    def dict(self, meta: Any, children: list[Any]) -> _Literal:
        pairs = _items(children)
        out: dict[Any, Any] = {}
        for key, value in pairs:
            self._no_any([key, value], meta)
            try:
                out[_unwrap(key)] = _unwrap(value)
            except TypeError:
                raise _SyntaxError(
                    f"Dict key {_unwrap(key)!r} is not hashable", meta.line, meta.column
                ) from None
        return _Literal(out)

    def pair(self, meta: Any, children: list[Any]) -> tuple[Any, Any]:
        return children[0], children[1]

    @staticmethod
    def _no_any(values: list[Any], meta: Any) -> None:
        if any(isinstance(v, _OneOfValue) for v in values):
            raise _SyntaxError(
                "one_of(...) may only stand alone as a value: key=one_of(a, b)", meta.line, meta.column
            )
        if any(v is _ANY for v in values):
            raise _SyntaxError(
                "'_' (anything) may only stand alone as a value: key=_", meta.line, meta.column
            )


_PARSER = Lark(
    _GRAMMAR, start="program", parser="lalr", lexer="basic", postlex=_Layout(), propagate_positions=True
)


# -------------------------------------------------------------------------------------------- errors


def _readable(terminal: str) -> str:
    if terminal in _READABLE:
        return _READABLE[terminal]
    try:
        pattern = _PARSER.get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    if pattern.type == "str":
        return repr(pattern.value)
    return terminal.lower()


def _expected_words(expected: set[str] | frozenset[str] | list[str]) -> str:
    """``{"RPAR", "COMMA"}`` -> ``"')' or ','"``: symbols first, then words, the end of the text last."""
    words = {_readable(t) for t in expected if t not in ("COMMENT", "NEWLINE", "SEMICOLON", "_SEP", "$END")}
    if "_SEP" in expected:
        words |= {"';'", "a new line"}
    ordered = sorted(w for w in words if w.startswith("'")) + sorted(
        w for w in words if not w.startswith("'")
    )
    if "$END" in expected:
        ordered.append(_READABLE["$END"])
    if not ordered:
        return "nothing more"
    if len(ordered) == 1:
        return ordered[0]
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]


def _caret(text: str, line: int, column: int) -> str:
    lines = text.splitlines() or [""]
    if line > len(lines):
        line, column = len(lines), len(lines[-1]) + 1
    source = lines[line - 1]
    return f"    {source}\n    {' ' * max(column - 1, 0)}^"


def _syntax_error(
    text: str, message: str, line: int, column: int, *, kind: str = "Pattern syntax error"
) -> PatternError:
    """A `PatternError` pointing at ``line``/``column`` of ``text`` with a caret under the spot.

    Args:
        text: The whole pattern text.
        message: What is wrong (and what to do).
        line: 1-based line.
        column: 1-based column.
        kind: The message's first words.

    Returns:
        The error (to raise).

    Example:
        >>> print(_syntax_error("Conv2D ->", "Expected a name", 1, 10))
        Pattern syntax error at line 1, column 10: Expected a name
            Conv2D ->
                     ^
    """
    error = PatternError(f"{kind} at line {line}, column {column}: {message}\n{_caret(text, line, column)}")
    error.line = line  # type: ignore[attr-defined]
    error.column = column  # type: ignore[attr-defined]
    return error


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    lines = stripped.splitlines() or [""]
    return len(lines), len(lines[-1]) + 1


def _describe_token(token: Token) -> str:
    if token.type == "_SEP":
        return "the end of the line" if token.value != ";" else "';'"
    if token.type == "$END":
        return "the end of the text"
    return repr(str(token.value))


def _accepted(error: UnexpectedInput, fallback: Any) -> set[str]:
    """The terminals the parser accepts at the error (precise, unlike LALR's merged lookahead sets)."""
    interactive = getattr(error, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts())
        except Exception:
            pass
    return set(fallback or ())


def _accepted_before(text: str, position: int) -> set[str]:
    """The terminals the parser accepts after ``text[:position]`` (for an unexpected character)."""
    try:
        interactive = _PARSER.parse_interactive(text[:position])
        interactive.exhaust_lexer()
        return set(interactive.accepts())
    except Exception:
        return set()


def _from_lark(text: str, error: UnexpectedInput) -> PatternError:
    if isinstance(error, UnexpectedCharacters):
        char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else ""
        expected = _accepted_before(text, error.pos_in_stream)
        tail = f" Expected {_expected_words(expected)}." if expected else ""
        return _syntax_error(text, f"Unexpected character {char!r}.{tail}", error.line, error.column)
    expected = _accepted(error, getattr(error, "expected", ()))
    token = getattr(error, "token", None)
    if isinstance(error, UnexpectedEOF) or token is None or token.type == "$END":
        line, column = _end_position(text)
        return _syntax_error(
            text, f"The text ends too early. Expected {_expected_words(expected)}.", line, column
        )
    hint = _hint(token, expected)
    return _syntax_error(
        text,
        f"Unexpected {_describe_token(token)}. Expected {_expected_words(expected)}.{hint}",
        token.line,
        token.column,
    )


def _hint(token: Token, expected: set[str]) -> str:
    if "NAME" in expected and "RPAR" in expected and token.type in ("NUMBER", "STRING", "LPAR", "LSQB"):
        return " Constraints are keyword arguments naming config keys, e.g. Conv2D(filters=32)."
    if token.type == "SEMICOLON":
        return " A bracket is not closed before ';'."
    if token.type == "_SEP" and expected & {"NAME", "LPAR", "LSQB"} and not expected & {"$END", "_SEP"}:
        return " Is a node missing after '->'?"
    if token.type == "NAME" and "_ARROW" in expected:
        return " Join nodes with '->', or start a new chain with ';' or a new line."
    return ""


def parse_syntax(text: str) -> PatternSyntax:
    """Parse pattern ``text`` into its syntax tree (no class names are resolved yet).

    Args:
        text: The pattern text.

    Returns:
        The syntax tree.

    Raises:
        PatternError: A syntax error, with line, column, the offending line with a caret, and what was
            expected.

    Example:
        >>> tree = parse_syntax("c:Conv2D(kernel_size=(1, 1)) -> BatchNormalization?")
        >>> node = tree.chains[0].elements[0]
        >>> node.capture, node.alternatives[0].constraints[0].value
        ('c', (1, 1))
    """
    if not isinstance(text, str):
        raise PatternError(f"Expected the pattern text as a str. Received: text={text!r}")
    try:
        chains = _ToSyntax().transform(_PARSER.parse(text))
    except UnexpectedInput as error:
        raise _from_lark(text, error) from None
    except VisitError as error:
        inner = error.orig_exc
        if isinstance(inner, _SyntaxError):
            raise _syntax_error(text, inner.message + ".", inner.line, inner.column) from None
        raise
    except _SyntaxError as error:
        raise _syntax_error(text, error.message + ".", error.line, error.column) from None
    if not chains:
        raise PatternError("The pattern text is empty: write at least one op, e.g. 'Conv2D -> ReLU'.")
    return PatternSyntax(tuple(chains), text)


# ------------------------------------------------------------------------------------------- builder


def parse_pattern(
    text: str, *, where: Callable[[Any], Any] | None = None, name: str | None = None
) -> Pattern:
    """Parse pattern ``text`` (see the module docstring for the language) into a `rewriter.Pattern`.

    The result equals the pattern written with the Python DSL (`rewriter.op`, ``>>``, ``|``...): text
    ``c:Conv2D(padding="same") -> BatchNormalization`` builds
    ``op("Conv2D", padding="same").named("c") >> op("BatchNormalization")``. The pattern's sinks are the
    nodes that feed no other node, in the order they appear; the first is the anchor.

    Args:
        text: The pattern text.
        where: Optional whole-match predicate (taking the `rewriter.Match`).
        name: Optional pattern name (used in messages).

    Returns:
        The pattern.

    Raises:
        PatternError: A syntax error or an unknown class name, with the line, the column and the
            offending line with a caret; unknown names come with the closest known names.

    Example:
        >>> pattern = parse_pattern("x:Conv2D; y:Conv2D; [x, y] -> Concatenate")
        >>> pattern.capture_names
        ['x', 'y']
        >>> str(parse_pattern("Conv2D -> BatchNormalization"))
        'Conv2D -> BatchNormalization'
    """
    syntax = parse_syntax(text)
    return _Builder(syntax).build(where=where, name=name)


def _walk_nodes(syntax: PatternSyntax) -> Iterator[NodeSyntax]:
    """Every `NodeSyntax` of the text, in reading order (an explicit stack, no recursion)."""
    stack: list[Any] = list(reversed(syntax.chains))
    while stack:
        item = stack.pop()
        if isinstance(item, ChainSyntax):
            stack.extend(reversed(item.elements))
        elif isinstance(item, GroupSyntax):
            stack.extend(reversed(item.items))
        elif isinstance(item, NodeSyntax):
            yield item


class _Builder:
    """Turns a `PatternSyntax` into pattern objects, keeping source positions for error messages."""

    def __init__(self, syntax: PatternSyntax) -> None:
        self.syntax = syntax
        self.text = syntax.text
        self.definitions: dict[str, NodeSyntax] = {}
        self.captured: dict[str, OpPattern] = {}
        self.tensors: dict[str, TensorPattern] = {}
        self.order: list[OpPattern] = []  # every pattern node, in order of appearance
        self.consumed: set[int] = set()  # uids of nodes that feed another node

    def error(self, message: str, line: int, column: int) -> PatternError:
        return _syntax_error(self.text, message, line, column, kind="Pattern error")

    def build(self, *, where: Callable[[Any], Any] | None, name: str | None) -> Pattern:
        for node in _walk_nodes(self.syntax):
            if node.capture is None:
                continue
            if node.capture in self.definitions:
                first = self.definitions[node.capture]
                raise self.error(
                    f"Capture {node.capture!r} is defined twice (first at line {first.line}, column "
                    f"{first.column}). To refer to the same node again, write its name alone: {node.capture}",
                    node.line,
                    node.column,
                )
            if node.capture in known_op_names():
                raise self.error(
                    f"Capture name {node.capture!r} is also an op class name, so a later bare "
                    f"{node.capture!r} would be ambiguous; choose another name (e.g. "
                    f"{node.capture.lower()!r})",
                    node.line,
                    node.column,
                )
            self.definitions[node.capture] = node
        for chain in self.syntax.chains:
            self._chain(chain)
        sinks = [n for n in self.order if n.uid not in self.consumed]
        try:
            return Pattern(*sinks, where=where, name=name)
        except PatternError as error:
            first = self.syntax.chains[0]
            raise self.error(str(error), first.line, first.column) from None

    # ------------------------------------------------------------------ chains

    def _chain(self, chain: ChainSyntax) -> OpPattern:
        """Connect the chain's elements; return its last node."""
        previous: Any = None
        for position, element in enumerate(chain.elements):
            if isinstance(element, GroupSyntax):
                if position == len(chain.elements) - 1:
                    raise self.error(
                        "An input list must feed a node: write '[P, Q] -> Node'", element.line, element.column
                    )
                if previous is not None:
                    raise self.error(
                        "An input list cannot follow '->': it lists the complete inputs of the node "
                        "after it, as in '[P, Q] -> Add'",
                        element.line,
                        element.column,
                    )
                previous = element
                continue
            if isinstance(element, EachSyntax):
                if position == len(chain.elements) - 1 or previous is not None:
                    raise self.error(
                        "each(...) describes the inputs of the node after it: "
                        "write 'each(Conv2D) -> Concatenate'",
                        element.line,
                        element.column,
                    )
                previous = element
                continue
            node = self._node(element)
            if isinstance(previous, GroupSyntax):
                self._connect_group(previous, node, element)
            elif isinstance(previous, EachSyntax):
                self._connect_each(previous, node, element)
            elif previous is not None:
                self._guard(lambda p=previous, n=node: p >> n, element)
                self.consumed.add(previous.uid)
            previous = node
        return previous

    def _connect_group(self, group: GroupSyntax, node: OpPattern, where: NodeSyntax) -> None:
        items: list[Any] = []
        for item in group.items:
            if isinstance(item, TensorSyntax):
                items.append(self._tensor(item))
            else:
                producer = self._chain(item)
                self.consumed.add(producer.uid)
                items.append(producer)
        if group.open_ended:
            items.append(...)
        self._guard(lambda: node.set_inputs(items), where)

    def _connect_each(self, spec: EachSyntax, node: OpPattern, where: NodeSyntax) -> None:
        if isinstance(spec.item, TensorSyntax):
            if spec.item.name is not None:
                raise self.error(
                    "each($name): the inputs are different tensors, so the item must be '*'",
                    spec.item.line,
                    spec.item.column,
                )
            item: Any = tensor()
        else:
            item = self._alternatives(spec.item)
        variadic = self._guard(lambda: each(item, min=spec.minimum, max=spec.maximum), spec)
        self._guard(lambda: node.set_inputs(variadic), where)

    def _guard(self, action: Callable[[], Any], where: Any) -> Any:
        try:
            return action()
        except PatternError as error:
            raise self.error(str(error), where.line, where.column) from None

    # ------------------------------------------------------------------ nodes

    def _node(self, syntax: NodeSyntax) -> OpPattern:
        reference = syntax.bare_name
        if reference is None and syntax.capture is None and len(syntax.alternatives) == 1:
            alone = syntax.alternatives[0]
            if not alone.has_arguments and alone.name in self.definitions:
                raise self.error(
                    f"{alone.name!r} refers to a captured node: mark it optional ('?') or constrain its "
                    f"outputs where it is defined ({alone.name}:...), not where it is used",
                    syntax.line,
                    syntax.column,
                )
        if reference is not None and reference in self.definitions:
            if self.definitions[reference] is not syntax and reference in self.captured:
                return self.captured[reference]
            if self.definitions[reference] is not syntax:
                # used before its definition: build the definition now, it is the same node
                return self._node(self.definitions[reference])
        if syntax.capture is not None and syntax.capture in self.captured:
            return self.captured[syntax.capture]
        node = self._alternatives(syntax.alternatives, names=self.definitions)
        for output in syntax.outputs:
            arguments = {c.key: _value_constraint(c) for c in output.constraints}
            self._guard(lambda a=arguments: node.output(**a), output)
        if syntax.capture is not None:
            if not syntax.capture.startswith("_"):
                node.named(syntax.capture)
            self.captured[syntax.capture] = node
        if syntax.optional:
            node.optional()
        self.order.append(node)
        return node

    def _alternatives(self, alternatives: tuple[OpSyntax, ...], names: Mapping[str, Any] = ()) -> OpPattern:
        node: OpPattern | None = None
        for alternative in alternatives:
            choice = self._op(alternative, names)
            node = choice if node is None else node | choice
        assert node is not None
        return node

    def _op(self, syntax: OpSyntax, names: Mapping[str, Any]) -> OpPattern:
        constraints = {c.key: _value_constraint(c) for c in syntax.constraints}
        if syntax.is_wildcard:
            return any_op(**constraints)
        class_name = syntax.name.rsplit(".", 1)[-1]
        try:
            return op(class_name, **constraints)  # resolves the class name (unknown: close names)
        except PatternError as error:
            message = str(error).rstrip(".")
            if "Unknown op class name" in message:
                message += self._capture_hint(class_name, names)
            raise self.error(message, syntax.line, syntax.column) from None

    @staticmethod
    def _capture_hint(name: str, names: Mapping[str, Any]) -> str:
        """For an unknown name: the closest capture names of the pattern, if it looks like one."""
        captures = sorted(n for n in names if not n.startswith("_"))
        close = difflib.get_close_matches(name, captures, n=2, cutoff=0.6)
        if close:
            return f". Or did you mean the capture {' or '.join(repr(c) for c in close)}?"
        if captures and name[:1].islower():
            return f" (it is not a capture of this pattern either; captures: {', '.join(captures)})"
        return ""

    def _tensor(self, syntax: TensorSyntax) -> TensorPattern:
        if syntax.name is None:
            return tensor()
        if syntax.name not in self.tensors:
            self.tensors[syntax.name] = tensor(syntax.name)
        return self.tensors[syntax.name]


def _value_constraint(constraint: ConstraintSyntax) -> Any:
    if constraint.kind == "any":
        return anything()
    if constraint.kind == "one_of":
        return one_of(*constraint.value)
    return Equals(constraint.value)


def __getattr__(name: str) -> Any:
    """Lazy alias ``rewriter.dsl.pattern_from_example`` (tracing imports keras; parsing text does not)."""
    if name == "pattern_from_example":
        from rewriter.by_example import pattern_from_example

        return pattern_from_example
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
