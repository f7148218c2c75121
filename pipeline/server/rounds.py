"""Round bookkeeping of the aggregator, independent of any transport.

The Kafka aggregator agent and tests drive a :class:`RoundCoordinator`: it verifies and admits
encoded updates, says when a round is due, and aggregates a buffer of admitted updates into the
next global version. Its state is plain JSON (:meth:`RoundCoordinator.state_dict`) so an agent can
keep it in a changelog-backed table; the admitted update *bytes* are kept by the caller, keyed by
:func:`update_key`, and handed back to :meth:`RoundCoordinator.aggregate`.

Idempotence (delivery is at-least-once): the same ``(node, round)`` arriving again with the same
bytes is a :attr:`Offer.duplicate` and is dropped silently; different bytes for an admitted
``(node, round)`` are a replay and rejected. Aggregation sorts the buffer by key, so the same
updates always give bit-identical weights, whatever order or how many times they arrived.

Cost per update (the aggregator's hot path): :meth:`RoundCoordinator.offer` decodes and verifies
each update once and keeps the decoded update until the round closes; :meth:`aggregate` reuses it
when the stored bytes are the very ``bytes`` object offered or hash to the admitted digest, and
decodes (verifying again) only bytes it has not seen, e.g. after a restart. The strategy's state
(which only :meth:`aggregate` changes) is converted to JSON once per round, not once per
:meth:`state_dict` call. After a restart,
:meth:`resume` re-admits the stored bytes of the open round, so a caller may persist
:meth:`state_dict` once per round (when it opens and when it closes) and the update bytes once
per update.

Two modes:

* ``sync`` — synchronous rounds: only updates trained on the current version are admitted; the
  round closes at ``quorum`` updates, or at ``deadline_s`` after its first update with at least
  ``min_quorum``.
* ``async`` — buffered asynchronous aggregation (FedBuff; Nguyen et al. 2022, "Federated Learning
  with Buffered Asynchronous Aggregation", AISTATS): updates up to ``max_staleness`` versions old
  are admitted and down-weighted; every ``buffer_size`` updates make a new version.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zstandard

from pipeline.codec import KeyRegistry, decode_update
from pipeline.server.admission import UpdateAdmission
from pipeline.server.strategies import ClientResult, Strategy, Weights
from schemas.update import ModelUpdate

log = logging.getLogger(__name__)

__all__ = ["Checked", "Offer", "RoundCoordinator", "RoundOutcome", "RoundPolicy", "update_key"]

_STATE_KIND = "edgeveil.round_coordinator.v1"
_UNSET: Any = object()


def update_key(task: str, node_id: str, round_: int) -> str:
    """The key an admitted update's bytes are stored under (sorts by node, then round)."""
    return f"{task}|{node_id}|{round_:09d}"


@dataclass(frozen=True)
class RoundPolicy:
    """When a round closes.

    Examples
    --------
    >>> RoundPolicy(mode="sync", quorum=3).min_quorum
    1
    """

    mode: Literal["sync", "async"] = "sync"
    quorum: int = 3
    min_quorum: int = 1
    deadline_s: float = 60.0
    buffer_size: int = 10
    max_staleness: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {self.mode!r}")
        if self.quorum < 1 or self.min_quorum < 1 or self.buffer_size < 1:
            raise ValueError("quorum, min_quorum and buffer_size must be >= 1")
        if self.min_quorum > self.quorum:
            raise ValueError(f"min_quorum {self.min_quorum} > quorum {self.quorum}")

    @property
    def staleness_limit(self) -> int:
        return 0 if self.mode == "sync" else self.max_staleness


@dataclass(frozen=True)
class Offer:
    """What :meth:`RoundCoordinator.offer` decided about one encoded update."""

    key: str
    update: ModelUpdate
    staleness: int
    duplicate: bool = False


@dataclass(frozen=True)
class Checked:
    """An update :meth:`RoundCoordinator.check` decoded and verified, not yet admitted."""

    data: bytes
    update: ModelUpdate
    sha256: str
    checker: RoundCoordinator = field(repr=False, compare=False)


@dataclass(frozen=True)
class RoundOutcome:
    """The result of closing a round: the new version's weights and who contributed."""

    version: int
    weights: Weights
    participants: tuple[str, ...]
    num_examples: int
    epsilon_by_node: dict[str, float]
    delta: float
    update_bytes: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)
    #: False when the strategy applied no server step (FedBuff still filling its buffer, or
    #: nothing left to aggregate): ``version`` and ``weights`` are then the current ones and the
    #: caller publishes nothing, though :meth:`RoundCoordinator.commit` still consumes the buffer
    #: (its deltas now wait inside the strategy).
    stepped: bool = True


