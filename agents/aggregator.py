"""The aggregator worker: ``faust -A agents.aggregator worker`` (or ``edgeveil aggregator``).

Consumes ``edgeveil.updates``, verifies and admits each update with
:class:`pipeline.server.rounds.RoundCoordinator`, keeps the round in changelog-backed tables (so a
restarted worker resumes the round), aggregates with the configured strategy, and publishes each
new global model (weights + ONNX, signed) to ``edgeveil.models``. The tables hold the round's
state and, per batch of admitted updates, where their records sit on ``edgeveil.updates``
(:class:`agents.update_refs.UpdateRef`, :func:`agents.update_refs.pack_refs`), not their bytes:
a restarted worker reads them back.
Everything it rejects goes to ``edgeveil.dlq`` untouched, with the reason in the headers; the
agent keeps running.

The same worker serves the fleet page (``/fleet``, ``/fleet.json``) and Prometheus metrics
(``/metrics``) through faust's web server: :mod:`agents.fleet`, :mod:`agents.metrics`.

Configuration: the run directory in ``EDGEVEIL_RUN_DIR`` (:mod:`agents.federation`) and the
broker settings of :mod:`agents.settings`. Run ONE aggregator worker per task: round state is a
single table key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from typing import Any

from agents import federation
from agents.app import make_app, settings
from agents.fleet import Fleet
from agents.runtime import build_on_start, peek, runtime
from agents.streams import dead_letter, dead_letter_message, raw_topic
from agents.topics import DLQ, FEDERATION_TOPICS, MODELS, UPDATES
from agents.update_refs import UpdateRef, UpdateRefError, fetch_refs, pack_refs, unpack_refs
from pipeline.codec import CodecError
from pipeline.codec.global_model import encode_global_model
from pipeline.server.rounds import Checked, RoundCoordinator, RoundOutcome
from schemas.messages import GlobalModel, GlobalModelHeader

log = logging.getLogger(__name__)

app = make_app("aggregator")
# Global models (weights + ONNX, ~0.5 MB for 100k parameters) go to the models topic and the
# global table's changelog. With the default 16 KiB producer batches a large value is a batch of
# its own, and aiokafka appends to a partition only once its last batch has left; 1 MiB batches
# (limits: 16 MiB, agents.settings) also carry the small per-update references many at a time.
app.conf.producer_max_batch_size = 1 << 20

updates_topic = raw_topic(app, UPDATES)
models_topic = raw_topic(app, MODELS)
dlq_topic = raw_topic(app, DLQ)

# use_partitioner: a key always goes to the same changelog partition, whichever input partition
# the write came from, so recovery replays each key's writes in order.
state_table = app.Table("aggregator-state", default=None, key_type=str,
                        use_partitioner=True, partitions=UPDATES.partitions)
# chunk key -> pack_refs() of the updates of the open round admitted in one batch (~100 bytes
# each; the bytes themselves stay on the updates topic). The chunk key is the smallest update key
# in it. One changelog write per batch: one per update cost as much as verifying the update.
# (A new name: the table of the previous version, "aggregator-update-refs", held one reference
# per update; a round open while upgrading is not carried over.)
ref_table = app.Table("aggregator-ref-chunks", default=None, key_type=str, value_type=bytes,
                      use_partitioner=True, partitions=UPDATES.partitions)
global_table = app.Table("aggregator-global", default=None, key_type=str, value_type=bytes,
                         use_partitioner=True,
                         partitions=UPDATES.partitions)


def _round_state() -> dict[str, Any]:
    """The open round, for the fleet page (empty until the state is loaded)."""
    rt = _built()
    if rt is None or not rt.loaded:
        return {}
    coord = rt.coordinator
    return {"version": coord.version, "buffered": len(coord.buffer),
            "quorum": rt.coordinator.policy.quorum if rt.cfg.mode == "sync"
            else rt.coordinator.policy.buffer_size,
            "opened_at": coord.opened_at if coord.buffer else None}


fleet = Fleet(app, settings=settings, round_state=_round_state)


class _Runtime:
    """Objects built once per worker from the run directory (pipeline code only)."""

    def __init__(self) -> None:
        import numpy as np

        from agents.app import settings
        from pipeline.codec.global_model import decode_global_model
        from pipeline.server.strategies import make_strategy

        self.root = federation.run_dir()
        self.cfg = federation.load_config(self.root)
        self.private_key, self.public_key = federation.aggregator_keys(
            self.root, passphrase=settings.passphrase())
        self.keys = federation.registry(self.root)
        self.registry_stamp = _stamp(federation.registry_path(self.root))
        self.initial_weights, self.export, self.export_is_cheap = _task_model(self.cfg)
        expected = {k: (tuple(v.shape), "float32") for k, v in self.initial_weights.items()}
        self.coordinator = RoundCoordinator(
            task=self.cfg.task, keys=self.keys, expected=expected,
            strategy=make_strategy(self.cfg.strategy, **self.cfg.strategy_options),
            policy=self.cfg.round_policy(len(self.cfg.nodes)),
        )
        self.loaded = False
        self.weights: dict[str, Any] | None = None  # the last published weights, decoded once
        # bytes of the open round's admitted updates (their references are in ref_table)
        self.pending: dict[str, bytes] = {}
        # references admitted in the current batch, written as one chunk when it ends
        self.unflushed: dict[str, UpdateRef] = {}
        # where each update of the open round sits (to send it to the DLQ if its node is revoked)
        self.refs: dict[str, UpdateRef] = {}
        # chunk key -> the update keys it references (the open round's chunks in ref_table)
        self.chunks: dict[str, list[str]] = {}
        self.lock = asyncio.Lock()
        # one thread decodes, verifies and hashes the updates of a batch in order while the event
        # loop admits the ones before them (see _admit_batch)
        self.checker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="check")
        self._decode = decode_global_model
        self._np = np

    def current_weights(self) -> dict[str, Any]:
        if self.weights is None:
            blob = global_table.get(self.cfg.task)
            if blob is None:
                return dict(self.initial_weights)
            self.weights = dict(self._decode(blob, public_key=self.public_key).weights)
        return dict(self.weights)


def _stamp(path: Any) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _runtime() -> _Runtime:
    """This worker's runtime, kept on the app (agents/runtime.py)."""
    return runtime(app, "aggregator", _Runtime)


