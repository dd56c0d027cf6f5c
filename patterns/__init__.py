"""The rule library: inference optimizations, architecture edits and architecture-search mutations.

- `patterns.inference`: ``RULES`` for `rewriter.rewrite` (BatchNorm folding, inference no-ops, activation
  fusion, reshape merging), all function-preserving in inference mode; `why_not_folded` explains a refusal.
- `patterns.architecture`: parametrised edits (activation swap, separable convolutions, strided
  convolutions, global-pooling heads, BatchNorm insertion, residual connections).
- `patterns.mutations`: random, replayable, always-valid mutations for architecture search
  (``mutate``/``replay``), with function-preserving Net2Net operators.

Example:
    >>> import rewriter
    >>> from patterns import inference, mutations
    >>> folded = rewriter.rewrite(model, inference.RULES).model  # doctest: +SKIP
    >>> child = mutations.mutate(folded, seed=0, steps=3, function_preserving=True).model  # doctest: +SKIP
"""

from __future__ import annotations

from patterns import architecture, inference, mutations

__all__ = ["architecture", "inference", "mutations"]
