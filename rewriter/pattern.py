"""The pattern model and its Python DSL: which part of a graph to find.

A `Pattern` is a small directed graph of `OpPattern` nodes ("pattern nodes") plus optional boundary
`TensorPattern` placeholders. `rewriter.find` maps every pattern node to a distinct graph node (a
monomorphism: the match need not be an induced subgraph). Every way of writing a pattern (this Python DSL,
the text language of `rewriter.dsl.parse_pattern`, tracing by example) builds these same objects.

What a pattern node (`OpPattern`) constrains:

* **the operation**: a class name (``"Conv2D"``; checked against keras.layers, the keras.ops operation
  classes and any defined `keras.Operation` subclass, unknown names raise `PatternError` with the closest
  known names), a class (``keras.layers.Conv2D``: matches instances, subclasses included), alternatives
  (``op("ReLU") | op("Activation", activation="relu")``, each alternative with its own config), or any
  single op (`any_op`, the text language's ``_``; it matches `InputLayer` nodes too);
* **config values** (per alternative), looked up in the node's ``config`` then in its non-tensor call
  keyword arguments (``axis`` of ``ops.concatenate``): a plain value means equality (lists and tuples
  compare equal), `one_of` a set of values, a callable a predicate on the value, `anything` no constraint
  (the key may even be missing);
* **outputs**: `OpPattern.output` constrains rank, shape (``None`` = any size) and dtype of an output;
* **a node predicate**: `OpPattern.where` receives the `rewriter.Node`;
* **its inputs**, in one of three modes (`OpPattern.input_mode`):

  - ``"free"`` (default): the node may have any inputs. A chain ``a >> b`` (text ``A -> B``) adds ``a`` to
    ``b.feeders``: an output of ``a`` is *one of* ``b``'s inputs, ``b`` may have others;
  - ``"list"``: ``op("Add", inputs=[p, q])`` or ``[p, q] >> op("Add")`` (text ``[P, Q] -> Add``): ``p`` and
    ``q`` are the node's *complete* input list, in that order, or in any order when the matched graph node
    is commutative (op type in `COMMUTATIVE_OPS`, or ``commutative=True``). A trailing ``...`` (Ellipsis)
    allows further inputs: ``inputs=[p, ...]``. Items are `OpPattern` or `TensorPattern` (`tensor`);
  - ``"each"``: ``inputs=each(item, min=1, max=None)``: any number of inputs, each matching ``item`` (a
    single unnamed `OpPattern` without input constraints, or a `tensor`) -- Concatenate of any arity.

Pattern nodes may be **optional** (`OpPattern.optional`: zero or one). An optional node has at most one
pattern input and at most one pattern consumer; when absent, the edge passes straight through (its input
takes its place). Optional nodes are **greedy**: where the node is present it is part of the match, and
the same place is not reported again without it. Nodes carry **capture names** (`OpPattern.named`); using
one `OpPattern` object in several places means one graph node (two distinct objects with the same name are
an error -- the text language resolves repeated names to one object). A pattern may have **several sinks**
(its outputs; the first one is the *anchor*) and a whole-match predicate ``where=`` taking the
`rewriter.Match`. A commutative match is reported once, not once per input order (matches are de-duplicated
by the set of matched graph nodes and pattern edges).

Pattern nodes are *builders*: `op` makes a new node; ``named``, ``optional``, ``output``, ``where`` and
``>>`` modify the node and return it, so identity is meaningful. `Pattern` snapshots the nodes reachable
backwards from its sinks, validates them and is immutable afterwards.

Example:
    >>> from rewriter.pattern import Pattern, any_op, op, one_of, tensor, each
    >>> conv_bn = Pattern(op("Conv2D").named("conv") >> op("BatchNormalization").named("bn"))
    >>> print(conv_bn)
    conv:Conv2D -> bn:BatchNormalization
    >>> act = op("ReLU") | op("Activation", activation=one_of("relu", "relu6"))
    >>> block = op("Conv2D", kernel_size=(1, 1)).named("c") >> op("BatchNormalization") >> act.optional()
    >>> residual = op("Add", inputs=[op("BatchNormalization"), any_op()]).named("add")
    >>> concat = op("Concatenate", inputs=each(op("Conv2D")))
    >>> deep = Pattern(op("Dense", units=lambda u: u > 100).output(rank=2), where=lambda m: True)
    >>> x = tensor("x")
    >>> square = op("Multiply", inputs=[x, x])  # ops.multiply(x, x): the same tensor twice

Hooks for the other ways of writing a pattern: `as_pattern` turns a ``str`` into a pattern with
``rewriter.dsl.parse_pattern(text)`` and a plain function (by example) with
``rewriter.by_example.pattern_from_example(fn)`` (both imported lazily).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from rewriter.errors import PatternError

if TYPE_CHECKING:
    from rewriter.graph import Node, TensorSpec

__all__ = [
    "COMMUTATIVE_OPS",
    "Anything",
    "Each",
    "Equals",
    "OneOf",
    "OpChoice",
    "OpPattern",
    "OutputConstraint",
    "Pattern",
    "PatternLike",
    "Predicate",
    "TensorPattern",
    "ValueConstraint",
    "any_op",
    "anything",
    "as_pattern",
    "each",
    "known_op_names",
    "normalize_value",
    "one_of",
    "op",
    "tensor",
]

COMMUTATIVE_OPS: frozenset[str] = frozenset({"Add", "Multiply", "Maximum", "Minimum", "Average"})
"""Op types whose inputs a complete input list may match in any order (keras.layers and keras.ops alike:
``ops.add`` is lifted as op type ``"Add"``)."""

_node_ids = itertools.count()


# ------------------------------------------------------------------------------------ value constraints


class ValueConstraint:
    """A constraint on one value (a config entry, a rank, a dtype). Subclasses implement `check`."""

    def check(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short text form, as in the text language where possible."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


@dataclasses.dataclass(frozen=True, repr=False)
class Equals(ValueConstraint):
    """Equality; lists and tuples compare equal (Keras configs hold tuples, users write either)."""

    value: Any

    def check(self, value: Any) -> bool:  # noqa: D102
        try:
            return bool(normalize_value(value) == normalize_value(self.value))
        except Exception:
            return False

    def describe(self) -> str:  # noqa: D102
        return repr(self.value)


@dataclasses.dataclass(frozen=True, repr=False)
class OneOf(ValueConstraint):
    """The value equals one of ``values`` (compared like `Equals`)."""

    values: tuple[Any, ...]

    def check(self, value: Any) -> bool:  # noqa: D102
        return any(Equals(v).check(value) for v in self.values)

    def describe(self) -> str:  # noqa: D102
        return "one_of(" + ", ".join(repr(v) for v in self.values) + ")"


@dataclasses.dataclass(frozen=True, repr=False)
class Predicate(ValueConstraint):
    """A callable returning truthy for acceptable values; an exception counts as "no"."""

    fn: Callable[[Any], Any]
    description: str | None = None

    def check(self, value: Any) -> bool:  # noqa: D102
        try:
            return bool(self.fn(value))
        except Exception:
            return False

    def describe(self) -> str:  # noqa: D102
        return self.description or f"<predicate {getattr(self.fn, '__name__', 'fn')}>"


@dataclasses.dataclass(frozen=True, repr=False)
class Anything(ValueConstraint):
    """No constraint at all (the key may even be absent from the config)."""

    def check(self, value: Any) -> bool:  # noqa: D102
        return True

    def describe(self) -> str:  # noqa: D102
        return "anything()"


def one_of(*values: Any) -> OneOf:
    """A value constraint: equal to one of ``values``.

    Example:
        >>> op("Activation", activation=one_of("relu", "relu6"))  # doctest: +ELLIPSIS
        Activation(activation=one_of('relu', 'relu6'))
    """
    if not values:
        raise PatternError("one_of() needs at least one value, e.g. one_of('relu', 'relu6').")
    return OneOf(tuple(values))


def anything() -> Anything:
    """A value constraint that accepts any value (documents that a config key is free)."""
    return Anything()


def _as_constraint(value: Any) -> ValueConstraint:
    if isinstance(value, ValueConstraint):
        return value
    if callable(value) and not isinstance(value, type):
        return Predicate(value)
    return Equals(value)


def normalize_value(value: Any) -> Any:
    """The form in which pattern values compare: lists and tuples alike, dicts as sorted items.

    Keras configs hold tuples and users write either; literal operands of traced ``keras.ops`` calls compare
    the same way.

    Example:
        >>> normalize_value([3, [1, 1]]) == normalize_value((3, (1, 1)))
        True
    """
    if isinstance(value, (list, tuple)):
        return tuple(normalize_value(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), normalize_value(v)) for k, v in value.items()))
    return value


# ------------------------------------------------------------------------------------ op names


_KNOWN_CACHE: set[str] = set()


def _scan_known_op_names() -> set[str]:
    import keras

    names: set[str] = {"InputLayer", "Functional", "Sequential", "Model"}
    for attr in dir(keras.layers):
        obj = getattr(keras.layers, attr, None)
        if isinstance(obj, type):
            names.add(obj.__name__)
    base: type = keras.Operation
    stack = [base]
    seen: set[type] = set()
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
    for obj in keras.saving.get_custom_objects().values():
        if isinstance(obj, type):
            names.add(obj.__name__)
    return {n for n in names if not n.startswith("_")}


def known_op_names() -> frozenset[str]:
    """Class names a pattern may use: keras.layers, keras.ops operation classes, custom layers.

    Custom layers count once their class is defined (any `keras.Operation` subclass) or registered with
    ``keras.saving.register_keras_serializable``.

    Example:
        >>> "Conv2D" in known_op_names() and "Add" in known_op_names()
        True
    """
    global _KNOWN_CACHE
    if not _KNOWN_CACHE:
        _KNOWN_CACHE = _scan_known_op_names()
    return frozenset(_KNOWN_CACHE)


def _check_op_name(name: str) -> None:
    global _KNOWN_CACHE
    if name in known_op_names():
        return
    _KNOWN_CACHE = _scan_known_op_names()  # a class may have been defined since the last scan
    if name in _KNOWN_CACHE:
        return
    pool = sorted(_KNOWN_CACHE)
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not close:
        lowered = {n.lower(): n for n in pool}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
        close = [lowered[c] for c in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise PatternError(
        f"Unknown op class name {name!r} in a pattern.{hint} Use a keras.layers class name, a keras.ops "
        "operation class name (ops.add is 'Add'), a custom layer class name (define or register the class "
        "first), or pass the class itself."
    )


# ------------------------------------------------------------------------------------ pattern parts


@dataclasses.dataclass(frozen=True)
class OpChoice:
    """One alternative of a pattern node: an op (name, class, or ``None`` for any) and config constraints.

    Attributes:
        op: Class name, class, or ``None`` (any single op).
        config: Config key -> constraint.
    """

    op: str | type | None
    config: Mapping[str, ValueConstraint] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.op is None or isinstance(self.op, (str, type))):
            raise PatternError(
                f"An op choice's op must be a class name, a class or None (any op). Received: {self.op!r}."
            )
        if not isinstance(self.config, Mapping) or not all(
            isinstance(key, str) and isinstance(c, ValueConstraint) for key, c in self.config.items()
        ):
            raise PatternError(
                "An op choice's config must map config names to value constraints (Equals, OneOf, "
                f"Predicate, Anything); op(...) builds them from plain values. Received: {self.config!r}."
            )

    @property
    def op_name(self) -> str | None:
        """The class name (``None`` for the wildcard)."""
        if self.op is None or isinstance(self.op, str):
            return self.op
        return self.op.__name__

    def accepts_type(self, node: Node) -> bool:
        """Whether the node's op satisfies this choice's op constraint (config not checked)."""
        if self.op is None:
            return True
        if isinstance(self.op, str):
            return node.op_type == self.op
        if node.layer is not None:
            return isinstance(node.layer, self.op)
        return node.op_type == self.op.__name__

    def config_failure(self, node: Node) -> str | None:
        """Why the node's config does not satisfy this choice, or ``None`` when it does."""
        for key, constraint in self.config.items():
            if isinstance(constraint, Anything):
                continue
            found, value = _lookup_config(node, key)
            if not found:
                return f"it has no config entry {key!r} (wanted {key}={constraint.describe()})"
            if not constraint.check(value):
                return f"its {key}={value!r}, wanted {key}={constraint.describe()}"
        return None

    def describe(self) -> str:
        """Text form, e.g. ``Activation(activation='relu')`` or ``_``."""
        head = self.op_name or "_"
        if not self.config:
            return head
        args = ", ".join(f"{k}={c.describe()}" for k, c in self.config.items())
        return f"{head}({args})"


