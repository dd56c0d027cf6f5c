"""The anchored matcher: `find` every match of a pattern, `explain` why there is none at a node.

How matching works. The pattern's first sink is the *anchor*: its candidates are the graph nodes of the
wanted op types (an index by ``op_type``, in topological order), or the ``anchors=`` given. From a bound
node the matcher walks *back* through producers: a complete input list binds each item to the producer
at its argument position (any injective order for commutative ops), a chained feeder (``a >> b``) binds to
one of the distinct producers, ``each(...)`` checks every producer. A value has one producer but many
consumers, so walking back keeps the branching small. Further sinks are reached by walking *forward* from
an already bound node along the pattern path to the sink (or, for a disconnected sink, from the op index).
Search is depth-first with backtracking over the *pattern*, on an explicit stack of steps: no recursion,
neither over the graph's depth nor over the pattern's size. For a fixed pattern the cost grows linearly
with the graph.

Semantics: distinct pattern nodes bind distinct graph nodes (a monomorphism: extra edges in the graph are
allowed). Optional nodes are tried present first; the absent alternative (the edge passing straight
through) is only tried where no present alternative completes (greedy). An optional sink is absent at a
place only if no match with it present binds its input to the same node. Matches covering the same graph
nodes and pattern edges (a commutative list matched in two orders, a symmetric pattern) are reported once.

Failures are values: every rejected step records *why* (``_Failure``). `explain` reruns the search from one
node and reports the deepest partial match and the first constraint that failed there.

The examples in this module's docstrings use ``graph`` and ``model``, the three-layer model built here.

Example:
    >>> import keras
    >>> import rewriter
    >>> from rewriter import op
    >>> x = keras.Input((8, 8, 3), name="x")
    >>> y = keras.layers.ReLU(name="act")(keras.layers.BatchNormalization(name="bn")(
    ...     keras.layers.Conv2D(4, 3, name="conv")(x)))
    >>> model = keras.Model(x, y)
    >>> graph = rewriter.lift(model)
    >>> [m.captures for m in rewriter.find(graph, op("Conv2D").named("c") >> op("BatchNormalization"))]
    [{'c': 'conv'}]
    >>> m = rewriter.find(graph, "Conv2D -> BatchNormalization -> ReLU")[0]
    >>> m.nodes, m.inputs, m.outputs
    (['conv', 'bn', 'act'], [Port(node='x', index=0)], [Port(node='act', index=0)])
"""

from __future__ import annotations

import dataclasses
import difflib
import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rewriter.errors import MatchError, PatternError
from rewriter.graph import Graph, Node, Port
from rewriter.pattern import OpPattern, Pattern, PatternLike, TensorPattern, as_pattern

__all__ = ["Match", "explain", "find"]


# ------------------------------------------------------------------------------------ graph access


