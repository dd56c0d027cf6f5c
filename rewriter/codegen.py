"""Generate readable Python source for a `Graph`: the model written out with the functional API.

`to_source` turns a graph (or a model) into a Python module that defines ``build_model()``. The module
reads like code a person writes: ``import keras`` and ``from keras import layers, ops`` at the top, one
line per layer call, variables named after the layers, constructor arguments from each layer's config
with the defaults left out. Layer, input, output and model names are kept, and the graph structure is
the same, so the weight order is Keras's own: ``build_model().set_weights(model.get_weights())`` gives
a model whose outputs equal the original's exactly.

What the generator handles:

- shared layers (the layer is bound to a variable once and called several times);
- layers with several outputs (``lstm, lstm_h, lstm_c = lstm_layer(x)``);
- ``keras.ops`` calls (``ops.sum(x, axis=1)``, ``x[:, 1:]``, ``x * 0.5``), each form checked by a
  symbolic call before it is written; an op no public function reproduces is built from its class;
- explicit masks (the ``NotEqual`` op nodes that feed ``mask=`` arguments) and non-tensor call
  arguments (``training=...``, ``return_attention_scores=True``);
- nested functional and Sequential models (one ``build_<name>()`` function each; a nested model called
  twice is built once);
- custom layers: imported from their module when it is importable by name, otherwise looked up by
  their registered name (``keras.saving.get_registered_object("pkg>Name")``; the caller imports the
  registering module first);
- ``Lambda`` layers whose function is importable or is a lambda with readable source; anything that
  cannot be written out becomes a clear comment plus a call that raises ``NotImplementedError``.

Every constructor call is checked at generation time: the layer is built from the arguments that will be
written and its config compared with the original; on a mismatch the generator writes more arguments, and
in the end ``Class.from_config({...})``.

Example:
    >>> import keras
    >>> import rewriter
    >>> x = keras.Input((8,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(4, name="dense")(x), name="tiny")
    >>> print(rewriter.to_source(model))  # doctest: +SKIP
    import keras
    from keras import layers
    ...
    >>> clone = rewriter.load_source(rewriter.to_source(model))
    >>> clone.name
    'tiny'
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import keyword
import math
import re
import textwrap
import types
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np

from rewriter.emit import deep_recursion
from rewriter.errors import CodegenError
from rewriter.graph import Graph, Node, Port, TensorRef
from rewriter.lift import _is_model_layer, _template, lift

__all__ = ["CodegenError", "load_source", "to_source"]

_WIDTH = 100
_MAX_ARRAY_SIZE = 4096
_INDENT = "    "


# --------------------------------------------------------------------------------------------------------
# A tiny pretty printer: expressions are trees of strings, calls, brackets and ``key=value`` pairs.


@dataclasses.dataclass
class _Call:
    func: Any
    args: list[Any]


@dataclasses.dataclass
class _Bracket:
    open: str
    close: str
    items: list[Any]
    one_tuple: bool = False
    explode: bool = False


@dataclasses.dataclass
class _Pair:
    key: str
    sep: str
    value: Any


def _flat(doc: Any) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, _Pair):
        return f"{doc.key}{doc.sep}{_flat(doc.value)}"
    if isinstance(doc, _Call):
        return f"{_flat(doc.func)}({', '.join(_flat(a) for a in doc.args)})"
    inner = ", ".join(_flat(item) for item in doc.items)
    return f"{doc.open}{inner}{',' if doc.one_tuple else ''}{doc.close}"


def _format(doc: Any, indent: int, used: int, reserve: int = 0) -> str:
    """Lay out ``doc`` starting at column ``used``; explode brackets that do not fit on one line."""
    flat = _flat(doc)
    forced = isinstance(doc, _Bracket) and doc.explode and len(doc.items) > 1
    if (used + len(flat) + reserve <= _WIDTH and not forced) or isinstance(doc, str):
        return flat
    if isinstance(doc, _Pair):
        head = f"{doc.key}{doc.sep}"
        return head + _format(doc.value, indent, used + len(head), reserve)
    if isinstance(doc, _Call):
        args_flat = f"({', '.join(_flat(a) for a in doc.args)})"
        func_flat = _flat(doc.func)
        if len(args_flat) > 40 and used + len(func_flat) + 1 <= _WIDTH:
            return func_flat + _exploded("(", ")", doc.args, indent)
        head = _format(doc.func, indent, used, reserve=len(args_flat) + reserve)
        last = len(head) - head.rfind("\n") - 1 if "\n" in head else used + len(head)
        if last + len(args_flat) + reserve <= _WIDTH or not doc.args:
            return head + args_flat
        return head + _exploded("(", ")", doc.args, indent)
    return _exploded(doc.open, doc.close, doc.items, indent)


def _exploded(open_: str, close: str, items: list[Any], indent: int) -> str:
    pad = " " * (indent + 4)
    lines = [open_]
    for item in items:
        lines.append(pad + _format(item, indent + 4, indent + 4, reserve=1) + ",")
    lines.append(" " * indent + close)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Literal values.


class _Unrenderable(Exception):
    """A value has no Python literal form."""


def _literal(value: Any, tensors: list[str] | None = None) -> Any:
    """A doc for a Python value (``TensorRef`` becomes the tensor's variable name)."""
    if isinstance(value, TensorRef):
        if tensors is None:
            raise _Unrenderable("tensor outside a call")
        return tensors[value.index]
    if isinstance(value, str):
        return _string(value)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return f'float("{value}")'
    if value is Ellipsis:
        return "..."
    if isinstance(value, np.generic):
        return f"np.{value.dtype.name}({_flat(_literal(value.item()))})"
    if keras.ops.is_tensor(value) and not isinstance(value, keras.KerasTensor):
        return _Call("ops.convert_to_tensor", [_literal(keras.ops.convert_to_numpy(value))])
    if isinstance(value, np.ndarray):
        if value.size > _MAX_ARRAY_SIZE:
            raise _Unrenderable(f"array of {value.size} elements (more than {_MAX_ARRAY_SIZE})")
        return _Call("np.array", [_literal(value.tolist()), f"dtype={_string(value.dtype.name)}"])
    if isinstance(value, slice):
        return _Call(
            "slice",
            [_literal(value.start, tensors), _literal(value.stop, tensors), _literal(value.step, tensors)],
        )
    if isinstance(value, tuple):
        return _Bracket("(", ")", [_literal(v, tensors) for v in value], one_tuple=len(value) == 1)
    if isinstance(value, list):
        return _Bracket("[", "]", [_literal(v, tensors) for v in value])
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise _Unrenderable(f"dict key {key!r}")
            items.append(_Pair(_flat(_literal(key)), ": ", _literal(item, tensors)))
        return _Bracket("{", "}", items)
    raise _Unrenderable(f"{type(value).__name__} value {value!r}")


def _string(text: str) -> str:
    """A string literal in double quotes when possible (the style of ruff format and black)."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:
        literal = '"' + literal[1:-1].replace("\\'", "'") + '"'
    return literal


def _subscript(key: Any, tensors: list[str]) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    rendered = []
    for part in parts:
        if isinstance(part, slice):
            bounds = ["" if b is None else _flat(_literal(b, tensors)) for b in (part.start, part.stop)]
            text = ":".join(bounds)
            if part.step is not None:
                text += ":" + _flat(_literal(part.step, tensors))
            rendered.append(text)
        else:
            rendered.append(_flat(_literal(part, tensors)))
    if isinstance(key, tuple) and len(key) == 0:
        return "()"
    if isinstance(key, tuple) and len(key) == 1:
        return rendered[0] + ","
    return ", ".join(rendered)


def _operand(value: Any, tensors: list[str]) -> str:
    text = _flat(_literal(value, tensors))
    if text.startswith("-") or " " in text:
        return f"({text})"
    return text


def _normalized(value: Any) -> Any:
    """Tuples as lists, recursively, so that configs read back from JSON compare equal."""
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------------------
# Names.

_MODULE_NAMES = {"keras", "layers", "ops", "np", "build_model", "_registered", "_unavailable"}


def _identifier(text: str, fallback: str = "t") -> str:
    """A lower-case Python identifier derived from ``text``."""
    ident = re.sub(r"[^0-9A-Za-z_]+", "_", text.replace("@", "_call")).strip("_").lower()
    ident = re.sub(r"_+", "_", ident)
    if not ident:
        ident = fallback
    if ident[0].isdigit():
        ident = f"{fallback}_{ident}"
    return ident


class _Namer:
    """Hands out unique identifiers, never a keyword, a builtin or a reserved name."""

    def __init__(self, reserved: set[str]) -> None:
        self.taken = set(reserved) | set(keyword.kwlist) | set(dir(builtins))

    def fresh(self, base: str) -> str:
        name = base
        counter = 2
        while name in self.taken or keyword.iskeyword(name):
            name = f"{base}_{counter}"
            counter += 1
        self.taken.add(name)
        return name


# --------------------------------------------------------------------------------------------------------
# Signatures and defaults.


_REQUIRED = object()


@dataclasses.dataclass
class _Signature:
    defaults: dict[str, Any]
    leading: list[str]
    var_kwargs: bool


_SIGNATURES: dict[Any, _Signature] = {}


def _init_signature(cls: type) -> _Signature:
    """Defaults of ``cls.__init__`` merged over its base classes, and its leading required arguments."""
    if cls in _SIGNATURES:
        return _SIGNATURES[cls]
    defaults: dict[str, Any] = {}
    var_kwargs = False
    first = True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            continue
        has_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        for param in params:
            if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            default = _REQUIRED if param.default is inspect.Parameter.empty else param.default
            defaults.setdefault(param.name, default)
        if first:
            var_kwargs = has_var_kwargs
            # Only a constructor that passes **kwargs on reaches the base classes' arguments.
            if not has_var_kwargs:
                break
        first = False
    signature = _Signature(defaults, _leading_required(cls), var_kwargs)
    _SIGNATURES[cls] = signature
    return signature


def _leading_required(cls: type) -> list[str]:
    """The constructor's leading required positional arguments (``units`` of Dense)."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    out = []
    for param in params:
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or param.default is not param.empty:
            break
        out.append(param.name)
    return out


_FAMILIES = ("initializers", "regularizers", "constraints", "dtype_policies")


def _is_default(key: str, value: Any, default: Any) -> bool:
    """Whether config ``value`` is what the constructor produces from its ``default``."""
    if default is _REQUIRED:
        return False
    try:
        if value == default and type(value) is type(default):
            return True
    except Exception:  # arrays and other odd values
        return False
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return _normalized(value) == _normalized(default)
    if isinstance(value, dict) and "class_name" in value:
        for family in _FAMILIES:
            module = getattr(keras, family)
            try:
                if module.serialize(module.get(default)) == value:
                    return True
            except Exception:
                continue
        return False
    if "activation" in key and isinstance(value, str):
        try:
            return keras.activations.serialize(keras.activations.get(default)) == value
        except Exception:
            return False
    return False


# --------------------------------------------------------------------------------------------------------
# The module writer.


@dataclasses.dataclass
class _Plan:
    """How one node is written: the layer expression (or a whole op expression) and its call."""

    constructor: Any = None  # doc that builds the layer (None for an op expression)
    expression: Any = None  # for ops: a doc producing the outputs directly
    comment: str | None = None
    shared_object: bool = False


class _ModuleWriter:
    def __init__(self) -> None:
        self.uses: set[str] = set()  # "layers", "ops", "np", "_registered", "_unavailable"
        self.imports: dict[tuple[str, str], str] = {}  # (module, attribute or "") -> local name
        self.module_names = _Namer(_MODULE_NAMES)
        self.functions: list[str] = []
        self.nested: dict[int, str] = {}  # id(model) -> builder function name
        self.pending: list[tuple[Any, str]] = []
        self.notes: list[str] = []
        self._layer_cache: dict[Any, tuple[str, list[str]]] = {}
        self.cross: dict[int, tuple[str, Node]] = {}  # id(layer) -> (variable, a node calling it)
        self.cross_order: list[int] = []
        self.needs: dict[int, list[int]] = {}
        self._op_cache: dict[Any, str] = {}

    # ---------------------------------------------------------------- imports and helpers

    def import_name(self, module: str, attribute: str) -> str:
        key = (module, attribute)
        if key not in self.imports:
            self.imports[key] = self.module_names.fresh(attribute or module.split(".")[-1])
        return self.imports[key]

    def import_module(self, module: str, alias: str) -> str:
        key = (module, "")
        if key not in self.imports:
            if alias in self.module_names.taken:
                raise _Unrenderable(f"module alias {alias!r} clashes with another name")
            self.module_names.taken.add(alias)
            self.imports[key] = alias
        return self.imports[key]

    def builder_for(self, model: Any) -> str:
        if id(model) not in self.nested:
            name = self.module_names.fresh(f"build_{_identifier(model.name, 'model')}")
            self.nested[id(model)] = name
            self.pending.append((model, name))
        return self.nested[id(model)]

    # ---------------------------------------------------------------- whole module

    def module(self, graph: Graph, function_name: str) -> str:
        self.module_names.taken.add(function_name)
        graphs = self._collect(graph)
        self._plan_sharing(graphs)
        bodies = [self.function(graph, function_name, is_main=True)]
        for model, name in self.pending:
            bodies.append(self.function(graphs[id(model)], name, is_main=False))
        header = [f'"""Keras model "{graph.name}", written out by rewriter.to_source.', ""]
        header += ["Rebuild it and load the original weights:", ""]
        header += [f"    model = {function_name}()", "    model.set_weights(original.get_weights())"]
        for note in dict.fromkeys(self.notes):
            header += ["", *textwrap.wrap(note, _WIDTH - 4)]
        header += ['"""', ""]
        helpers = self._helper_sources()
        code = "\n\n".join([*helpers, *bodies])
        used = {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}
        self.uses |= used & {"layers", "ops", "np"}
        lines = header + self._import_lines() + ["", ""]
        for helper in helpers:
            lines += [helper, "", ""]
        lines += ["\n\n\n".join(reversed(bodies)), ""]
        return "\n".join(lines)

    def _collect(self, graph: Graph) -> dict[int, Graph]:
        """Lift every nested model once (worklist, no recursion); keys are ``id(model)``, 0 the top."""
        graphs: dict[int, Graph] = {0: graph}
        pending = [graph]
        while pending:
            current = pending.pop()
            for node in current.topological():
                if node.layer is not None and _is_model_layer(node.layer) and id(node.layer) not in graphs:
                    graphs[id(node.layer)] = lift(node.layer)
                    self.builder_for(node.layer)
                    pending.append(graphs[id(node.layer)])
        return graphs

    def _plan_sharing(self, graphs: dict[int, Graph]) -> None:
        """Find layers used by several builder functions; the top function builds and passes them."""
        direct: dict[int, dict[int, Node]] = {}
        owners: dict[int, set[int]] = {}
        for key, graph in graphs.items():
            direct[key] = {}
            for node in graph.topological():
                if isinstance(node.layer, keras.layers.Layer) and not node.is_input:
                    direct[key].setdefault(id(node.layer), node)
                    owners.setdefault(id(node.layer), set()).add(key)
        cross = {layer_id for layer_id, keys in owners.items() if len(keys) > 1}
        # needs[g]: cross-shared layers that the builder of g must receive as arguments.
        needs: dict[int, list[int]] = {}
        order = _post_order([0], lambda key: [child for child in direct[key] if child in graphs])
        for key in order:
            wanted = [layer_id for layer_id in direct[key] if layer_id in cross]
            for layer_id in direct[key]:
                if layer_id in graphs and layer_id not in cross:
                    wanted += needs[layer_id]
            needs[key] = list(dict.fromkeys(wanted))
        self.cross = {}
        names = _Namer(self.module_names.taken | _MODULE_NAMES)
        for key in order:
            for layer_id, node in direct[key].items():
                if layer_id in cross and layer_id not in self.cross:
                    self.cross[layer_id] = (names.fresh(_identifier(node.layer_name, "layer")), node)
        self.needs = needs
        # The top function builds every cross-shared layer first, each after the layers it needs.
        self.cross_order = _post_order(self.cross, lambda layer_id: needs.get(layer_id, []))

    def _builder_call(self, model: Any) -> Any:
        builder = self.builder_for(model)
        args = [_Pair(self.cross[d][0], "=", self.cross[d][0]) for d in self.needs.get(id(model), [])]
        return _Call(builder, args)

    def _import_lines(self) -> list[str]:
        plain = ["import keras"]
        if "np" in self.uses:
            plain.append("import numpy as np")
        from_imports: dict[str, list[str]] = {}
        names = sorted(n for n in ("layers", "ops") if n in self.uses)
        if names:
            from_imports["keras"] = names
        for (module, attribute), local in sorted(self.imports.items()):
            if attribute:
                alias = "" if local == attribute else f" as {local}"
                from_imports.setdefault(module, []).append(f"{attribute}{alias}")
            elif local == module:
                plain.append(f"import {module}")
            else:
                plain.append(f"import {module} as {local}")
        froms = [f"from {module} import {', '.join(sorted(n))}" for module, n in from_imports.items()]
        return sorted(set(plain), key=lambda s: s.split()[1]) + sorted(froms, key=lambda s: s.split()[1])

    def _helper_sources(self) -> list[str]:
        helpers = []
        if "_registered" in self.uses:
            helpers.append(
                "def _registered(name):\n"
                '    """The class registered with keras.saving under ``name``."""\n'
                "    cls = keras.saving.get_registered_object(name)\n"
                "    if cls is None:\n"
                "        raise ImportError(\n"
                '            f"No Keras class is registered as {name!r}: import the module "\n'
                '            "that defines it and registers it with keras.saving first."\n'
                "        )\n"
                "    return cls"
            )
        if "_unavailable" in self.uses:
            helpers.append(
                "def _unavailable(layer_name, reason):\n"
                '    """Stand-in for a layer that could not be written as source: raises."""\n'
                "    raise NotImplementedError(\n"
                '        f"Layer {layer_name!r} could not be written as Python source: {reason}. "\n'
                '        "Rebuild it by hand here, or emit the graph with rewriter.emit instead."\n'
                "    )"
            )
        return helpers

    # ---------------------------------------------------------------- one builder function

    def function(self, graph: Graph, name: str, *, is_main: bool) -> str:
        nodes = graph.topological()
        plans = {node.name: self.plan(node) for node in nodes if not node.is_input}
        key = 0 if is_main else id(self.pending_model(name))
        parameters = [] if is_main else [self.cross[d][0] for d in self.needs.get(key, [])]
        layer_vars: dict[int, str] = {}
        if not is_main:
            layer_vars = {d: self.cross[d][0] for d in self.needs.get(key, [])}
        if graph.meta.get("model_class") == "Sequential" and _is_chain(graph, nodes, plans):
            return self._sequential_function(graph, name, nodes, plans, is_main, parameters, layer_vars)
        local = _Namer(self.module_names.taken | _MODULE_NAMES | set(parameters))
        calls: dict[int, int] = {}
        for node in nodes:
            if node.layer is not None and not node.is_input:
                calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        what = "model" if is_main else "nested model"
        body = [f"def {name}({', '.join(parameters)}):", f'{_INDENT}"""Build the {what} "{graph.name}"."""']
        if is_main and self.cross_order:
            body.append(f"{_INDENT}# Layers shared with nested models: built once, passed to their builders.")
            for layer_id in self.cross_order:
                var, node = self.cross[layer_id]
                local.taken.add(var)
                layer_vars[layer_id] = var
                body.append(_statement(var, self.plan(node).constructor))
        tensor_names: dict[Port, str] = {}
        for node in nodes:
            if node.is_input:
                var = local.fresh(_identifier(node.name, "inputs"))
                tensor_names[Port(node.name, 0)] = var
                body.append(_statement(var, _input_doc(node)))
                continue
            plan = plans[node.name]
            if plan.comment:
                body += [f"{_INDENT}# {line}" for line in textwrap.wrap(plan.comment, _WIDTH - 6)]
            tensors = [tensor_names[p] for p in graph.producers(node.name)]
            shared = node.layer is not None and (
                calls.get(id(node.layer), 0) > 1 or plan.shared_object or id(node.layer) in layer_vars
            )
            try:
                expression = self._call_expression(node, plan, tensors, shared, layer_vars, local, body)
            except _Unrenderable as error:
                stub = self._unavailable(node, f"a call argument is a {error}")
                body += [f"{_INDENT}# {line}" for line in textwrap.wrap(stub.comment or "", _WIDTH - 6)]
                expression = _Call(stub.constructor, [_Call("list", [])])
            targets = _output_names(node, local, shared)

            for index, var in enumerate(targets):
                tensor_names[Port(node.name, index)] = var
            if len(targets) > 1 and _returns_structure(node):
                expression = _Call("keras.tree.flatten", [expression])
            body.append(_statement(", ".join(targets), expression))
        inputs = _structure_doc(graph.input_structure, lambda n: tensor_names[Port(n, 0)])
        outputs = _structure_doc(graph.output_structure, lambda p: tensor_names[p])
        model = _Call(
            "keras.Model",
            [
                _Pair("inputs", "=", inputs),
                _Pair("outputs", "=", outputs),
                _Pair("name", "=", _string(graph.name)),
            ],
        )
        body.append(_INDENT + "return " + _format(model, 4, 11))
        return "\n".join(body)

    def _call_expression(
        self,
        node: Node,
        plan: _Plan,
        tensors: list[str],
        shared: bool,
        layer_vars: dict[int, str],
        local: _Namer,
        body: list[str],
    ) -> Any:
        """The expression calling ``node``'s layer (binding a shared layer to a variable first)."""
        if plan.expression is not None:
            return plan.expression(tensors)
        arguments = _call_arguments(node, tensors)
        if not shared:
            return _Call(plan.constructor, arguments)
        if id(node.layer) not in layer_vars:
            base = _identifier(node.layer_name, "layer")
            var = local.fresh(base if plan.shared_object else f"{base}_layer")
            layer_vars[id(node.layer)] = var
            body.append(_statement(var, plan.constructor))
        return _Call(layer_vars[id(node.layer)], arguments)

    def pending_model(self, builder: str) -> Any:
        return next(model for model, name in self.pending if name == builder)

    def _sequential_function(
        self,
        graph: Graph,
        name: str,
        nodes: list[Node],
        plans: dict[str, _Plan],
        is_main: bool,
        parameters: list[str],
        layer_vars: dict[int, str],
    ) -> str:
        what = "model" if is_main else "nested model"
        body = [
            f"def {name}({', '.join(parameters)}):",
            f'{_INDENT}"""Build the {what} "{graph.name}" (a Sequential model)."""',
        ]
        items: list[Any] = [_input_doc(nodes[0])]
        for node in nodes[1:]:
            plan = plans[node.name]
            if plan.comment:
                body += [f"{_INDENT}# {line}" for line in textwrap.wrap(plan.comment, _WIDTH - 6)]
            items.append(layer_vars.get(id(node.layer), plan.constructor))
        layers_doc = _Bracket("[", "]", items, explode=True)
        model = _Call("keras.Sequential", [layers_doc, _Pair("name", "=", _string(graph.name))])
        body.append(_INDENT + "return " + _format(model, 4, 11))
        return "\n".join(body)

    # ---------------------------------------------------------------- planning a node

    def plan(self, node: Node) -> _Plan:
        layer = node.layer
        if layer is not None and not isinstance(layer, keras.layers.Layer):
            return self._op_plan(node)
        if layer is not None and _is_model_layer(layer):
            return _Plan(constructor=self._builder_call(layer), shared_object=True)
        cls = type(layer) if layer is not None else getattr(keras.layers, node.op_type, None)
        if cls is None or node.config is None:
            why = "the layer has no get_config()" if cls is not None else f"unknown class {node.op_type}"
            return self._unavailable(node, why)
        try:
            reference = self._class_reference(cls)
        except _Unrenderable as error:
            return self._unavailable(node, str(error))
        if cls is keras.layers.Lambda:
            return self._lambda_plan(node, reference)
        try:
            return _Plan(constructor=self._constructor(cls, reference, dict(node.config)))
        except _Unrenderable as error:
            return self._unavailable(node, f"its config holds a {error}")

    def _unavailable(self, node: Node, reason: str) -> _Plan:
        self.uses.add("_unavailable")
        return _Plan(
            constructor=_Call("_unavailable", [_string(node.layer_name), _string(reason)]),
            comment=f"Layer {node.layer_name!r} ({node.op_type}) cannot be written as source: {reason}.",
        )

    def _class_reference(self, cls: type) -> str:
        """A source expression naming ``cls`` (and the import it needs)."""
        name = cls.__name__
        if getattr(keras.layers, name, None) is cls:
            return f"layers.{name}"
        top = cls.__module__.split(".")[0]
        if top not in ("keras", "__main__"):
            try:
                package = importlib.import_module(top)
            except Exception:
                package = None
            public = getattr(getattr(package, "layers", None), name, None)
            if public is cls:
                alias = self.import_module(top, top)
                return f"{alias}.layers.{name}"
        if _importable(cls):
            return self.import_name(cls.__module__, cls.__qualname__)
        registered = keras.saving.get_registered_name(cls)
        if registered != name and keras.saving.get_registered_object(registered) is cls:
            self.uses.add("_registered")
            self.notes.append(
                f"Before calling the builder, import the module that registers {registered!r} "
                f"(class {cls.__qualname__} from {cls.__module__}): it is looked up by registered name."
            )
            return f"_registered({_string(registered)})"
        raise _Unrenderable(
            f"class {cls.__module__}.{cls.__qualname__} is neither importable by name nor registered with "
            "keras.saving.register_keras_serializable"
        )

    def _constructor(self, cls: type, reference: str, config: dict[str, Any]) -> Any:
        """The call building a layer equal to ``config``, checked by building it once."""
        cache_key = (cls, repr({k: v for k, v in config.items() if k != "name"}))
        cached = self._layer_cache.get(cache_key)
        if cached is not None:
            form, keys = cached
        else:
            form, keys = self._choose_constructor(cls, config)
            self._layer_cache[cache_key] = (form, keys)
        if form == "from_config":
            return _Call(f"{reference}.from_config", [_literal(config)])
        return self._constructor_call(cls, reference, config, keys)

    def _choose_constructor(self, cls: type, config: dict[str, Any]) -> tuple[str, list[str]]:
        """Pick the shortest argument list that rebuilds ``config``; else ``from_config``."""
        signature = _init_signature(cls)
        without_defaults = [
            key
            for key, value in config.items()
            if key == "name" or not _is_default(key, value, signature.defaults.get(key, _REQUIRED))
        ]
        # Defaults the constructor resolves at run time (data_format=None -> "channels_last") are found
        # by building the layer from its required arguments alone.
        required = [key for key in config if signature.defaults.get(key, _REQUIRED) is _REQUIRED]
        fresh = self._build_config(cls, config, [k for k in required if k != "name"])
        minimal = [
            key
            for key in without_defaults
            if key in required
            or fresh is None
            or key not in fresh
            or _normalized(fresh[key]) != _normalized(config[key])
        ]
        for keys in (minimal, without_defaults, list(config)):
            rebuilt = self._build_config(cls, config, keys)
            if rebuilt is not None and _normalized(rebuilt) == _normalized(config):
                return "call", keys
        _literal(config)  # raises _Unrenderable when the config is not literal data
        return "from_config", []

    def _build_config(self, cls: type, config: dict[str, Any], keys: list[str]) -> dict[str, Any] | None:
        """The config of ``cls`` built from the ``keys`` entries of ``config`` (None if that fails)."""
        values = {key: self._argument(key, config[key])[1] for key in keys}
        try:
            rebuilt = cls(**values).get_config()
        except Exception:
            return None
        return rebuilt if isinstance(rebuilt, dict) else None

    def _constructor_call(self, cls: type, reference: str, config: dict[str, Any], keys: list[str]) -> Any:
        signature = _init_signature(cls)
        args: list[Any] = []
        positional = True
        for param in signature.leading:
            if positional and param in keys:
                args.append(self._argument(param, config[param])[0])
            else:
                positional = False
                break
        used = set(signature.leading[: len(args)])
        for key in keys:
            if key in used or key == "name":
                continue
            args.append(_Pair(key, "=", self._argument(key, config[key])[0]))
        if "name" in keys:
            args.append(_Pair("name", "=", _string(config["name"])))
        return _Call(reference, args)

    def _argument(self, key: str, value: Any) -> tuple[Any, Any]:
        """(doc, Python value) for one constructor argument."""
        if isinstance(value, dict) and "class_name" in value and "config" in value:
            rendered = self._keras_object(key, value)
            if rendered is not None:
                return rendered
        doc = _literal(value)
        return doc, value

    def _keras_object(self, key: str, value: dict[str, Any]) -> tuple[Any, Any] | None:
        """``keras.initializers.HeNormal(seed=1)`` for a serialized built-in Keras object."""
        class_name, config = value["class_name"], value["config"]
        if value.get("module") == "keras" and class_name == "DTypePolicy" and isinstance(config, dict):
            return _literal(config.get("name")), config.get("name")
        module = value.get("module")
        if not isinstance(module, str) or not module.startswith("keras.") or not isinstance(config, dict):
            return None
        family = module.split(".", 1)[1]
        if family not in ("initializers", "regularizers", "constraints"):
            return None
        cls = getattr(getattr(keras, family), class_name, None)
        if not isinstance(cls, type):
            return None
        signature = _init_signature(cls)
        kept = {
            k: v for k, v in config.items() if not _is_default(k, v, signature.defaults.get(k, _REQUIRED))
        }
        try:
            obj = cls(**kept)
            if keras.saving.serialize_keras_object(obj) != value:
                return None
            args = [_Pair(k, "=", _literal(v)) for k, v in kept.items()]
        except Exception:
            return None
        return _Call(f"keras.{family}.{class_name}", args), obj

    # ---------------------------------------------------------------- Lambda layers

    def _lambda_plan(self, node: Node, reference: str) -> _Plan:
        function = getattr(node.layer, "function", None)
        try:
            function_doc = self._function_source(function)
        except _Unrenderable as error:
            return self._unavailable(node, f"its function cannot be written out ({error})")
        config = dict(node.config or {})
        args: list[Any] = [function_doc]
        for key, value in config.items():
            if key in ("function", "name", "dtype"):
                continue
            if key == "trainable":
                if value is not True:
                    args.append(_Pair(key, "=", repr(value)))
                continue
            if key == "arguments" and not value:
                continue
            if isinstance(value, dict) and "class_name" in value:
                return self._unavailable(node, f"its {key!r} is a serialized function")
            try:
                args.append(_Pair(key, "=", _literal(value)))
            except _Unrenderable as error:
                return self._unavailable(node, str(error))
        dtype = config.get("dtype")
        if dtype is not None and not _is_default("dtype", dtype, None):
            doc, _ = self._argument("dtype", dtype)
            args.append(_Pair("dtype", "=", doc))
        args.append(_Pair("name", "=", _string(config.get("name", node.layer_name))))
        return _Plan(constructor=_Call(reference, args))

    def _function_source(self, function: Any) -> str:
        if not isinstance(function, types.FunctionType):
            raise _Unrenderable("not a Python function")
        if function.__name__ != "<lambda>":
            if _importable(function):
                return self.import_name(function.__module__, function.__qualname__)
            raise _Unrenderable(
                f"function {function.__qualname__} is not importable from {function.__module__}"
            )
        if function.__closure__:
            raise _Unrenderable("the lambda reads variables of an enclosing function")
        lambda_node = _lambda_ast(function)
        arg_names = {a.arg for a in ast.walk(lambda_node.args) if isinstance(a, ast.arg)}
        for name_node in ast.walk(lambda_node.body):
            if not isinstance(name_node, ast.Name) or name_node.id in arg_names:
                continue
            value = function.__globals__.get(name_node.id, getattr(builtins, name_node.id, None))
            if hasattr(builtins, name_node.id) and name_node.id not in function.__globals__:
                continue
            if (name_node.id, value) in (("ops", keras.ops), ("keras", keras), ("np", np)):
                continue
            if isinstance(value, types.ModuleType):
                self.import_module(value.__name__, name_node.id)
            else:
                raise _Unrenderable(f"the lambda reads the global {name_node.id!r}, which is not a module")
        return ast.unparse(lambda_node)

    # ---------------------------------------------------------------- keras.ops calls

    def _op_plan(self, node: Node) -> _Plan:
        op = node.layer
        config = {k: v for k, v in (node.config or {}).items() if k != "name"}
        key = (type(op), repr(config), repr((node.call_args, node.call_kwargs)), repr(node.input_specs))
        form = self._op_cache.get(key)
        if form is None:
            form = self._choose_op_form(node, config)
            self._op_cache[key] = form
        if form == "unavailable":
            return self._unavailable(node, "no keras.ops function or class call reproduces this op")
        if form == "subscript":
            return _Plan(
                expression=lambda t: f"{_operand(node.call_args[0], t)}[{_subscript(node.call_args[1], t)}]"
            )
        if form.startswith("infix:"):
            symbol = form.split(":", 1)[1]
            return _Plan(
                expression=lambda t: (
                    f"{_operand(node.call_args[0], t)} {symbol} {_operand(node.call_args[1], t)}"
                )
            )
        if form.startswith("function:"):
            path = form.split(":", 1)[1]
            extra, keywords = _function_arguments(_resolve(path), node, config) or ([], {})
            return _Plan(
                expression=lambda t: _Call(
                    path.replace("keras.ops", "ops", 1),
                    [_literal(a, t) for a in [*node.call_args, *extra]]
                    + [_Pair(k, "=", _literal(v, t)) for k, v in keywords.items()],
                )
            )
        cls = type(op)
        name = self.import_name(cls.__module__, cls.__qualname__)
        ctor = _Call(name, [_Pair(k, "=", _literal(v)) for k, v in config.items()])
        return _Plan(
            expression=lambda t: _Call(
                ctor,
                [_literal(a, t) for a in node.call_args]
                + [_Pair(k, "=", _literal(v, t)) for k, v in node.call_kwargs.items()],
            ),
            comment=f"{node.op_type}: no public keras.ops function reproduces this op, so it is built from "
            "its class.",
        )

    def _choose_op_form(self, node: Node, config: dict[str, Any]) -> str:
        op = node.layer
        inputs = [keras.KerasTensor(spec.shape, dtype=spec.dtype) for spec in node.input_specs]

        def fill(template: Any) -> Any:
            return keras.tree.map_structure(
                lambda item: inputs[item.index] if isinstance(item, TensorRef) else item, template
            )

        args, kwargs = fill(node.call_args), fill(node.call_kwargs)
        candidates: list[tuple[str, Any]] = []
        if node.op_type == "GetItem" and len(args) == 2 and not kwargs and not config:
            candidates.append(("subscript", lambda: args[0][args[1]]))
        symbol = _INFIX.get(node.op_type)
        scalar_operand = sum(isinstance(a, TensorRef) for a in node.call_args) == 1
        if symbol and len(args) == 2 and not kwargs and not config and scalar_operand:
            operator_fn = _OPERATORS[symbol]
            candidates.append((f"infix:{symbol}", lambda: operator_fn(args[0], args[1])))
        for path in _op_function_paths(type(op)):
            function = _resolve(path)
            arguments = _function_arguments(function, node, config)
            if arguments is None:
                continue
            extra, keywords = fill(arguments)
            candidates.append(
                (f"function:{path}", lambda fn=function, e=extra, k=keywords: fn(*args, *e, **k))
            )
        candidates.append(("class", lambda: type(op)(**config)(*args, **kwargs)))
        for form, attempt in candidates:
            try:
                result = attempt()
            except Exception:
                continue
            if _same_op(result, node, op, config, inputs):
                if form == "class" and not _importable(type(op)):
                    break
                return form
        return "unavailable"


# --------------------------------------------------------------------------------------------------------
# Helpers for ops.

_INFIX = {
    "Add": "+",
    "Subtract": "-",
    "Multiply": "*",
    "TrueDivide": "/",
    "Divide": "/",
    "FloorDivide": "//",
    "Mod": "%",
    "Power": "**",
    "Matmul": "@",
    "Greater": ">",
    "GreaterEqual": ">=",
    "Less": "<",
    "LessEqual": "<=",
}

_OPERATORS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "**": lambda a, b: a**b,
    "@": lambda a, b: a @ b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _op_function_paths(cls: type) -> list[str]:
    names = list(dict.fromkeys([_snake(cls.__name__), cls.__name__.lower()]))
    submodule = cls.__module__.rsplit(".", 1)[-1]
    paths = []
    for name in names:
        paths.append(f"keras.ops.{name}")
        paths.append(f"keras.ops.{submodule}.{name}")
    return [p for p in dict.fromkeys(paths) if callable(_resolve(p))]


def _resolve(path: str) -> Any:
    obj: Any = keras
    for part in path.split(".")[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _function_arguments(
    function: Any, node: Node, config: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]] | None:
    """Arguments after the recorded positional ones for ``function(...)``: (positional, keyword).

    The op's config entries and the call's keyword arguments are merged; those equal to the function's
    defaults are dropped; required ones that follow the recorded positional arguments become positional.
    Returns None when ``function`` does not take them.
    """
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    by_name = {p.name: p for p in params}
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    merged: dict[str, Any] = {}
    for key, value in [*node.call_kwargs.items(), *config.items()]:
        param = by_name.get(key)
        if param is None or key in merged:
            return None
        empty = inspect.Parameter.empty
        if param.default is not empty and not _has_ref(value) and _is_default(key, value, param.default):
            continue
        merged[key] = value
    positional: list[Any] = []
    for param in params[len(node.call_args) :]:
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or param.name not in merged:
            break
        if param.default is not inspect.Parameter.empty:
            break
        positional.append(merged.pop(param.name))
    return positional, merged


def _has_ref(value: Any) -> bool:
    return any(isinstance(item, TensorRef) for item in keras.tree.flatten(value))


def _same_op(result: Any, node: Node, op: Any, config: dict[str, Any], inputs: list[Any]) -> bool:
    """Whether a symbolic call created the same op, with the same config and arguments, as ``node``."""
    flat = keras.tree.flatten(result)
    if len(flat) != node.num_outputs or not flat:
        return False
    history = getattr(flat[0], "_keras_history", None)
    if history is None:
        return False
    new_op = history.operation
    if type(new_op) is not type(op):
        return False
    new_config = {k: v for k, v in (new_op.get_config() or {}).items() if k != "name"}
    if _normalized(new_config) != _normalized(config):
        return False
    keras_node = new_op._inbound_nodes[history.node_index]
    args, kwargs, tensors = _template(keras_node.arguments.args, keras_node.arguments.kwargs)
    if [id(t) for t in tensors] != [id(t) for t in inputs]:
        return False
    if repr((args, kwargs)) != repr((node.call_args, node.call_kwargs)):
        return False
    return [tuple(t.shape) for t in flat] == [s.shape for s in node.output_specs]


# --------------------------------------------------------------------------------------------------------
# Helpers for layer calls.


def _importable(obj: Any) -> bool:
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<" in qualname or "." in qualname:
        return False
    if module_name.startswith("keras.src") and isinstance(obj, type):
        return True
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return False
    return getattr(module, qualname, None) is obj


def _lambda_ast(function: Any) -> ast.Lambda:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as error:
        raise _Unrenderable(f"its source is unavailable ({error})") from None
    tree = None
    for candidate in (source, f"({source.strip()})", source.strip().rstrip(",")):
        try:
            tree = ast.parse(candidate)
            break
        except SyntaxError:
            continue
    if tree is None:
        raise _Unrenderable("its source line does not parse on its own")
    code = function.__code__
    wanted = list(code.co_varnames[: code.co_argcount])
    found = [
        n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and [a.arg for a in n.args.args] == wanted
    ]
    if len(found) != 1:
        raise _Unrenderable(f"{len(found)} lambdas with arguments {wanted} on its source line")
    return found[0]


def _post_order(roots: Iterable[int], children: Callable[[int], Iterable[int]]) -> list[int]:
    """Every key reachable from ``roots``, each after all its ``children`` (iterative DFS, no recursion).

    Example:
        >>> _post_order([0], {0: [1, 2], 1: [2], 2: []}.__getitem__)
        [2, 1, 0]
    """
    order: list[int] = []
    done: set[int] = set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in done:
                continue
            if expanded:
                done.add(key)
                order.append(key)
                continue
            stack.append((key, True))
            stack.extend((child, False) for child in children(key) if child not in done)
    return order


def _is_chain(graph: Graph, nodes: list[Node], plans: dict[str, _Plan]) -> bool:
    """Whether the graph can be written as ``keras.Sequential([...])``."""
    if len(graph.inputs) != 1 or not nodes or not nodes[0].is_input or len(graph.outputs) != 1:
        return False
    previous = nodes[0].name
    for node in nodes[1:]:
        plan = plans[node.name]
        if plan.expression is not None or node.num_outputs != 1 or node.call_index:
            return False
        if [p.node for p in graph.producers(node.name)] != [previous] or node.call_args != (TensorRef(0),):
            return False
        if _non_default_kwargs(node):
            return False
        previous = node.name
    return graph.outputs == [Port(previous, 0)]


def _non_default_kwargs(node: Node) -> dict[str, Any]:
    """The call's keyword arguments that differ from the ``call()`` signature's defaults."""
    if not node.call_kwargs:
        return {}
    try:
        params = inspect.signature(node.layer.call).parameters if node.layer is not None else {}
    except (TypeError, ValueError):
        params = {}
    out = {}
    for key, value in node.call_kwargs.items():
        param = params.get(key)
        if (
            param is not None
            and param.default is not inspect.Parameter.empty
            and not isinstance(value, TensorRef)
            and value is param.default
        ):
            continue
        out[key] = value
    return out


def _call_arguments(node: Node, tensors: list[str]) -> list[Any]:
    args: list[Any] = [_literal(a, tensors) for a in node.call_args]
    args += [_Pair(k, "=", _literal(v, tensors)) for k, v in _non_default_kwargs(node).items()]
    return args


_OUTPUT_SUFFIXES = {
    "LSTM": ["", "_h", "_c"],
    "GRU": ["", "_state"],
    "SimpleRNN": ["", "_state"],
    "MultiHeadAttention": ["", "_scores"],
    "GroupedQueryAttention": ["", "_scores"],
}


def _output_names(node: Node, namer: _Namer, shared: bool) -> list[str]:
    base = _identifier(node.name if not shared or node.call_index else node.layer_name, "t")
    if shared and node.call_index == 0 and _is_model_layer(node.layer):
        base = f"{base}_out"
    count = max(node.num_outputs, 1)
    suffixes = _OUTPUT_SUFFIXES.get(node.op_type, [])
    if len(suffixes) != count:
        suffixes = [""] + [f"_{i}" for i in range(1, count)]
    return [namer.fresh(base + suffix) for suffix in suffixes]


def _returns_structure(node: Node) -> bool:
    """Whether the layer returns a dict or nested structure rather than a flat list of tensors."""
    layer = node.layer
    structure = getattr(layer, "_outputs_struct", None) if _is_model_layer(layer) else node.output_structure
    if isinstance(structure, (list, tuple)):
        return any(isinstance(item, (list, tuple, dict)) for item in structure)
    return isinstance(structure, dict)


def _input_doc(node: Node) -> Any:
    config = node.config or {}
    spec = node.output_specs[0]
    batch_shape = tuple(config.get("batch_shape", spec.shape))
    args: list[Any] = []
    if batch_shape and batch_shape[0] is None:
        args.append(_Pair("shape", "=", _literal(tuple(batch_shape[1:]))))
    else:
        args.append(_Pair("batch_shape", "=", _literal(batch_shape)))
    dtype = config.get("dtype", spec.dtype)
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name", spec.dtype)
    if dtype != keras.backend.floatx():
        args.append(_Pair("dtype", "=", _string(dtype)))
    for flag in ("sparse", "ragged", "optional"):
        if config.get(flag):
            args.append(_Pair(flag, "=", "True"))
    args.append(_Pair("name", "=", _string(config.get("name", node.name))))
    return _Call("keras.Input", args)


def _structure_doc(structure: Any, leaf: Any) -> Any:
    """A doc for a (shallow) input/output structure of lists, tuples and dicts."""
    if isinstance(structure, dict):
        return _Bracket(
            "{", "}", [_Pair(_flat(_literal(k)), ": ", _structure_doc(v, leaf)) for k, v in structure.items()]
        )
    if isinstance(structure, (list, tuple)) and not isinstance(structure, Port):
        items = [_structure_doc(v, leaf) for v in structure]
        if isinstance(structure, tuple):
            return _Bracket("(", ")", items, one_tuple=len(items) == 1)
        return _Bracket("[", "]", items)
    return leaf(structure)


def _statement(target: str, expression: Any) -> str:
    prefix = f"{_INDENT}{target} = "
    return prefix + _format(expression, 4, len(prefix))


# --------------------------------------------------------------------------------------------------------
# Public API.


def to_source(graph: Graph | keras.Model, *, function_name: str = "build_model") -> str:
    """Write ``graph`` as a Python module defining ``function_name()``, which builds the model.

    Args:
        graph: A lifted graph (or a functional/Sequential model, which is lifted first). Not changed.
        function_name: Name of the generated builder function.

    Returns:
        The module's source text. It passes ``ast.parse`` and has no unused imports.

    Raises:
        CodegenError: ``function_name`` is not a valid identifier.

    Example:
        >>> source = rewriter.to_source(rewriter.lift(model))  # doctest: +SKIP
        >>> clone = rewriter.load_source(source)  # doctest: +SKIP
        >>> clone.set_weights(model.get_weights())  # doctest: +SKIP
    """
    if not function_name.isidentifier() or keyword.iskeyword(function_name):
        raise CodegenError(f"Expected a Python identifier as function_name. Received: {function_name!r}.")
    if isinstance(graph, keras.Model):
        graph = lift(graph)
    if not isinstance(graph, Graph):
        raise CodegenError(
            f"Expected a rewriter.Graph or a keras.Model. Received: graph of type {type(graph).__name__}."
        )
    writer = _ModuleWriter()
    return writer.module(graph, function_name)


def load_source(source: str, *, function_name: str = "build_model") -> keras.Model:
    """Execute source written by `to_source` and return the model its builder function builds.

    Only pass source that `to_source` generated (or that you trust): it is executed as Python code.
    Deep models are built with a raised recursion limit (Keras's functional bookkeeping recurses).

    Args:
        source: The module text.
        function_name: The builder function to call.

    Returns:
        The new model (fresh weights; load the original ones with ``set_weights``).

    Raises:
        CodegenError: The source does not define ``function_name``.

    Example:
        >>> clone = rewriter.load_source(rewriter.to_source(model))  # doctest: +SKIP
    """
    namespace: dict[str, Any] = {"__name__": "rewriter_generated_model"}
    exec(compile(source, "<rewriter.to_source>", "exec"), namespace)
    builder = namespace.get(function_name)
    if not callable(builder):
        raise CodegenError(f"The source defines no function {function_name!r} to build the model.")
    with deep_recursion(source.count("\n")):
        return builder()