def _lookup_config(node: Node, key: str) -> tuple[bool, Any]:
    if node.config is not None and key in node.config:
        return True, node.config[key]
    kwargs = node.non_tensor_arguments()
    if key in kwargs:
        return True, kwargs[key]
    return False, None


@dataclasses.dataclass(frozen=True)
class OutputConstraint:
    """Constraints on output ``index`` of a node (or on a boundary tensor).

    Attributes:
        index: Which output (flattened order).
        rank: Required rank (an int or a `ValueConstraint`), or ``None``.
        shape: Required shape; ``None`` entries accept any size. Or a `ValueConstraint` on the shape tuple.
        dtype: Required dtype name (``"float32"``) or a `ValueConstraint`, or ``None``.
    """

    index: int = 0
    rank: int | ValueConstraint | None = None
    shape: tuple[int | None, ...] | ValueConstraint | None = None
    dtype: str | ValueConstraint | None = None

    def __post_init__(self) -> None:
        def is_count(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        def is_constraint(value: Any) -> bool:
            return isinstance(value, ValueConstraint) or (callable(value) and not isinstance(value, type))

        problems = []
        if not is_count(self.index):
            problems.append(f"index={self.index!r} (an int >= 0)")
        if self.rank is not None and not (is_count(self.rank) or is_constraint(self.rank)):
            problems.append(f"rank={self.rank!r} (an int >= 0, one_of(...) or a predicate)")
        if self.shape is not None and not is_constraint(self.shape):
            dims = self.shape
            if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
                problems.append(f"shape={dims!r} (a tuple of ints and None)")
            elif not all(d is None or is_count(d) for d in dims):
                problems.append(f"shape={dims!r} (ints >= 0, or None for any size)")
        if self.dtype is not None and not (isinstance(self.dtype, str) or is_constraint(self.dtype)):
            problems.append(f"dtype={self.dtype!r} (a dtype name such as 'float32')")
        if problems:
            raise PatternError(
                "Malformed output constraint: "
                + "; ".join(problems)
                + ". Example: .output(rank=4, shape=(None, None, None, 64), dtype='float32')."
            )

    def failure(self, spec: TensorSpec) -> str | None:
        """Why ``spec`` violates the constraint, or ``None``."""
        if self.rank is not None and not _as_constraint(self.rank).check(spec.rank):
            return f"output {self.index} has rank {spec.rank}, wanted {_describe(self.rank)}"
        if self.shape is not None:
            if isinstance(self.shape, ValueConstraint):
                ok = self.shape.check(tuple(spec.shape))
            else:
                ok = len(self.shape) == len(spec.shape) and all(
                    want is None or want == got for want, got in zip(self.shape, spec.shape)
                )
            if not ok:
                return f"output {self.index} has shape {tuple(spec.shape)}, wanted {_describe(self.shape)}"
        if self.dtype is not None and not _as_constraint(self.dtype).check(str(spec.dtype)):
            return f"output {self.index} has dtype {spec.dtype}, wanted {_describe(self.dtype)}"
        return None

    def describe(self) -> str:
        """Text form, e.g. ``output(rank=4, dtype='float32')``."""
        parts = [f"index={self.index}"] if self.index else []
        for key in ("rank", "shape", "dtype"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={_describe(value)}")
        return "output(" + ", ".join(parts) + ")"


def _shape_arg(shape: Any) -> Any:
    """A shape given as a list becomes a tuple; anything else is left for `OutputConstraint` to check."""
    if isinstance(shape, Sequence) and not isinstance(shape, (str, bytes)):
        return tuple(shape)
    return shape


def _describe(value: Any) -> str:
    return value.describe() if isinstance(value, ValueConstraint) else repr(value)


class TensorPattern:
    """A tensor entering the match from outside (a boundary input); binds a `rewriter.Port`, not a node.

    Only valid as an item of a complete input list (or of `each`). A named tensor must be the same tensor
    wherever it appears; its port is reported in ``match.tensors[name]``.

    Attributes:
        name: Capture name, or ``None``.
        constraint: Optional rank/shape/dtype constraint on the tensor.
    """

    def __init__(self, name: str | None = None, constraint: OutputConstraint | None = None) -> None:
        self.name = name
        self.constraint = constraint
        self.uid = next(_node_ids)

    def describe(self) -> str:
        """Text form: ``$x`` style label for named tensors, ``*`` for an anonymous one."""
        return f"${self.name}" if self.name else "*"

    def __repr__(self) -> str:
        return f"tensor({self.name!r})" if self.name else "tensor()"


@dataclasses.dataclass(frozen=True)
class Each:
    """Variadic inputs: every input matches ``item``; their number is within ``[min, max]``."""

    item: OpPattern | TensorPattern
    min: int = 1
    max: int | None = None


class OpPattern:
    """One pattern node (a builder: methods modify the node and return it).

    Build with `op` or `any_op` rather than directly.

    Attributes:
        choices: The alternatives (op and config); the node matches if any alternative does.
        name: Capture name (``None`` for an anonymous node).
        is_optional: Zero or one (see `optional`).
        outputs: Output constraints.
        predicates: Node predicates (see `where`), with descriptions.
        input_mode: ``"free"``, ``"list"`` or ``"each"``.
        feeders: Pattern nodes each feeding one of this node's inputs (``"free"`` mode, from ``a >> b``).
        input_list: The complete input list (``"list"`` mode).
        open_ended: ``"list"`` mode with a trailing ``...``: more inputs allowed.
        each: The variadic spec (``"each"`` mode).
        commutative: ``None`` to decide by op type (`COMMUTATIVE_OPS`), else forced.
    """

    def __init__(
        self,
        choices: Sequence[OpChoice],
        *,
        inputs: Sequence[Any] | Each | None = None,
        commutative: bool | None = None,
    ) -> None:
        if not choices:
            raise PatternError("A pattern node needs at least one op choice.")
        if isinstance(choices, (str, bytes)) or not all(isinstance(c, OpChoice) for c in choices):
            raise PatternError(
                f"A pattern node's choices must be OpChoice objects; build nodes with op(...). Received: "
                f"{choices!r}."
            )
        if commutative is not None and not isinstance(commutative, bool):
            raise PatternError(f"commutative= takes True, False or None. Received: {commutative!r}.")
        self.choices: tuple[OpChoice, ...] = tuple(choices)
        self.name: str | None = None
        self.is_optional = False
        self.outputs: list[OutputConstraint] = []
        self.predicates: list[tuple[Callable[[Node], Any], str]] = []
        self.input_mode: Literal["free", "list", "each"] = "free"
        self.feeders: list[OpPattern] = []
        self.input_list: list[OpPattern | TensorPattern] = []
        self.open_ended = False
        self.each: Each | None = None
        self.commutative = commutative
        self.uid = next(_node_ids)
        if inputs is not None:
            self.set_inputs(inputs)

    # ------------------------------------------------------------- building

    def named(self, name: str) -> OpPattern:
        """Give the node a capture name (``match.captures[name]``, ``match[name]``).

        Example:
            >>> op("Conv2D").named("conv").name
            'conv'
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise PatternError(f"A capture name must be a Python identifier. Received: name={name!r}.")
        self.name = name
        return self

    def optional(self, flag: bool = True) -> OpPattern:
        """Make the node optional (zero or one, greedy); when absent, its input edge passes through.

        Example:
            >>> p = op("Conv2D") >> op("ReLU").optional()
        """
        if not isinstance(flag, bool):
            raise PatternError(f"optional() takes True or False. Received: {flag!r}.")
        self.is_optional = flag
        return self

    def output(
        self,
        *,
        rank: int | ValueConstraint | None = None,
        shape: Sequence[int | None] | ValueConstraint | None = None,
        dtype: str | ValueConstraint | None = None,
        index: int = 0,
    ) -> OpPattern:
        """Constrain output ``index``: rank, shape (``None`` = any size) and/or dtype.

        Example:
            >>> p = op("Conv2D").output(rank=4, shape=(None, None, None, 64), dtype="float32")
        """
        self.outputs.append(OutputConstraint(index=index, rank=rank, shape=_shape_arg(shape), dtype=dtype))
        return self

    def where(self, fn: Callable[[Node], Any], description: str | None = None) -> OpPattern:
        """Add a predicate on the matched `rewriter.Node` (an exception counts as "no").

        Example:
            >>> p = op("Dense").where(lambda node: node.config["units"] % 8 == 0, "units divisible by 8")
        """
        if not callable(fn):
            raise PatternError(
                f"where() takes a function of the matched rewriter.Node. Received: {fn!r} for {self.label()}."
            )
        self.predicates.append((fn, description or f"<predicate {getattr(fn, '__name__', 'fn')}>"))
        return self

    def set_inputs(self, inputs: Sequence[Any] | Each) -> OpPattern:
        """Set the complete input list (``[p, q]``, ``[p, ...]``) or a variadic `each` spec.

        Example:
            >>> add = op("Add").set_inputs([op("BatchNormalization"), any_op()])
        """
        if self.input_mode != "free" or self.feeders:
            if self.feeders and not isinstance(inputs, Each):
                extra = [f for f in self.feeders if all(f is not i for i in inputs)]
                if extra:
                    raise PatternError(
                        f"Pattern node {self.label()} already has chained inputs "
                        f"{[f.label() for f in extra]} that are not in its complete input list."
                    )
            elif self.input_mode != "free":
                raise PatternError(f"Pattern node {self.label()} already has an input list.")
        if isinstance(inputs, Each):
            self.input_mode = "each"
            self.each = inputs
            self.feeders = []
            return self
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise PatternError(
                "inputs= must be a list of pattern nodes / tensor() placeholders (optionally ending with "
                f"...) or each(item). Received: inputs={inputs!r}."
            )
        items = list(inputs)
        open_ended = bool(items) and items[-1] is Ellipsis
        if open_ended:
            items = items[:-1]
        for item in items:
            if not isinstance(item, (OpPattern, TensorPattern)):
                raise PatternError(
                    f"Input list items must be pattern nodes (op(...), any_op()) or tensor() placeholders; "
                    f"'...' may only come last. Received: {item!r} in the inputs of {self.label()}."
                )
        self.input_mode = "list"
        self.input_list = items
        self.open_ended = open_ended
        self.feeders = []
        return self

    def __rshift__(self, other: OpPattern) -> OpPattern:
        """``a >> b``: an output of ``a`` is one of ``b``'s inputs; returns ``b`` (so chains compose)."""
        if not isinstance(other, OpPattern):
            raise PatternError(
                f"{self.label()} >> {other!r}: the right side of '>>' must be a pattern node (op(...), "
                "any_op())."
            )
        other._add_feeder(self)
        return other

    def __rrshift__(self, other: Any) -> OpPattern:
        """``[p, q] >> c``: ``p`` and ``q`` are ``c``'s complete input list; returns ``c``."""
        if isinstance(other, (list, tuple)):
            return self.set_inputs(list(other))
        if isinstance(other, TensorPattern):
            return self.set_inputs([other, ...])
        raise PatternError(
            f"{other!r} >> {self.label()}: the left side of '>>' must be a pattern node, a tensor() or a "
            "list of them (the complete input list)."
        )

    def _add_feeder(self, feeder: OpPattern) -> None:
        if self.input_mode == "list":
            if not any(feeder is item for item in self.input_list):
                raise PatternError(
                    f"{feeder.label()} >> {self.label()}: {self.label()} has a complete input list, and "
                    f"{feeder.label()} is not in it. Put it in the list instead."
                )
            return
        if self.input_mode == "each":
            raise PatternError(f"{feeder.label()} >> {self.label()}: the node has variadic each() inputs.")
        if not any(feeder is f for f in self.feeders):
            self.feeders.append(feeder)

    def __or__(self, other: OpPattern) -> OpPattern:
        """``a | b``: a new node matching either alternative (their inputs, names and flags are merged).

        Note that ``|`` binds more loosely than ``>>`` in Python: write ``a >> (b | c) >> d``.
        """
        if not isinstance(other, OpPattern):
            raise PatternError(
                f"{self.label()} | {other!r}: both sides of '|' must be pattern nodes (op(...), any_op())."
            )
        if self.name and other.name and self.name != other.name:
            raise PatternError(f"Cannot combine nodes named {self.name!r} and {other.name!r} with '|'.")
        if self.input_mode != "free" and other.input_mode != "free":
            raise PatternError("Cannot combine two nodes that both have input lists with '|'.")
        merged = OpPattern(self.choices + other.choices)
        merged.name = self.name or other.name
        merged.is_optional = self.is_optional or other.is_optional
        merged.outputs = [*self.outputs, *other.outputs]
        merged.predicates = [*self.predicates, *other.predicates]
        merged.commutative = self.commutative if self.commutative is not None else other.commutative
        source = self if self.input_mode != "free" else other
        if source.input_mode != "free":
            merged.input_mode = source.input_mode
            merged.input_list = list(source.input_list)
            merged.open_ended = source.open_ended
            merged.each = source.each
        for feeder in [*self.feeders, *other.feeders]:
            merged._add_feeder(feeder)
        return merged

    # ------------------------------------------------------------- reading

    def malformation(self) -> str | None:
        """What is structurally wrong with this node (built or edited by hand), or ``None``.

        `Pattern` checks every node with this, so a malformed node raises `PatternError` up front
        instead of failing deep inside the matcher.

        Example:
            >>> op("ReLU").malformation() is None
            True
            >>> bad = op("ReLU")
            >>> bad.feeders.append("Conv2D")
            >>> bad.malformation()
            "its chained inputs must be pattern nodes, not 'Conv2D'"
        """
        if not isinstance(self.choices, tuple) or not self.choices:
            return "it needs a tuple of at least one op choice"
        for choice in self.choices:
            if not isinstance(choice, OpChoice):
                return f"its op choices must be OpChoice objects (build nodes with op()), not {choice!r}"
        if self.name is not None and not (isinstance(self.name, str) and self.name.isidentifier()):
            return f"its capture name {self.name!r} is not a Python identifier"
        if not isinstance(self.is_optional, bool):
            return f"its optional flag must be True or False, not {self.is_optional!r}"
        if not all(isinstance(o, OutputConstraint) for o in self.outputs):
            return "its output constraints must be OutputConstraint objects (use .output(...))"
        if not all(
            isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0]) for pair in self.predicates
        ):
            return "its node predicates must be (function, description) pairs (use .where(...))"
        if self.input_mode not in ("free", "list", "each"):
            return f"its input mode must be 'free', 'list' or 'each', not {self.input_mode!r}"
        for feeder in self.feeders:
            if not isinstance(feeder, OpPattern):
                return f"its chained inputs must be pattern nodes, not {feeder!r}"
        if self.input_mode == "list":
            for item in self.input_list:
                if not isinstance(item, (OpPattern, TensorPattern)):
                    return (
                        f"its input list items must be pattern nodes or tensor() placeholders, not {item!r}"
                    )
        if self.input_mode == "each" and not (
            isinstance(self.each, Each) and isinstance(self.each.item, (OpPattern, TensorPattern))
        ):
            return f"its variadic inputs must be each(item), not {self.each!r}"
        return None

    @property
    def inputs(self) -> list[OpPattern | TensorPattern]:
        """Pattern inputs of this node: feeders, list items, or the `each` item."""
        if self.input_mode == "list":
            return list(self.input_list)
        if self.input_mode == "each":
            return [self.each.item] if self.each is not None else []
        return list(self.feeders)

    def is_commutative_for(self, op_type: str) -> bool:
        """Whether a complete input list matches in any order at a graph node of type ``op_type``."""
        return self.commutative if self.commutative is not None else op_type in COMMUTATIVE_OPS

    def local_failure(self, node: Node) -> str | None:
        """Why ``node`` cannot be this pattern node on its own (op, config, outputs, predicates).

        Inputs are not checked here (the matcher does that). Returns ``None`` when the node fits.

        Example:
            >>> from rewriter.graph import Node
            >>> dense = Node("dense", "Dense", None, {"units": 4})
            >>> op("ReLU").local_failure(dense)
            'its op is Dense, wanted ReLU'
            >>> op("Dense", units=8).local_failure(dense)
            'its units=4, wanted units=8'
            >>> op("Dense", units=4).local_failure(dense) is None
            True
        """
        typed = [c for c in self.choices if c.accepts_type(node)]
        if not typed:
            wanted = " | ".join(c.op_name or "_" for c in self.choices)
            return f"its op is {node.op_type}, wanted {wanted}"
        reasons = []
        for choice in typed:
            reason = choice.config_failure(node)
            if reason is None:
                break
            reasons.append(reason)
        else:
            return reasons[0] if len(reasons) == 1 else "; ".join(reasons)
        for constraint in self.outputs:
            if constraint.index >= node.num_outputs:
                return (
                    f"it has {node.num_outputs} output(s), the pattern constrains output {constraint.index}"
                )
            reason = constraint.failure(node.output_specs[constraint.index])
            if reason is not None:
                return reason
        for fn, description in self.predicates:
            try:
                ok = bool(fn(node))
            except Exception as exc:
                return f"the node predicate {description} raised {type(exc).__name__}: {exc}"
            if not ok:
                return f"the node predicate {description} returned False"
        return None

    def signature(self) -> tuple[Any, ...]:
        """A hashable form of everything about this node except its inputs.

        That is its op choices, config, capture name, optional flag, output constraints, predicates (by
        identity) and input mode: two nodes with equal signatures accept the same graph nodes.

        Example:
            >>> op("Conv2D", padding="same").signature() == op("Conv2D", padding=["same"][0]).signature()
            True
            >>> op("Conv2D").signature() == op("Conv2D").named("c").signature()
            False
        """
        return _local_key(self)

    def op_names(self) -> set[str] | None:
        """Op type names this node can match, or ``None`` if any op (wildcard or class) may match."""
        names: set[str] = set()
        for choice in self.choices:
            if not isinstance(choice.op, str):
                return None
            names.add(choice.op)
        return names

    def describe(self) -> str:
        """Text form of the node alone: ``c:Conv2D(kernel_size=(1, 1))?``."""
        if len(self.choices) == 1:
            body = self.choices[0].describe()
        else:
            body = "(" + " | ".join(c.describe() for c in self.choices) + ")"
        extras = [c.describe() for c in self.outputs] + [d for _, d in self.predicates]
        if extras:
            body += "{" + ", ".join(extras) + "}"
        label = f"{self.name}:{body}" if self.name else body
        return label + ("?" if self.is_optional else "")

    def label(self) -> str:
        """The capture name, or the short description of an anonymous node."""
        return self.name or self.describe()

    def __repr__(self) -> str:
        return self.describe()


