"""The examples in the gate's docstrings are true."""

from __future__ import annotations

import doctest

import pytest

import replicate.gate.catalog
import replicate.gate.rewrite


@pytest.mark.parametrize("module", [replicate.gate.catalog, replicate.gate.rewrite])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
