"""The edge worker: ``faust -A agents.edge worker`` (or ``edgeveil edge``).

One worker hosts one or more edge nodes (``EDGEVEIL_EDGE_NODES``: ``all``, ``1-7`` (1-based
positions in the federation's node list) or comma-separated node ids). For every new global model
on ``edgeveil.models`` it

1. verifies it (:class:`pipeline.serving.models.EdgeModels`: the aggregator's signature, the tensors'
   shapes, finite weights, onnxruntime loads the ONNX and a probe inference gives finite
   outputs) and hot-swaps it into the nodes that should serve it, without stopping anything else;
2. lets each node train one DP-SGD round from the new weights (:class:`pipeline.node.EdgeNode`:
   the privacy ledger is checked before and written durably before the update exists) and
   publishes the signed update to ``edgeveil.updates``;
3. publishes the forecast of each node whose served model changed to ``edgeveil.analytics``.

Which version a node serves follows the signed rollout commands on ``edgeveil.control``
(``edgeveil model promote|rollback``; :mod:`pipeline.serving.rollout`): the newest verified model until a
command pins a stable version and a canary group. A timer publishes heartbeats (with the version
each node serves) to ``edgeveil.telemetry``. Models and control messages that fail verification
go to the DLQ with the reason and change nothing; the worker keeps running. A node whose budget
is spent stops training and says so in its telemetry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from agents import federation
from agents.app import make_app, settings
from agents.runtime import build_on_start, peek, runtime
from agents.settings import load_settings
from agents.streams import dead_letter_message, raw_topic
from agents.topics import ANALYTICS, CONTROL, DLQ, FRAMES_ANONYMIZED, MODELS, TELEMETRY, UPDATES
from pipeline.codec import CodecError
from pipeline.serving.models import EdgeModels
from schemas.messages import AnalyticsRecord, Telemetry

log = logging.getLogger(__name__)

app = make_app("edge")

models_topic = raw_topic(app, MODELS)
updates_topic = raw_topic(app, UPDATES)
analytics_topic = raw_topic(app, ANALYTICS)
telemetry_topic = raw_topic(app, TELEMETRY)
frames_topic = raw_topic(app, FRAMES_ANONYMIZED)
dlq_topic = raw_topic(app, DLQ)
control_topic = raw_topic(app, CONTROL)


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
    """The nodes of this worker and the models they serve (pipeline objects only)."""

    def __init__(self) -> None:
        import psutil
        import torch

        from pipeline.node.build import build_nodes, local_config, make_task

        torch.set_num_threads(1)
        self.root = federation.run_dir()
        self.cfg = federation.load_config(self.root)
        self.aggregator_pub = federation.aggregator_public_key(self.root)
        passphrase = settings.passphrase()
        env = load_settings()  # read when the worker starts its edge, as the run dir is
        self.node_ids = select_nodes(env.edge_nodes or "all", self.cfg.nodes)
        # the same task, local training, batch sizes (one sample rate for the whole federation)
        # and σ calibration as `edgeveil simulate` with this recipe: pipeline.node.build
        self.task = make_task(self.cfg.task, self.cfg.task_options, seed=self.cfg.seed)
        plan = self.cfg
        if plan.epsilon is None:
            raise ValueError(f"{self.root / 'federation.json'}: the plan has no privacy budget; "
                             "an edge publishes only DP-noised updates")
        self.train_config = local_config(self.task, lr=plan.lr, batch_size=plan.batch_size,
                                         local_steps=plan.local_steps, momentum=plan.momentum,
                                         optimizer=plan.local_optimizer)
        self.nodes: dict[str, Any] = dict(build_nodes(
            self.task, rounds=plan.rounds, epsilon=plan.epsilon, delta=plan.delta,
            accountant=plan.accountant, noise_multiplier=plan.noise_multiplier,
            private_keys={n: federation.node_key(self.root, n, passphrase=passphrase)
                          for n in self.node_ids},
            ledger_dir=self.root / "ledgers", train_config=self.train_config,
            compression=plan.compression, seed=plan.seed, federation=plan.nodes,
            personalize_steps=plan.personalize_steps,
            keep_optimizer_state=plan.keep_optimizer_state))
        self.models = self._edge_models()
        self.lock = asyncio.Lock()  # one of on_model / on_control changes self.models at a time
        # the newest version this worker trained from (or was offered) since it started: a
        # model redelivered after a crash is trained on again (self.published skips the nodes
        # that already published that round)
        self.version = -1
        self.exhausted: set[str] = set()
        self.published = self._load_published()
        self.epsilon = {n: float(node.ledger.epsilon()) for n, node in self.nodes.items()}
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # starts the CPU measurement the heartbeats report
        self.camera: Any = None
        self.camera_node = env.camera_node or ""
        uri = env.camera
        if uri and self.camera_node in self.nodes:
            from pipeline.vision.camera import CameraLoop

            self.camera = CameraLoop(
                int(uri) if uri.isdigit() else uri,
                interval_s=env.camera_interval_s,
                target_fps=env.camera_fps,
                series_csv=self.root / "series" / f"{self.camera_node}.csv",
                preview_every_s=env.preview_every_s)
            self.camera.start()
            log.info("camera %s feeds node %s", uri, self.camera_node)
        log.info("edge worker serves %d nodes: %s", len(self.nodes), ", ".join(self.node_ids))

    def _edge_models(self) -> EdgeModels:
        """The verified-model gate, with the models and the rollout command this worker kept
        before a restart (each verified again)."""
        import numpy as np

        from pipeline.weights import get_weights

        expected = {k: tuple(v.shape) for k, v in get_weights(self.task.build_model()).items()}
        if hasattr(self.task, "in_features"):
            probe = np.zeros((1, int(self.task.in_features)), np.float32)
        else:
            x = self.task.train_data(self.node_ids[0]).tensors[0]
            probe = np.asarray(x[:1], dtype=np.float32)
        models = EdgeModels(task=self.cfg.task, node_ids=self.node_ids,
                            public_key=self.aggregator_pub, expected=expected, probe=probe,
                            store_dir=self.root / "edge-state" / f"models-{self._tag()}")
        kept = models.restore()
        if kept:
            models.refresh()
            log.info("restored %d verified model(s) (newest v%s) and rollout command %s",
                     len(kept), models.latest, models.control.seq if models.control else None)
        return models

    def _tag(self) -> str:
        return "_".join(self.node_ids)[:80]

    # the last round each node published, so a restarted worker does not train a round twice
    def _published_path(self) -> Path:
        return self.root / "edge-state" / ("published-" + self._tag() + ".json")

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

    def forecast(self, node_id: str) -> tuple[float, float, int] | None:
        """(forecast, actual, version) count for one test-period hour, served by the ONNX model
        ``node_id`` serves."""
        windows = getattr(self.task, "windows", None)
        to_counts = getattr(self.task, "counts_from_output", None)
        version = self.models.version_of(node_id)
        if windows is None or to_counts is None or version is None:
            return None
        w = windows(node_id, "test")
        if len(w.x) == 0:
            return None
        i = (version * 97) % len(w.x)
        z, version = self.models.predict(node_id, w.x[i:i + 1])
        return float(to_counts(node_id, z.reshape(-1))[0]), float(w.counts[i]), version


def _runtime() -> _Edge:
    """This worker's nodes and models, kept on the app (agents/runtime.py); the model and
    control agents both ask for it, one builds it."""
    return runtime(app, "edge", _Edge)


def _built() -> _Edge | None:
    edge: _Edge | None = peek(app, "edge")
    return edge


build_on_start(app, "edge", _Edge)


async def _reject(msg: Any, err: Exception, what: str = "model") -> None:
    await dead_letter_message(dlq_topic, msg, err, agent="edge", what=what)


async def _send_forecasts(edge: _Edge, nodes: list[str]) -> None:
    """Each node's forecast from the model it now serves."""
    for node_id in nodes:
        fc = edge.forecast(node_id)
        if fc is None:
            continue
        rec = AnalyticsRecord(node_id=node_id, interval_start=time.time(),
                              interval_seconds=3600.0, counts={"person": int(round(fc[1]))},
                              forecast=round(fc[0], 2), model_version=fc[2])
        await analytics_topic.send(key=node_id.encode(), value=rec.encode())


