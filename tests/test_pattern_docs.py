"""The Python examples of the rule-library pages (docs/inference.md, architecture.md, mutations.md) run.

Each ```python block is executed in order in one namespace per page; a block that raises (or whose
asserts fail) fails the test.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

_DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: str) -> list[str]:
    return _BLOCK.findall((_DOCS / page).read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", ["inference.md", "architecture.md", "mutations.md"])
def test_python_examples_of_the_page_run(page: str) -> None:
    blocks = _blocks(page)
    assert blocks, f"{page} has no python example"
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    for index, source in enumerate(blocks):
        code = compile(source, f"docs/{page} (python block {index + 1})", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)  # our own documentation's examples
