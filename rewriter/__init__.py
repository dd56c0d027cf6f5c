"""A pattern-matching graph rewrite engine for Keras 3 functional models.

Lift a model into a graph, find subgraph patterns, substitute them, and emit a new model (or its Python
source).

Example:
    >>> import keras
    >>> import rewriter
    >>> model = keras.applications.MobileNetV2(weights=None)  # doctest: +SKIP
    >>> graph = rewriter.lift(model)  # doctest: +SKIP
    >>> same = rewriter.emit(graph)  # doctest: +SKIP
"""

from __future__ import annotations

from rewriter.by_example import pattern_from_example
from rewriter.codegen import load_source, to_source
from rewriter.dsl import parse_pattern
from rewriter.emit import emit
from rewriter.errors import (
    CodegenError,
    EmitError,
    GraphError,
    LiftError,
    MatchError,
    PatternError,
    RewriteError,
    ShapeMismatchError,
)
from rewriter.graph import Graph, Node, Port, TensorRef, TensorSpec, Use
from rewriter.lift import lift
from rewriter.match import Match, explain, find
from rewriter.pattern import (
    COMMUTATIVE_OPS,
    OpPattern,
    Pattern,
    TensorPattern,
    any_op,
    anything,
    as_pattern,
    each,
    one_of,
    op,
    tensor,
)
from rewriter.rewrite import Application, RewriteResult, SiteMatch, rewrite
from rewriter.rules import (
    Rule,
    RuleSet,
    Template,
    bypass,
    follow_with,
    keep,
    precede_with,
    replace_with,
    replay,
    residual,
)
from rewriter.surgery import add_skip, insert_after, insert_before, remove_layer, replace_layer

__version__ = "0.1.0"

__all__ = [
    "parse_pattern",
    "pattern_from_example",
    "Application",
    "RewriteResult",
    "Rule",
    "RuleSet",
    "SiteMatch",
    "Template",
    "add_skip",
    "bypass",
    "follow_with",
    "insert_after",
    "insert_before",
    "keep",
    "precede_with",
    "remove_layer",
    "replace_layer",
    "replace_with",
    "replay",
    "residual",
    "rewrite",
    "CodegenError",
    "COMMUTATIVE_OPS",
    "Match",
    "explain",
    "find",
    "OpPattern",
    "Pattern",
    "TensorPattern",
    "any_op",
    "anything",
    "as_pattern",
    "each",
    "one_of",
    "op",
    "tensor",
    "to_source",
    "EmitError",
    "Graph",
    "GraphError",
    "LiftError",
    "MatchError",
    "Node",
    "PatternError",
    "Port",
    "RewriteError",
    "ShapeMismatchError",
    "TensorRef",
    "TensorSpec",
    "Use",
    "emit",
    "lift",
    "load_source",
]
