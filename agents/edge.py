"""The edge worker: ``faust -A agents.edge worker`` (or ``edgeveil edge``).

One worker hosts one or more edge nodes (``EDGEVEIL_EDGE_NODES``: ``all``, ``1-7`` (1-based
positions in the federation's node list) or comma-separated node ids). For every new global model
on ``edgeveil.models`` it

1. verifies the aggregator's signature and hot-swaps the model's ONNX into onnxruntime
   (:class:`pipeline.hotswap.OnnxModelSlot`) without stopping anything else;
2. lets each node train one DP-SGD round from the new weights (:class:`pipeline.simulation.EdgeNode`:
   the privacy ledger is checked before and written durably before the update exists) and
   publishes the signed update to ``edgeveil.updates``;
3. publishes each node's forecast to ``edgeveil.analytics``.

A timer publishes heartbeats to ``edgeveil.telemetry``. Models that fail verification go to the
DLQ with the reason; the worker keeps running. A node whose budget is spent stops training and
says so in its telemetry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from agents import federation
from agents.app import make_app, settings
from agents.topics import ANALYTICS, DLQ, FRAMES_ANONYMIZED, MODELS, TELEMETRY, UPDATES
from pipeline.codec import CodecError
from pipeline.global_model import decode_global_model
from pipeline.hotswap import ModelLoadError, OnnxModelSlot
from schemas.messages import AnalyticsRecord, DlqEntry, Telemetry

log = logging.getLogger(__name__)

app = make_app("edge")

models_topic = app.topic(MODELS.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=MODELS.partitions)
updates_topic = app.topic(UPDATES.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw", partitions=UPDATES.partitions)
analytics_topic = app.topic(ANALYTICS.name, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw",
                            partitions=ANALYTICS.partitions)
telemetry_topic = app.topic(TELEMETRY.name, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw",
                            partitions=TELEMETRY.partitions)
frames_topic = app.topic(FRAMES_ANONYMIZED.name, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw",
                         partitions=FRAMES_ANONYMIZED.partitions)
dlq_topic = app.topic(DLQ.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=DLQ.partitions)


def select_nodes(spec: str, nodes: list[str]) -> list[str]:
    """Resolve ``EDGEVEIL_EDGE_NODES`` against the federation's node list.

    Examples
    --------
    >>> select_nodes("2-3", ["a", "b", "c", "d"])
    ['b', 'c']
    >>> select_nodes("a,d", ["a", "b", "c", "d"])
    ['a', 'd']
    """
    spec = spec.strip()
    if spec in ("", "all"):
        return list(nodes)
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part and all(p.strip().isdigit() for p in part.split("-", 1)):
            lo, hi = (int(p) for p in part.split("-", 1))
            if not 1 <= lo <= hi <= len(nodes):
                raise ValueError(f"node range {part!r} outside 1..{len(nodes)}")
            out.extend(nodes[lo - 1:hi])
        elif part.isdigit():
            out.append(nodes[int(part) - 1])
        elif part in nodes:
            out.append(part)
        else:
            raise ValueError(f"unknown node {part!r}; the federation has {nodes}")
    return out


class _Edge:
    """The nodes of this worker and their shared model slot (pipeline objects only)."""

    def __init__(self) -> None:
        import torch

        from pipeline.dp.calibrate import noise_multiplier_for_budget
        from pipeline.ledger import PrivacyLedger, ledger_path
        from pipeline.simulation import EdgeNode, common_batch_sizes
        from pipeline.tasks import get_task

        torch.set_num_threads(1)
        self.root = federation.run_dir()
        self.cfg = federation.load_config(self.root)
        self.aggregator_pub = federation.aggregator_public_key(self.root)
        passphrase = settings.passphrase()
        self.node_ids = select_nodes(os.environ.get("EDGEVEIL_EDGE_NODES", "all"), self.cfg.nodes)
        self.task = get_task(self.cfg.task, **self.cfg.task_kwargs)
        self.nodes: dict[str, Any] = {}
        # the same per-node batch sizes as `edgeveil simulate`: one sample rate for every node of
        # the federation, so one noise calibration (about 1 s of PRV accounting) serves them all
        sizes = [len(self.task.train_data(n)) for n in self.cfg.nodes]
        batches = common_batch_sizes(sizes, batch_size=self.task.train_config.batch_size)
        base = self.task.train_config
        self.train_config = dataclasses.replace(
            base, optimizer=self.cfg.local_optimizer or base.optimizer,
            lr=base.lr if self.cfg.lr is None else float(self.cfg.lr))
        sigmas: dict[tuple[float, str], float] = {}
        for node_id in self.node_ids:
            ledger = PrivacyLedger.open(ledger_path(self.root / "ledgers", node_id),
                                        node_id=node_id, budget=self.cfg.epsilon,
                                        delta=self.cfg.delta)
            index = self.cfg.nodes.index(node_id)
            node = EdgeNode(
                node_id=node_id, task=self.task, private_key=federation.node_key(self.root, node_id,
                                                                        passphrase=passphrase),
                ledger=ledger, noise_multiplier=1.0, compression=self.cfg.compression,
                seed=self.cfg.seed, index=index, batch_size=batches[index],
                train_config=self.train_config)
            key = (round(node.sample_rate, 12), str(ledger.mechanism))
            if key not in sigmas:
                sigmas[key] = noise_multiplier_for_budget(
                    epsilon=self.cfg.epsilon, delta=self.cfg.delta, sample_rate=node.sample_rate,
                    steps=self.cfg.rounds * node.config.local_steps, accountant=ledger.mechanism)
            node.noise_multiplier = sigmas[key]  # replaces the placeholder above
            self.nodes[node_id] = node
        self.slot = OnnxModelSlot()
        self.version = -1
        self.exhausted: set[str] = set()
        self.published = self._load_published()
        self.epsilon = {n: float(node.ledger.epsilon()) for n, node in self.nodes.items()}
        self.camera: Any = None
        self.camera_node = os.environ.get("EDGEVEIL_CAMERA_NODE", "")
        uri = os.environ.get("EDGEVEIL_CAMERA")
        if uri and self.camera_node in self.nodes:
            from pipeline.edge_camera import CameraLoop

            self.camera = CameraLoop(
                int(uri) if uri.isdigit() else uri,
                interval_s=float(os.environ.get("EDGEVEIL_CAMERA_INTERVAL_S", "10")),
                target_fps=float(os.environ.get("EDGEVEIL_CAMERA_FPS", "5")),
                series_csv=self.root / "series" / f"{self.camera_node}.csv",
                preview_every_s=float(os.environ.get("EDGEVEIL_PREVIEW_EVERY_S", "10")))
            self.camera.start()
            log.info("camera %s feeds node %s", uri, self.camera_node)
        log.info("edge worker serves %d nodes: %s", len(self.nodes), ", ".join(self.node_ids))

    # the last round each node published, so a restarted worker does not train a round twice
    def _published_path(self) -> Path:
        return self.root / "edge-state" / ("published-" + "_".join(self.node_ids)[:80] + ".json")

    def _load_published(self) -> dict[str, int]:
        p = self._published_path()
        return json.loads(p.read_text()) if p.exists() else {}

    def mark_published(self, node_id: str, round_: int) -> None:
        self.published[node_id] = round_
        p = self._published_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.published))
        os.replace(tmp, p)

    def forecast(self, node_id: str, version: int) -> tuple[float, float] | None:
        """(forecast, actual) count for one test-period hour, served by the ONNX model."""
        windows = getattr(self.task, "windows", None)
        to_counts = getattr(self.task, "counts_from_output", None)
        if windows is None or to_counts is None or self.slot.version is None:
            return None
        w = windows(node_id, "test")
        if len(w.x) == 0:
            return None
        i = (version * 97) % len(w.x)
        z, _ = self.slot.predict(w.x[i:i + 1])
        return float(to_counts(node_id, z.reshape(-1))[0]), float(w.counts[i])


_edge: _Edge | None = None


def _runtime() -> _Edge:
    global _edge
    if _edge is None:
        _edge = _Edge()
    return _edge


async def _reject(msg: Any, err: Exception) -> None:
    entry = DlqEntry(reason=str(getattr(err, "reason", type(err).__name__)),
                     detail=str(getattr(err, "detail", err))[:2000], source_topic=msg.topic,
                     partition=msg.partition, offset=msg.offset, agent="edge")
    await dlq_topic.send(key=msg.key, value=msg.value or b"", headers=entry.to_headers())
    log.warning("rejected model at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset,
                entry.reason)


async def _train_and_publish(edge: _Edge, weights: dict[str, Any], version: int) -> None:
    from pipeline.ledger import BudgetExceededError

    round_ = version + 1
    for node_id, node in edge.nodes.items():
        if node_id in edge.exhausted or edge.published.get(node_id, 0) >= round_:
            continue
        try:
            blob = await asyncio.to_thread(node.train_round, weights, round=round_, version=version)
        except BudgetExceededError as exc:
            edge.exhausted.add(node_id)
            log.warning("%s stops training: %s", node_id, exc)
            continue
        await updates_topic.send(key=node_id.encode(), value=blob)
        edge.mark_published(node_id, round_)
        edge.epsilon[node_id] = await asyncio.to_thread(node.ledger.epsilon)
        log.info("%s published round %d (%d bytes, eps %.3f)", node_id, round_, len(blob),
                 edge.epsilon[node_id])


@app.agent(models_topic)
async def on_model(stream):  # type: ignore[no-untyped-def]
    """Verify, hot-swap, train, publish, forecast — for every new global model."""
    edge = await asyncio.to_thread(_runtime)
    async for event in stream.events():
        msg = event.message
        try:
            model = decode_global_model(msg.value or b"", public_key=edge.aggregator_pub)
        except CodecError as err:
            await _reject(msg, err)
            continue
        h = model.header
        if h.task != edge.cfg.task or h.version <= edge.version:
            continue
        try:
            await asyncio.to_thread(edge.slot.swap, model.onnx, version=h.version)
        except ModelLoadError as err:
            await _reject(msg, err)
            continue
        edge.version = h.version
        log.info("serving global model v%d", h.version)
        if h.version < edge.cfg.rounds:
            await _train_and_publish(edge, dict(model.weights), h.version)
        for node_id in edge.nodes:
            fc = edge.forecast(node_id, h.version)
            if fc is None:
                continue
            rec = AnalyticsRecord(node_id=node_id, interval_start=time.time(),
                                  interval_seconds=3600.0, counts={"person": int(round(fc[1]))},
                                  forecast=round(fc[0], 2), model_version=h.version)
            await analytics_topic.send(key=node_id.encode(), value=rec.encode())


async def _send_camera_output(edge: _Edge) -> None:
    cam = edge.camera
    if cam is None:
        return
    for iv in cam.drain_intervals():
        rec = AnalyticsRecord(node_id=edge.camera_node, interval_start=iv.start,
                              interval_seconds=iv.seconds,
                              counts={"person": int(round(iv.mean.get("person", 0.0)))},
                              model_version=edge.slot.version)
        await analytics_topic.send(key=edge.camera_node.encode(), value=rec.encode())
    for jpeg in cam.drain_previews():  # anonymized frames only (CameraLoop refuses raw)
        await frames_topic.send(key=edge.camera_node.encode(), value=jpeg)


@app.on_before_shutdown.connect
async def _stop_camera(app: Any, **kwargs: Any) -> None:
    """On SIGTERM: stop the camera, which closes its open count interval (appended to the local
    series CSV), and hand that last interval to the producer before faust flushes it."""
    if _edge is None or _edge.camera is None:
        return
    await asyncio.to_thread(_edge.camera.stop)
    try:
        await _send_camera_output(_edge)
    except Exception as exc:  # noqa: BLE001 - shutting down; the CSV already holds the counts
        log.warning("could not send the camera's last interval: %s", exc)


@app.timer(interval=2.0)
async def heartbeat() -> None:
    """One telemetry record per node every 2 s; the camera's counts and previews."""
    if _edge is None:
        return
    import psutil

    proc = psutil.Process()
    cpu = proc.cpu_percent(None)
    rss = proc.memory_info().rss
    cam = _edge.camera
    cam_stats = cam.stats() if cam is not None else None
    await _send_camera_output(_edge)
    for node_id in _edge.nodes:
        on_cam = cam_stats is not None and node_id == _edge.camera_node
        t = Telemetry(node_id=node_id, fps=cam_stats.fps if on_cam else 0.0,
                      frames_in=cam_stats.frames_in if on_cam else 0,
                      fail_closed=cam_stats.fail_closed if on_cam else 0,
                      epsilon=_edge.epsilon[node_id], cpu_percent=cpu, rss_bytes=rss,
                      model_version=_edge.slot.version if _edge.slot.version is not None else -1)
        await telemetry_topic.send(key=node_id.encode(), value=t.encode())
