"""Rules, rule sets and declarative replacement templates.

A `Rule` says *where* (a pattern) and *what instead* (a replacement). The replacement is a function
``replacement(match, *inputs)`` written with the Keras functional API on the tensors entering the match, or
one of the templates below, so that most rules need no function at all:

- `keep` (a captured node's output, or the whole match unchanged),
- `bypass` (route a match input straight to the consumers),
- `replace_with` (a given layer applied to the match inputs),
- `precede_with` / `follow_with` (a layer before or after the match, or a captured node of it),
- `residual` (wrap the match in a skip connection: ``merge([f(x), branch(x)])``).

`replay` re-calls the matched layers on new tensors, for replacement functions that keep part of a match.

Example:
    >>> import keras
    >>> import rewriter
    >>> drop_dropout = rewriter.Rule("no-dropout", "Dropout", rewriter.bypass())
    >>> relu6 = rewriter.Rule(
    ...     "relu-to-relu6", "r:ReLU", rewriter.replace_with(lambda match: keras.layers.ReLU(max_value=6.0))
    ... )
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras

from rewriter.errors import PatternError, RewriteError
from rewriter.graph import Port, TensorRef

__all__ = [
    "Rule",
    "RuleSet",
    "Template",
    "bypass",
    "follow_with",
    "keep",
    "precede_with",
    "replace_with",
    "replay",
    "residual",
]

LayerSource = Any
"""A Keras layer instance, or a factory ``f(match) -> layer`` / ``f() -> layer`` called once per place."""

CheckResult = Any
"""What ``check(match)`` returns: ``None``/``True`` to accept, a reason string (or ``False``) to veto."""


@dataclasses.dataclass
class Rule:
    """A rewrite rule: a pattern, a replacement and an optional veto.

    Args:
        name: Name used in reports and errors.
        pattern: Anything `rewriter.as_pattern` takes: a `rewriter.Pattern`, an ``op(...)`` node, pattern
            text, or a function written with the Keras functional API (by example).
        replacement: ``replacement(match, *inputs) -> tensor | list[tensor]`` returning one tensor per
            match output (``match.outputs``), built with the Keras functional API on ``inputs`` (one
            symbolic tensor per ``match.inputs`` port, same shape and dtype). Captured original layers are
            read with ``match["name"]``; calling one of them keeps its weights. A template object
            (`keep`, `bypass`, `replace_with`, `precede_with`, `follow_with`, `residual`) works too.
        check: ``check(match)`` returning ``None``/``True`` to accept the match, or the reason to veto it
            (a string; ``False`` vetoes without a reason).
        function_preserving: The rule claims not to change what the model computes; `rewrite` verifies
            it numerically and raises `RewriteError` with the error size when it does not hold.

    Example:
        >>> rule = Rule("relu6", "ReLU", lambda match, x: keras.layers.ReLU(max_value=6.0)(x))
    """

    name: str
    pattern: Any
    replacement: Callable[..., Any]
    _: dataclasses.KW_ONLY
    check: Callable[[Any], CheckResult] | None = None
    function_preserving: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RewriteError(f"Expected a non-empty rule name. Received: name={self.name!r}.")
        if not callable(self.replacement):
            raise RewriteError(
                f"Rule {self.name!r}: expected a replacement function replacement(match, *inputs) or a "
                f"template (rewriter.bypass(), rewriter.replace_with(layer), ...). "
                f"Received: replacement={self.replacement!r}."
            )
        from rewriter.pattern import as_pattern

        try:
            self.pattern = as_pattern(self.pattern)
        except PatternError as error:
            raise PatternError(f"Rule {self.name!r}: {error}") from error

    def veto(self, match: Any) -> str | None:
        """The reason ``check`` gives to veto ``match``, or ``None`` when the match is accepted.

        Example:
            >>> Rule("r", "ReLU", bypass(), check=lambda m: "never").veto(match)  # doctest: +SKIP
            'never'
        """
        if self.check is None:
            return None
        try:
            verdict = self.check(match)
        except RewriteError:
            raise
        except Exception as error:
            raise RewriteError(
                f"Rule {self.name!r}: check() raised {type(error).__name__}: {error} "
                f"(match at {getattr(match, 'anchor', '?')!r})."
            ) from error
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return "check() returned False"
        return str(verdict)


class RuleSet(Sequence[Rule]):
    """An ordered collection of rules; earlier rules have priority.

    Args:
        rules: The rules, highest priority first. Names must be unique.

    Example:
        >>> rules = RuleSet([Rule("a", "Dropout", bypass()), Rule("b", "ReLU", keep())])
        >>> [rule.name for rule in rules]
        ['a', 'b']
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: list[Rule] = []
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> RuleSet:
        """Append ``rule`` (lowest priority so far) and return the set."""
        if not isinstance(rule, Rule):
            raise RewriteError(f"Expected a rewriter.Rule. Received: {rule!r} of type {type(rule).__name__}.")
        if any(existing.name == rule.name for existing in self._rules):
            raise RewriteError(
                f"Two rules are named {rule.name!r}; give each rule of a RuleSet its own name."
            )
        self._rules.append(rule)
        return self

    def __getitem__(self, index: Any) -> Any:
        return self._rules[index]

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({[rule.name for rule in self._rules]})"


