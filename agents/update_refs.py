"""Where an admitted update sits on the updates topic, and reading it back after a restart.

The aggregator keeps the open round in changelog-backed tables. Writing each admitted update's
bytes (~100 KB for a 100k-parameter model) to a changelog copied every update once more through
the producer, the broker and the disk, and was the worker's largest cost per update. The bytes
are already durable on ``edgeveil.updates``, so the changelog keeps only an :class:`UpdateRef`
(topic, partition, offset, SHA-256, size: ~130 bytes), and a restarted aggregator reads the
records back with :func:`fetch_refs`. The references of the updates admitted together (one batch
of the agent) are written as one changelog record, :func:`pack_refs`: a changelog write per update
cost the worker as much as decoding it.

What this asks of the updates topic: an open round's records must still be there when the
aggregator restarts. ``edgeveil.updates`` keeps records 7 days (:mod:`agents.topics`) and is not
compacted; a record that is gone (or whose bytes no longer hash to the reference) is reported
missing, and the aggregator drops it from the round with a warning, as it does for bytes that no
longer pass admission.

Examples
--------
>>> ref = UpdateRef(topic="edgeveil.updates", partition=2, offset=17, sha256="ab" * 32, size=9)
>>> unpack_refs(pack_refs({"task|node|000000001": ref})) == {"task|node|000000001": ref}
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["UpdateRef", "UpdateRefError", "fetch_refs", "pack_refs", "unpack_refs"]

_CHUNK_KIND = "edgeveil.update_refs.v1"
_FIELDS = ("topic", "partition", "offset", "sha256", "size")


class UpdateRefError(ValueError):
    """A changelog value that is not an :class:`UpdateRef`."""


@dataclass(frozen=True)
class UpdateRef:
    """The position and digest of one record on a topic."""

    topic: str
    partition: int
    offset: int
    sha256: str
    size: int


def pack_refs(refs: Mapping[str, UpdateRef]) -> bytes:
    """One changelog value holding several references, by update key."""
    body = {key: [getattr(ref, f) for f in _FIELDS] for key, ref in sorted(refs.items())}
    return json.dumps({"kind": _CHUNK_KIND, "refs": body}, separators=(",", ":")).encode()


def unpack_refs(data: bytes) -> dict[str, UpdateRef]:
    """Parse :func:`pack_refs` output; :class:`UpdateRefError` for anything else."""
    try:
        obj = json.loads(data)
    except (ValueError, TypeError) as err:
        raise UpdateRefError(f"not a chunk of update references: {err}") from None
    refs = obj.get("refs") if isinstance(obj, dict) else None
    if not isinstance(refs, dict) or obj.get("kind") != _CHUNK_KIND:
        kind = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise UpdateRefError(f"not a chunk of update references (kind {kind!r})")
    return {str(key): _ref(key, fields) for key, fields in refs.items()}


def _ref(key: str, fields: Any) -> UpdateRef:
    if not isinstance(fields, list) or len(fields) != len(_FIELDS):
        raise UpdateRefError(f"reference of {key!r} is not a list of {len(_FIELDS)} fields")
    topic, partition, offset, sha256, size = fields
    try:
        ref = UpdateRef(topic=str(topic), partition=int(partition), offset=int(offset),
                        sha256=str(sha256), size=int(size))
    except (TypeError, ValueError) as err:
        raise UpdateRefError(f"reference of {key!r} mistypes a field: {err}") from None
    if ref.partition < 0 or ref.offset < 0 or ref.size < 0 or len(ref.sha256) != 64:
        raise UpdateRefError(f"update reference out of range: {ref}")
    return ref


def fetch_refs(settings: Settings, refs: Mapping[str, UpdateRef], *, timeout_s: float = 30.0,
               ) -> tuple[dict[str, bytes], dict[str, str]]:
    """Read the records ``refs`` point at (key -> ref) with a group-less kafka-python consumer.

    Returns ``(found, missing)``: key -> record bytes whose SHA-256 matches the reference, and
    key -> why the others could not be given back (``"deleted"`` by retention, ``"digest"``
    mismatch, ``"absent"`` when the partition ended before the offset, ``"timeout"``). Blocking:
    call it from a thread in async code.

    Raises
    ------
    kafka.errors.KafkaError
        When the broker cannot be reached at all (the caller retries later).
    """
    from kafka import KafkaConsumer, TopicPartition

    found: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    if not refs:
        return found, missing
    wanted: dict[Any, dict[int, list[str]]] = {}
    for key, ref in refs.items():
        tp = TopicPartition(ref.topic, ref.partition)
        wanted.setdefault(tp, {}).setdefault(ref.offset, []).append(key)
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", **settings.consumer_config())
    try:
        tps = list(wanted)
        consumer.assign(tps)
        first = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for tp, offsets in wanted.items():
            for offset in [o for o in offsets if o < first[tp] or o >= end[tp]]:
                reason = "deleted" if offset < first[tp] else "absent"
                for key in offsets.pop(offset):
                    missing[key] = reason
            if offsets:
                consumer.seek(tp, min(offsets))
            else:
                consumer.pause(tp)
        deadline = time.monotonic() + timeout_s
        while any(wanted.values()) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                offsets = wanted[tp]
                for record in records:
                    for key in offsets.pop(record.offset, []):
                        value = record.value or b""
                        if hashlib.sha256(value).hexdigest() == refs[key].sha256:
                            found[key] = value
                        else:
                            missing[key] = "digest"
                if not offsets or consumer.position(tp) > max(offsets):
                    # offsets passed without a record (e.g. a compacted gap) are not coming
                    for keys in offsets.values():
                        for key in keys:
                            missing[key] = "absent"
                    offsets.clear()
                    consumer.pause(tp)
        for offsets in wanted.values():
            for keys in offsets.values():
                for key in keys:
                    missing[key] = "timeout"
    finally:
        consumer.close()
    return found, missing
