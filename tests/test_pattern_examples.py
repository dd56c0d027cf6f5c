"""The examples of the pattern language run: docs/patterns.md and the docstrings of its four modules.

docs/patterns.md: every ```python block is executed in order in one namespace (a block that raises, or
whose asserts fail, fails the test). Docstrings: `doctest` on rewriter.pattern, .match, .dsl and
.by_example; rewriter.match's examples use ``model`` and ``graph``, the model its module docstring builds.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pathlib
import re

import keras
import pytest

import rewriter
from rewriter import op

_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "patterns.md"
# A python block, and the plain block right after it (if any): the text the python block prints.
_BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:```\n(.*?)^```)?", re.S | re.M)


def test_every_python_block_of_the_patterns_page_runs_and_prints_what_the_page_shows() -> None:
    blocks = _BLOCK.findall(_PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    assert sum(1 for _, shown in blocks if shown) >= 2
    namespace: dict[str, object] = {"__name__": "docs_patterns"}
    for index, (source, shown) in enumerate(blocks):
        code = compile(source, f"docs/patterns.md (python block {index + 1})", "exec")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, namespace)  # our own documentation's examples
        if shown:  # the page wraps long lines: compare up to white space
            assert printed.getvalue().split() == shown.split(), f"python block {index + 1} prints otherwise"


def _match_module_globals() -> dict[str, object]:
    x = keras.Input((8, 8, 3), name="x")
    y = keras.layers.ReLU(name="act")(
        keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(x))
    )
    model = keras.Model(x, y)
    return {"keras": keras, "rewriter": rewriter, "op": op, "model": model, "graph": rewriter.lift(model)}


@pytest.mark.parametrize(
    "module", ["rewriter.pattern", "rewriter.match", "rewriter.dsl", "rewriter.by_example"]
)
def test_docstring_examples_run(module: str) -> None:
    extra = _match_module_globals() if module == "rewriter.match" else None
    results = doctest.testmod(
        importlib.import_module(module),
        extraglobs=extra,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        report=True,
    )
    assert results.attempted >= 8
    assert results.failed == 0, f"{results.failed} docstring example(s) of {module} failed (see the output)"