def _built() -> _Runtime | None:
    rt: _Runtime | None = peek(app, "aggregator")
    return rt


build_on_start(app, "aggregator", _Runtime)


def _task_model(cfg: federation.FederationPlan) -> tuple[dict[str, Any], Any, bool]:
    """Initial global weights (seeded), an ONNX exporter for the task's model, and whether that
    exporter is a cheap template fill (else a full export per call)."""
    import numpy as np
    import torch

    from pipeline.node.build import make_task
    from pipeline.serving.onnx_export import OnnxTemplate, export_onnx
    from pipeline.weights import get_weights, set_weights

    task = make_task(cfg.task, cfg.task_options, seed=cfg.seed)  # as the edges build it
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    if hasattr(task, "in_features"):
        example = torch.zeros(1, int(task.in_features))
    else:
        x = task.train_data(task.node_ids()[0]).tensors[0]
        example = torch.zeros_like(x[:1], dtype=torch.float32)

    try:
        template: OnnxTemplate | None = OnnxTemplate(model, example=example, seed=cfg.seed)
    except ValueError as err:  # e.g. the exporter folded a weight into a constant
        log.warning("no ONNX template for %s (%s); exporting every version", cfg.task, err)
        template = None

    def export(weights: dict[str, Any]) -> bytes:
        if template is not None:
            # one export at start-up; each version writes its weights into the initializers
            return template.fill({k: np.asarray(v, dtype=np.float32) for k, v in weights.items()})
        set_weights(model, weights)
        return export_onnx(model, example=example)

    return get_weights(model), export, template is not None


def _ready() -> bool:
    """Tables recovered and partitions assigned: state may be read and written."""
    recovery = app.tables.recovery
    return bool(recovery.completed.is_set() and not app.in_recovery
                and app.consumer.assignment())


