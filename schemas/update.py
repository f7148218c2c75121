"""Wire types for federated model updates (``edgeveil.updates`` topic), schema version 1.

A :class:`ModelUpdate` is what an edge node publishes after a round of local DP training: the
model delta (``local - global``) plus the header an aggregator needs to admit it — who sent it,
for which task, round and global version, on how many examples, and the differential-privacy
stamp (ε, δ, noise multiplier, sample rate, steps, accountant) that privacy invariant 4 requires.

This module holds types only. The binary encoding (compression, Ed25519 signature, strict
decoding) lives in ``pipeline.codec``; this module imports nothing from this repository.

The JSON header that travels on the wire is described by :class:`UpdateHeader` and
:class:`TensorSpec`; :func:`write_json_schemas` generates the JSON Schema (draft 2020-12) files
committed under ``schemas/jsonschema/`` from these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Accountant",
    "ModelUpdate",
    "PrivacyStamp",
    "TensorCompression",
    "TensorSpec",
    "UpdateHeader",
    "NAME_PATTERN",
    "json_schema",
    "valid_name",
    "write_json_schemas",
]

SCHEMA_VERSION = 1
"""Version of the :class:`ModelUpdate` header carried in every encoded update."""

Accountant = Literal["prv", "rdp"]
TensorCompression = Literal["float32", "float16", "int8"]

_NAME_RE = r"^[A-Za-z0-9_.:/-]{1,128}$"
NAME_PATTERN = _NAME_RE
"""Regular expression every node id, task and tensor name matches."""
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def valid_name(value: object) -> bool:
    """True if ``value`` is a valid node id, task or tensor name (``NAME_PATTERN``).

    Examples
    --------
    >>> valid_name("fc1.weight"), valid_name("a b"), valid_name("")
    (True, False, False)
    """
    return isinstance(value, str) and _NAME_PATTERN.fullmatch(value) is not None


def _meta(description: str, **constraints: Any) -> dict[str, Any]:
    return {"description": description, "json": constraints}


@dataclass(frozen=True)
class PrivacyStamp:
    """The differential-privacy guarantee a node claims for one update.

    Parameters
    ----------
    epsilon : float
        Cumulative ε spent by the node on this task, at ``delta``.
    delta : float
        The δ the ε is stated at, in ``[0, 1)``.
    noise_multiplier : float
        σ of the DP-SGD Gaussian noise, relative to the clipping norm.
    sample_rate : float
        Poisson sampling rate q of the local DP-SGD loader, in ``(0, 1]``.
    steps : int
        Optimizer steps taken in this round.
    accountant : {"prv", "rdp"}
        Which Opacus accountant computed ``epsilon``.

    Examples
    --------
    >>> PrivacyStamp(epsilon=1.2, delta=1e-5, noise_multiplier=1.1, sample_rate=0.01,
    ...              steps=100, accountant="rdp").accountant
    'rdp'
    """

    epsilon: float = field(metadata=_meta("cumulative epsilon at delta", minimum=0))
    delta: float = field(
        metadata=_meta("delta of the (epsilon, delta) guarantee", minimum=0, exclusiveMaximum=1)
    )
    noise_multiplier: float = field(metadata=_meta("DP-SGD noise multiplier sigma", minimum=0))
    sample_rate: float = field(metadata=_meta("Poisson sample rate q", minimum=0, maximum=1))
    steps: int = field(metadata=_meta("optimizer steps in this round", minimum=0))
    accountant: Accountant = field(metadata=_meta("Opacus accountant that computed epsilon"))

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta", "noise_multiplier", "sample_rate"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"PrivacyStamp.{name} must be a finite number >= 0, got {value!r}")
        if self.delta >= 1:
            raise ValueError(f"PrivacyStamp.delta must be < 1, got {self.delta!r}")
        if self.sample_rate > 1:
            raise ValueError(f"PrivacyStamp.sample_rate must be <= 1, got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"PrivacyStamp.steps must be an int >= 0, got {self.steps!r}")
        if self.accountant not in ("prv", "rdp"):
            raise ValueError(
                f"PrivacyStamp.accountant must be 'prv' or 'rdp', got {self.accountant!r}"
            )


@dataclass(frozen=True, eq=False)
class ModelUpdate:
    """One node's model update for one round of one task.

    ``eq=False``: updates hold numpy arrays, so equality is identity; compare fields explicitly.

    Parameters
    ----------
    node_id : str
        Sender; its Ed25519 public key must be registered with the aggregator.
    task : str
        Task name, e.g. ``"akl-ped-forecast"``.
    round : int
        The node's round counter for this task; ``(node_id, round)`` identifies an update.
    base_version : int
        Version of the global model the node trained from (drives staleness).
    num_examples : int
        Training examples behind this update (FedAvg weight).
    metrics : Mapping[str, float]
        Local training metrics, finite floats.
    privacy : PrivacyStamp
        The node's DP stamp.
    delta : Mapping[str, numpy.ndarray]
        Ordered ``name -> float32 array`` of ``local - global`` weights.
    schema_version : int
        :data:`SCHEMA_VERSION`.
    created_at : float
        Unix seconds.

    Examples
    --------
    >>> import numpy as np
    >>> stamp = PrivacyStamp(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.1,
    ...                      steps=10, accountant="rdp")
    >>> u = ModelUpdate(node_id="n1", task="t", round=0, base_version=0, num_examples=32,
    ...                 metrics={"loss": 0.5}, privacy=stamp,
    ...                 delta={"w": np.zeros((2, 2), np.float32)})
    >>> u.delta["w"].shape
    (2, 2)
    """

    node_id: str
    task: str
    round: int
    base_version: int
    num_examples: int
    metrics: Mapping[str, float]
    privacy: PrivacyStamp
    delta: Mapping[str, np.ndarray]
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0

    def __post_init__(self) -> None:
        for name in ("node_id", "task"):
            value = getattr(self, name)
            if not isinstance(value, str) or _NAME_PATTERN.fullmatch(value) is None:
                raise ValueError(f"ModelUpdate.{name} must match {_NAME_RE}, got {value!r}")
        for name in ("round", "base_version", "num_examples", "schema_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ModelUpdate.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.privacy, PrivacyStamp):
            raise ValueError("ModelUpdate.privacy must be a PrivacyStamp")
        created = self.created_at
        if not isinstance(created, (int, float)) or not math.isfinite(created) or created < 0:
            raise ValueError(
                f"ModelUpdate.created_at must be finite unix seconds >= 0, got {created!r}"
            )


@dataclass(frozen=True)
class TensorSpec:
    """How one tensor of the delta is laid out in the compressed payload.

    Examples
    --------
    >>> TensorSpec(name="fc.weight", shape=(4, 3), dtype="float32", compression="int8",
    ...            scale=0.01).shape
    (4, 3)
    """

    name: str = field(metadata=_meta("parameter name", pattern=_NAME_RE))
    shape: tuple[int, ...] = field(metadata=_meta("tensor shape", maxItems=8))
    dtype: Literal["float32"] = field(metadata=_meta("dtype of the decoded tensor"))
    compression: TensorCompression = field(metadata=_meta("element encoding in the payload"))
    scale: float | None = field(
        default=None,
        metadata=_meta(
            "int8 only: decoded = int8 * scale (symmetric per-tensor); null otherwise", minimum=0
        ),
    )


@dataclass(frozen=True)
class UpdateHeader:
    """The JSON header of an encoded :class:`ModelUpdate`: every field but ``delta``, plus tensors.

    The wire frame is ``b"EVU" | format version (1 byte) | node_id (u16 length + UTF-8) |
    header (u32 length + canonical JSON of this dataclass) | payload (u32 length + zstd of the
    concatenated little-endian tensor elements, in ``tensors`` order) | Ed25519 signature (64
    bytes) over everything before it``.

    Examples
    --------
    >>> sorted(f.name for f in dataclasses.fields(UpdateHeader))[:3]
    ['base_version', 'created_at', 'metrics']
    """

    schema_version: int = field(metadata=_meta("ModelUpdate schema version", minimum=1))
    node_id: str = field(metadata=_meta("sender node id", pattern=_NAME_RE))
    task: str = field(metadata=_meta("task name", pattern=_NAME_RE))
    round: int = field(metadata=_meta("node round counter", minimum=0))
    base_version: int = field(metadata=_meta("global model version trained from", minimum=0))
    num_examples: int = field(metadata=_meta("training examples behind the update", minimum=0))
    metrics: Mapping[str, float] = field(metadata=_meta("local metrics, finite floats"))
    privacy: PrivacyStamp = field(metadata=_meta("differential-privacy stamp"))
    created_at: float = field(metadata=_meta("unix seconds", minimum=0))
    tensors: tuple[TensorSpec, ...] = field(
        metadata=_meta("payload layout, in payload order", maxItems=4096)
    )
    payload_size: int = field(metadata=_meta("bytes of the decompressed payload", minimum=0))


# --------------------------------------------------------------------------- JSON Schema


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _type_schema(args[0], defs)
        if args[0] is int:
            item["minimum"] = 0
        return {"type": "array", "items": item}
    if origin in (Mapping, dict) or origin is typing.get_origin(Mapping[str, int]):
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # reserve before recursing
            defs[name] = _dataclass_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _dataclass_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name], defs)
        meta = f.metadata
        if "description" in meta:
            schema = {"description": meta["description"], **schema}
        constraints = dict(meta.get("json", {}))
        if constraints:
            if "anyOf" in schema:  # constrain the non-null branch
                schema["anyOf"] = [
                    {**s, **constraints} if s.get("type") != "null" else s for s in schema["anyOf"]
                ]
            else:
                schema.update(constraints)
        props[f.name] = schema
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    return {
        "type": "object",
        "title": cls.__name__,
        "description": doc,
        "properties": props,
        "required": [f.name for f in dataclasses.fields(cls)],
        "additionalProperties": False,
    }


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of the encoded :class:`ModelUpdate` envelope.

    The envelope is binary; the schema describes its parts as an object whose ``header`` is the
    JSON header (:class:`UpdateHeader`) and whose binary parts are base64 strings.

    Examples
    --------
    >>> json_schema()["$schema"]
    'https://json-schema.org/draft/2020-12/schema'
    """
    defs: dict[str, Any] = {}
    header_ref = _type_schema(UpdateHeader, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edgeveil.dev/schemas/model_update.v{SCHEMA_VERSION}.schema.json",
        "title": "ModelUpdate",
        "description": (
            "Signed, compressed federated model update (topic edgeveil.updates). Binary frame: "
            "magic 'EVU', format version byte, node_id (u16 length + UTF-8), header (u32 length + "
            "canonical JSON, sorted keys, no spaces), payload (u32 length + zstd frame of the "
            "concatenated little-endian tensor elements in header.tensors order), 64-byte Ed25519 "
            "signature over every preceding byte. All lengths are big-endian."
        ),
        "type": "object",
        "properties": {
            "magic": {"const": "EVU"},
            "format_version": {"type": "integer", "const": 1},
            "node_id": {"type": "string", "pattern": _NAME_RE},
            "header": header_ref,
            "payload": {
                "type": "string",
                "contentEncoding": "base64",
                "contentMediaType": "application/zstd",
                "description": "zstd-compressed tensor elements (bytes)",
            },
            "signature": {
                "type": "string",
                "contentEncoding": "base64",
                "minLength": 88,
                "maxLength": 88,
                "description": "Ed25519 signature (64 bytes) over all preceding bytes",
            },
        },
        "required": ["magic", "format_version", "node_id", "header", "payload", "signature"],
        "additionalProperties": False,
        "$defs": defs,
    }


def write_json_schemas(out_dir: str | Path) -> list[Path]:
    """Write the JSON Schema files for the wire types into ``out_dir`` and return their paths.

    Run ``python -m schemas.generate`` to refresh the committed files under
    ``schemas/jsonschema/``; a test checks the committed files equal the generated ones.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_json_schemas(tempfile.mkdtemp())]
    ['model_update.v1.schema.json']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model_update.v{SCHEMA_VERSION}.schema.json"
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return [path]
