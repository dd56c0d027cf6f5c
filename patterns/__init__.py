"""The rule library: inference optimizations, architecture edits and architecture-search mutations."""

from __future__ import annotations

__all__: list[str] = []