async def _changelog_metadata() -> None:
    """Make sure the producer knows the changelogs' partitions before a table write.

    use_partitioner tables hash keys with the producer's metadata, which aiokafka only fetches for
    topics it was asked about, and a metadata refresh while the broker is busy can drop a topic
    again (a table write then raises TypeError and the agent crash-loops). partitions_for()
    returns at once when the topic is known, and waits for its metadata otherwise.
    """
    producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    for table in (state_table, ref_table, global_table):
        await producer.partitions_for(table.changelog_topic.get_topic_name())


def _opened_key(task: str) -> str:
    """state_table key of the open round's opening time (the full state is saved at closes)."""
    return f"{task}|opened"


async def _load_state(rt: _Runtime) -> None:
    await _changelog_metadata()
    if rt.loaded:
        return
    coord = rt.coordinator
    state = state_table.get(rt.cfg.task)
    if state is not None:
        coord.load_state_dict(state)
    # the state is saved when a round closes, the references of the admitted updates once per
    # batch: re-admitting the referenced bytes gives back the open round exactly
    refs, chunks = _stored_refs(rt)
    stored = await _fetch_stored(rt, refs)
    for key in coord.resume(stored, now=time.time()):
        stored.pop(key, None)
    rt.pending = {k: v for k, v in stored.items() if k in coord.buffer}
    rt.refs = {k: refs[k] for k in coord.buffer if k in refs}
    opened = state_table.get(_opened_key(rt.cfg.task))
    if coord.buffer and isinstance(opened, dict) and opened.get("version") == coord.version:
        coord.opened_at = float(opened["opened_at"])  # the deadline counts from the real opening
    # one chunk for what the open round holds now, then the old chunks go (a crash in between
    # leaves references twice, which the next resume merges by update key)
    keep = {k: refs[k] for k in coord.buffer if k in refs}
    rt.chunks = {}
    if keep:
        ref_table[min(keep)] = pack_refs(keep)
        rt.chunks[min(keep)] = sorted(keep)
    for chunk in chunks:
        if chunk not in rt.chunks:
            ref_table.pop(chunk, None)
    if state is not None or refs:
        age = time.time() - coord.opened_at if coord.opened_at is not None else 0.0
        log.info("resumed %s at version %d with %d buffered updates (round open for %.1f s)",
                 rt.cfg.task, coord.version, len(coord.buffer), age)
    if global_table.get(rt.cfg.task) is None:
        await _publish(rt, version=0, weights=rt.initial_weights, outcome=None)
    rt.loaded = True


def _stored_refs(rt: _Runtime) -> tuple[dict[str, UpdateRef], list[str]]:
    """The references of the task's stored chunks, merged by update key, and the chunk keys. A
    chunk that cannot be parsed is left out with a warning (and deleted by the caller)."""
    prefix = f"{rt.cfg.task}|"
    refs: dict[str, UpdateRef] = {}
    chunks: list[str] = []
    for key, value in list(ref_table.items()):
        if not (isinstance(key, str) and key.startswith(prefix)) or value is None:
            continue
        chunks.append(key)
        try:
            refs.update(unpack_refs(value))
        except UpdateRefError as err:
            log.warning("dropping stored reference chunk %s: %s", key, err)
    return refs, chunks


async def _fetch_stored(rt: _Runtime, refs: dict[str, UpdateRef]) -> dict[str, bytes]:
    """The bytes the references point at, read back from the updates topic.

    A record that is gone or has other bytes is left out with a warning (the round goes on
    without it, as for an update that no longer passes admission).
    """
    from kafka.errors import KafkaError

    from agents.app import settings

    if not refs:
        return {}
    t0 = time.perf_counter()
    for attempt in itertools.count(1):
        try:
            found, missing = await asyncio.to_thread(fetch_refs, settings, refs)
            break
        except KafkaError as err:  # the broker is unreachable: the round waits, nothing is lost
            log.warning("reading back %d stored update(s) failed (attempt %d: %s); retrying in 2 s",
                        len(refs), attempt, err)
            await asyncio.sleep(2.0)
    await _changelog_metadata()  # an await passed: re-check before the table writes
    for key, why in sorted(missing.items()):
        r = refs[key]
        log.warning("stored update %s (%s[%d]@%d) cannot be read back (%s); dropping it",
                    key, r.topic, r.partition, r.offset, why)
    log.info("read back %d of %d stored update(s) from %s in %.0f ms", len(found), len(refs),
             UPDATES.name, (time.perf_counter() - t0) * 1e3)
    return found