class RoundCoordinator:
    """Admission and round closing for one task.

    Parameters
    ----------
    task
        Task name; updates for another task are rejected (``wrong_task``).
    keys
        Registered node public keys.
    expected
        ``name -> (shape, dtype)`` of the task model; updates must match exactly.
    strategy
        The aggregation rule (:func:`pipeline.server.strategies.make_strategy`).
    policy
        When rounds close.
    """

    def __init__(
        self,
        *,
        task: str,
        keys: KeyRegistry,
        expected: Mapping[str, tuple[tuple[int, ...], str]],
        strategy: Strategy,
        policy: RoundPolicy,
        max_bytes: int = 16 * 2**20,
    ) -> None:
        self.task = task
        self.keys = keys
        self.expected = dict(expected)
        self.strategy = strategy
        self.policy = policy
        self.max_bytes = max_bytes
        self.version = 0
        self.opened_at: float | None = None
        self.buffer: dict[str, str] = {}  # update key -> sha256 of its bytes
        # digests of updates already aggregated, so a late redelivery is a silent duplicate
        self.recent: dict[str, str] = {}
        self.recent_limit = 4096
        self.admission = UpdateAdmission(max_staleness=policy.staleness_limit)
        # decoded (verified) updates of the open round, so aggregate() need not decode them again
        self._decoded: dict[str, ModelUpdate] = {}
        self._offered: dict[str, bytes] = {}  # the bytes objects the decoded updates came from
        self._strategy_state: Any = _UNSET  # JSON form of the strategy's state, once per round

    # ------------------------------------------------------------------ admission
    def check(self, data: bytes) -> Checked:
        """Decode, verify and hash one encoded update without admitting it.

        Reads nothing that admission changes, so it may run in another thread while the event
        loop admits earlier updates (the Ed25519 check, zstd and SHA-256 release the GIL). Pass
        the result to :meth:`offer`.

        Raises
        ------
        pipeline.codec.CodecError
            ``reason`` as for :func:`pipeline.codec.decode_update`, or ``wrong_task``.
        """
        from pipeline.codec import CodecError

        update = decode_update(data, keys=self.keys, expected=self.expected, max_bytes=self.max_bytes)
        if update.task != self.task:
            raise CodecError("wrong_task", f"update is for task {update.task!r}, aggregator runs {self.task!r}")
        return Checked(data, update, hashlib.sha256(data).hexdigest(), self)

    def offer(self, data: bytes | Checked, *, now: float) -> Offer:
        """Verify, decode and admit one encoded update (or one :meth:`check` already verified).

        Raises
        ------
        pipeline.codec.CodecError
            With ``reason`` for the DLQ: bad frame or signature, unknown node, wrong shapes,
            non-finite values, ``wrong_task``, ``replay``, ``stale``, ``future_version``.
        ValueError
            ``data`` is a :class:`Checked` from another coordinator.
        """
        from pipeline.codec import ReplayError

        if isinstance(data, Checked):
            if data.checker is not self:
                raise ValueError("a Checked update must come from this coordinator's check()")
            checked = data
        else:
            checked = self.check(data)
        update, digest, data = checked.update, checked.sha256, checked.data
        key = update_key(update.task, update.node_id, update.round)
        known = self.buffer.get(key) or self.recent.get(key)
        if known is not None:
            if known == digest:
                return Offer(key, update, self.version - update.base_version, duplicate=True)
            raise ReplayError("replay", f"node {update.node_id!r} round {update.round} already admitted with other bytes")
        staleness = self.admission.admit(update, current_version=self.version)
        self.buffer[key] = digest
        self._decoded[key] = update
        if isinstance(data, bytes):  # immutable: the same object later means the same bytes
            self._offered[key] = data
        if self.opened_at is None:
            self.opened_at = now
        return Offer(key, update, staleness)

    def drop_node(self, node_id: str) -> list[str]:
        """Take every buffered update of ``node_id`` out of the open round (the node was
        revoked); returns their keys. They may not be offered again while the node's key stays
        out of the registry.

        Examples
        --------
        >>> # for key in coord.drop_node("akl-01"): send stored[key] to the DLQ as "revoked"
        """
        keys = [k for k, u in self._decoded.items() if u.node_id == node_id]
        keys += [k for k in self.buffer if k not in keys and k.split("|")[1:2] == [node_id]]
        for key in keys:
            self.forget(key)
        if not self.buffer:
            self.opened_at = None
        return sorted(keys)

    def forget(self, key: str) -> None:
        """Drop a buffered key whose bytes the caller could not keep (it may be offered again)."""
        self.buffer.pop(key, None)
        self._decoded.pop(key, None)
        self._offered.pop(key, None)

    def resume(self, stored: Mapping[str, bytes], *, now: float) -> list[str]:
        """Re-admit the stored bytes of the open round after :meth:`load_state_dict`.

        Offers every entry of ``stored`` (update key -> bytes, as the caller kept them) in key
        order, so a state saved when the round opened plus the bytes saved per update give back
        the buffer and replay memory of before a crash. Returns the keys the caller should
        delete: updates already aggregated into a published version, and bytes that no longer
        pass admission (logged as a warning).

        Examples
        --------
        >>> # coord.load_state_dict(saved); drop = coord.resume(kept_bytes, now=time.time())
        """
        from pipeline.codec import CodecError

        drop: list[str] = []
        for key in sorted(stored):
            data = stored[key]
            if self.recent.get(key) == hashlib.sha256(data).hexdigest():
                drop.append(key)  # aggregated before the restart; its deletion was lost
                continue
            try:
                offer = self.offer(data, now=now)
            except CodecError as err:
                log.warning("stored update %s is no longer admissible (%s); dropping it",
                            key, err.reason)
                drop.append(key)
                continue
            if offer.key != key:
                log.warning("stored bytes under %s are update %s; dropping the copy", key, offer.key)
                drop.append(key)
        return drop

    # ------------------------------------------------------------------ closing
    def due(self, *, now: float) -> bool:
        """True when the buffered updates should be aggregated now."""
        n = len(self.buffer)
        if n == 0:
            return False
        if self.policy.mode == "async":
            return n >= self.policy.buffer_size
        if n >= self.policy.quorum:
            return True
        opened = self.opened_at if self.opened_at is not None else now
        return now - opened >= self.policy.deadline_s and n >= self.policy.min_quorum

    def aggregate(self, global_weights: Weights, stored: Mapping[str, bytes]) -> RoundOutcome:
        """Aggregate the buffered updates (their bytes in ``stored``) into version ``version+1``.

        Keys of the buffer missing from ``stored`` are dropped from the buffer and left out (the
        caller lost them; at-least-once delivery brings them back). Call :meth:`commit` after the
        new model is published (or, when :attr:`RoundOutcome.stepped` is false, without
        publishing: the version did not change).

        Examples
        --------
        >>> import numpy as np
        >>> from pipeline.codec import KeyRegistry, encode_update, generate_keypair
        >>> from pipeline.server.strategies import make_strategy
        >>> from schemas.update import ModelUpdate, PrivacyStamp
        >>> keys, signers = KeyRegistry(), {}
        >>> for node in ("a", "b", "c"):
        ...     signers[node], public = generate_keypair()
        ...     keys.register(node, public)
        >>> coord = RoundCoordinator(task="t", keys=keys, expected={"w": ((2,), "float32")},
        ...                          strategy=make_strategy("fedbuff", buffer_size=2),
        ...                          policy=RoundPolicy(mode="async", buffer_size=1))
        >>> def update(node, base, value):
        ...     stamp = PrivacyStamp(epsilon=1.0, delta=1e-5, noise_multiplier=1.0,
        ...                          sample_rate=0.1, steps=1, accountant="rdp")
        ...     u = ModelUpdate(task="t", node_id=node, round=1, base_version=base,
        ...                     num_examples=10, metrics={}, privacy=stamp,
        ...                     delta={"w": np.full(2, value, np.float32)})
        ...     return encode_update(u, private_key=signers[node], compression="float32")
        >>> weights, stored = {"w": np.zeros(2, np.float32)}, {}
        >>> for node, value in (("a", 1.0), ("b", 3.0)):
        ...     offer = coord.offer(data := update(node, 0, value), now=0.0)
        ...     stored[offer.key] = data
        ...     outcome = coord.aggregate(weights, stored)
        ...     print(node, outcome.stepped, outcome.version, outcome.weights["w"].tolist())
        ...     weights = outcome.weights
        ...     for key in coord.commit(outcome):
        ...         del stored[key]
        a False 0 [0.0, 0.0]
        b True 1 [2.0, 2.0]
        """
        results: list[ClientResult] = []
        eps: dict[str, float] = {}
        sizes: dict[str, int] = {}
        delta = 0.0
        total = 0
        metric_sums: dict[str, float] = {}
        metric_weights: dict[str, int] = {}
        for key in sorted(self.buffer):
            data = stored.get(key)
            if data is None:
                log.warning("buffered update %s has no stored bytes; dropping it", key)
                continue
            u = self._decoded.get(key)
            if u is None or (data is not self._offered.get(key)
                             and hashlib.sha256(data).hexdigest() != self.buffer[key]):
                # not offered in this process (restart) or other bytes than offered: verify them
                u = decode_update(data, keys=self.keys, expected=self.expected,
                                  max_bytes=self.max_bytes)
            tau = max(0, self.version - u.base_version)
            results.append(ClientResult(node_id=u.node_id, delta=dict(u.delta),
                                        num_examples=u.num_examples, staleness=tau))
            eps[u.node_id] = max(eps.get(u.node_id, 0.0), u.privacy.epsilon)
            delta = max(delta, u.privacy.delta)
            sizes[u.node_id] = len(data)
            total += u.num_examples
            for name, value in u.metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * u.num_examples
                metric_weights[name] = metric_weights.get(name, 0) + u.num_examples
        new = self.strategy.aggregate(global_weights, results)
        self._strategy_state = _UNSET
        # a buffering strategy (FedBuff) says how many server steps this call applied
        stepped = bool(results) and int(getattr(self.strategy, "last_steps", 1)) > 0
        for name, arr in new.items():
            if not np.isfinite(arr).all():
                raise ValueError(f"aggregate of tensor {name!r} is not finite")
        return RoundOutcome(
            version=self.version + 1 if stepped else self.version, weights=new, stepped=stepped,
            participants=tuple(r.node_id for r in results), num_examples=total,
            epsilon_by_node=eps, delta=delta, update_bytes=sizes,
            # the nodes' own reported metrics, example-weighted (the aggregator holds no data)
            metrics={k: metric_sums[k] / metric_weights[k] for k in sorted(metric_sums)
                     if metric_weights[k] > 0},
        )

    def commit(self, outcome: RoundOutcome) -> list[str]:
        """Advance to ``outcome.version``; returns the buffer keys the caller may now delete."""
        done = sorted(self.buffer)
        self.recent.update(self.buffer)
        while len(self.recent) > self.recent_limit:
            del self.recent[next(iter(self.recent))]
        self.version = outcome.version
        self.buffer = {}
        self._decoded = {}
        self._offered = {}
        self.opened_at = None
        return done

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (for a changelog-backed table)."""
        if self._strategy_state is _UNSET:
            self._strategy_state = None
            if hasattr(self.strategy, "state_dict"):
                self._strategy_state = _jsonable(self.strategy.state_dict())
        strategy_state = self._strategy_state
        return {
            "kind": _STATE_KIND, "task": self.task, "version": self.version,
            "opened_at": self.opened_at, "buffer": dict(self.buffer), "recent": dict(self.recent),
            "admission": self.admission.state_dict(), "strategy": strategy_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``ValueError`` for another kind or task."""
        if state.get("kind") != _STATE_KIND:
            raise ValueError(f"not a round-coordinator state: {state.get('kind')!r}")
        if state.get("task") != self.task:
            raise ValueError(f"state is for task {state.get('task')!r}, not {self.task!r}")
        self.version = int(state["version"])
        self.opened_at = state["opened_at"]
        self.buffer = dict(state["buffer"])
        self._decoded = {}
        self._offered = {}
        self._strategy_state = _UNSET
        self.recent = dict(state.get("recent", {}))
        self.admission.load_state_dict(state["admission"])
        if state.get("strategy") is not None and hasattr(self.strategy, "load_state_dict"):
            self.strategy.load_state_dict(_from_jsonable(state["strategy"]))


def _zstd_compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=1, write_content_size=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        # the raw little-endian bytes, zstd-compressed and base64'd: exact, and ~100x cheaper to
        # encode than a list of floats (a FedBuff buffer is one float64 copy of the model, often
        # all zeros right after a server step)
        arr = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        packed = _zstd_compressor().compress(arr.tobytes())
        return {"__ndarray_zb64__": base64.b64encode(packed).decode("ascii"),
                "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray_zb64__" in obj:
            dtype = np.dtype(obj["dtype"])
            shape = [int(d) for d in obj["shape"]]
            size = dtype.itemsize * math.prod(shape)
            raw = zstandard.ZstdDecompressor().decompress(
                base64.b64decode(obj["__ndarray_zb64__"], validate=True), max_output_size=size)
            if len(raw) != size:
                raise ValueError(f"stored array holds {len(raw)} bytes, expected {size}")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if "__ndarray__" in obj:  # the list form of earlier states
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj
