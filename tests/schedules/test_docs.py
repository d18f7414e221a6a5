"""Every ```python block of docs/schedules.md runs and its assertions hold."""
from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "schedules.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_block_runs(i):
    exec(compile(BLOCKS[i], f"{DOC.name}[block {i}]", "exec"), {"__name__": "__doc_example__"})
