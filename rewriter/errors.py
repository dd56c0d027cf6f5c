"""The engine's errors: one base class, one subclass per stage.

Every message says what went wrong, where (rule, node, layer, shapes) and what to do.

Example:
    >>> from rewriter.errors import LiftError, RewriteError
    >>> issubclass(LiftError, RewriteError)
    True
"""

from __future__ import annotations

__all__ = [
    "CodegenError",
    "EmitError",
    "GraphError",
    "LiftError",
    "MatchError",
    "PatternError",
    "RewriteError",
    "ShapeMismatchError",
]


class RewriteError(Exception):
    """Base class of every error raised by the rewrite engine."""


class LiftError(RewriteError):
    """A Keras model cannot be lifted into a graph."""


class GraphError(RewriteError):
    """A graph breaks one of its invariants (see `Graph.verify`)."""


class EmitError(RewriteError):
    """A graph cannot be turned back into a Keras model."""


class CodegenError(RewriteError):
    """A graph cannot be written as Python source, or generated source cannot be loaded."""


class PatternError(RewriteError):
    """A pattern is malformed: a syntax error, an unknown class, a bad constraint."""


class MatchError(RewriteError):
    """Matching was asked something it cannot answer (e.g. an unknown node in `explain`)."""


class ShapeMismatchError(RewriteError):
    """A replacement's outputs do not fit the consumers they feed."""