async def _train_and_publish(edge: _Edge, weights: dict[str, Any], version: int) -> None:
    from pipeline.privacy.ledger import BudgetExceededError

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


def personal_path(root: Path, node_id: str) -> Path:
    """Where a node keeps its personalised weights (they never leave the node)."""
    from pipeline.privacy.ledger import ledger_path

    safe = ledger_path(root, node_id).name.removesuffix(".ledger.json")
    return root / "personal" / f"{safe}.npz"


async def _personalize(edge: _Edge, weights: dict[str, Any], version: int) -> None:
    """The plan's last version arrived: each node fine-tunes it on its own data with DP-SGD
    (the steps land in its ledger; σ was calibrated for them) and keeps the result locally."""
    import numpy as np

    from pipeline.privacy.ledger import BudgetExceededError

    plan = edge.cfg
    for node_id, node in edge.nodes.items():
        path = personal_path(edge.root, node_id)
        if path.exists() or node_id in edge.exhausted:
            continue  # personalised before a restart: the steps are in the ledger already
        try:
            mine = await asyncio.to_thread(
                node.personalize, weights, steps=plan.personalize_steps,
                lr=plan.personalize_lr, layers=plan.personalize_layers,
                optimizer=plan.personalize_optimizer, round=plan.rounds + 1)
        except BudgetExceededError as exc:
            edge.exhausted.add(node_id)
            log.warning("%s cannot personalise: %s", node_id, exc)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in mine.items()})
        tmp.replace(path)
        edge.epsilon[node_id] = await asyncio.to_thread(node.ledger.epsilon)
        log.info("%s personalised v%d with %d DP-SGD steps (kept on the node, eps %.3f)",
                 node_id, version, plan.personalize_steps, edge.epsilon[node_id])


