"""Benchmark: throughput of the real faust aggregator worker on ~100k-parameter int8 updates.

Run ``python bench/aggregator_throughput.py [--updates N] [--buffer K] [--secure]``; prints one JSON object
to stdout (progress on stderr). It starts its own single-node Kafka on loopback, creates the
topics and a federation run dir (task ``fashion-mnist`` with ``hidden=64``: 105,962 parameters),
pre-produces ``N`` signed int8 updates to ``edgeveil.updates``, then starts
``faust -A agents.aggregator worker`` and times it from the first admitted update to the last
model publication (timestamps from the worker's own log lines).

Mode: asynchronous FedBuff (``mode="async"``, ``buffer_size=K``, strategy ``fedbuff``). A
synchronous round only admits updates trained on the current version, so a stream of
pre-produced updates can fill one round at most, and one round of N updates would keep N
updates in memory; FedBuff keeps admitting while publishing every K updates, which is the
steady state whose rate matters.

The anchor is the same machine running the same public pipeline code in-process, without
Kafka, faust or ONNX export: :class:`pipeline.server.rounds.RoundCoordinator` offering and aggregating
the very same frames (and ``decode_update`` alone).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from agents import federation  # noqa: E402
from agents.acls import setup_federation  # noqa: E402
from agents.broker import BrokerSecurity, KafkaHarnessError, LocalKafka  # noqa: E402
from agents.settings import Settings, load_settings  # noqa: E402
from agents.topics import FEDERATION_TOPICS, MODELS, UPDATES, ensure_topics  # noqa: E402
from agents.workers import FaustWorker  # noqa: E402
from pipeline.codec import decode_update, encode_update  # noqa: E402
from pipeline.codec.global_model import decode_global_model  # noqa: E402
from pipeline.server.rounds import RoundCoordinator, RoundPolicy  # noqa: E402
from pipeline.server.strategies import make_strategy  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402
from pipeline.weights import get_weights  # noqa: E402
from schemas.update import ModelUpdate, PrivacyStamp  # noqa: E402

TASK = "fashion-mnist"
TASK_KWARGS = {"num_nodes": 2, "max_train_per_node": 8, "max_test": 8, "hidden": 64,
               "features": "pixels"}
TARGET = 500.0
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _say(msg: str) -> None:
    sys.stderr.write(f"[aggregator_throughput {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


_BATCH = re.compile(r"admitted (\d+) update\(s\) of (\S+) in ([\d.]+) ms \(")
_CLOSE = re.compile(r"closed (\S+) v(\d+) in ([\d.]+) ms")
_EXPORT = re.compile(r"ONNX export ([\d.]+) ms, publish ([\d.]+) ms")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if m is None:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log_times(path: Path, marker: str) -> list[float]:
    """Epoch seconds of the worker's log lines containing ``marker``."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if marker in line and (t := _stamp(line)) is not None:
            out.append(t)
    return out


def _batches(path: Path, task: str) -> tuple[list[dict[str, float]], list[float]]:
    """The worker's admission summary lines (end time, updates, ms: one per batch of updates,
    cut before each round close) and its round-close durations in ms."""
    batches, closes = [], []
    for line in path.read_text(errors="replace").splitlines():
        if (m := _BATCH.search(line)) and m.group(2) == task and (t := _stamp(line)) is not None:
            batches.append({"t": t, "n": int(m.group(1)), "ms": float(m.group(3))})
        elif (m := _CLOSE.search(line)) and m.group(1) == task:
            closes.append(float(m.group(3)))
    return batches, closes


def _frames(root: Path, shapes: dict[str, tuple[int, ...]], nodes: list[str], n: int,
            seed: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    keys = {node: federation.node_key(root, node) for node in nodes}
    stamp = PrivacyStamp(epsilon=1.0, delta=1e-5, noise_multiplier=1.1, sample_rate=0.01,
                         steps=50, accountant="prv")
    out = []
    for i in range(n):
        node = nodes[i % len(nodes)]
        delta = {k: rng.normal(0.0, 0.01, size=s).astype(np.float32) for k, s in shapes.items()}
        u = ModelUpdate(node_id=node, task=TASK, round=i // len(nodes) + 1, base_version=0,
                        num_examples=int(rng.integers(50, 500)), metrics={"loss": 0.5},
                        privacy=stamp, delta=delta, created_at=time.time())
        out.append((node, encode_update(u, private_key=keys[node], compression="int8")))
    return out


async def _produce(settings: Settings, frames: list[tuple[str, bytes]]) -> None:
    """Send the frames with aiokafka, whose record CRC is C code (kafka-python's is pure Python
    without the optional ``crc32c`` package: minutes for a few hundred MB)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                max_request_size=settings.max_message_bytes,
                                security_protocol=settings.security_protocol,
                                ssl_context=settings.ssl_context())
    await producer.start()
    try:
        sent = [await producer.send(UPDATES.name, key=node.encode(), value=data)
                for node, data in frames]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _anchor(root: Path, cfg: federation.FederationPlan, weights: dict[str, np.ndarray],
            frames: list[tuple[str, bytes]]) -> dict[str, float]:
    """The same frames through RoundCoordinator in this process: no Kafka, no ONNX export."""
    keys = federation.registry(root)
    expected = {k: (tuple(v.shape), "float32") for k, v in weights.items()}
    coord = RoundCoordinator(
        task=cfg.task, keys=keys, expected=expected,
        strategy=make_strategy(cfg.strategy, **cfg.strategy_options),
        policy=RoundPolicy(mode="async", buffer_size=cfg.buffer_size,
                           max_staleness=cfg.max_staleness),
    )
    current = dict(weights)
    stored: dict[str, bytes] = {}
    start = time.perf_counter()
    for _, data in frames:
        offer = coord.offer(data, now=time.time())
        stored[offer.key] = data
        if coord.due(now=time.time()):
            outcome = coord.aggregate(current, stored)
            current = dict(outcome.weights)
            for key in coord.commit(outcome):
                stored.pop(key, None)
    coordinator_s = time.perf_counter() - start
    start = time.perf_counter()
    for _, data in frames:
        decode_update(data, keys=keys, expected=expected)
    decode_s = time.perf_counter() - start
    return {
        "coordinator_offer_aggregate_updates_per_s": round(len(frames) / coordinator_s, 1),
        "decode_verify_only_updates_per_s": round(len(frames) / decode_s, 1),
    }


def _run_worker(args: argparse.Namespace, stack: contextlib.ExitStack, tmp: Path, root: Path,
                frames: list[tuple[str, bytes]], versions: int, *, secure: bool,
                jit: bool | None = None) -> tuple[dict[str, object], bool]:
    """Start a broker (plaintext, or mutual TLS with ACLs), pre-produce the frames, run the
    aggregator worker over them and read its log: (worker stats, complete)."""
    label = "secured (mTLS + ACLs)" if secure else "plaintext"
    app_id = f"bench-{uuid.uuid4().hex[:6]}-aggregator"
    security = None
    if secure:
        security = BrokerSecurity(broker=federation.tls_identity(root, federation.BROKER),
                                  admin=federation.tls_identity(root, federation.ADMIN))
    _say(f"starting Kafka, {label}")
    try:
        kafka = stack.enter_context(LocalKafka(security=security, optimising_jit=jit))
    except KafkaHarnessError as err:  # e.g. a cluster id starting with "-": try once more
        _say(f"Kafka did not start ({str(err).splitlines()[0]}); retrying once")
        kafka = stack.enter_context(LocalKafka(security=security, optimising_jit=jit))
    base = load_settings(bootstrap_servers=kafka.bootstrap_servers)
    if secure:  # the admin makes topics and ACLs; the producer below is the admin too
        settings = federation.client_settings(root, federation.ADMIN, base=base)
        setup_federation(settings, federation.load_config(root).nodes, aggregator_app_id=app_id)
        reader = federation.client_settings(root, federation.READER, base=base)
        identity = federation.client_env(root, federation.AGGREGATOR)
    else:
        settings = reader = base
        identity = {}
        ensure_topics(settings, FEDERATION_TOPICS)
    sizes = [len(f) for _, f in frames]

    from kafka import KafkaConsumer

    t_produce = time.perf_counter()
    asyncio.run(_produce(settings, frames))
    _say(f"pre-produced {len(frames)} updates ({sum(sizes) / 1e6:.1f} MB) in "
         f"{time.perf_counter() - t_produce:.1f} s")
    if args.warm:  # the broker serves the records once before the clock runs (a warm JVM)
        t_warm = time.perf_counter()
        _warm_read(settings, len(frames))
        _say(f"warm-up read of {len(frames)} updates in {time.perf_counter() - t_warm:.1f} s")

    models = KafkaConsumer(MODELS.name, auto_offset_reset="earliest", consumer_timeout_ms=500,
                           check_crcs=False, **reader.consumer_config())  # signed models
    stack.callback(models.close)
    _, pub = federation.aggregator_keys(root)
    log_file = tmp / f"worker-{'secure' if secure else 'plain'}.log"
    if args.worker_log:
        log_file = args.worker_log.with_name(f"{args.worker_log.stem}-{'secure' if secure else 'plain'}{args.worker_log.suffix}")
    log_file.unlink(missing_ok=True)
    env = {"EDGEVEIL_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "EDGEVEIL_RUN_DIR": str(root), "EDGEVEIL_DATA_DIR": str(tmp / "faust"),
           "EDGEVEIL_APP_ID": app_id, **identity}
    _say("starting the aggregator worker")
    worker = FaustWorker("agents.aggregator", env=env, log_file=log_file)
    stack.callback(worker.stop)
    worker.start(timeout=90)

    seen: set[int] = set()
    cpu_samples: list[tuple[float, float]] = []  # (epoch s, worker CPU s)
    load_samples: list[tuple[float, float]] = []  # (epoch s, 1-minute load average)
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + args.timeout
    while versions not in seen and time.monotonic() < deadline and worker.running:
        with contextlib.suppress(OSError, AttributeError):
            fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_samples.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))
        load_samples.append((time.time(), os.getloadavg()[0]))
        for msg in models:
            seen.add(decode_global_model(msg.value, public_key=pub).header.version)
            break
        _say(f"versions published: {len(seen)} of {versions + 1}")
    worker.stop()

    batches, closes = _batches(log_file, TASK)
    batches = [b for b in batches if b["n"] > 0]
    published = _log_times(log_file, f"published {TASK} v")
    rejected = len(_log_times(log_file, "rejected update"))
    published = published[1:]  # v0 is the initial model, published before any update
    exports = [tuple(map(float, m.groups())) for line in log_file.read_text().splitlines()
               if f"published {TASK} v" in line and (m := _EXPORT.search(line))][1:]
    n_admitted = int(sum(b["n"] for b in batches))
    complete = versions in seen and len(published) >= versions
    worker_stats: dict[str, object] = {
        "admitted": n_admitted, "rejected": rejected, "publications": len(published),
        "complete": complete, "summary_lines": len(batches),
    }
    if batches and published:
        # the clock starts when the first batch began (its log line minus its duration)
        start = batches[0]["t"] - batches[0]["ms"] / 1e3
        span = published[-1] - start
        worker_stats["seconds_first_admit_to_last_publication"] = round(span, 3)
        worker_stats["updates_per_s"] = round(n_admitted / span, 1) if span > 0 else None
        # where the time goes: admission (decode, verify, table write) per update, and the
        # round close (aggregate, ONNX, sign, publish, state) per round, both as the worker
        # timed them
        per_update = [b["ms"] / b["n"] for b in batches]
        worker_stats["ms_per_admission_median"] = round(float(np.median(per_update)), 3)
        worker_stats["updates_per_summary_line_median"] = float(np.median([b["n"] for b in batches]))
        worker_stats["ms_round_close_median"] = (
            round(float(np.median(closes)), 1) if closes else None)
        if exports:
            worker_stats["ms_onnx_export_median"] = round(
                float(np.median([e[0] for e in exports])), 2)
            worker_stats["ms_publish_median"] = round(
                float(np.median([e[1] for e in exports])), 2)
        busy = (sum(b["ms"] for b in batches) + sum(closes)) / 1e3
        worker_stats["agent_busy_share_of_span"] = round(busy / span, 2) if span > 0 else None
        cpu = [c for c in cpu_samples if start <= c[0] <= published[-1]]
        if len(cpu) > 1 and cpu[-1][1] > cpu[0][1]:
            worker_stats["updates_per_worker_cpu_s"] = round(
                n_admitted * (cpu[-1][0] - cpu[0][0]) / span / (cpu[-1][1] - cpu[0][1]), 1)
            worker_stats["worker_cpu_share_of_one_core"] = round(
                (cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 2)
        if len(published) > 1:
            steady = published[-1] - published[0]
            worker_stats["steady_updates_per_s_between_publications"] = round(
                args.buffer * (len(published) - 1) / steady, 1) if steady > 0 else None
        loads = [la for t, la in load_samples if start <= t <= published[-1]]
        if loads:
            worker_stats["loadavg_1m_during_run_max"] = round(max(loads), 2)
    return worker_stats, complete


SECURE_TARGET_RATIO = 0.8


def _warm_read(settings: Settings, n: int) -> None:
    """Read the pre-produced updates once, group-less, as the producer of the bench (the admin
    on the secured broker: no federation identity may read them but the aggregator)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(UPDATES.name, auto_offset_reset="earliest", consumer_timeout_ms=2000,
                             check_crcs=False, **settings.consumer_config())
    try:
        seen = 0
        for _ in consumer:
            seen += 1
            if seen >= n:
                break
    finally:
        consumer.close()


def _secure_report(plain: list[dict[str, object]], secure: list[dict[str, object]] | None,
                   ) -> dict[str, object]:
    """The secured runs and their rates as shares of the plaintext run of the same pair."""
    if secure is None:
        return {}
    ratios = []
    for p_stats, s_stats in zip(plain, secure, strict=True):
        p, s = p_stats.get("updates_per_s"), s_stats.get("updates_per_s")
        if isinstance(p, float) and isinstance(s, float) and p:
            ratios.append(round(s / p, 3))
    median = float(np.median(ratios)) if ratios else None
    return {"workers_plaintext": plain, "workers_secure_mtls_acls": secure,
            "secure_vs_plaintext": {
                "ratios": ratios, "median_ratio": median, "target": SECURE_TARGET_RATIO,
                "met": median is not None and median >= SECURE_TARGET_RATIO,
                "plaintext_updates_per_s": [p.get("updates_per_s") for p in plain],
                "secure_updates_per_s": [s.get("updates_per_s") for s in secure],
                "how": ("pairs of runs, each on its own fresh single-node broker, alternating "
                        "which goes first; both brokers run the optimising JIT (C2) and serve "
                        "the pre-produced updates once before the worker starts (a warm broker, "
                        "as in operation); the secured run: mutual TLS on every listener, "
                        "StandardAuthorizer + ACLs, the worker as User:aggregator")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=2000, help="updates pre-produced (N)")
    parser.add_argument("--buffer", type=int, default=100, help="FedBuff buffer size K")
    parser.add_argument("--nodes", type=int, default=50, help="distinct node keys")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker-log", type=Path, default=None,
                        help="keep the aggregator worker's log here")
    parser.add_argument("--secure", action="store_true",
                        help="also run over a secured broker (mutual TLS, ACLs, the aggregator "
                             "as its own identity) and compare with plaintext; both brokers then "
                             "run the optimising JIT and serve the updates once before the clock")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --secure: this many plaintext/secured pairs, alternating "
                             "which goes first; the median ratio is reported")
    args = parser.parse_args(argv)
    if args.updates % args.buffer:
        parser.error("--updates must be a multiple of --buffer")
    signal.signal(signal.SIGTERM, _on_sigterm)
    load_start = os.getloadavg()  # 1, 5, 15 minutes: the machine is shared
    versions = args.updates // args.buffer

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ev-bench-agg-")))
        nodes = [f"bench-node-{i:03d}" for i in range(args.nodes)]
        cfg = federation.FederationPlan(
            task=TASK, task_options=TASK_KWARGS, strategy="fedbuff",
            strategy_options={"buffer_size": args.buffer}, mode="async", buffer_size=args.buffer,
            max_staleness=versions + 1, rounds=versions, nodes=nodes, seed=args.seed,
        )
        root = federation.init_run_dir(tmp / "run", cfg)
        weights = get_weights(get_task(TASK, **TASK_KWARGS).build_model())
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        params = int(sum(v.size for v in weights.values()))

        _say(f"encoding {args.updates} signed int8 updates of {params} parameters")
        frames = _frames(root, shapes, nodes, args.updates, args.seed)
        sizes = [len(f) for _, f in frames]

        # one broker per run, stopped before the next starts (same machine, back to back)
        args.warm = args.secure
        jit = True if args.secure else None
        pairs: list[dict[str, dict[str, object]]] = []
        complete = True
        for i in range(args.repeat if args.secure else 1):
            order = [False, True] if i % 2 == 0 else [True, False]
            pair: dict[str, dict[str, object]] = {}
            for secure in order if args.secure else [False]:
                with contextlib.ExitStack() as run_stack:
                    stats, ok = _run_worker(args, run_stack, tmp, root, frames, versions,
                                            secure=secure, jit=jit)
                pair["secure" if secure else "plaintext"] = stats
                complete = complete and ok
            pairs.append(pair)
        worker_stats = pairs[0]["plaintext"]
        secure_stats = [p["secure"] for p in pairs] if args.secure else None
        plain_stats = [p["plaintext"] for p in pairs]

        _say("in-process anchor on the same frames")
        anchor = _anchor(root, cfg, weights, frames)

    load_end = os.getloadavg()
    rate = worker_stats.get("updates_per_s")
    report = {
        "bench": "aggregator_throughput",
        "task": TASK, "task_kwargs": TASK_KWARGS, "parameters": params,
        "compression": "int8",
        "mode": "async (FedBuff)", "strategy": "fedbuff", "buffer_size_K": args.buffer,
        "cpus": os.cpu_count(),
        "why_async": ("a sync round admits only updates trained on the current version, so "
                      "pre-produced updates fill one round at most and one N-update round keeps "
                      "all N in memory; FedBuff admits continuously and publishes every K"),
        "updates": args.updates, "nodes": args.nodes,
        "bytes_per_update": {"mean": round(float(np.mean(sizes)), 1), "min": min(sizes),
                             "max": max(sizes), "raw_float32": 4 * params},
        "worker": worker_stats,
        "anchor_in_process_same_machine": anchor,
        **_secure_report(plain_stats, secure_stats),
        "target": {"updates_per_s": TARGET,
                   "met": bool(complete and rate is not None and rate >= TARGET)},
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in load_end]},
        "notes": ("worker rate = admitted updates / (last model publication - start of the "
                  "first admitted batch), so it includes every ONNX export and signed global "
                  "model of the run; timestamps and durations are the worker's own log lines "
                  "(the agent logs one line per batch of updates)"),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if complete else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        _say("interrupted; everything started was stopped")
        raise SystemExit(130) from None