async def _publish(rt: _Runtime, *, version: int, weights: dict[str, Any],
                   outcome: RoundOutcome | None, round_seconds: float | None = None) -> bytes:
    header = GlobalModelHeader(
        task=rt.cfg.task, version=version, round=version,
        participants=list(outcome.participants) if outcome else [],
        num_examples=outcome.num_examples if outcome else 0, strategy=rt.cfg.strategy,
        metrics=outcome.metrics if outcome else {},
        epsilon_by_node=outcome.epsilon_by_node if outcome else {},
        delta=outcome.delta if outcome else rt.cfg.delta, created_at=time.time(),
        update_bytes=outcome.update_bytes if outcome else {},
    )
    t0 = time.perf_counter()
    if rt.export_is_cheap:  # a template fill (< 1 ms): a thread hop would cost more
        onnx = rt.export(weights)
    else:  # a full torch.onnx.export per version
        onnx = await asyncio.to_thread(rt.export, weights)
    export_ms = (time.perf_counter() - t0) * 1e3
    blob = encode_global_model(GlobalModel(header, weights, onnx), private_key=rt.private_key)
    await models_topic.send(key=rt.cfg.task.encode(), value=blob)
    await _changelog_metadata()
    global_table[rt.cfg.task] = blob
    rt.weights = dict(weights)
    try:
        (rt.root / "models" / f"v{version:04d}.evm").write_bytes(blob)
    except OSError as exc:  # the run dir copy is a convenience; Kafka holds the truth
        log.warning("could not keep a copy of model v%d: %s", version, exc)
    log.info("published %s v%d (%d participants, %d bytes; ONNX export %.1f ms, publish %.1f ms)",
             rt.cfg.task, version, len(header.participants), len(blob), export_ms,
             (time.perf_counter() - t0) * 1e3)
    sizes = list(header.update_bytes.values())
    await fleet.record_version(version, metrics=header.metrics,
                               participants=len(header.participants),
                               created_at=header.created_at, round_seconds=round_seconds,
                               update_bytes_mean=sum(sizes) / len(sizes) if sizes else None)
    return blob


async def _close_round(rt: _Runtime) -> None:
    coord = rt.coordinator
    opened_at = coord.opened_at
    stored = {k: v for k in coord.buffer if (v := rt.pending.get(k)) is not None}
    outcome = coord.aggregate(rt.current_weights(), stored)
    if outcome.stepped:
        await _publish(rt, version=outcome.version, weights=outcome.weights, outcome=outcome,
                       round_seconds=time.time() - opened_at if opened_at is not None else None)
    else:  # the strategy buffered the deltas (FedBuff below its buffer size): nothing new
        log.info("%s: %d update(s) buffered by %s, no server step; still v%d",
                 rt.cfg.task, len(outcome.participants), rt.cfg.strategy, coord.version)
    await _changelog_metadata()  # no await between this and the table writes below
    done = coord.commit(outcome)
    # state first: if the deletions below are lost, resume() finds these keys in `recent`
    state_table[rt.cfg.task] = coord.state_dict()
    for key in done:
        rt.pending.pop(key, None)
        rt.refs.pop(key, None)
        rt.unflushed.pop(key, None)  # aggregated before its batch ended: `recent` covers it
    for chunk, keys in list(rt.chunks.items()):
        if not any(k in coord.buffer for k in keys):
            ref_table.pop(chunk, None)
            del rt.chunks[chunk]


async def _to_dlq(event: Any, err: CodecError | Exception) -> None:
    msg = event.message
    entry = await dead_letter_message(dlq_topic, msg, err, agent="aggregator", what="update")
    fleet.record_update(_node_of(msg.key), round_=None, base_version=None,
                        size=len(msg.value or b""), outcome="rejected", reason=entry.reason)


def _node_of(key: bytes | None) -> str:
    """The node id an update's record key names (edges key updates by node id)."""
    return key.decode("utf-8", errors="replace")[:128] if key else "?"