def op(
    op_type: str | type | Sequence[str | type],
    /,
    *,
    inputs: Sequence[Any] | Each | None = None,
    config: Mapping[str, Any] | None = None,
    commutative: bool | None = None,
    **config_kwargs: Any,
) -> OpPattern:
    """A pattern node for an op given by class name, class, or a list of alternatives.

    Args:
        op_type: ``"Conv2D"``, ``keras.layers.Conv2D``, or ``["ReLU", "ELU"]`` (alternatives).
        inputs: The complete input list (``[p, q]``, ``[p, ...]``) or ``each(item)``; default: free.
        config: Config constraints given as a dict (for keys that are not identifiers).
        commutative: Force (or forbid) any-order matching of the input list; default by op type.
        **config_kwargs: Config constraints: a value (equality), `one_of`, a callable, `anything`.

    Returns:
        A new pattern node.

    Raises:
        PatternError: Unknown class name (with suggestions) or a malformed constraint.

    Example:
        >>> op("Conv2D", kernel_size=(1, 1), padding="same").named("c")
        c:Conv2D(kernel_size=(1, 1), padding='same')
        >>> op("Add", inputs=[op("BatchNormalization"), any_op()])
        Add
    """
    if config is not None and not isinstance(config, Mapping):
        raise PatternError(f"op(config=...) takes a dict of config key -> constraint. Received: {config!r}.")
    constraints = {k: _as_constraint(v) for k, v in {**(config or {}), **config_kwargs}.items()}
    types = list(op_type) if isinstance(op_type, (list, tuple)) else [op_type]
    if not types:
        raise PatternError("op() needs at least one op type.")
    choices = []
    for t in types:
        if isinstance(t, str):
            if t == "_":
                choices.append(OpChoice(None, constraints))
                continue
            _check_op_name(t)
        elif not isinstance(t, type) or not _is_operation_class(t):
            raise PatternError(
                "An op type must be a class name or a Keras layer/operation class (a keras.Operation "
                f"subclass). Received: {t!r} of type {type(t).__name__}."
            )
        choices.append(OpChoice(t, constraints))
    return OpPattern(choices, inputs=inputs, commutative=commutative)


