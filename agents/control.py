"""Reading and writing ``edgeveil.control`` (staged-rollout commands) with kafka-python.

The rules of a rollout live in :mod:`pipeline.serving.rollout`; this module only moves signed commands
between the ``edgeveil model`` CLI and the topic.
"""

from __future__ import annotations

import logging
import time

from agents.settings import Settings
from agents.topics import CONTROL
from pipeline.codec.exceptions import CodecError
from pipeline.serving.rollout import decode_control
from schemas.control import RolloutControl

log = logging.getLogger(__name__)


def read_control(settings: Settings, *, task: str, public_key: bytes,
                 timeout_s: float = 20.0) -> RolloutControl | None:
    """The newest correctly signed command for ``task`` on ``edgeveil.control`` (None if there
    is none); records that fail verification are skipped with a warning."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.consumer_config(), enable_auto_commit=False,
                             group_id=None)
    try:
        parts = consumer.partitions_for_topic(CONTROL.name) or set()
        tps = [TopicPartition(CONTROL.name, p) for p in sorted(parts)]
        if not tps:
            return None
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        best: RolloutControl | None = None
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {CONTROL.name} to its end in {timeout_s:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    if rec.key is not None and rec.key != task.encode():
                        continue
                    try:
                        c = decode_control(rec.value or b"", public_key=public_key)
                    except CodecError as err:
                        log.warning("skipping %s@%d: %s", CONTROL.name, rec.offset, err)
                        continue
                    if c.task == task and (best is None or c.seq > best.seq):
                        best = c
        return best
    finally:
        consumer.close()


def publish_control(settings: Settings, blob: bytes, *, task: str) -> int:
    """Write a signed command (key = task); returns its offset once the broker has it."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.producer_config())
    try:
        meta = producer.send(CONTROL.name, key=task.encode(), value=blob).get(timeout=30)
        return int(meta.offset)
    finally:
        producer.close()