def as_rule_set(rules: Rule | Iterable[Rule]) -> RuleSet:
    """``rules`` as a `RuleSet` (a single rule, a list or a RuleSet)."""
    if isinstance(rules, RuleSet):
        return rules
    if isinstance(rules, Rule):
        return RuleSet([rules])
    return RuleSet(rules)


# ------------------------------------------------------------------------------------------- replaying


def call_node(node: Any, tensors: Sequence[Any], layer: Any = None) -> Any:
    """Call ``node``'s layer (or ``layer``) on ``tensors`` with the node's recorded non-tensor arguments."""
    target = node.layer if layer is None else layer

    def fill(template: Any) -> Any:
        return keras.tree.map_structure(
            lambda item: tensors[item.index] if isinstance(item, TensorRef) else item, template
        )

    args = fill(node.call_args) if tensors else node.call_args
    kwargs = fill(node.call_kwargs) if tensors else node.call_kwargs
    return target(*args, **kwargs)


def replay(
    match: Any,
    inputs: Sequence[Any],
    *,
    after: dict[str, Callable[[Any], Any]] | None = None,
    before: dict[str, Callable[[Any], Any]] | None = None,
) -> dict[Port, Any]:
    """Re-call the matched layers on new tensors, optionally changing a tensor on the way.

    Calling a matched layer on the same inputs as in the graph *keeps* that node (it is not re-created);
    calling it on other inputs makes a new call of the same layer, with its weights.

    Args:
        match: The match.
        inputs: One tensor per ``match.inputs`` port (the replacement's ``*inputs``).
        after: Node or capture name -> function applied to that node's (first) output before its
            consumers inside the match read it.
        before: Node or capture name -> function applied to each tensor argument of that node.

    Returns:
        The tensor of every port: the match inputs and every output of every matched node.

    Example:
        >>> def replacement(match, x):  # doctest: +SKIP
        ...     ports = replay(match, [x], after={"c": keras.layers.ReLU()})
        ...     return [ports[p] for p in match.outputs]
    """
    graph = match.graph
    env: dict[Port, Any] = {}
    for port, tensor in zip(match.inputs, inputs):
        env[port] = tensor
    after_nodes = _resolve_names(match, after or {})
    before_nodes = _resolve_names(match, before or {})
    for name in match.nodes:
        node = graph.node(name)
        tensors = [env[port] for port in graph.producers(name)]
        if name in before_nodes:
            tensors = [before_nodes[name](t) for t in tensors]
        outputs = keras.tree.flatten(call_node(node, tensors))
        if name in after_nodes:
            outputs[0] = after_nodes[name](outputs[0])
        for index, tensor in enumerate(outputs):
            env[Port(name, index)] = tensor
    return env


def _resolve_names(match: Any, hooks: dict[str, Callable[[Any], Any]]) -> dict[str, Callable[[Any], Any]]:
    resolved = {}
    captures = dict(getattr(match, "captures", {}) or {})
    for key, hook in hooks.items():
        name = captures.get(key, key)
        if name not in set(match.nodes):
            raise RewriteError(
                f"{key!r} is neither a capture name nor a node of the match {list(match.nodes)}; "
                f"captures: {sorted(captures)}."
            )
        resolved[name] = hook
    return resolved


# ------------------------------------------------------------------------------------------- templates