def _is_operation_class(cls: type) -> bool:
    import keras

    return issubclass(cls, keras.Operation)


def _is_operation(obj: Any) -> bool:
    import keras

    return isinstance(obj, keras.Operation)


def any_op(*, inputs: Sequence[Any] | Each | None = None, **config_kwargs: Any) -> OpPattern:
    """A pattern node matching any single op (the text language's ``_``), with optional config constraints.

    Example:
        >>> p = op("DepthwiseConv2D") >> any_op() >> op("Activation")
    """
    return op("_", inputs=inputs, **config_kwargs)


def tensor(
    name: str | None = None,
    *,
    rank: int | ValueConstraint | None = None,
    shape: Sequence[int | None] | ValueConstraint | None = None,
    dtype: str | ValueConstraint | None = None,
) -> TensorPattern:
    """A boundary tensor placeholder for input lists: any tensor from outside; same name = same tensor.

    Example:
        >>> x = tensor("x")
        >>> square = op("Multiply", inputs=[x, x])
    """
    if name is not None and (not isinstance(name, str) or not name.isidentifier()):
        raise PatternError(f"A tensor name must be a Python identifier. Received: name={name!r}.")
    constraint = None
    if rank is not None or shape is not None or dtype is not None:
        constraint = OutputConstraint(rank=rank, shape=_shape_arg(shape), dtype=dtype)
    return TensorPattern(name, constraint)