class _GraphIndex:
    """Fast, cached read access to a `Graph` for one `find` call (and the matches it returns)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        nxg = graph.nx
        # networkx's own adjacency dicts: the public views allocate a wrapper per access.
        self._node_data = nxg._node
        self._pred = nxg._pred
        self._succ = nxg._succ
        self._producers: dict[str, list[Port]] = {}
        self._producer_nodes: dict[str, list[str]] = {}
        self._topo_index: dict[str, int] | None = None
        self._by_type: dict[str, list[str]] | None = None
        self._order: list[str] | None = None
        self._insertion_is_topological = False
        self._op_of: dict[str, str] | None = None

    def node(self, name: str) -> Node:
        return self._node_data[name]["node"]

    def op_type(self, name: str) -> str:
        return self._node_data[name]["op_type"]

    @property
    def op_of(self) -> dict[str, str]:
        """Node name -> op type, as one table."""
        if self._op_of is None:
            self._op_of = {name: attrs["op_type"] for name, attrs in self._node_data.items()}
        return self._op_of

    def __contains__(self, name: object) -> bool:
        return name in self._node_data

    def producers(self, name: str) -> list[Port]:
        ports = self._producers.get(name)
        if ports is None:
            slots: list[Port | None] = [None] * len(self._node_data[name]["node"].input_specs)
            for src, keyed in self._pred[name].items():
                for data in keyed.values():
                    arg = data["arg_index"]
                    if arg >= len(slots):
                        slots.extend([None] * (arg + 1 - len(slots)))
                    slots[arg] = Port(src, data["out_index"])
            ports = [p for p in slots if p is not None]
            self._producers[name] = ports
        return ports

    def producer_nodes(self, name: str) -> list[str]:
        preds = self._pred[name]
        if len(preds) <= 1:
            return list(preds)
        nodes = self._producer_nodes.get(name)
        if nodes is None:  # argument order, not edge insertion order: the same on a copy of the graph
            nodes = list(dict.fromkeys(p.node for p in self.producers(name)))
            self._producer_nodes[name] = nodes
        return nodes

    def consumer_nodes(self, name: str) -> list[str]:
        return sorted(self._succ[name])

    @property
    def order(self) -> list[str]:
        if self._order is None:
            if getattr(self.graph, "_topo_cache", None) is not None:
                self._order = self.graph.topological_names()
            else:
                self._order = self._topological_order()
        return self._order

    def _topological_order(self) -> list[str]:
        """The order of `Graph.topological_names`, computed several times faster.

        Kahn's algorithm with ties broken by insertion order, on plain dicts and a heap.
        """
        data, succ, pred = self._node_data, self._succ, self._pred
        # Fast path: when insertion order is already topological (lifted graphs, copies), the smallest
        # ready node is always the next one inserted, so the answer is the insertion order itself.
        seen: set[str] = set()
        op_of: dict[str, str] = {}  # built on the way: one compact table instead of scattered node dicts
        last = -1
        for name, attrs in data.items():
            rank = attrs["order"]
            if rank < last or not seen.issuperset(pred[name]):
                break
            last = rank
            seen.add(name)
            op_of[name] = attrs["op_type"]
        else:
            self._insertion_is_topological = True
            self._op_of = op_of
            return list(data)
        remaining = {name: len(preds) for name, preds in pred.items()}
        heap = [(data[name]["order"], name) for name, count in remaining.items() if count == 0]
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        order: list[str] = []
        while heap:
            _, name = pop(heap)
            order.append(name)
            for consumer in succ[name]:
                count = remaining[consumer] - 1
                remaining[consumer] = count
                if count == 0:
                    push(heap, (data[consumer]["order"], consumer))
        if len(order) != len(data):
            return self.graph.topological_names()  # raises GraphError naming the cycle
        return order

    @property
    def topo_index(self) -> dict[str, int]:
        if self._topo_index is None:
            self._topo_index = {name: i for i, name in enumerate(self.order)}
        return self._topo_index

    def candidates(self, pnode: OpPattern) -> list[str]:
        """Graph nodes whose op type may fit ``pnode``, in topological order."""
        names = pnode.op_names()
        if names is None:
            return self.order
        if self._by_type is None:
            self._by_type = {}
        for kind in names:
            if kind not in self._by_type:
                order = self.order  # computes the topological order (and op_of) first
                op_of = self.op_of
                if self._insertion_is_topological:
                    found = [n for n, t in op_of.items() if t == kind]
                else:
                    found = [n for n in order if op_of[n] == kind]
                self._by_type[kind] = found
        if len(names) == 1:
            return self._by_type[next(iter(names))]
        index = self.topo_index
        merged = [n for t in names for n in self._by_type[t]]
        return sorted(merged, key=index.__getitem__)


# ------------------------------------------------------------------------------------ Match


class Match:
    """One occurrence of a pattern in a graph.

    Attributes:
        graph: The graph searched.
        pattern: The pattern matched.
        anchor: Graph node name bound to the pattern's first sink (to its pass-through input if that sink
            is an absent optional node).
        captures: Capture name -> graph node name (absent optional nodes are omitted).
        tensors: Name of each named `tensor` placeholder -> the `Port` it bound.
        bindings: Every present pattern node (`OpPattern`, by identity) -> graph node name.

    Example:
        >>> m = rewriter.find(graph, op("Conv2D").named("c") >> op("BatchNormalization"))[0]
        >>> m["c"].filters, m.captures, m.nodes, m.escaping
        (4, {'c': 'conv'}, ['conv', 'bn'], [])
    """

    def __init__(
        self,
        index: _GraphIndex,
        pattern: Pattern,
        bindings: dict[OpPattern, str],
        tensors: dict[TensorPattern, Port],
        extras: tuple[str, ...],
        sink_nodes: tuple[str, ...],
        key: tuple[frozenset[str], frozenset[tuple[str, str]]],
    ) -> None:
        self._index = index
        self.graph: Graph = index.graph
        self.pattern = pattern
        self.bindings = bindings
        self.tensors: dict[str, Port] = {t.name: p for t, p in tensors.items() if t.name}
        self._extras = extras
        self._sink_nodes = sink_nodes
        self._key = key
        self.anchor: str = sink_nodes[0]
        self.captures: dict[str, str] = {p.name: g for p, g in bindings.items() if p.name}
        self._nodes: list[str] | None = None

    # ------------------------------------------------------------- captures

    def __getitem__(self, name: str) -> Any:
        """The original Keras layer (or operation) object of the node captured as ``name``.

        Raises:
            KeyError: ``name`` is not a capture of this match (unknown, or an absent optional node).
        """
        if name not in self.captures:
            raise KeyError(self._missing(name))
        return self._index.node(self.captures[name]).layer

    def get(self, name: str, default: Any = None) -> Any:
        """Like ``match[name]``, but ``default`` when the node is absent (optional) or unknown."""
        if name not in self.captures:
            return default
        return self[name]

    def node(self, name: str) -> Node:
        """The `rewriter.Node` captured as ``name``.

        Raises:
            KeyError: ``name`` is not a capture of this match.
        """
        if name not in self.captures:
            raise KeyError(self._missing(name))
        return self._index.node(self.captures[name])

    def __contains__(self, name: object) -> bool:
        return name in self.captures

    def _missing(self, name: str) -> str:
        known = self.pattern.capture_names
        if name in self.tensors:
            return f"{name!r} is a tensor placeholder, not a node: use match.tensors[{name!r}] (a Port)."
        if name in known:
            return f"{name!r} is an optional pattern node that is absent from this match."
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"The pattern has no capture named {name!r} (captures: {known}).{hint}"

    # ------------------------------------------------------------- structure

    @property
    def nodes(self) -> list[str]:
        """Every matched graph node, in topological order."""
        if self._nodes is None:
            index = self._index.topo_index
            self._nodes = sorted(self._key[0], key=index.__getitem__)
        return list(self._nodes)

    @property
    def sinks(self) -> list[str]:
        """Graph nodes bound to the pattern's sinks (pass-through nodes for absent optional sinks)."""
        return list(self._sink_nodes)

    @property
    def inputs(self) -> list[Port]:
        """Tensors entering the match from outside, in order of first appearance.

        Matched nodes are walked in topological order, their producers in argument order. Like `outputs`
        and `escaping`, this is read from the graph as it is now (a rewrite elsewhere may change it).
        """
        inside = self._key[0]
        seen: dict[Port, None] = {}
        for name in self.nodes:
            for port in self.graph.producers(name):
                if port.node not in inside and port not in seen:
                    seen[port] = None
        return list(seen)

    @property
    def outputs(self) -> list[Port]:
        """The sinks' output ports (sink order, then output index): what a replacement must provide."""
        ports: dict[Port, None] = {}
        for name in self._sink_nodes:
            for i in range(self.graph.node(name).num_outputs):
                ports[Port(name, i)] = None
        return list(ports)

    @property
    def escaping(self) -> list[Port]:
        """Interior (non-sink) outputs also used outside the match or as graph outputs."""
        inside = self._key[0]
        sinks = set(self._sink_nodes)
        graph_outputs = set(self.graph.outputs)
        found: list[Port] = []
        for name in self.nodes:
            if name in sinks:
                continue
            for i in range(self.graph.node(name).num_outputs):
                port = Port(name, i)
                if port in graph_outputs or any(u.consumer not in inside for u in self.graph.uses(port)):
                    found.append(port)
        return found

    def __repr__(self) -> str:
        caps = ", ".join(f"{k}={v}" for k, v in self.captures.items())
        return f"<Match at {self.anchor!r}: {caps or ', '.join(self.nodes)}>"


