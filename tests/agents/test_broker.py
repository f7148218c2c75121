"""The local Kafka harness: cluster ids the StorageTool accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.broker.jars import ensure_jars
from agents.broker.node import KafkaNode, _cluster_id, _NodeSpec, free_port


def test_cluster_ids_never_look_like_options() -> None:
    ids = {_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


@pytest.mark.kafka
def test_storage_format_takes_an_id_starting_with_a_dash(tmp_path: Path) -> None:
    # ids from older runs (or kafka-storage random-uuid) may start with '-'; format must not
    # read them as an option
    libs = ensure_jars()
    spec = _NodeSpec(1, free_port(), free_port(), tmp_path / "n1")
    node = KafkaNode(spec, voters=f"1@127.0.0.1:{spec.controller_port}", libs=libs,
                     replication_factor=1, min_insync=1)
    node.write_config()
    node.format("-bcdEFGHijklmnopQRSTuv")
    meta = (tmp_path / "n1" / "log" / "meta.properties").read_text()
    assert "cluster.id=-bcdEFGHijklmnopQRSTuv" in meta