def each(item: OpPattern | TensorPattern, *, min: int = 1, max: int | None = None) -> Each:
    """Variadic inputs: every input matches ``item``, and there are between ``min`` and ``max`` of them.

    ``item`` is an unnamed `OpPattern` without input constraints (each input's producer must satisfy it;
    the producers become part of the match) or a `tensor` placeholder (any inputs at all).

    Example:
        >>> concat_of_convs = op("Concatenate", inputs=each(op("Conv2D"), min=2))
    """
    if isinstance(item, OpPattern):
        if item.name is not None or item.is_optional or item.input_mode != "free" or item.feeders:
            raise PatternError(
                "each(item): item must be an unnamed, non-optional op pattern without inputs "
                f"(or a tensor()). Received: {item.describe()}."
            )
    elif isinstance(item, TensorPattern):
        if item.name is not None:
            raise PatternError(
                "each(item): a tensor item must be unnamed (each input is a different tensor)."
            )
    else:
        raise PatternError(f"each(item) takes an op pattern or tensor(). Received: {item!r}.")
    if min < 0 or (max is not None and max < min):
        raise PatternError(f"each(): need 0 <= min <= max. Received: min={min}, max={max}.")
    return Each(item, min, max)


# ------------------------------------------------------------------------------------ Pattern