# ------------------------------------------------------------------------------------ search


@dataclasses.dataclass
class _Failure:
    depth: int
    bindings: dict[OpPattern, str]
    reason: str


_Tasks = Any  # a persistent stack: None or (task, rest)
_Slot = tuple[int, bool]  # (argument position, whether the input list is matched in order)
_DONE = object()  # end of a search step


class _StopSearch(Exception):
    """Raised inside the search once enough matches were found."""


class _Search:
    """Depth-first matcher for one pattern *variant* (a choice of present/absent optional sinks)."""

    def __init__(
        self,
        index: _GraphIndex,
        pattern: Pattern,
        sinks: list[OpPattern],
        absent: set[OpPattern],
        prebound: dict[OpPattern, str] | None = None,
        record: bool = False,
    ) -> None:
        self.index = index
        self.pattern = pattern
        self.sinks = sinks
        self.bind: dict[OpPattern, str] = {}
        self.used: dict[str, OpPattern | None] = {}
        self.tensors: dict[TensorPattern, Port] = {}
        self.edges: list[tuple[str, str]] = []
        self.extras: list[str] = []
        self.absent: set[OpPattern] = set(absent)
        self.expanded: set[OpPattern] = set()
        self.record = record
        self.failure: _Failure | None = None
        self.results: list[Match] = []
        self.limit: int | None = None
        self._groups: dict[OpPattern, list[object]] = {}
        # Nodes constrained by op type names only: checked with one set lookup.
        self.simple_types: dict[OpPattern, frozenset[str]] = {
            p: frozenset(names)
            for p in pattern.nodes
            if not p.outputs
            and not p.predicates
            and all(not c.config for c in p.choices)
            and (names := p.op_names()) is not None
        }
        for p, g in (prebound or {}).items():
            self.bind[p] = g
            self.used[g] = p

    # ------------------------------------------------------------- entry

    def run(self, anchor_candidates: list[str] | None, limit: int | None = None) -> list[Match]:
        """All matches (at most ``limit``); ``None`` candidates: reach the first sink from prebound nodes."""
        tasks: _Tasks = None
        for sink in reversed(self.sinks[1:]):
            tasks = (("sink", sink), tasks)
        if anchor_candidates is None:
            tasks = (("sink", self.sinks[0]), tasks)
            for p in reversed(list(self.bind)):  # prebound nodes: walk back from them first
                if p not in self.expanded:
                    self.expanded.add(p)
                    tasks = (("expand", p), tasks)
        else:
            tasks = (("bind", self.sinks[0], anchor_candidates, None, True, None), tasks)
        self.results = []
        self.limit = limit
        try:
            self._solve(tasks)
        except _StopSearch:
            pass
        return self.results

    def _fail(self, reason: str, reached: dict[OpPattern, str] | None = None) -> None:
        """Record a failure (``reached``: nodes walked to but not bound, counted into the depth)."""
        if not self.record:
            return
        depth = len(self.bind) + len(reached or ())
        if self.failure is None or depth > self.failure.depth:
            self.failure = _Failure(depth, {**self.bind, **(reached or {})}, reason)

    # ------------------------------------------------------------- steps

    def _solve(self, tasks: _Tasks) -> None:
        """Solve a task stack depth-first, on an explicit stack of steps (no recursion at all).

        Each step is a generator: it binds something, yields the task stack to solve with that binding,
        and undoes the binding when resumed (the yielded stack has been fully explored by then).
        """
        steps: list[Iterator[_Tasks]] = [self._step(tasks)]
        push, pop = steps.append, steps.pop
        while steps:
            nxt = next(steps[-1], _DONE)
            if nxt is _DONE:
                pop()
            else:
                push(self._step(nxt))

    def _step(self, tasks: _Tasks) -> Iterator[_Tasks]:
        if tasks is None:
            self._complete()
            return iter(())
        task, rest = tasks
        kind = task[0]
        if kind == "bind":
            return self._bind(task[1], task[2], task[3], task[4], task[5], rest)
        if kind == "expand":
            return self._expand(task[1], rest)
        if kind == "tensor":
            return self._tensor(task[1], task[2], rest)
        return self._sink(task[1], rest)

    def _bind(
        self,
        p: OpPattern,
        candidates: list[str],
        consumer: str | None,
        is_sink: bool,
        slot: _Slot | None,
        rest: _Tasks,
    ) -> Iterator[_Tasks]:
        """Bind ``p`` to each fitting candidate in turn (``slot``: the list position it fills, if any)."""
        found = False
        bound = self.bind.get(p)
        if bound is not None:
            if bound in candidates:
                if consumer is not None:
                    self.edges.append((bound, consumer))
                if p in self.expanded:
                    nxt = rest
                else:
                    self.expanded.add(p)
                    nxt = (("expand", p), rest)
                before = len(self.results)
                yield nxt
                found = found or len(self.results) > before
                if p in self.expanded and nxt is not rest:
                    self.expanded.discard(p)
                if consumer is not None:
                    self.edges.pop()
            else:
                where = f"among the inputs of {consumer!r}" if consumer else "here"
                self._fail(f"pattern node {p.label()} is already matched to {bound!r}, which is not {where}")
            return
        index = self.index
        node_data = index._node_data
        op_of = index.op_of
        record = self.record
        simple = self.simple_types.get(p)
        for cand in candidates:
            if simple is not None and op_of[cand] not in simple:
                if record:
                    self._fail(self._misfit(p, cand, p.local_failure(index.node(cand)), consumer, slot))
                continue
            owner = self.used.get(cand, False)
            if owner is not False:
                if record:
                    other = owner.label() if owner is not None else "a variadic input"
                    self._fail(f"node {cand!r} cannot be {p.label()}: it is already matched as {other}")
                continue
            if simple is None:
                reason = p.local_failure(node_data[cand]["node"])
                if reason is not None:
                    if record:
                        self._fail(self._misfit(p, cand, reason, consumer, slot))
                    continue
            self.bind[p] = cand
            self.used[cand] = p
            self.expanded.add(p)
            if consumer is not None:
                self.edges.append((cand, consumer))
            before = len(self.results)
            yield (("expand", p), rest)
            found = found or len(self.results) > before
            if consumer is not None:
                self.edges.pop()
            self.expanded.discard(p)
            del self.used[cand]
            del self.bind[p]
        if not candidates and consumer is not None:
            self._fail(f"node {consumer!r} has no input that could be {p.label()}")
        if p.is_optional and not is_sink and not found:
            self.absent.add(p)
            ins = p.inputs
            nxt = (("bind", ins[0], candidates, consumer, False, slot), rest) if ins else rest
            yield nxt
            self.absent.discard(p)

    def _misfit(
        self, p: OpPattern, cand: str, reason: str | None, consumer: str | None, slot: _Slot | None
    ) -> str:
        """The failure text for graph node ``cand`` not fitting pattern node ``p``."""
        if slot is None or consumer is None:
            return f"node {cand!r} cannot be {p.label()}: {reason}"
        position, ordered = slot
        text = f"input {position} of {consumer!r} is {cand!r}, which cannot be {p.label()}: {reason}"
        if ordered:
            ports = self.index.producers(consumer)
            fits = [
                f"input {k} ({port.node!r})"
                for k, port in enumerate(ports)
                if k != position and p.local_failure(self.index.node(port.node)) is None
            ]
            if fits:
                text += (
                    f" ({' and '.join(fits)} would fit {p.label()}, but the input list is matched in order: "
                    f"{self.index.op_type(consumer)} is not commutative)"
                )
        return text

    def _expand(self, p: OpPattern, rest: _Tasks) -> Iterator[_Tasks]:
        g = self.bind[p]
        mode = p.input_mode
        if mode == "free":
            if not p.feeders:
                yield rest
                return
            producers = self.index.producer_nodes(g)
            tasks = rest
            for feeder in reversed(p.feeders):
                tasks = (("bind", feeder, producers, g, False, None), tasks)
            yield tasks
        elif mode == "list":
            yield from self._expand_list(p, g, rest)
        else:
            yield from self._expand_each(p, g, rest)

    def _expand_list(self, p: OpPattern, g: str, rest: _Tasks) -> Iterator[_Tasks]:
        ports = self.index.producers(g)
        items = p.input_list
        n = len(items)
        if len(ports) < n or (len(ports) > n and not p.open_ended):
            wanted = f"at least {n}" if p.open_ended else str(n)
            hint = ""
            if len(ports) > n:
                hint = " (end the list with ... to allow more inputs, or use each(...) for any number)"
            self._fail(
                f"node {g!r} ({self.index.op_type(g)}) has {len(ports)} input(s), "
                f"the input list of {p.label()} wants {wanted}{hint}"
            )
            return
        if not p.is_commutative_for(self.index.op_type(g)):
            yield self._list_tasks(items, ports, range(n), g, rest, ordered=True)
            return
        compatible = [[j for j in range(len(ports)) if self._may_take(item, ports[j])] for item in items]
        for i, options in enumerate(compatible):
            if not options:
                self._fail(
                    f"no input of {g!r} can be item {i} ({_item_label(items[i])}) of the input list of "
                    f"{p.label()}; its inputs are {[_port_text(q) for q in ports]}"
                )
                return
        for choice in _injective_assignments(items, compatible, self._interchangeable(p)):
            yield self._list_tasks(items, ports, choice, g, rest, ordered=False)

    def _interchangeable(self, p: OpPattern) -> list[object]:
        """A group per item of ``p``'s input list; only one order of the items of a group is tried.

        Items of one group can trade places without changing the match: the same object listed twice,
        unconstrained anonymous tensors, anonymous required leaf nodes used only here with equal
        constraints.
        """
        groups = self._groups.get(p)
        if groups is None:
            groups = []
            for item in p.input_list:
                if isinstance(item, TensorPattern):
                    free = item.name is None and item.constraint is None
                    groups.append("free tensor" if free else id(item))
                elif (
                    item.name is None
                    and not item.is_optional
                    and not item.inputs
                    and self.pattern.consumers_of(item) == [p]
                    and sum(1 for other in p.input_list if other is item) == 1
                ):
                    groups.append(("leaf", item.signature()))
                else:
                    groups.append(id(item))
            self._groups[p] = groups
        return groups

    def _may_take(self, item: OpPattern | TensorPattern, port: Port) -> bool:
        if isinstance(item, TensorPattern):
            return self._tensor_failure(item, port) is None
        if item.is_optional:
            return True
        bound = self.bind.get(item)
        if bound is not None:
            return bound == port.node
        return port.node not in self.used and item.local_failure(self.index.node(port.node)) is None

    @staticmethod
    def _list_tasks(
        items: list[OpPattern | TensorPattern],
        ports: list[Port],
        positions: Sequence[int],
        g: str,
        rest: _Tasks,
        *,
        ordered: bool,
    ) -> _Tasks:
        """Tasks binding item ``i`` to the producer at argument position ``positions[i]``."""
        tasks = rest
        for item, position in zip(reversed(items), reversed(positions)):
            port = ports[position]
            if isinstance(item, TensorPattern):
                tasks = (("tensor", item, port), tasks)
            else:
                tasks = (("bind", item, [port.node], g, False, (position, ordered)), tasks)
        return tasks

    def _expand_each(self, p: OpPattern, g: str, rest: _Tasks) -> Iterator[_Tasks]:
        assert p.each is not None
        ports = self.index.producers(g)
        spec = p.each
        if len(ports) < spec.min or (spec.max is not None and len(ports) > spec.max):
            self._fail(
                f"node {g!r} has {len(ports)} input(s); each() on {p.label()} wants between {spec.min} and "
                f"{spec.max if spec.max is not None else 'any number'}"
            )
            return
        item = spec.item
        if isinstance(item, TensorPattern):
            for port in ports:
                reason = self._tensor_failure(item, port)
                if reason is not None:
                    self._fail(f"input {_port_text(port)} of {g!r}: {reason}")
                    return
            yield rest
            return
        added: list[str] = []
        ok = True
        for port in ports:
            owner = self.used.get(port.node, False)
            if owner is None:  # already a variadic input (a repeated tensor)
                continue
            if owner is not False:
                self._fail(f"input {port.node!r} of {g!r} is already matched as {owner.label()}")
                ok = False
                break
            reason = item.local_failure(self.index.node(port.node))
            if reason is not None:
                self._fail(f"input {port.node!r} of {g!r} does not fit each({item.describe()}): {reason}")
                ok = False
                break
            self.used[port.node] = None
            added.append(port.node)
        if ok:
            self.extras.extend(added)
            self.edges.extend((name, g) for name in added)
            yield rest
            del self.edges[len(self.edges) - len(added) :]
            del self.extras[len(self.extras) - len(added) :]
        for name in added:
            del self.used[name]

    def _tensor_failure(self, item: TensorPattern, port: Port) -> str | None:
        bound = self.tensors.get(item)
        if bound is not None and bound != port:
            here = _port_text(port)
            return f"tensor {item.describe()} is already {_port_text(bound)}, here it would be {here}"
        if item.constraint is not None:
            specs = self.index.node(port.node).output_specs
            if port.index < len(specs):
                reason = item.constraint.failure(specs[port.index])
                if reason is not None:
                    return f"tensor {item.describe()}: {reason.replace('output 0', 'the tensor')}"
        return None

    def _tensor(self, item: TensorPattern, port: Port, rest: _Tasks) -> Iterator[_Tasks]:
        reason = self._tensor_failure(item, port)
        if reason is not None:
            self._fail(reason)
            return
        fresh = item.name is not None and item not in self.tensors  # anonymous tensors bind nothing
        if fresh:
            self.tensors[item] = port
        yield rest
        if fresh:
            del self.tensors[item]

    def _sink(self, sink: OpPattern, rest: _Tasks) -> Iterator[_Tasks]:
        if sink in self.bind and sink in self.expanded:
            yield rest
            return
        if sink in self.bind:  # prebound (explain): reach it through a bind task
            yield from self._bind(sink, [self.bind[sink]], None, True, None, rest)
            return
        candidates = self._forward_candidates(sink)
        yield from self._bind(sink, candidates, None, True, None, rest)

    def _forward_candidates(self, sink: OpPattern) -> list[str]:
        """Candidates for a sink not yet bound: walk forward from a bound ancestor, else the op index."""
        parents: dict[OpPattern, OpPattern | None] = {sink: None}
        queue = [sink]
        start: OpPattern | None = None
        while queue and start is None:
            nxt: list[OpPattern] = []
            for q in queue:
                if q.input_mode == "each":
                    continue
                for item in q.inputs:
                    if not isinstance(item, OpPattern) or item.is_optional or item in parents:
                        continue
                    parents[item] = q
                    if item in self.bind:
                        start = item
                        break
                    nxt.append(item)
                if start is not None:
                    break
            queue = nxt
        if start is None:
            return self.index.candidates(sink)
        path: list[OpPattern] = []
        step = parents[start]
        while step is not None:
            path.append(step)
            step = parents[step]
        frontier = [self.bind[start]]
        reached: list[str] = [f"{self.bind[start]!r} as {start.label()}"]
        walked: dict[OpPattern, str] = {}  # path nodes reached by a single graph node
        for q in path:
            seen: dict[str, None] = {}
            rejected: list[str] = []
            for g in frontier:
                for c in self.index.consumer_nodes(g):
                    if c in seen:
                        continue
                    reason = q.local_failure(self.index.node(c))
                    if reason is None:
                        seen[c] = None
                    elif len(rejected) < 4:
                        rejected.append(f"{c!r}: {reason}")
            if not seen:
                tried = "; ".join(rejected) if rejected else "there are none"
                self._fail(
                    f"walking forward from {', then '.join(reached)}, no consumer can be {q.label()} "
                    f"({tried})",
                    walked,
                )
                return []
            frontier = list(seen)
            if len(frontier) == 1 and frontier[0] not in self.used:
                walked[q] = frontier[0]
            reached.append(f"{', '.join(map(repr, frontier[:3]))} as {q.label()}")
        order = self.index.topo_index
        return sorted(frontier, key=order.__getitem__)

    def _complete(self) -> None:
        if len(self.sinks) == 1:
            sink_nodes: tuple[str, ...] = (self.bind[self.sinks[0]],)
        else:
            sink_nodes = tuple(dict.fromkeys(self.bind[s] for s in self.sinks))
        nodes = frozenset(itertools.chain(self.bind.values(), self.extras))
        match = Match(
            self.index,
            self.pattern,
            dict(self.bind),
            dict(self.tensors),
            tuple(self.extras),
            sink_nodes,
            (nodes, frozenset(self.edges)),
        )
        where = self.pattern.where
        if where is not None:
            try:
                ok = bool(where(match))
            except Exception as exc:
                raise PatternError(
                    f"The where= predicate of pattern {self.pattern} raised {type(exc).__name__}: {exc} "
                    f"(on {match!r}). Use match.get(name) for optional nodes."
                ) from exc
            if not ok:
                self._fail(f"the where= predicate rejected the match {match!r}")
                return
        self.results.append(match)
        if self.limit is not None and len(self.results) >= self.limit:
            raise _StopSearch


