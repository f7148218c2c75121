"""Errors raised by the broker-agnostic library. Each carries the fields a caller needs."""

from __future__ import annotations


class EdgeVeilError(Exception):
    """Base class of every error EdgeVeil raises on purpose."""


class AssetNotFoundError(EdgeVeilError, FileNotFoundError):
    """A data set or model file is not installed; ``install_hint`` says how to get it."""

    def __init__(self, name: str, looked_in: list[str], install_hint: str) -> None:
        self.name = name
        self.looked_in = looked_in
        self.install_hint = install_hint
        where = ", ".join(looked_in) or "(nowhere)"
        super().__init__(
            f"asset {name!r} is not installed (looked in: {where}). Install it with: {install_hint}"
        )