class Pattern:
    """A complete pattern: its sinks, every pattern node reachable backwards from them, a ``where=``.

    Args:
        *sinks: The pattern's output nodes; the first one is the anchor (``match.anchor``).
        where: Optional whole-match predicate, called with the `rewriter.Match`.
        name: Optional name (used in messages).

    Raises:
        PatternError: No sinks, a cycle, two nodes with one capture name, a misused optional node.

    Example:
        >>> x = op("Conv2D").named("x")
        >>> y = op("Conv2D").named("y")
        >>> p = Pattern(op("Concatenate", inputs=[x, y]), where=lambda m: m["x"].filters == m["y"].filters)
        >>> p.capture_names
        ['x', 'y']
    """

    def __init__(
        self,
        *sinks: OpPattern,
        where: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not sinks:
            raise PatternError("A Pattern needs at least one sink node, e.g. Pattern(op('ReLU')).")
        for sink in sinks:
            if not isinstance(sink, OpPattern):
                raise PatternError(
                    f"Pattern sinks must be op patterns (op(...), any_op()). Received: {sink!r}."
                )
        if where is not None and not callable(where):
            raise PatternError(
                f"Pattern(where=...) takes a function of the Match. Received: where={where!r}."
            )
        if name is not None and not isinstance(name, str):
            raise PatternError(f"Pattern(name=...) takes a str. Received: name={name!r}.")
        self.sinks: tuple[OpPattern, ...] = tuple(dict.fromkeys(sinks))
        self.where = where
        self.name = name
        self.nodes: tuple[OpPattern, ...] = self._collect()
        self.tensors: tuple[TensorPattern, ...] = self._collect_tensors()
        self._consumers: dict[int, list[OpPattern]] = {n.uid: [] for n in self.nodes}
        for node in self.nodes:
            for item in node.inputs:
                if isinstance(item, OpPattern) and node.input_mode != "each":
                    self._consumers[item.uid].append(node)
        self._freeze()
        self._validate()

    def _collect(self) -> tuple[OpPattern, ...]:
        order: list[OpPattern] = []
        state: dict[int, int] = {}  # 1 = on stack, 2 = done
        for sink in self.sinks:
            stack: list[tuple[OpPattern, int]] = [(sink, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if state.get(node.uid) == 2:
                        continue
                    problem = node.malformation()
                    if problem is not None:
                        label = f"{node.name!r}" if isinstance(node.name, str) else f"#{node.uid}"
                        raise PatternError(
                            f"Malformed pattern node {label}: {problem}. Build nodes with op(...), "
                            "any_op() and their methods."
                        )
                    state[node.uid] = 1
                ins = (
                    [x for x in node.inputs if isinstance(x, OpPattern)] if node.input_mode != "each" else []
                )
                if i < len(ins):
                    stack.append((node, i + 1))
                    child = ins[i]
                    if state.get(child.uid) == 1:
                        raise PatternError(f"The pattern has a cycle through {child.label()}.")
                    if state.get(child.uid) != 2:
                        stack.append((child, 0))
                else:
                    state[node.uid] = 2
                    order.append(node)
        return tuple(order)  # topological: producers first

    def _collect_tensors(self) -> tuple[TensorPattern, ...]:
        seen: dict[int, TensorPattern] = {}
        for node in self.nodes:
            for item in node.inputs:
                if isinstance(item, TensorPattern):
                    seen.setdefault(item.uid, item)
        return tuple(seen.values())

    def _freeze(self) -> None:
        # Snapshot builder state so later edits of the OpPattern objects do not change this pattern.
        self._snapshot = {
            n.uid: (n.choices, n.name, n.is_optional, tuple(n.outputs), tuple(n.predicates), n.input_mode,
                    tuple(n.feeders), tuple(n.input_list), n.open_ended, n.each, n.commutative)
            for n in self.nodes
        }  # fmt: skip

    def _validate(self) -> None:
        names: dict[str, object] = {}
        for item in [*self.nodes, *self.tensors]:
            if item.name is None:
                continue
            other = names.setdefault(item.name, item)
            if other is not item:
                raise PatternError(
                    f"Two different pattern nodes are named {item.name!r}; a capture name denotes one node. "
                    "Reuse the same op(...) object to refer to the same node."
                )
        for node in self.nodes:
            if not node.is_optional:
                continue
            ins = node.inputs
            if len(ins) > 1 or (ins and not isinstance(ins[0], OpPattern)) or node.input_mode == "each":
                raise PatternError(
                    f"Optional node {node.label()} must have at most one pattern input (a node), so that the "
                    "edge can pass straight through when it is absent."
                )
            if node.open_ended:
                raise PatternError(f"Optional node {node.label()} cannot have an open-ended input list.")
            consumers = self._consumers[node.uid]
            if len(consumers) > 1 or (consumers and node in self.sinks):
                raise PatternError(
                    f"Optional node {node.label()} is used by {len(consumers)} pattern nodes"
                    f"{' and is a sink' if node in self.sinks else ''}; "
                    "an optional node may feed at most one place."
                )
            if ins and ins[0].is_optional and node in self.sinks:
                raise PatternError(
                    f"Optional sink {node.label()} may not feed from another optional node "
                    f"({ins[0].label()}); make one of them required."
                )
        if all(n.is_optional for n in self.sinks) and all(n.is_optional for n in self.nodes):
            raise PatternError("A pattern needs at least one non-optional node.")

    # ------------------------------------------------------------- reading

    def check_unchanged(self) -> None:
        """Raise `PatternError` if a node of this pattern was modified after the pattern was built."""
        for n in self.nodes:
            now = (n.choices, n.name, n.is_optional, tuple(n.outputs), tuple(n.predicates), n.input_mode,
                   tuple(n.feeders), tuple(n.input_list), n.open_ended, n.each, n.commutative)  # fmt: skip
            if now != self._snapshot[n.uid]:
                raise PatternError(
                    f"Pattern node {n.label()} was modified after Pattern(...) was built; "
                    "build a new Pattern."
                )

    @property
    def anchor(self) -> OpPattern:
        """The first sink."""
        return self.sinks[0]

    @property
    def capture_names(self) -> list[str]:
        """Capture names of nodes (and named tensors), in pattern topological order."""
        return [n.name for n in self.nodes if n.name] + [t.name for t in self.tensors if t.name]

    def consumers_of(self, node: OpPattern) -> list[OpPattern]:
        """Pattern nodes that have ``node`` as an input (feeder or list item)."""
        return list(self._consumers[node.uid])

    def node_named(self, name: str) -> OpPattern:
        """The pattern node with capture name ``name``.

        Raises:
            PatternError: No such name.
        """
        for n in self.nodes:
            if n.name == name:
                return n
        raise PatternError(f"The pattern has no node named {name!r}; names: {self.capture_names}.")

    def structure(self) -> tuple[Any, ...]:
        """A canonical, hashable form: equal for patterns that mean the same, however they were written.

        Feeder order, alternative order and list/tuple spelling of values do not matter; captures, sinks
        (in order), input lists, flags and constraints do. Predicates compare by identity.

        Example:
            >>> a = Pattern(op("Conv2D").named("c") >> op("ReLU"))
            >>> a.structure() == Pattern(op("Conv2D").named("c") >> op("ReLU")).structure()
            True
        """
        return _structure(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pattern):
            return NotImplemented
        return self.structure() == other.structure()

    def __hash__(self) -> int:
        return hash(self.structure())

    def __str__(self) -> str:
        return _render(self)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Pattern{label}: {_render(self)}>"


def _render(pattern: Pattern) -> str:
    """The pattern in the text language: nested inline where every node feeds one place, else labelled."""
    inline = _render_inline(pattern)
    if inline is not None:
        return inline
    nodes = pattern.nodes
    labels: dict[int, str] = {}
    counter = itertools.count()
    for n in nodes:
        labels[n.uid] = n.name or f"_{next(counter)}"
    parts = [n.describe() if n.name else f"{labels[n.uid]}:{n.describe()}" for n in nodes]
    for n in nodes:
        if n.input_mode == "list":
            items = [labels[i.uid] if isinstance(i, OpPattern) else i.describe() for i in n.input_list]
            if n.open_ended:
                items.append("...")
            parts.append(f"[{', '.join(items)}] -> {labels[n.uid]}")
        elif n.input_mode == "each" and n.each is not None:
            parts.append(f"{_each_text(n.each)} -> {labels[n.uid]}")
        else:
            parts.extend(f"{labels[f.uid]} -> {labels[n.uid]}" for f in n.feeders)
    return "; ".join(parts)


def _each_text(spec: Each) -> str:
    return f"each({spec.item.describe()}, min={spec.min}, max={spec.max})"


def _render_inline(pattern: Pattern) -> str | None:
    """Each sink as one nested expression (``[Conv2D -> ReLU, BatchNormalization] -> Add``).

    ``None`` if a node feeds several places (it then needs a label). Built producers first, no recursion.
    """
    sinks = set(pattern.sinks)
    text: dict[int, str] = {}
    for node in pattern.nodes:  # producers first
        items = node.inputs if node.input_mode != "each" else []
        if any(isinstance(i, OpPattern) and (i in sinks or len(pattern.consumers_of(i)) != 1) for i in items):
            return None
        head = node.describe()
        if node.input_mode == "list":
            parts = [text[i.uid] if isinstance(i, OpPattern) else i.describe() for i in node.input_list]
            parts += ["..."] if node.open_ended else []
            text[node.uid] = f"[{', '.join(parts)}] -> {head}"
        elif node.input_mode == "each" and node.each is not None:
            text[node.uid] = f"{_each_text(node.each)} -> {head}"
        elif len(node.feeders) > 1:
            return None
        else:
            text[node.uid] = f"{text[node.feeders[0].uid]} -> {head}" if node.feeders else head
    return "; ".join(text[sink.uid] for sink in pattern.sinks)


def _value_key(value: Any) -> Any:
    if isinstance(value, Equals):
        value = value.value
    elif isinstance(value, OneOf):
        return ("one_of", tuple(sorted({repr(normalize_value(v)) for v in value.values})))
    elif isinstance(value, Anything):
        return ("anything",)
    elif isinstance(value, Predicate):
        return ("predicate", id(value.fn))
    elif isinstance(value, ValueConstraint):
        return ("constraint", repr(value))
    return ("value", repr(normalize_value(value)))


def _local_key(node: OpPattern) -> tuple[Any, ...]:
    """Everything about a node except its inputs (see `Pattern.structure`)."""
    choices = []
    for choice in node.choices:
        kind = (
            choice.op
            if choice.op is None or isinstance(choice.op, str)
            else (f"{choice.op.__module__}.{choice.op.__qualname__}")
        )
        config = tuple(sorted((key, _value_key(c)) for key, c in choice.config.items()))
        choices.append(repr((isinstance(choice.op, type), kind, config)))
    outputs = sorted(
        repr((o.index, *(None if v is None else _value_key(v) for v in (o.rank, o.shape, o.dtype))))
        for o in node.outputs
    )
    each_key = None
    if node.each is not None:
        item = node.each.item
        item_key = _local_key(item) if isinstance(item, OpPattern) else _tensor_key(item)
        each_key = (item_key, node.each.min, node.each.max)
    return (
        tuple(sorted(choices)),
        node.name,
        node.is_optional,
        tuple(outputs),
        tuple(sorted(id(fn) for fn, _ in node.predicates)),
        node.commutative,
        node.input_mode,
        node.open_ended,
        each_key,
    )


def _tensor_key(item: TensorPattern) -> tuple[Any, ...]:
    constraint = item.constraint
    shape = None
    if constraint is not None:
        shape = tuple(
            None if v is None else _value_key(v)
            for v in (constraint.rank, constraint.shape, constraint.dtype)
        )
    return ("tensor", item.name, shape)


def _structure(pattern: Pattern) -> tuple[Any, ...]:
    """See `Pattern.structure`: Merkle signatures order the feeders; nodes are numbered from the sinks."""
    signature: dict[int, str] = {}
    for node in pattern.nodes:  # producers first
        if node.input_mode == "list":
            ins: Any = tuple(
                signature[i.uid] if isinstance(i, OpPattern) else repr(_tensor_key(i))
                for i in node.input_list
            )
        else:
            ins = tuple(sorted(signature[f.uid] for f in node.feeders))
        signature[node.uid] = hashlib.sha1(repr((_local_key(node), ins)).encode()).hexdigest()

    def ordered_inputs(node: OpPattern) -> list[OpPattern | TensorPattern]:
        if node.input_mode == "list":
            return list(node.input_list)
        if node.input_mode == "each":
            return []
        return sorted(node.feeders, key=lambda f: signature[f.uid])

    number: dict[int, int] = {}
    visit: list[OpPattern | TensorPattern] = []
    stack: list[OpPattern | TensorPattern] = list(reversed(pattern.sinks))
    while stack:
        item = stack.pop()
        if item.uid in number:
            continue
        number[item.uid] = len(visit)
        visit.append(item)
        if isinstance(item, OpPattern):
            stack.extend(reversed(ordered_inputs(item)))
    rows = []
    for item in visit:
        if isinstance(item, TensorPattern):
            rows.append((number[item.uid], _tensor_key(item)))
            continue
        refs = tuple(number[i.uid] for i in ordered_inputs(item))
        if item.input_mode == "free":
            refs = tuple(sorted(refs))
        rows.append((number[item.uid], _local_key(item), refs))
    sinks = tuple(number[s.uid] for s in pattern.sinks)
    where = None if pattern.where is None else id(pattern.where)
    return (tuple(rows), sinks, where)


PatternLike = Any
"""Anything `as_pattern` accepts: a `Pattern`, an `OpPattern` (one sink), pattern text, or a function."""


def as_pattern(obj: PatternLike) -> Pattern:
    """Turn anything pattern-like into a `Pattern`.

    Args:
        obj: A `Pattern`; an `OpPattern` (used as the single sink); a ``str`` in the text language
            (``rewriter.dsl.parse_pattern``); a Keras layer or operation class (``op(cls)``); or a
            Python function written with the Keras functional API
            (``rewriter.by_example.pattern_from_example``).

    Raises:
        PatternError: ``obj`` is none of these.

    Example:
        >>> as_pattern(op("Conv2D") >> op("ReLU"))
        <Pattern: Conv2D -> ReLU>
    """
    if isinstance(obj, Pattern):
        obj.check_unchanged()
        return obj
    if isinstance(obj, OpPattern):
        return Pattern(obj)
    if isinstance(obj, str):
        try:
            from rewriter.dsl import parse_pattern
        except ImportError as exc:  # pragma: no cover - the text language is a separate module
            raise PatternError(
                f"Pattern text needs rewriter.dsl.parse_pattern, which is unavailable: {exc}."
            ) from exc
        return as_pattern(parse_pattern(obj))
    if isinstance(obj, type) and _is_operation_class(obj):
        return Pattern(op(obj))
    if _is_operation(obj):
        raise PatternError(
            f"A Keras layer object is not a pattern. Received: {obj!r}. Match its class with "
            f"op({type(obj).__name__!r}) (or op(type(layer))), or find this very layer with "
            "op(...).where(lambda node: node.layer is layer)."
        )
    if callable(obj) and not isinstance(obj, type):
        try:
            from rewriter.by_example import pattern_from_example
        except ImportError as exc:  # pragma: no cover
            raise PatternError(
                f"Patterns by example need rewriter.by_example.pattern_from_example: {exc}."
            ) from exc
        return as_pattern(pattern_from_example(obj))
    raise PatternError(
        "Expected a pattern: a rewriter.Pattern, an op(...) node, pattern text or a function written with "
        f"the Keras functional API. Received: {obj!r} of type {type(obj).__name__}."
    )