#: at most this many updates are admitted under one lock acquisition. faust's take_events hands
#: over what arrived when the batch is full or BATCH_WITHIN_S after it started waiting, so a lone
#: update (a synchronous round's last one) waits at most that long before it is admitted
BATCH_MAX = 32
BATCH_WITHIN_S = 0.01


@app.agent(updates_topic)
async def aggregate(stream):  # type: ignore[no-untyped-def]
    """Admit each update; close the round when the policy says so.

    Updates are taken in batches (faust acks a batch's offsets only after the loop body has
    handled every update of it, so the table writes of a batch are flushed before its offsets
    are committed); inside a batch each update is handled exactly as if it came alone,
    rounds closing between two updates of the same batch when the policy says so.
    """
    rt = _runtime()
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        while not _ready():
            await asyncio.sleep(0.1)
        async with rt.lock:
            await _admit_batch(rt, events)


class _Tally:
    """Admissions since the last summary line (one line per batch, and before each round close)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.admitted = self.duplicates = self.rejected = 0
        self.last: str | None = None  # "<key> (staleness s, n buffered)" of the last admission

    def log(self, task: str) -> None:
        if self.admitted or self.duplicates or self.rejected:
            # bench/round_latency.py finds a round's last admission by its "<key> (staleness s,
            # n buffered)" text; bench/aggregator_throughput.py reads the counts and durations
            log.info("admitted %d update(s) of %s in %.1f ms (%d duplicate(s), %d rejected); "
                     "last %s", self.admitted, task, (time.perf_counter() - self.t0) * 1e3,
                     self.duplicates, self.rejected, self.last)
        self.reset()


def _check(coord: RoundCoordinator, data: bytes) -> Checked | CodecError:
    """RoundCoordinator.check in the checker thread; a rejection is returned, not raised."""
    try:
        return coord.check(data)
    except CodecError as err:
        return err


async def _admit_batch(rt: _Runtime, events: list[Any]) -> None:
    await _load_state(rt)  # also fetches the changelogs' metadata (_changelog_metadata)
    coord = rt.coordinator
    # the checker thread decodes and verifies update i+1, i+2, ... (libsodium, zstd, SHA-256 and
    # numpy release the GIL) while the loop below admits update i: on 2 cores that takes the
    # largest per-update cost off the event loop
    checks = [rt.checker.submit(_check, coord, event.message.value or b"") for event in events]
    tally = _Tally()
    for event, future in zip(events, checks, strict=True):
        msg = event.message
        data = msg.value
        if not future.done():
            await asyncio.wrap_future(future)
            await _changelog_metadata()
        checked = future.result()
        try:
            if isinstance(checked, CodecError):
                raise checked
            offer = coord.offer(checked, now=time.time())
        except CodecError as err:
            await _to_dlq(event, err)
            await _changelog_metadata()  # an await passed: re-check before the next write
            tally.rejected += 1
            continue
        u = offer.update
        if offer.duplicate:
            log.info("dropped redelivered update %s", offer.key)
            fleet.record_update(u.node_id, round_=u.round, base_version=u.base_version,
                                size=len(data or b""), outcome="duplicate")
            tally.duplicates += 1
            continue
        # no await between the metadata check (batch start, or after the last await) and here
        rt.pending[offer.key] = data
        rt.unflushed[offer.key] = rt.refs[offer.key] = UpdateRef(
            topic=msg.topic, partition=msg.partition, offset=msg.offset,
            sha256=coord.buffer[offer.key], size=len(data))
        if len(coord.buffer) == 1:
            # the round opened: save its opening time (the admissions are recovered from their
            # references in ref_table, RoundCoordinator.resume)
            state_table[_opened_key(rt.cfg.task)] = {"version": coord.version,
                                                     "opened_at": coord.opened_at}
        fleet.record_update(u.node_id, round_=u.round, base_version=u.base_version,
                            size=len(data), outcome="admitted")
        tally.admitted += 1
        tally.last = f"{offer.key} (staleness {offer.staleness}, {len(coord.buffer)} buffered)"
        log.debug("admitted %s", tally.last)  # one INFO line per batch: a line costs ~0.2 ms
        if coord.due(now=time.time()) and coord.version < rt.cfg.rounds:
            tally.log(rt.cfg.task)  # the admissions so far, timestamped before the close
            t_close = time.perf_counter()
            try:
                await _close_round(rt)
                log.info("closed %s v%d in %.1f ms", rt.cfg.task, coord.version,
                         (time.perf_counter() - t_close) * 1e3)
            except Exception:  # the timer retries; the agent keeps consuming
                log.exception("closing round %d failed", coord.version + 1)
            await _changelog_metadata()
            tally.reset()
    _flush_refs(rt)
    tally.log(rt.cfg.task)


def _flush_refs(rt: _Runtime) -> None:
    """Write the references the batch admitted (and the round still holds) as one chunk.

    Called before the batch's loop body ends: faust commits the batch's offsets only after
    that, so an update whose reference is not written yet is delivered again after a crash.
    """
    refs = {k: r for k, r in rt.unflushed.items() if k in rt.coordinator.buffer}
    rt.unflushed.clear()
    if refs:
        chunk = min(refs)
        ref_table[chunk] = pack_refs(refs)
        rt.chunks[chunk] = sorted(refs)


@app.timer(interval=1.0)
async def tick() -> None:
    """Publish the initial model once, and close rounds whose deadline passed."""
    if not _ready():
        return
    rt = _runtime()
    async with rt.lock:
        try:
            await _load_state(rt)
            if rt.coordinator.due(now=time.time()) and rt.coordinator.version < rt.cfg.rounds:
                await _close_round(rt)
        except Exception:  # a timer that raises would stop the worker; log and retry next tick
            log.exception("aggregator tick failed; retrying in 1 s")


async def _reload_registry(rt: _Runtime) -> None:
    """Take a changed ``keys/registry.json`` (rotation, ``edgeveil federation revoke``) without a
    restart; the open round's updates of a revoked node go to the DLQ with reason ``revoked``."""
    stamp = _stamp(federation.registry_path(rt.root))
    if stamp is None or stamp == rt.registry_stamp:
        return
    try:
        fresh = await asyncio.to_thread(federation.registry, rt.root)
    except (OSError, ValueError) as err:  # e.g. caught mid-write: the next tick reads it again
        log.warning("key registry %s unreadable (%s); keeping the old one",
                    federation.registry_path(rt.root), err)
        return
    rt.registry_stamp = stamp
    revoked_before = set(rt.keys.revoked)
    added, removed = rt.keys.sync_from(fresh)
    newly = sorted(set(rt.keys.revoked) - revoked_before)
    log.info("key registry reloaded: %d keys (new or rotated: %s; removed: %s; revoked: %s)",
             len(rt.keys), added or "-", removed or "-", newly or "-")
    for node in newly:
        for key in rt.coordinator.drop_node(node):
            data = rt.pending.pop(key, None)
            ref = rt.refs.pop(key, None)
            rt.unflushed.pop(key, None)
            await dead_letter(dlq_topic, agent="aggregator", reason="revoked",
                              detail=f"node {node!r} was revoked while this update waited in "
                                     "the open round", key=node.encode(), value=data,
                              source_topic=UPDATES.name,
                              partition=ref.partition if ref else -1,
                              offset=ref.offset if ref else -1, what=f"update {key}")


@app.timer(interval=1.0)
async def watch_registry() -> None:
    """Re-read the key registry when its file changes (revocation and rotation take effect
    within a second, without a restart)."""
    rt = _built()
    if rt is None or not _ready():
        return
    async with rt.lock:
        try:
            await _reload_registry(rt)
        except Exception:  # a timer that raises would stop the worker; retry next tick
            log.exception("reloading the key registry failed; retrying in 1 s")


@app.task
async def _create_topics() -> None:
    """Create every EdgeVeil topic with its configs (compaction, retention, size limits).

    Not on a secured cluster: there only the admin creates topics (`edgeveil federation acls`).
    """
    from agents.app import settings
    from agents.topics import ensure_topics

    if settings.secured:
        return
    await asyncio.to_thread(ensure_topics, settings, FEDERATION_TOPICS)