class Template:
    """Base class of the declarative replacements: callables ``template(match, *inputs)``."""

    def __call__(self, match: Any, *inputs: Any) -> Any:  # pragma: no cover - abstract
        """Return the tensor(s) replacing the match's outputs."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__.lstrip('_')}({fields})"


class _LayerPlacer:
    """Hands out a layer per place: the instance itself first, then renamed clones (weights copied).

    With ``share_across_places`` an instance is handed out again at every further place instead (one
    layer, several calls: shared), one per position within a place (a match with two inputs gets two
    layers); the surgeries use it so that the calls of a shared layer get one shared new layer.
    """

    def __init__(self, source: LayerSource, *, share_across_places: bool = False) -> None:
        if source is None or not callable(source):
            raise RewriteError(
                f"Expected a Keras layer or a factory returning one. Received: {source!r} "
                f"of type {type(source).__name__}."
            )
        self.source = source
        self.share_across_places = share_across_places and isinstance(source, keras.layers.Layer)
        self._count = itertools.count()
        self._by_position: dict[int, Any] = {}
        self._place: Any = None
        self._position = 0

    def layer_for(self, match: Any) -> tuple[Any, Any]:
        """A layer for this place, and the instance whose weights it must copy once built (or None)."""
        if not self.share_across_places:
            return self._new_layer(match)
        if match is not self._place:
            self._place, self._position = match, 0
        position = self._position
        self._position += 1
        if position in self._by_position:
            return self._by_position[position], None
        layer, weights_from = self._new_layer(match)
        self._by_position[position] = layer
        return layer, weights_from

    def _new_layer(self, match: Any) -> tuple[Any, Any]:
        if isinstance(self.source, keras.layers.Layer):
            k = next(self._count)
            if k == 0:
                return self.source, None
            return _clone_layer(self.source, f"{self.source.name}_{k}"), self.source
        made = call_factory(self.source, match)
        if not isinstance(made, keras.layers.Layer) and not callable(made):
            raise RewriteError(f"The layer factory {self.source!r} returned {made!r}, not a Keras layer.")
        return made, None

    def apply(self, match: Any, tensors: Any) -> Any:
        """Call a layer for this place on ``tensors`` (one tensor or a list)."""
        layer, weights_from = self.layer_for(match)
        out = layer(tensors)
        if weights_from is not None and weights_from.weights:
            layer.set_weights(weights_from.get_weights())
        return out

    def __repr__(self) -> str:
        return repr(self.source)


def _placer(layer: LayerSource | _LayerPlacer) -> _LayerPlacer:
    return layer if isinstance(layer, _LayerPlacer) else _LayerPlacer(layer)


def call_factory(factory: Callable[..., Any], match: Any) -> Any:
    """Call ``factory(match)``, or ``factory()`` when it takes no argument."""
    try:
        takes_match = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_match = True
    return factory(match) if takes_match else factory()


def _clone_layer(layer: Any, name: str) -> Any:
    try:
        config = dict(layer.get_config())
        config["name"] = name
        return type(layer).from_config(config)
    except Exception as error:
        raise RewriteError(
            f"Layer {layer.name!r} is used at several places, so it is cloned per place, but it cannot be "
            f"rebuilt from its config ({error}). Pass a factory (lambda: MyLayer(...)) instead."
        ) from error


def _outputs(match: Any, env: dict[Port, Any]) -> list[Any]:
    return [env[port] for port in match.outputs]


def _single(value: list[Any]) -> Any:
    return value[0] if len(value) == 1 else value


class _Keep(Template):
    def __init__(self, capture: str | None) -> None:
        self.capture = capture

    def __call__(self, match: Any, *inputs: Any) -> Any:
        env = replay(match, inputs)
        if self.capture is None:
            return _single(_outputs(match, env))
        name = dict(match.captures).get(self.capture, self.capture)
        if name not in set(match.nodes):
            raise RewriteError(
                f"keep({self.capture!r}): no such capture in the match {dict(match.captures)}."
            )
        return env[Port(name, 0)]


def keep(capture: str | None = None) -> Template:
    """Keep the match (or only the captured node ``capture``, whose output replaces the match's output).

    Example:
        >>> rule = Rule("drop-bn", "c:Conv2D -> BatchNormalization", keep("c"))
    """
    return _Keep(capture)


class _Bypass(Template):
    def __init__(self, input_index: int) -> None:
        self.input_index = input_index

    def __call__(self, match: Any, *inputs: Any) -> Any:
        if not 0 <= self.input_index < len(inputs):
            raise RewriteError(
                f"bypass(input_index={self.input_index}): the match has {len(inputs)} input(s)."
            )
        return [inputs[self.input_index]] * len(match.outputs)


def bypass(input_index: int = 0) -> Template:
    """Remove the match: its input ``input_index`` goes straight to the consumers of its output.

    Example:
        >>> rule = Rule("no-dropout", "Dropout", bypass())
    """
    return _Bypass(input_index)


class _ReplaceWith(Template):
    def __init__(self, layer: LayerSource) -> None:
        self._placer = _placer(layer)
        self.layer = layer

    def __call__(self, match: Any, *inputs: Any) -> Any:
        return self._placer.apply(match, inputs[0] if len(inputs) == 1 else list(inputs))


def replace_with(layer: LayerSource) -> Template:
    """Replace the match by ``layer`` applied to its input (or to the list of its inputs).

    ``layer`` is a layer instance (used at the first place, cloned with its weights at further places) or
    a factory ``f(match) -> layer`` (e.g. to read the captured layer's config).

    Example:
        >>> rule = Rule("relu6", "ReLU", replace_with(lambda match: keras.layers.ReLU(max_value=6.0)))
    """
    return _ReplaceWith(layer)


class _Insert(Template):
    """A layer placed next to the match (or next to one captured node of it)."""

    def __init__(self, layer: LayerSource, capture: str | None) -> None:
        self._placer = _placer(layer)
        self.layer = layer
        self.capture = capture


class _InsertAfter(_Insert):
    def __call__(self, match: Any, *inputs: Any) -> Any:
        if self.capture is not None:
            env = replay(match, inputs, after={self.capture: lambda t: self._placer.apply(match, t)})
            return _single(_outputs(match, env))
        env = replay(match, inputs)
        return _single([self._placer.apply(match, t) for t in _outputs(match, env)])


def follow_with(layer: LayerSource, capture: str | None = None) -> Template:
    """Keep the match and apply ``layer`` to its output (or right after the captured node ``capture``).

    Example:
        >>> rule = Rule("bn-after-conv", "Conv2D", follow_with(lambda m: keras.layers.BatchNormalization()))
    """
    return _InsertAfter(layer, capture)


class _InsertBefore(_Insert):
    def __call__(self, match: Any, *inputs: Any) -> Any:
        if self.capture is not None:
            env = replay(match, inputs, before={self.capture: lambda t: self._placer.apply(match, t)})
        else:
            env = replay(match, [self._placer.apply(match, t) for t in inputs])
        return _single(_outputs(match, env))


def precede_with(layer: LayerSource, capture: str | None = None) -> Template:
    """Keep the match and apply ``layer`` to each of its inputs (or each input of the node ``capture``).

    A match with several inputs gets one layer per input (clones of an instance, or one per factory call).

    Example:
        >>> rule = Rule("norm-first", "Dense", precede_with(lambda m: keras.layers.LayerNormalization()))
    """
    return _InsertBefore(layer, capture)


_MERGES: dict[str, Callable[[], Any]] = {
    "add": lambda: keras.layers.Add(),
    "concat": lambda: keras.layers.Concatenate(),
    "multiply": lambda: keras.layers.Multiply(),
    "average": lambda: keras.layers.Average(),
    "maximum": lambda: keras.layers.Maximum(),
}


def merge_layer(merge: str | LayerSource, match: Any = None) -> Any:
    """The merge layer for ``merge``: a name (add, concat, multiply, average, maximum) or a layer/factory."""
    if isinstance(merge, str):
        if merge not in _MERGES:
            raise RewriteError(
                f"Unknown merge {merge!r}; expected one of {sorted(_MERGES)} or a merge layer "
                "(e.g. keras.layers.Concatenate(axis=1))."
            )
        return _MERGES[merge]()
    if isinstance(merge, keras.layers.Layer):
        return merge
    if callable(merge):
        return call_factory(merge, match)
    raise RewriteError(f"Expected a merge name or layer. Received: merge={merge!r}.")


class _Residual(Template):
    def __init__(self, branch: LayerSource | None, merge: str | LayerSource) -> None:
        self._placer = None if branch is None else _placer(branch)
        self.branch = branch
        self.merge = merge

    def __call__(self, match: Any, *inputs: Any) -> Any:
        env = replay(match, inputs)
        outputs = _outputs(match, env)
        if len(outputs) != 1:
            raise RewriteError(f"residual(): the match has {len(outputs)} outputs; it needs exactly one.")
        shortcut = inputs[0] if self._placer is None else self._placer.apply(match, inputs[0])
        return merge_layer(self.merge, match)([outputs[0], shortcut])


def residual(branch: LayerSource | None = None, merge: str | LayerSource = "add") -> Template:
    """Wrap the match ``f`` in a skip connection: ``merge([f(x), branch(x)])``, identity branch by default.

    Example:
        >>> zero = lambda m: keras.layers.Rescaling(0.0)
        >>> rule = Rule("zero-residual", "ReLU", residual(branch=zero), function_preserving=True)
    """
    return _Residual(branch, merge)
