"""Wire types of the other EdgeVeil topics, schema version 1.

=========================  ================================================================
topic                      type
=========================  ================================================================
``edgeveil.models``        :class:`GlobalModel` (binary: header JSON + float32 tensors + ONNX,
                           signed by the aggregator; the codec is ``pipeline.codec.global_model``)
``edgeveil.analytics``     :class:`AnalyticsRecord` (JSON)
``edgeveil.telemetry``     :class:`Telemetry` (JSON)
``edgeveil.dlq``           the rejected message's own bytes as the value, :class:`DlqEntry` as
                           Kafka headers (so nothing is lost and nothing grows past the limit)
=========================  ================================================================

Every JSON message carries ``schema`` (its kind and version) so consumers can refuse what they do
not understand. :func:`write_message_schemas` writes their JSON Schema files (draft 2020-12).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MESSAGES_VERSION",
    "AnalyticsRecord",
    "DlqEntry",
    "GlobalModel",
    "GlobalModelHeader",
    "MessageError",
    "Telemetry",
    "check_fields",
    "write_message_schemas",
]

MESSAGES_VERSION = 1


class MessageError(ValueError):
    """A JSON message that does not match its schema; ``reason`` is a short DLQ string."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def _decode_json(kind: str, data: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MessageError("malformed_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise MessageError("malformed_json", "top level must be an object")
    if doc.get("schema") != f"{kind}.v{MESSAGES_VERSION}":
        raise MessageError("unsupported_schema", f"expected {kind}.v{MESSAGES_VERSION}, got {doc.get('schema')!r}")
    return doc


def _conforms(value: Any, tp: Any) -> bool:
    """Whether a decoded JSON ``value`` has type ``tp`` (str, int, float, bool, list[X],
    dict[str, X], unions with None). Floats must be finite; a bool is not a number."""
    import math
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(
            _conforms(a, k) and _conforms(b, v) for a, b in value.items())
    return True


