"""Staged model rollout: who serves which global version, and the signed control messages.

Rules (one implementation, used by the ``edgeveil model`` CLI, the edge workers and the fleet
page):

* No control message yet: every node serves the newest global model it has verified (what a
  federation does while it trains).
* ``promote V --to 10%`` (or ``--to node …``): a canary group serves ``V``; every other node keeps
  the stable version (the previous command's stable version, else ``V - 1``). The canary group for
  a percentage is the ``ceil(p × n)`` nodes (at least one) with the smallest SHA-256 of
  ``task/node``: stable across commands, so 10 % then 50 % widens the same group.
* ``promote V --to all`` (or 100 %): every node serves ``V``.
* ``rollback V``: every node serves ``V`` (a version it verified before; it is verified again,
  signature, shapes, ONNX load and a probe inference, before it serves).

A command is a :class:`~schemas.control.RolloutControl` carrying the task's whole desired state
and a sequence number one above the previous command's; :func:`encode_control` signs it with
the federation's model authority key (the key that signs global models) and
:func:`decode_control` refuses anything whose signature does not verify. :func:`check_sequence`
refuses a command that is not newer than the one in force (a replayed old command).

Examples
--------
>>> from pipeline.codec import generate_keypair
>>> priv, pub = generate_keypair()
>>> nodes = [f"n{i}" for i in range(10)]
>>> c = promote(None, task="t", version=3, nodes=nodes, target=["10%"], issued_at=0.0)
>>> (c.seq, c.stable_version, c.canary_version, len(c.canary_nodes))
(1, 2, 3, 1)
>>> decode_control(encode_control(c, private_key=priv), public_key=pub) == c
True
>>> back = rollback(c, task="t", version=2, issued_at=1.0)
>>> (back.seq, back.stable_version, back.canary_nodes)
(2, 2, [])
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

from pipeline.codec import sign, verify
from pipeline.codec.exceptions import CodecError
from schemas.control import RolloutControl
from schemas.messages import MessageError

__all__ = [
    "CONTROL_MAGIC",
    "ControlError",
    "canary_group",
    "check_sequence",
    "decode_control",
    "encode_control",
    "promote",
    "resolve_target",
    "rollback",
    "served_version",
]

CONTROL_MAGIC = b"EVC\x01"
_SIG = 64
_MAX_BYTES = 1 << 20


class ControlError(CodecError):
    """A control message that must not be applied; ``reason`` goes on the DLQ.

    Reasons: ``bad_magic``, ``truncated``, ``too_large``, ``bad_signature``, ``bad_fields``
    (and the other :class:`~schemas.messages.MessageError` reasons), ``wrong_task``,
    ``stale_control`` (not newer than the command in force).
    """

    default_reason = "bad_control"


def encode_control(control: RolloutControl, *, private_key: bytes) -> bytes:
    """``CONTROL_MAGIC | u32 length | canonical JSON | Ed25519 signature over all before it``."""
    body = control.encode()
    frame = CONTROL_MAGIC + struct.pack(">I", len(body)) + body
    return frame + sign(frame, private_key=private_key)


def decode_control(data: bytes, *, public_key: bytes) -> RolloutControl:
    """Verify and parse a control message; :class:`ControlError` if anything is off."""
    if len(data) > _MAX_BYTES:
        raise ControlError("too_large", f"{len(data)} bytes > {_MAX_BYTES}")
    if len(data) < len(CONTROL_MAGIC) + 4 + _SIG:
        raise ControlError("truncated", f"only {len(data)} bytes")
    if data[:4] != CONTROL_MAGIC:
        raise ControlError("bad_magic", f"expected {CONTROL_MAGIC!r}, got {bytes(data[:4])!r}")
    frame, sig = data[:-_SIG], data[-_SIG:]
    try:
        verify(frame, sig, public_key=public_key)
    except CodecError as err:
        raise ControlError(err.reason, err.detail) from None
    (n,) = struct.unpack(">I", frame[4:8])
    if 8 + n != len(frame):
        raise ControlError("truncated", f"body of {n} bytes does not fill the frame")
    try:
        return RolloutControl.decode(frame[8:])
    except MessageError as err:
        raise ControlError(err.reason, err.detail) from None


def check_sequence(current: RolloutControl | None, new: RolloutControl, *, task: str) -> None:
    """Raise :class:`ControlError` unless ``new`` is for ``task`` and newer than ``current``.

    Examples
    --------
    >>> a = RolloutControl(task="t", seq=2, action="rollback", stable_version=1)
    >>> check_sequence(None, a, task="t")
    >>> try:
    ...     check_sequence(a, a, task="t")
    ... except ControlError as err:
    ...     print(err.reason)
    stale_control
    """
    if new.task != task:
        raise ControlError("wrong_task", f"control for task {new.task!r}, this fleet runs {task!r}")
    if current is not None and new.seq <= current.seq:
        raise ControlError("stale_control",
                           f"seq {new.seq} is not above the applied seq {current.seq}")


def served_version(control: RolloutControl | None, node_id: str, *, latest: int | None) -> int | None:
    """The version ``node_id`` should serve, given the command in force and the newest verified
    version (``None``: nothing verified yet).

    Examples
    --------
    >>> served_version(None, "a", latest=4)
    4
    >>> c = RolloutControl(task="t", seq=1, action="promote", stable_version=3,
    ...                    canary_version=4, canary_nodes=["a"])
    >>> served_version(c, "a", latest=9), served_version(c, "b", latest=9)
    (4, 3)
    """
    if control is None:
        return latest
    wanted = control.version_for(node_id)
    return latest if wanted is None else wanted


def canary_group(nodes: Sequence[str], percent: float, *, task: str) -> list[str]:
    """The first ``ceil(percent/100 × len(nodes))`` nodes (at least one) by SHA-256 of
    ``task/node``, in the federation's node order.

    Examples
    --------
    >>> len(canary_group([f"n{i}" for i in range(21)], 10, task="t"))
    3
    >>> set(canary_group(["a", "b", "c", "d"], 25, task="t")) <= set(canary_group(["a", "b", "c", "d"], 75, task="t"))
    True
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    if not nodes:
        raise ValueError("the federation has no nodes")
    count = max(1, math.ceil(percent / 100 * len(nodes) - 1e-9))
    ranked = sorted(nodes, key=lambda n: hashlib.sha256(f"{task}/{n}".encode()).digest())
    chosen = set(ranked[:count])
    return [n for n in nodes if n in chosen]


