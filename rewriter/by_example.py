"""Patterns by example: write the subgraph with the Keras functional API, get a `rewriter.Pattern`.

>>> import rewriter
>>> from keras import layers
>>> def conv_pool(x):
...     return layers.MaxPooling2D()(layers.Conv2D(32, 3)(x))
>>> pattern = rewriter.pattern_from_example(conv_pool)
>>> text = "_c:Conv2D(filters=32, kernel_size=(3, 3)); [$x] -> _c; [_c] -> MaxPooling2D"
>>> pattern == rewriter.parse_pattern(text)
True

How it works:

1. **Tracing.** Each parameter of the function becomes a symbolic ``keras.Input`` and the function is
   called once; its returned tensors (one, or a tuple/list/dict of several) are the pattern's sinks. The
   mini model they form is lifted with `rewriter.lift`, so layer calls and ``keras.ops`` calls
   (``ops.add``) both become nodes. If no input shapes are given, a few generic shapes are tried in turn
   (rank 4, 3, 2, 5 with 8 in every dimension) until the function traces.
2. **Which arguments were explicit.** While the function runs, construction of every Keras operation is
   intercepted: ``keras.Operation.__new__`` (which receives exactly the arguments the user wrote) is
   wrapped for the duration of the call, recording ``(args, kwargs)`` per object. The arguments are bound
   with ``inspect.signature(cls.__init__).bind`` to name the positional ones (``Conv2D(32, 3)`` gives
   ``filters`` and ``kernel_size``). Each explicit name that is a key of the constructed layer's
   ``get_config()`` becomes an equality constraint **with the value from that config**, so values are
   normalized exactly as Keras normalizes them (``kernel_size=3`` becomes ``(3, 3)``, an initializer
   string becomes its serialized dict). ``name`` never constrains (it becomes the capture name instead);
   explicit arguments that are not config keys are ignored. For ``keras.ops`` calls the constructor
   receives every argument of the ``ops`` function, so arguments equal to the ``ops`` function's default
   are dropped (writing the default explicitly therefore does not constrain). A layer created *outside*
   the function and called inside it constrains by its whole config (except its name).
3. **Building the pattern.** Each traced node becomes a pattern node of the same class, whose inputs are
   the complete, ordered list of its producers (free order for commutative ops such as ``Add``). Each
   parameter becomes an "any producer" boundary: it matches whatever tensor enters the subgraph, and a
   parameter used twice must be the same tensor both times. Literal operands of ``keras.ops`` calls
   (``ops.multiply(x, 0.5)``) must be equal too (a node predicate; any position for commutative ops).
   Shapes in the example do not constrain the match unless ``shapes=True`` (output shapes, batch
   dimension free) or ``shapes="rank"``.

Example:
    >>> import keras
    >>> from keras import layers, ops
    >>> def residual(x):
    ...     y = layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", name="conv")(x))
    ...     return ops.add(x, y)
    >>> pattern = pattern_from_example(residual, (8, 8, 16))
    >>> print(pattern)
    [$x, [[$x] -> conv:Conv2D(filters=16, kernel_size=(3, 3), padding='same')] -> BatchNormalization] -> Add
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras

from rewriter.errors import PatternError
from rewriter.graph import Graph, TensorRef
from rewriter.pattern import COMMUTATIVE_OPS, OpPattern, Pattern, TensorPattern, normalize_value, op, tensor

__all__ = ["pattern_from_example", "trace_example"]

# Generic shapes (without the batch dimension) tried in turn when the caller gives none.
_DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((8, 8, 8), (8, 8), (8,), (8, 8, 8, 8))

_RECORD_LOCK = threading.Lock()


class _Recorder:
    """Records the constructor arguments of every Keras operation created while active."""

    def __init__(self) -> None:
        self.calls: dict[int, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[_Recorder]:
        operation_class = keras.Operation
        original = operation_class.__dict__["__new__"]
        original_function = original.__func__ if isinstance(original, staticmethod) else original
        calls = self.calls

        def recording_new(cls: type, *args: Any, **kwargs: Any) -> Any:
            instance = original_function(cls, *args, **kwargs)
            calls[id(instance)] = (instance, args, dict(kwargs))
            return instance

        with _RECORD_LOCK:
            operation_class.__new__ = staticmethod(recording_new)  # type: ignore[assignment]
            try:
                yield self
            finally:
                operation_class.__new__ = original  # type: ignore[assignment]

    def explicit_arguments(self, operation: Any) -> dict[str, Any] | None:
        """The arguments written at construction, by parameter name; ``None`` if built elsewhere."""
        record = self.calls.get(id(operation))
        if record is None or record[0] is not operation:
            return None
        _, args, kwargs = record
        return _bind(type(operation), args, kwargs)


def _bind(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Name the constructor arguments as written (no defaults applied); ``**kwargs`` are expanded."""
    try:
        signature = inspect.signature(cls.__init__)
        bound = signature.bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    arguments = dict(bound.arguments)
    parameters = list(signature.parameters.values())
    arguments.pop(parameters[0].name, None)  # self
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(parameter.name, {}))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            arguments.pop(parameter.name, None)
    return arguments


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _ops_function_defaults(cls: type) -> dict[str, Any]:
    """Defaults of the public ``keras.ops`` function behind operation class ``cls`` (``Sum`` -> ``sum``)."""
    for candidate in (_snake_case(cls.__name__), cls.__name__.lower()):
        function = getattr(keras.ops, candidate, None)
        if callable(function):
            try:
                parameters = inspect.signature(function).parameters.values()
            except (TypeError, ValueError):
                return {}
            return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {}


def _explicit_config(operation: Any, recorder: _Recorder) -> tuple[dict[str, Any], str | None]:
    """The config constraints of ``operation`` written explicitly, normalized by its ``get_config()``.

    Args:
        operation: A Keras layer or operation created (or just called) in the example.
        recorder: The recorder active while the example ran.

    Returns:
        ``(constraints, capture)``: config key -> normalized value, and the explicit ``name=`` (or None).
    """
    try:
        config = dict(operation.get_config() or {})
    except (NotImplementedError, TypeError, AttributeError):
        config = {}
    explicit = recorder.explicit_arguments(operation)
    if explicit is None:  # built outside the example: the whole config constrains
        config.pop("name", None)
        return config, None
    capture = explicit.pop("name", None)
    if not isinstance(operation, keras.layers.Layer):
        defaults = _ops_function_defaults(type(operation))
        explicit = {k: v for k, v in explicit.items() if not (k in defaults and _same_value(defaults[k], v))}
    constraints = {key: config[key] for key in explicit if key in config}
    return constraints, capture if isinstance(capture, str) else None


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _input_shapes(fn: Callable[..., Any], shapes: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    """Parameter names of ``fn`` and the candidate input shape lists to try."""
    try:
        parameters = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and p.default is inspect.Parameter.empty
        ]
    except (TypeError, ValueError):
        raise PatternError(f"Cannot read the parameters of example function {fn!r}.") from None
    names = [p.name for p in parameters]
    if not names:
        raise PatternError(
            f"Example function {getattr(fn, '__name__', fn)!r} takes no tensor parameters. "
            "Write it as def pattern(x): ... with one parameter per tensor entering the subgraph."
        )
    if shapes:
        if len(shapes) != len(names):
            raise PatternError(
                f"Example function {getattr(fn, '__name__', fn)!r} takes {len(names)} tensor parameter(s) "
                f"{names}, but {len(shapes)} input shape(s) were given. Give one shape per parameter "
                "(without the batch dimension), or none to let shapes be guessed."
            )
        return names, [list(shapes)]
    return names, [[shape] * len(names) for shape in _DEFAULT_SHAPES]


