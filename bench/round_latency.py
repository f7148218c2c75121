"""Benchmark: round latency with 21 nodes, from the last needed update to every edge serving the model.

Run ``python bench/round_latency.py [--rounds R] [--task pedestrian-forecast|fashion-mnist]``;
prints one JSON object to stdout (progress on stderr). It starts its own single-node Kafka on
loopback, creates the topics and a run dir with 21 node keys (the 21 Auckland sensors of
``pedestrian-forecast``; quorum 21, synchronous rounds), the real aggregator worker
(``faust -A agents.aggregator worker``) and 21 edge-side model loaders: threads, each with its own
kafka-python consumer group on the compacted ``edgeveil.models`` topic, that verify and decode
each signed global model (:func:`pipeline.codec.global_model.decode_global_model`) and hot-swap its ONNX
into a :class:`pipeline.serving.hotswap.OnnxModelSlot`, recording when the swap completed. The loaders
skip kafka-python's record CRC check (pure Python without the optional ``crc32c`` package: about
0.35 s of CPU per 820 kB model); the model's Ed25519 signature covers every byte instead.

Each round: 20 signed updates are sent and admitted, then the clock starts just before the 21st
(the last needed) update is written; the round's latency is the time until the last of the 21
edges has swapped in the new version. The aggregator's share is read from its own log
("published ... vN").

The edge side here is the model-loading path only (consumer, verify/decode, ONNX hot-swap); the
full edge agent is built elsewhere. All 21 loaders share this machine's cores, so the spread
across edges includes their contention for the CPU.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from agents import federation  # noqa: E402
from agents.broker import KafkaHarnessError, LocalKafka  # noqa: E402
from agents.settings import Settings, load_settings  # noqa: E402
from agents.topics import FEDERATION_TOPICS, MODELS, UPDATES, ensure_topics  # noqa: E402
from agents.workers import FaustWorker  # noqa: E402
from pipeline.codec import encode_update  # noqa: E402
from pipeline.codec.global_model import decode_global_model  # noqa: E402
from pipeline.serving.hotswap import OnnxModelSlot  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402
from schemas.update import ModelUpdate, PrivacyStamp  # noqa: E402

NODES = 21
TARGET_S = 1.0
TASKS = {
    "pedestrian-forecast": {"sensors": NODES, "max_train_per_node": 64},
    "fashion-mnist": {"num_nodes": NODES, "max_train_per_node": 8, "max_test": 8, "hidden": 64,
                      "features": "pixels"},
}
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _say(msg: str) -> None:
    sys.stderr.write(f"[round_latency {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


class _EdgeLoader(threading.Thread):
    """One edge's model-loading path: own consumer group, verify + decode, ONNX hot-swap."""

    def __init__(self, index: int, settings: Settings, public_key: bytes, run: str) -> None:
        super().__init__(name=f"edge-{index:02d}", daemon=True)
        self.index = index
        self.settings = settings
        self.public_key = public_key
        self.group = f"bench-edge-{run}-{index:02d}"
        self.slot = OnnxModelSlot()
        self.swapped: dict[int, float] = {}  # version -> epoch s when the swap completed
        self.weights: dict[str, np.ndarray] | None = None
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer

        # check_crcs=False: without the optional `crc32c` C package kafka-python checks record
        # CRCs in pure Python, ~0.35 s of CPU per 820 kB model (x21 loaders behind one GIL);
        # every model is verified end to end by its Ed25519 signature instead
        consumer = KafkaConsumer(MODELS.name, group_id=self.group, auto_offset_reset="earliest",
                                 check_crcs=False, **self.settings.consumer_config())
        try:
            while not self.stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for msg in records:
                        try:
                            model = decode_global_model(msg.value, public_key=self.public_key)
                            if self.slot.swap(model.onnx, version=model.header.version):
                                self.swapped[model.header.version] = time.time()
                                self.weights = dict(model.weights)
                        except Exception as exc:  # noqa: BLE001 - reported in the JSON
                            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            consumer.close()


