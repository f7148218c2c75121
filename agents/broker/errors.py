"""The one error of the local broker harness."""

from __future__ import annotations


class KafkaHarnessError(RuntimeError):
    """The local broker could not be set up, started or reached; the message says what to do."""