def trace_example(fn: Callable[..., Any], *input_shapes: Any) -> tuple[Graph, dict[str, Any], list[str]]:
    """Run ``fn`` on symbolic inputs and lift the result; record which arguments each op was given.

    Args:
        fn: The example function (one parameter per input tensor, returns one or several tensors).
        *input_shapes: One shape per parameter, without the batch dimension (``(32, 32, 3)``), or a
            ``keras.Input`` tensor; none to try generic shapes.

    Returns:
        ``(graph, explicit, parameters)``: the lifted graph of the example (its inputs in parameter
        order), ``{node name: (constraints, capture)}`` for every non-input node, and the parameter names.

    Raises:
        PatternError: The function does not trace with any of the shapes, or returns something that is
            not a tensor computed from its parameters.

    Example:
        >>> graph, explicit, params = trace_example(lambda x: keras.layers.Dense(4)(x), (8,))
        >>> [n.op_type for n in graph.topological()]
        ['InputLayer', 'Dense']
    """
    from rewriter.lift import lift

    names, candidates = _input_shapes(fn, input_shapes)
    failures: list[str] = []
    for shapes in candidates:
        recorder = _Recorder()
        try:
            with recorder.active():
                inputs = [_symbolic_input(shape, name) for shape, name in zip(shapes, names)]
                outputs = fn(*inputs)
        except PatternError:
            raise
        except Exception as error:  # the example failed on these shapes: try the next ones
            failures.append(f"shapes {shapes}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        flat = _flat_outputs(fn, outputs, inputs)
        try:
            model = keras.Model(inputs, flat if len(flat) > 1 else flat[0])
        except Exception as error:
            raise PatternError(
                f"Example function {getattr(fn, '__name__', fn)!r} does not form a subgraph of its "
                f"parameters {names}: {str(error).splitlines()[0][:300]}. Every parameter must be used "
                "and every returned tensor must be computed from the parameters."
            ) from None
        graph = lift(model)
        explicit = {
            node.name: _explicit_config(node.layer, recorder)
            for node in graph.topological()
            if not node.is_input
        }
        return graph, explicit, names
    detail = "\n  ".join(failures)
    raise PatternError(
        f"Example function {getattr(fn, '__name__', fn)!r} could not be traced with "
        f"{'the given' if input_shapes else 'generic'} input shapes:\n"
        f"  {detail}\nGive the input shapes explicitly (without the batch dimension), e.g. "
        f"pattern_from_example(fn, (32, 32, 3))."
    )


def _symbolic_input(shape: Any, name: str) -> Any:
    if isinstance(shape, keras.KerasTensor):
        history = getattr(shape, "_keras_history", None)
        if history is None or type(history.operation).__name__ != "InputLayer":
            raise PatternError(f"Input for parameter {name!r} must be a keras.Input tensor or a shape tuple.")
        return shape
    if not isinstance(shape, (tuple, list)) or not all(d is None or isinstance(d, int) for d in shape):
        raise PatternError(
            f"Input shape for parameter {name!r} must be a tuple of ints or None without the batch "
            f"dimension, e.g. (32, 32, 3). Received: {shape!r}"
        )
    return keras.Input(tuple(shape), name=f"{name}")


def _flat_outputs(fn: Callable[..., Any], outputs: Any, inputs: list[Any]) -> list[Any]:
    flat = [] if outputs is None else keras.tree.flatten(outputs)
    label = getattr(fn, "__name__", repr(fn))
    if not flat:
        raise PatternError(
            f"Example function {label!r} returned nothing: return the tensor(s) the pattern ends at."
        )
    input_ids = {id(t) for t in inputs}
    for item in flat:
        if not isinstance(item, keras.KerasTensor):
            raise PatternError(
                f"Example function {label!r} must return symbolic tensors (layer or keras.ops results). "
                f"Received: {type(item).__name__} {item!r:.80}"
            )
        if id(item) in input_ids:
            raise PatternError(
                f"Example function {label!r} returns one of its parameters unchanged: a pattern's outputs "
                "must be computed by at least one op."
            )
    return flat


def pattern_from_example(
    fn: Callable[..., Any],
    *input_shapes: Any,
    shapes: bool | str = False,
    where: Callable[[Any], Any] | None = None,
) -> Pattern:
    """Trace ``fn`` (written with the Keras functional API) into a `rewriter.Pattern`.

    Only the arguments written explicitly in the example constrain the match; see the module docstring
    for how they are found and normalized.

    Args:
        fn: One parameter per tensor entering the subgraph; returns the tensor(s) the pattern ends at (a
            tensor, or a tuple/list/dict of tensors: several sinks, the first is the anchor).
        *input_shapes: One shape per parameter without the batch dimension (``(32, 32, 3)``), or
            ``keras.Input`` tensors. Omitted: generic shapes are tried (rank 4, 3, 2, 5).
        shapes: ``False`` (default): shapes never constrain the match. ``"rank"``: every node's outputs
            and every parameter must have the example's rank. ``True``: the example's shapes (the batch
            dimension stays free; ``None`` dimensions stay free).
        where: Optional whole-match predicate (taking the `rewriter.Match`).

    Returns:
        The pattern. Parameters become boundary tensors named after them (``match.tensors["x"]``);
        layers given ``name=`` in the example become captures of that name (the name does not constrain).

    Raises:
        PatternError: The function cannot be traced, returns something that is not a computed tensor, or
            leaves a parameter unused.

    Example:
        >>> from keras import layers
        >>> def conv_pool(x):
        ...     return layers.MaxPooling2D()(layers.Conv2D(32, 3, name="conv")(x))
        >>> pattern = pattern_from_example(conv_pool)
        >>> print(pattern)
        [[$x] -> conv:Conv2D(filters=32, kernel_size=(3, 3))] -> MaxPooling2D
    """
    if shapes not in (False, True, "rank"):
        raise PatternError(f"shapes must be False, True or 'rank'. Received: shapes={shapes!r}.")
    graph, explicit, parameters = trace_example(fn, *input_shapes)
    label = getattr(fn, "__name__", repr(fn))
    boundary: dict[str, TensorPattern] = {}
    for parameter, input_name in zip(parameters, graph.inputs):
        spec = graph.node(input_name).output_specs[0]
        if not graph.consumers(input_name):
            raise PatternError(
                f"Parameter {parameter!r} of example function {label!r} is not used: every parameter must "
                "be an input of the subgraph. Remove it or use it."
            )
        boundary[input_name] = tensor(parameter, **_shape_constraint(spec, shapes))
    nodes: dict[str, OpPattern] = {}
    captures: dict[str, str] = {}
    for node in graph.topological():
        if node.is_input:
            continue
        constraints, capture = explicit[node.name]
        pattern_node = op(node.op_type, config=constraints)
        if capture is not None:
            capture = _identifier(capture)
            if capture in captures or capture in parameters:
                raise PatternError(
                    f"Example function {label!r}: the name {capture!r} is given to two layers (or to a layer "
                    "and a parameter); capture names must be unique."
                )
            captures[capture] = node.name
            pattern_node.named(capture)
        for index, spec in enumerate(node.output_specs):
            constraint = _shape_constraint(spec, shapes)
            if constraint:
                pattern_node.output(index=index, **constraint)
        literal_check = _literal_arguments_check(node)
        if literal_check is not None:
            pattern_node.where(*literal_check)
        items = [
            nodes[port.node] if port.node in nodes else boundary[port.node]
            for port in graph.producers(node.name)
        ]
        pattern_node.set_inputs(items)
        nodes[node.name] = pattern_node
    sinks = list(dict.fromkeys(nodes[port.node] for port in graph.outputs))
    return Pattern(*sinks, where=where, name=label)


def _literal_arguments(node: Any) -> list[tuple[int, Any]]:
    """``(position, value)`` of the non-tensor positional arguments of an op call (``ops.add(x, 1.0)``)."""
    return [(i, a) for i, a in enumerate(node.call_args) if not _contains_tensor_ref(a)]


def _contains_tensor_ref(value: Any) -> bool:
    return any(isinstance(v, TensorRef) for v in keras.tree.flatten(value))


def _literal_arguments_check(node: Any) -> tuple[Callable[[Any], bool], str] | None:
    """A node predicate requiring the literal operands written in the example (``ops.multiply(x, 0.5)``).

    Only for ``keras.ops`` calls (layers take their constants in the constructor). For commutative ops the
    literals may be at any position.
    """
    if isinstance(node.layer, keras.layers.Layer):
        return None
    wanted = _literal_arguments(node)
    if not wanted:
        return None
    commutative = node.op_type in COMMUTATIVE_OPS

    def key(literals: list[tuple[int, Any]]) -> list[Any]:
        # compared like config values (lists and tuples alike); any position for a commutative op
        if commutative:
            return sorted(repr(normalize_value(v)) for _, v in literals)
        return [(i, repr(normalize_value(v))) for i, v in literals]

    wanted_key = key(wanted)

    def same_literals(candidate: Any) -> bool:
        return key(_literal_arguments(candidate)) == wanted_key

    values = ", ".join(repr(v) for _, v in wanted)
    return same_literals, f"literal operands {values}"


def _shape_constraint(spec: Any, shapes: bool | str) -> dict[str, Any]:
    if shapes == "rank":
        return {"rank": len(spec.shape)}
    if shapes is True:
        return {"shape": (None, *tuple(spec.shape)[1:])}
    return {}


def _identifier(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned.isidentifier() else f"_{cleaned}"
