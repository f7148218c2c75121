"""Fixtures of the server tests: the codec tests' update factory (admission gates the same
ModelUpdate objects the codec decodes)."""

from __future__ import annotations

from tests.pipeline.codec.conftest import make_update

__all__ = ["make_update"]
