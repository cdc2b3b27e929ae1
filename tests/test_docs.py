"""The ```python blocks of the documentation pages run as they are: each page's blocks, in order, in one namespace
(so a page's first block sets up what the later ones use). docs/tokenizer.md has its own test
(test_tokenization.test_docs_examples_run_and_print_what_they_say)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ("generation.md",)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, capsys):
    blocks = python_blocks((DOCS / page).read_text(encoding="utf-8"))
    assert blocks, f"docs/{page} has no ```python block"
    namespace: dict = {"__name__": f"docs_{page}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page} (python block {i + 1})", "exec"), namespace)
