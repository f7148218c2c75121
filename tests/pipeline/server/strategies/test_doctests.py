"""The Examples sections of the strategy modules run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "__init__",
    "aggregate",
    "base",
    "fedavg",
    "fedavgm",
    "fedadam",
    "median",
    "trimmed_mean",
    "krum",
    "fedbuff",
    "client_dp",
    "exceptions",
]


@pytest.mark.parametrize("module", MODULES)
def test_examples(module: str) -> None:
    mod = importlib.import_module(
        "pipeline.server.strategies" if module == "__init__" else f"pipeline.server.strategies.{module}"
    )
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