def resolve_target(target: Sequence[str], nodes: Sequence[str], *, task: str
                   ) -> tuple[list[str], float | None]:
    """``--to`` values to ``(nodes, percent)``: ``"10%"``, ``"all"``, node ids or 1-based
    positions (comma-separated or repeated).

    Examples
    --------
    >>> resolve_target(["b,3"], ["a", "b", "c"], task="t")
    (['b', 'c'], None)
    >>> resolve_target(["all"], ["a", "b"], task="t")
    (['a', 'b'], 100.0)
    """
    parts = [p.strip() for t in target for p in t.split(",") if p.strip()]
    if not parts:
        raise ValueError("--to needs a percentage (10%), 'all', or node ids")
    if len(parts) == 1 and (parts[0].endswith("%") or parts[0] == "all"):
        text = parts[0]
        try:
            percent = 100.0 if text == "all" else float(text[:-1])
        except ValueError:
            raise ValueError(f"not a percentage: {text!r}") from None
        return canary_group(nodes, percent, task=task), percent
    chosen: list[str] = []
    for p in parts:
        if p in nodes:
            node = p
        elif p.isdigit() and 1 <= int(p) <= len(nodes):
            node = nodes[int(p) - 1]
        else:
            raise ValueError(f"unknown node {p!r}; the federation has {list(nodes)}")
        if node not in chosen:
            chosen.append(node)
    return [n for n in nodes if n in chosen], None


def promote(current: RolloutControl | None, *, task: str, version: int, nodes: Sequence[str],
            target: Sequence[str], issued_at: float, issuer: str = "") -> RolloutControl:
    """The command that makes the ``target`` nodes serve ``version`` (see the module rules)."""
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    group, percent = resolve_target(target, nodes, task=task)
    seq = (current.seq if current else 0) + 1
    if set(group) >= set(nodes):
        return RolloutControl(task=task, seq=seq, action="promote", stable_version=version,
                              canary_percent=percent, issued_at=issued_at, issuer=issuer)
    stable = current.stable_version if current is not None else None
    if stable is None:
        if version == 0:
            raise ValueError("no version below 0 for the other nodes to keep: promote v0 to all")
        stable = version - 1
    if stable == version:
        raise ValueError(f"v{version} is already the stable version every node serves")
    return RolloutControl(task=task, seq=seq, action="promote", stable_version=stable,
                          canary_version=version, canary_nodes=group, canary_percent=percent,
                          issued_at=issued_at, issuer=issuer)


def rollback(current: RolloutControl | None, *, task: str, version: int, issued_at: float,
             issuer: str = "") -> RolloutControl:
    """The command that makes every node serve ``version`` again and ends any canary."""
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    return RolloutControl(task=task, seq=(current.seq if current else 0) + 1, action="rollback",
                          stable_version=version, issued_at=issued_at, issuer=issuer)
