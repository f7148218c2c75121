"""The one DLQ path: what every agent sends for a refused record (the Kafka tests check the same
entries arrive over the broker: tests/agents/test_aggregator_kafka.py, test_secure_federation_kafka.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.streams import dead_letter_message
from pipeline.codec import CodecError
from schemas.messages import DlqEntry


class _Topic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kw: Any) -> None:
        self.sent.append(kw)


def test_refused_record_goes_to_the_dlq_untouched_with_its_reason() -> None:
    dlq = _Topic()
    msg = SimpleNamespace(key=b"akl-01", value=b"\x00garbage", topic="edgeveil.updates",
                          partition=2, offset=41)
    entry = asyncio.run(dead_letter_message(dlq, msg, CodecError("bad_magic", "x" * 5000),
                                            agent="aggregator", what="update"))
    (sent,) = dlq.sent
    assert sent["key"] == b"akl-01" and sent["value"] == b"\x00garbage"
    back = DlqEntry.from_headers(sent["headers"])
    assert back == entry
    assert (back.reason, back.source_topic, back.partition, back.offset, back.agent) == (
        "bad_magic", "edgeveil.updates", 2, 41, "aggregator")
    assert len(back.detail) == 2000  # bounded, the record itself is kept whole


def test_an_error_without_a_reason_is_named_by_its_type() -> None:
    dlq = _Topic()
    msg = SimpleNamespace(key=None, value=None, topic="edgeveil.models", partition=0, offset=7)
    entry = asyncio.run(dead_letter_message(dlq, msg, ValueError("no ONNX"), agent="edge"))
    assert (entry.reason, entry.detail) == ("ValueError", "no ONNX")
    assert dlq.sent[0]["value"] == b""