def _log_time(path: Path, marker: str) -> float | None:
    for line in path.read_text(errors="replace").splitlines():
        if marker in line and (m := _STAMP.match(line)):
            return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _wait(cond, timeout: float, what: str, worker: FaustWorker) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}\n{worker.output[-2000:]}")
        if not worker.running:
            raise RuntimeError(f"aggregator worker exited while waiting for {what}\n"
                               f"{worker.output[-2000:]}")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--task", choices=sorted(TASKS), default="pedestrian-forecast")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    rng = np.random.default_rng(args.seed)
    run = uuid.uuid4().hex[:6]
    rounds: list[dict[str, object]] = []
    edges: list[_EdgeLoader] = []

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ev-bench-lat-")))
        task_kwargs = TASKS[args.task]
        _say(f"building task {args.task} for its node ids")
        nodes = get_task(args.task, **task_kwargs).node_ids()[:NODES]
        cfg = federation.FederationPlan(
            task=args.task, task_options=task_kwargs, mode="sync", quorum=NODES,
            min_quorum=NODES, deadline_s=600.0, rounds=args.rounds, nodes=nodes, seed=args.seed,
        )
        root = federation.init_run_dir(tmp / "run", cfg)
        _, pub = federation.aggregator_keys(root)
        keys = {n: federation.node_key(root, n) for n in nodes}

        _say("starting Kafka")
        try:
            kafka = stack.enter_context(LocalKafka())
        except KafkaHarnessError as err:  # e.g. a cluster id starting with "-": try once more
            _say(f"Kafka did not start ({str(err).splitlines()[0]}); retrying once")
            kafka = stack.enter_context(LocalKafka())
        settings = load_settings(bootstrap_servers=kafka.bootstrap_servers)
        ensure_topics(settings, FEDERATION_TOPICS)

        from kafka import KafkaProducer

        producer = KafkaProducer(linger_ms=0, **settings.producer_config())
        stack.callback(producer.close)

        _say(f"starting {NODES} edge model loaders")
        edges = [_EdgeLoader(i, settings, pub, run) for i in range(NODES)]

        def _stop_edges() -> None:
            for e in edges:
                e.stop.set()
            for e in edges:
                e.join(10)

        stack.callback(_stop_edges)
        for e in edges:
            e.start()

        log_file = tmp / "worker.log"
        env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_DATA_DIR": str(tmp / "faust"),
               "EDGEVEIL_APP_ID": f"bench-{run}-aggregator"}
        _say("starting the aggregator worker")
        worker = FaustWorker("agents.aggregator", env=env, log_file=log_file)
        stack.callback(worker.stop)
        worker.start(timeout=120)
        _wait(lambda: all(0 in e.swapped for e in edges), 120, "v0 on every edge", worker)
        weights = edges[0].weights
        assert weights is not None
        stamp = PrivacyStamp(epsilon=0.5, delta=1e-5, noise_multiplier=1.1, sample_rate=0.05,
                             steps=10, accountant="prv")

        for r in range(1, args.rounds + 1):
            blobs = []
            for i, node in enumerate(nodes):
                delta = {k: rng.normal(0.0, 1e-3, size=v.shape).astype(np.float32)
                         for k, v in weights.items()}
                u = ModelUpdate(node_id=node, task=args.task, round=r, base_version=r - 1,
                                num_examples=50 + i, metrics={"mae": 10.0}, privacy=stamp,
                                delta=delta, created_at=time.time())
                blobs.append(encode_update(u, private_key=keys[node], compression="int8"))
            for node, blob in zip(nodes[:-1], blobs[:-1], strict=True):
                producer.send(UPDATES.name, key=node.encode(), value=blob)
            producer.flush()
            marker = f"(staleness 0, {NODES - 1} buffered)"
            _wait(lambda m=marker, rr=r: _log_time(log_file, f"|{rr:09d} {m}") is not None,
                  args.timeout, f"round {r}: {NODES - 1} updates admitted", worker)
            time.sleep(0.3)  # let the worker go idle, as between real edges' sends
            t0 = time.time()
            producer.send(UPDATES.name, key=nodes[-1].encode(), value=blobs[-1])
            producer.flush()
            _wait(lambda rr=r: all(rr in e.swapped for e in edges), args.timeout,
                  f"round {r}: v{r} on every edge", worker)
            swaps = np.array([e.swapped[r] - t0 for e in edges])
            admitted = _log_time(log_file, f"|{r:09d} (staleness 0, {NODES} buffered)")
            published = _log_time(log_file, f"published {args.task} v{r} ")
            row = {
                "round": r,
                "last_edge_swapped_s": round(float(swaps.max()), 3),
                "median_edge_swapped_s": round(float(np.median(swaps)), 3),
                "first_edge_swapped_s": round(float(swaps.min()), 3),
                "aggregator_admitted_last_s": round(admitted - t0, 3) if admitted else None,
                "aggregator_published_s": round(published - t0, 3) if published else None,
            }
            rounds.append(row)
            _say(f"round {r}: {row}")
            weights = edges[0].weights
        worker.stop()
        update_bytes = [len(b) for b in blobs]

    last = np.array([row["last_edge_swapped_s"] for row in rounds], dtype=float)
    pub_s = np.array([row["aggregator_published_s"] or np.nan for row in rounds], dtype=float)
    report = {
        "bench": "round_latency",
        "task": args.task, "task_kwargs": TASKS[args.task],
        "parameters": int(sum(v.size for v in weights.values())),
        "nodes": NODES, "quorum": NODES, "mode": "sync", "rounds": len(rounds),
        "update_bytes_int8": int(np.mean(update_bytes)),
        "latency_s_last_update_written_to_all_edges_swapped": {
            "p50": round(float(np.median(last)), 3), "max": round(float(last.max()), 3),
            "min": round(float(last.min()), 3),
        },
        "aggregator_share_s_to_publication": {
            "p50": round(float(np.nanmedian(pub_s)), 3), "max": round(float(np.nanmax(pub_s)), 3),
        },
        "per_round": rounds,
        "edge_errors": sorted({err for e in edges for err in e.errors}),
        "target": {"seconds": TARGET_S, "met_p50": bool(np.median(last) < TARGET_S),
                   "met_max": bool(last.max() < TARGET_S)},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "notes": ("edge side = model-loading path only (kafka-python consumer per edge, own "
                  "group, on the compacted edgeveil.models; verify + decode the signed model; "
                  "ONNX hot-swap into OnnxModelSlot); the full edge agent is built separately. "
                  "21 loader threads and the aggregator share this machine's CPU. Clock starts "
                  "just before the 21st update is sent, after the other 20 were admitted."),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        _say("interrupted; everything started was stopped")
        raise SystemExit(130) from None