def check_fields(cls: type, doc: Mapping[str, Any]) -> None:
    """Raise :class:`MessageError` (``bad_fields``) unless ``doc`` has exactly ``cls``'s
    dataclass fields (those with defaults may be absent), each of its declared type.

    Examples
    --------
    >>> check_fields(DlqEntry, {"reason": "r", "detail": "d", "source_topic": "t",
    ...                         "partition": "0", "offset": 1, "agent": "a"})
    Traceback (most recent call last):
    ...
    schemas.messages.MessageError: bad_fields: DlqEntry.partition must be int, got str
    """
    import dataclasses
    import typing

    if not isinstance(doc, Mapping):
        raise MessageError("bad_fields", f"{cls.__name__} must be an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise MessageError("bad_fields", f"{cls.__name__} has no field(s) {unknown}")
    for name, f in fields.items():
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MessageError("bad_fields", f"{cls.__name__}.{name} is missing")
            continue
        if not _conforms(doc[name], hints[name]):
            want = getattr(hints[name], "__name__", str(hints[name]))
            raise MessageError("bad_fields", f"{cls.__name__}.{name} must be {want}, got "
                               f"{type(doc[name]).__name__}")


class _JsonMessage:
    KIND = ""

    def encode(self) -> bytes:
        doc = {"schema": f"{self.KIND}.v{MESSAGES_VERSION}", **asdict(self)}  # type: ignore[call-overload]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Any:
        doc = _decode_json(cls.KIND, data)
        doc.pop("schema")
        check_fields(cls, doc)  # types too: a consumer must not meet a str where it adds numbers
        try:
            return cls(**doc)
        except TypeError as exc:
            raise MessageError("bad_fields", str(exc)) from None


@dataclass(frozen=True)
class Telemetry(_JsonMessage):
    """One heartbeat of an edge node or worker.

    Examples
    --------
    >>> t = Telemetry(node_id="akl-01", fps=31.5, frames_in=100, fail_closed=0, epsilon=0.4,
    ...               cpu_percent=55.0, rss_bytes=2**28, model_version=3)
    >>> Telemetry.decode(t.encode()) == t
    True
    """

    KIND = "telemetry"
    node_id: str
    fps: float
    frames_in: int
    fail_closed: int
    epsilon: float
    cpu_percent: float
    rss_bytes: int
    model_version: int
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AnalyticsRecord(_JsonMessage):
    """Anonymized per-interval counts of one node, and its forecast of the next interval.

    ``counts`` maps class name to the number seen (``{"person": 12}``); no pixels, no boxes.

    Examples
    --------
    >>> r = AnalyticsRecord(node_id="akl-01", interval_start=0.0, interval_seconds=3600,
    ...                     counts={"person": 12}, forecast=14.2, model_version=3)
    >>> AnalyticsRecord.decode(r.encode()).counts
    {'person': 12}
    """

    KIND = "analytics"
    node_id: str
    interval_start: float
    interval_seconds: float
    counts: dict[str, int]
    forecast: float | None = None
    model_version: int | None = None


@dataclass(frozen=True)
class DlqEntry:
    """Why a message was rejected, carried as Kafka headers next to the untouched payload.

    Examples
    --------
    >>> e = DlqEntry(reason="bad_signature", detail="Ed25519 signature does not match",
    ...              source_topic="edgeveil.updates", partition=0, offset=7, agent="aggregator")
    >>> DlqEntry.from_headers(e.to_headers()) == e
    True
    """

    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    agent: str
    ts: float = field(default_factory=time.time)

    def to_headers(self) -> list[tuple[str, bytes]]:
        return [(f"edgeveil-{k}", str(v).encode()) for k, v in asdict(self).items()]

    @classmethod
    def from_headers(cls, headers: Mapping[str, bytes] | list[tuple[str, bytes]]) -> DlqEntry:
        items = dict(headers.items() if isinstance(headers, Mapping) else headers)
        get = {k.removeprefix("edgeveil-"): bytes(v).decode() for k, v in items.items()
               if k.startswith("edgeveil-")}
        try:
            return cls(reason=get["reason"], detail=get["detail"], source_topic=get["source_topic"],
                       partition=int(get["partition"]), offset=int(get["offset"]),
                       agent=get["agent"], ts=float(get["ts"]))
        except (KeyError, ValueError) as exc:
            raise MessageError("bad_dlq_headers", str(exc)) from None


@dataclass(frozen=True)
class GlobalModelHeader:
    """The JSON header of a global model message (everything but the tensors and ONNX bytes)."""

    task: str
    version: int
    round: int
    participants: list[str]
    num_examples: int
    strategy: str
    metrics: dict[str, float]
    #: node id -> cumulative ε of the update it contributed (at ``delta``)
    epsilon_by_node: dict[str, float]
    delta: float
    created_at: float
    #: node id -> encoded update size in bytes
    update_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """A global model as published on ``edgeveil.models`` (compacted, key = task).

    ``weights`` are float32 arrays by parameter name; ``onnx`` is an ONNX export of the same
    weights that edges load into onnxruntime and hot-swap.
    """

    header: GlobalModelHeader
    weights: Mapping[str, np.ndarray]
    onnx: bytes = b""


def _dataclass_schema(cls: type) -> dict[str, Any]:
    from pydantic import TypeAdapter

    return TypeAdapter(cls).json_schema()


def write_message_schemas(out_dir: str | Path) -> list[Path]:
    """Write JSON Schema files for the JSON messages and the global-model header."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cls in (("telemetry", Telemetry), ("analytics", AnalyticsRecord),
                      ("dlq_entry", DlqEntry), ("global_model_header", GlobalModelHeader)):
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"https://edgeveil.dev/schemas/{name}.v{MESSAGES_VERSION}.schema.json",
                  **_dataclass_schema(cls)}
        if cls in (Telemetry, AnalyticsRecord):
            schema.setdefault("properties", {})["schema"] = {"const": f"{cls.KIND}.v{MESSAGES_VERSION}"}
            schema.setdefault("required", []).append("schema")
        path = out / f"{name}.v{MESSAGES_VERSION}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
