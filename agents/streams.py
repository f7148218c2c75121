"""The two things every EdgeVeil faust app does with Kafka the same way: declare a raw-bytes topic
(:func:`raw_topic`) and send what it refuses to the dead-letter queue (:func:`dead_letter`).

Every topic carries bytes in and bytes out (the wire format is EdgeVeil's own, ``schemas/`` and
``pipeline.codec``), so no faust codec ever touches a payload. A refused record goes to
``edgeveil.dlq`` byte for byte, with a :class:`~schemas.messages.DlqEntry` in its headers saying
why, where it came from and which agent refused it.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.topics import TopicSpec
from schemas.messages import DlqEntry

__all__ = ["dead_letter", "dead_letter_message", "raw_topic"]

log = logging.getLogger(__name__)


def raw_topic(app: Any, spec: TopicSpec) -> Any:
    """``app.topic`` for ``spec`` with bytes keys and values and the spec's partition count."""
    return app.topic(spec.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=spec.partitions)


async def dead_letter(dlq: Any, *, agent: str, reason: str, detail: str, key: bytes | None,
                      value: bytes | None, source_topic: str, partition: int = -1,
                      offset: int = -1, what: str = "record") -> DlqEntry:
    """Send ``value`` (untouched) to the DLQ topic ``dlq`` with the reason in its headers.

    ``partition``/``offset`` locate the refused record on ``source_topic`` (-1: not known, e.g.
    an update taken out of an open round). Returns the entry; logs one warning.
    """
    entry = DlqEntry(reason=str(reason), detail=str(detail)[:2000], source_topic=source_topic,
                     partition=partition, offset=offset, agent=agent)
    await dlq.send(key=key, value=value or b"", headers=entry.to_headers())
    log.warning("%s rejected %s at %s[%d]@%d: %s (%s)", agent, what, source_topic, partition,
                offset, entry.reason, entry.detail[:200])
    return entry


async def dead_letter_message(dlq: Any, msg: Any, err: BaseException, *, agent: str,
                              what: str = "record") -> DlqEntry:
    """:func:`dead_letter` for a consumed faust message and the error that refused it (its
    ``reason``/``detail`` if it has them, e.g. a ``CodecError``)."""
    return await dead_letter(
        dlq, agent=agent, reason=str(getattr(err, "reason", type(err).__name__)),
        detail=str(getattr(err, "detail", err)), key=msg.key, value=msg.value,
        source_topic=msg.topic, partition=msg.partition, offset=msg.offset, what=what)
