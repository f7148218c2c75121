"""The Examples sections of the codec and schema modules run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "pipeline.codec.codec",
    "pipeline.codec.compression",
    "pipeline.codec.signing",
    "pipeline.server.admission",
    "pipeline.codec.exceptions",
    "schemas.update",
]


@pytest.mark.parametrize("module", MODULES)
def test_examples(module: str) -> None:
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