def _injective_assignments(
    items: list[OpPattern | TensorPattern], compatible: list[list[int]], groups: list[object]
) -> Iterator[tuple[int, ...]]:
    """Injective maps item -> argument position within ``compatible``, one per class of equivalent maps.

    Items of one group (``groups[i]``, see `_Search._interchangeable`; they have equal ``compatible``
    lists) can trade places, so a group takes a *combination* of positions, not every permutation:
    ``[tensor()] * 10`` or ten anonymous ``op("ReLU")`` give one assignment, not 10!. Groups are assigned in
    turn on an explicit stack of combination iterators (no recursion).
    """
    members: dict[object, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    levels = list(members.values())
    if not levels:
        yield ()
        return
    assignment = [0] * len(items)
    used: set[int] = set()
    chosen: list[tuple[int, ...] | None] = [None] * len(levels)

    def choices(level: int) -> Iterator[tuple[int, ...]]:
        free = [j for j in compatible[levels[level][0]] if j not in used]
        return itertools.combinations(free, len(levels[level]))

    stack = [choices(0)]
    while stack:
        level = len(stack) - 1
        previous = chosen[level]
        if previous is not None:
            used.difference_update(previous)
            chosen[level] = None
        combination = next(stack[-1], None)
        if combination is None:
            stack.pop()
            continue
        chosen[level] = combination
        used.update(combination)
        for index, position in zip(levels[level], combination):
            assignment[index] = position
        if level + 1 == len(levels):
            yield tuple(assignment)
        else:
            stack.append(choices(level + 1))


def _item_label(item: OpPattern | TensorPattern) -> str:
    return item.label() if isinstance(item, OpPattern) else item.describe()


def _port_text(port: Port) -> str:
    return repr(port.node) if port.index == 0 else f"{port.node!r}[{port.index}]"


# ------------------------------------------------------------------------------------ variants


@dataclasses.dataclass
class _Variant:
    present: dict[OpPattern, bool]  # for each optional sink
    sinks: list[OpPattern]  # effective sinks (pass-through inputs replace absent optional sinks)
    absent: set[OpPattern]
    dropped: list[tuple[OpPattern, OpPattern | None]]  # absent optional sinks and their pass-through input


def _make_variant(pattern: Pattern, present: dict[OpPattern, bool]) -> _Variant:
    sinks: list[OpPattern] = []
    absent: set[OpPattern] = set()
    dropped: list[tuple[OpPattern, OpPattern | None]] = []
    for s in pattern.sinks:
        if present.get(s, True):
            if s not in sinks:
                sinks.append(s)
            continue
        absent.add(s)
        ins = s.inputs
        through = ins[0] if ins and isinstance(ins[0], OpPattern) else None
        dropped.append((s, through))
        if through is not None and through not in sinks:
            sinks.append(through)
    return _Variant(dict(present), sinks, absent, dropped)


def _variants(pattern: Pattern) -> list[_Variant]:
    """All-present first, then every combination of absent optional sinks."""
    optional = [s for s in pattern.sinks if s.is_optional]
    variants = []
    for flags in itertools.product((True, False), repeat=len(optional)):
        variant = _make_variant(pattern, dict(zip(optional, flags)))
        if variant.sinks:
            variants.append(variant)
    return variants


def _is_preempted(index: _GraphIndex, pattern: Pattern, variant: _Variant, match: Match) -> bool:
    """Greedy optional sinks: is there a match with a dropped sink present at the same place?"""
    for sink, through in variant.dropped:
        if through is None or through not in match.bindings:
            continue
        at = match.bindings[through]
        present = _make_variant(pattern, {**variant.present, sink: True})
        search = _Search(index, pattern, present.sinks, present.absent, prebound={through: at})
        first = present.sinks[0]
        if first is sink:
            candidates: list[str] | None = index.consumer_nodes(at)
        elif first in match.bindings:
            candidates = [match.bindings[first]]
        else:
            candidates = None
        if search.run(candidates, limit=1):
            return True
    return False


# ------------------------------------------------------------------------------------ public API


def _as_graph(model_or_graph: Any) -> Graph:
    if isinstance(model_or_graph, Graph):
        return model_or_graph
    from rewriter.lift import lift

    return lift(model_or_graph)


def _anchor_names(anchors: Any) -> list[str]:
    if isinstance(anchors, str) or not isinstance(anchors, Iterable):
        raise MatchError(
            "find(anchors=...) takes an iterable of node names, e.g. anchors=['conv1']. "
            f"Received: {anchors!r}."
        )
    return list(anchors)


def find(model_or_graph: Any, pattern: PatternLike, *, anchors: Iterable[str] | None = None) -> list[Match]:
    """Every match of ``pattern`` in a model or graph, in topological order of their anchors.

    Args:
        model_or_graph: A `rewriter.Graph`, or a Keras model (lifted first; the model is not changed).
        pattern: A `Pattern`, an `OpPattern` (one sink), pattern text, or a function (by example).
        anchors: Restrict the graph nodes the pattern's first sink may bind (unknown names are ignored);
            the rewrite engine passes the region around a change to resume without rescanning.

    Returns:
        The matches, de-duplicated (see the module docstring), whether or not interior outputs escape.

    Raises:
        PatternError: The pattern is malformed, or its ``where=`` predicate raised.
        MatchError: ``anchors`` is not an iterable of names.

    Example:
        >>> matches = rewriter.find(model, op("Conv2D") >> op("BatchNormalization"))
        >>> [m.nodes for m in matches]
        [['conv', 'bn']]
        >>> rewriter.find(model, "BatchNormalization -> (ReLU | ELU)")
        [<Match at 'act': bn, act>]
    """
    pat = as_pattern(pattern)
    graph = _as_graph(model_or_graph)
    index = _GraphIndex(graph)
    anchor_set = None if anchors is None else {a for a in _anchor_names(anchors) if a in index}
    found: list[Match] = []
    seen: set[Any] = set()
    variants = _variants(pat)
    for variant in variants:
        first = variant.sinks[0]
        if anchor_set is None:
            candidates = index.candidates(first)
        else:
            candidates = sorted(anchor_set, key=index.topo_index.__getitem__)
        search = _Search(index, pat, variant.sinks, variant.absent)
        for match in search.run(candidates):
            if match._key in seen:
                continue
            if variant.dropped and _is_preempted(index, pat, variant, match):
                continue
            seen.add(match._key)
            found.append(match)
    if len(variants) > 1:  # one variant: already in candidate (topological) order
        order = index.topo_index
        found.sort(key=lambda m: order[m.anchor])
    return found


def _resolve_at(graph: Graph, at: Any) -> str:
    if isinstance(at, Node):
        at = at.name
    if not isinstance(at, str):
        calls = [n.name for n in graph.topological() if n.layer is at]
        if calls:
            return calls[0]
        raise MatchError(
            f"explain(at=...): {at!r} is not a node, node name or layer of graph {graph.name!r}."
        )
    if at in graph:
        return at
    calls = [n.name for n in graph.topological() if n.layer_name == at]
    if calls:
        return calls[0]
    close = difflib.get_close_matches(at, list(graph.nx.nodes), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise MatchError(
        f"explain(at={at!r}): graph {graph.name!r} has no node or layer named {at!r}.{hint} "
        "Pass a node name from graph.summary() or a layer name."
    )


def _describe_bindings(bindings: dict[OpPattern, str], index: _GraphIndex, pattern: Pattern) -> str:
    if not bindings:
        return "nothing"
    rank = {p: i for i, p in enumerate(pattern.nodes)}
    ordered = sorted(bindings.items(), key=lambda item: rank.get(item[0], 0))
    return ", ".join(f"{p.label()} = {g!r} ({index.op_type(g)})" for p, g in ordered)


def explain(model_or_graph: Any, pattern: PatternLike, *, at: Any) -> str:
    """Why ``pattern`` does (not) match at ``at``: the deepest partial match and the first failed constraint.

    The node is tried as the pattern's anchor (first sink) and as every other pattern node it fits. When
    its op type fits a pattern node but its own config, outputs or predicate do not, that is the answer
    (with whether the rest of the pattern would match around it). When the pattern does match there, the
    paragraph says as what, and which interior outputs are also used outside the match.

    Args:
        model_or_graph: A `rewriter.Graph` or a Keras model.
        pattern: Anything `find` accepts, or a `rewriter.Rule`: then a match is also put to the rule's
            ``check()``, and a veto's reason is part of the answer.
        at: A node name, a layer name (its first call), a `rewriter.Node`, or a Keras layer object.

    Returns:
        One readable paragraph.

    Raises:
        MatchError: ``at`` is not in the graph.
        PatternError: The pattern is malformed.

    Example:
        >>> print(rewriter.explain(model, "Conv2D -> BatchNormalization -> Activation", at="bn"))
        Pattern "Conv2D -> BatchNormalization -> Activation" does not match with node 'bn'
        (BatchNormalization) in it. Deepest partial match (2 of 3 pattern nodes, trying 'bn' as
        BatchNormalization): Conv2D = 'conv' (Conv2D), BatchNormalization = 'bn' (BatchNormalization).
        First failed constraint there: walking forward from 'bn' as BatchNormalization, no consumer can be
        Activation ('act': its op is ReLU, wanted Activation).
    """
    rule = pattern if callable(getattr(pattern, "veto", None)) else None
    pat = as_pattern(rule.pattern if rule is not None else pattern)
    graph = _as_graph(model_or_graph)
    name = _resolve_at(graph, at)
    index = _GraphIndex(graph)
    head = f'Pattern "{pat}"' if rule is None else f'Rule {rule.name!r} (pattern "{pat}")'
    node_text = f"node {name!r} ({index.op_type(name)})"
    containing = [m for m in find(graph, pat) if name in m._key[0]]
    if containing:
        return _explain_match(head, node_text, name, containing, rule, index, pat)
    node = index.node(name)
    roles = [p for p in pat.nodes if p.local_failure(node) is None]
    near = [p for p in pat.nodes if p not in roles and any(choice.accepts_type(node) for choice in p.choices)]
    if not roles and not near:
        kinds = sorted({c.op_name or "_" for p in pat.nodes for c in p.choices})
        return (
            f"{head} does not match with {node_text} in it: no pattern node can be {name!r}, whose op "
            f"{index.op_type(name)} is none of the pattern's ops ({', '.join(kinds)})."
        )
    own = " ".join(
        f"As {p.label()}, {name!r} fails its own constraint: {p.local_failure(node)}." for p in near
    )
    if not roles:
        return (
            f"{head} does not match with {node_text} in it. {own} {_explain_relaxed(index, pat, near, name)}"
        )
    best: _Failure | None = None
    best_role = ""
    for variant in _variants(pat):
        tries: list[tuple[OpPattern, dict[OpPattern, str] | None, list[str] | None]] = []
        if variant.sinks[0] in roles:
            tries.append((variant.sinks[0], None, [name]))
        tries.extend(
            (p, {p: name}, None) for p in roles if p is not variant.sinks[0] and p not in variant.absent
        )
        for role, prebound, candidates in tries:
            search = _Search(index, pat, variant.sinks, variant.absent, prebound=prebound, record=True)
            search.run(candidates, limit=1)
            failure = search.failure
            if failure is not None and (best is None or failure.depth > best.depth):
                best, best_role = failure, role.label()
    if best is None:
        text = f"{head} does not match with {node_text} in it, and no partial match was found."
    else:
        text = (
            f"{head} does not match with {node_text} in it. Deepest partial match ({best.depth} of "
            f"{len(pat.nodes)} pattern nodes, trying {name!r} as {best_role}): "
            f"{_describe_bindings(best.bindings, index, pat)}. First failed constraint there: {best.reason}."
        )
    return f"{text} {own}" if own else text


def _explain_match(
    head: str,
    node_text: str,
    name: str,
    containing: list[Match],
    rule: Any,
    index: _GraphIndex,
    pattern: Pattern,
) -> str:
    """The `explain` paragraph when matches contain the node (and the rule's verdict on them)."""
    m = containing[0]
    role = next((p.label() for p, g in m.bindings.items() if g == name), "a variadic input")
    more = f" ({len(containing)} matches contain it)" if len(containing) > 1 else ""
    text = (
        f"{head} matches with {node_text} as {role}{more}: the match anchored at {m.anchor!r} binds "
        f"{_describe_bindings(m.bindings, index, pattern)}."
    )
    absent = [p for p in pattern.nodes if p.is_optional and p not in m.bindings]
    text += "".join(f" {_absent_reason(p, m, index, pattern)}." for p in absent)
    escaping = m.escaping
    if escaping:
        inside = m._key[0]
        users = sorted({u.consumer for port in escaping for u in m.graph.uses(port)} - inside)
        outputs = [port for port in escaping if port in set(m.graph.outputs)]
        where = [f"by {', '.join(map(repr, users))}"] if users else []
        where += ["as a model output"] if outputs else []
        text += (
            f" Interior output(s) {', '.join(_port_text(p) for p in escaping)} are also used outside the "
            f"match ({' and '.join(where)}): a rewrite of this match must keep providing them."
        )
    if rule is None:
        return text
    vetoes = [(match.anchor, rule.veto(match)) for match in containing]
    refused = [(anchor, reason) for anchor, reason in vetoes if reason]
    if len(refused) < len(vetoes):
        return text + " Its check() accepts the match, so the rule applies there."
    reasons = "; ".join(f"at {anchor!r}: {reason}" for anchor, reason in refused)
    return text + f" But the rule's check() refuses it, so the rule does not apply there ({reasons})."


def _absent_reason(p: OpPattern, match: Match, index: _GraphIndex, pattern: Pattern) -> str:
    """Why optional node ``p`` is absent from ``match``: its neighbours and what the candidates lack."""
    text = f"Optional node {p.label()} is absent from this match"
    feeder = next((item for item in p.inputs if isinstance(item, OpPattern)), None)
    consumer = next(iter(pattern.consumers_of(p)), None)
    before = match.bindings.get(feeder) if feeder is not None else None
    after = match.bindings.get(consumer) if consumer is not None else None
    if before is not None and after is not None:
        return f"{text}: {before!r} feeds {after!r} directly"
    if before is not None:
        neighbours, relation, kind = index.consumer_nodes(before), f"consumer of {before!r}", "consumers"
    elif after is not None:
        neighbours, relation, kind = index.producer_nodes(after), f"input of {after!r}", "inputs"
    else:
        return text
    if not neighbours:
        return f"{text}: {(before or after)!r} has no {kind}"
    inside = match._key[0]
    reasons = [
        f"{n!r}: {'it is already in the match' if n in inside else p.local_failure(index.node(n))}"
        for n in neighbours
    ]
    shown = "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else "")
    return f"{text}: no {relation} can be it ({shown})"


def _explain_relaxed(index: _GraphIndex, pattern: Pattern, near: list[OpPattern], name: str) -> str:
    """Whether the rest of the pattern matches around ``name`` taken as a ``near`` node anyway."""
    best: _Failure | None = None
    for p in near:
        for variant in _variants(pattern):
            if p in variant.absent:
                continue
            search = _Search(index, pattern, variant.sinks, variant.absent, prebound={p: name}, record=True)
            found = search.run(None if p is not variant.sinks[0] else [name], limit=1)
            if found:
                bound = _describe_bindings(found[0].bindings, index, pattern)
                return f"Apart from that, the rest of the pattern matches around it: {bound}."
            if search.failure is not None and (best is None or search.failure.depth > best.depth):
                best = search.failure
    if best is None:
        return "The rest of the pattern does not match around it either."
    return (
        f"The rest of the pattern does not match around it either: deepest partial match "
        f"{_describe_bindings(best.bindings, index, pattern)}, then {best.reason}."
    )