@app.agent(models_topic)
async def on_model(stream):  # type: ignore[no-untyped-def]
    """Verify, hot-swap, train, publish, forecast — for every new global model."""
    edge = await asyncio.to_thread(_runtime)
    async for event in stream.events():
        msg = event.message
        async with edge.lock:
            try:
                model = await asyncio.to_thread(edge.models.admit, msg.value or b"")
            except CodecError as err:  # signature, format, shapes, NaN, ONNX load, probe
                await _reject(msg, err)
                continue
            if model is None:  # another task's model on the shared topic
                continue
            changed = await asyncio.to_thread(edge.models.refresh)
        for node_id, v in changed.items():
            log.info("%s serves global model v%d", node_id, v)
        h = model.header
        if h.version > edge.version:
            edge.version = h.version
            if h.version < edge.cfg.rounds:
                await _train_and_publish(edge, dict(model.weights), h.version)
            elif edge.cfg.personalize_steps:
                await _personalize(edge, dict(model.weights), h.version)
        await _send_forecasts(edge, list(changed))


@app.agent(control_topic)
async def on_control(stream):  # type: ignore[no-untyped-def]
    """Obey signed rollout commands; a forged or replayed one goes to the DLQ, changing nothing."""
    edge = await asyncio.to_thread(_runtime)
    async for event in stream.events():
        msg = event.message
        async with edge.lock:
            try:
                control = edge.models.apply_control(msg.value or b"")
            except CodecError as err:
                await _reject(msg, err, what="control message")
                continue
            changed = await asyncio.to_thread(edge.models.refresh)
        log.info("rollout command %d (%s): stable v%s, canary v%s on %s; %d node(s) switched",
                 control.seq, control.action, control.stable_version, control.canary_version,
                 control.canary_nodes, len(changed))
        await _send_forecasts(edge, list(changed))


async def _send_camera_output(edge: _Edge) -> None:
    cam = edge.camera
    if cam is None:
        return
    for iv in cam.drain_intervals():
        rec = AnalyticsRecord(node_id=edge.camera_node, interval_start=iv.start,
                              interval_seconds=iv.seconds,
                              counts={"person": int(round(iv.mean.get("person", 0.0)))},
                              model_version=edge.models.version_of(edge.camera_node))
        await analytics_topic.send(key=edge.camera_node.encode(), value=rec.encode())
    for p in cam.drain_previews():  # anonymized, gated frames only (CameraLoop refuses raw)
        headers = {"edgeveil-seq": str(p.seq).encode(), "edgeveil-loop": str(p.loop).encode(),
                   "edgeveil-vouched": json.dumps(p.vouched, sort_keys=True).encode()}
        await frames_topic.send(key=edge.camera_node.encode(), value=p.jpeg, headers=headers)


@app.on_before_shutdown.connect
async def _stop_camera(app: Any, **kwargs: Any) -> None:
    """On SIGTERM: stop the camera, which closes its open count interval (appended to the local
    series CSV), and hand that last interval to the producer before faust flushes it."""
    edge = _built()
    if edge is None or edge.camera is None:
        return
    await asyncio.to_thread(edge.camera.stop)
    try:
        await _send_camera_output(edge)
    except Exception as exc:  # noqa: BLE001 - shutting down; the CSV already holds the counts
        log.warning("could not send the camera's last interval: %s", exc)


@app.timer(interval=2.0)
async def heartbeat() -> None:
    """One telemetry record per node every 2 s; the camera's counts and previews."""
    edge = _built()
    if edge is None:
        return
    proc = edge.proc  # one Process object: cpu_percent() measures since the previous beat
    cpu = proc.cpu_percent(None)
    rss = proc.memory_info().rss
    cam = edge.camera
    cam_stats = cam.stats() if cam is not None else None
    await _send_camera_output(edge)
    for node_id in edge.nodes:
        on_cam = cam_stats is not None and node_id == edge.camera_node
        served = edge.models.version_of(node_id)
        t = Telemetry(node_id=node_id, fps=cam_stats.fps if on_cam else 0.0,
                      frames_in=cam_stats.frames_in if on_cam else 0,
                      fail_closed=cam_stats.fail_closed if on_cam else 0,
                      epsilon=edge.epsilon[node_id], cpu_percent=cpu, rss_bytes=rss,
                      model_version=served if served is not None else -1)
        await telemetry_topic.send(key=node_id.encode(), value=t.encode())
