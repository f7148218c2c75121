"""Wire type of ``edgeveil.control``: staged-rollout commands, schema version 1.

``edgeveil.control`` is compacted with key = task, so only a task's newest message is sure to
survive: every :class:`RolloutControl` therefore carries the *whole* desired state of the task's
rollout (which version the canary nodes serve, which version everyone else serves), never a
delta against the previous one. ``seq`` grows by one per command; an edge refuses a message whose
``seq`` is not above the last one it applied, so an old command replayed onto the topic changes
nothing.

On the wire the JSON below is wrapped in a signed frame (``pipeline.serving.rollout``: magic, JSON,
Ed25519 signature by the federation's model authority, the key that signs global models).
This module holds the type only and imports nothing from this repository.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.messages import MESSAGES_VERSION, MessageError

__all__ = ["ROLLOUT_ACTIONS", "RolloutControl", "write_control_schema"]

#: what an operator can ask for
ROLLOUT_ACTIONS = ("promote", "rollback")


@dataclass(frozen=True)
class RolloutControl:
    """The desired serving state of one task's fleet.

    A node listed in ``canary_nodes`` serves ``canary_version``; every other node serves
    ``stable_version``, or the newest model it has verified when ``stable_version`` is None.

    Examples
    --------
    >>> c = RolloutControl(task="pedestrian-forecast", seq=2, action="promote", stable_version=4,
    ...                    canary_version=5, canary_nodes=["akl-a"], canary_percent=10.0,
    ...                    issued_at=1.0, issuer="ops")
    >>> RolloutControl.decode(c.encode()) == c
    True
    >>> c.version_for("akl-a"), c.version_for("akl-b")
    (5, 4)
    """

    KIND = "rollout"
    task: str
    seq: int
    action: str
    stable_version: int | None
    canary_version: int | None = None
    canary_nodes: list[str] = field(default_factory=list)
    #: what the operator asked for with ``--to N%`` (None when nodes were named)
    canary_percent: float | None = None
    issued_at: float = field(default_factory=time.time)
    issuer: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.task, str) or not self.task:
            problems.append("task must be a non-empty string")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 1:
            problems.append(f"seq must be an integer >= 1, got {self.seq!r}")
        if self.action not in ROLLOUT_ACTIONS:
            problems.append(f"action must be one of {ROLLOUT_ACTIONS}, got {self.action!r}")
        for name in ("stable_version", "canary_version"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                problems.append(f"{name} must be an integer >= 0 or null, got {v!r}")
        nodes = self.canary_nodes
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            problems.append("canary_nodes must be a list of node ids")
        elif bool(nodes) != (self.canary_version is not None):
            problems.append("canary_version and canary_nodes go together")
        if problems:
            raise MessageError("bad_fields", "; ".join(problems))

    def version_for(self, node_id: str) -> int | None:
        """The version ``node_id`` should serve (None: the newest one it verified)."""
        if self.canary_version is not None and node_id in self.canary_nodes:
            return self.canary_version
        return self.stable_version

    def encode(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the bytes that get signed."""
        doc = {"schema": f"{self.KIND}.v{MESSAGES_VERSION}", **asdict(self)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> RolloutControl:
        """Parse :meth:`encode` output; :class:`~schemas.messages.MessageError` if malformed."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MessageError("malformed_json", str(exc)) from None
        if not isinstance(doc, dict):
            raise MessageError("malformed_json", "top level must be an object")
        if doc.pop("schema", None) != f"{cls.KIND}.v{MESSAGES_VERSION}":
            raise MessageError("unsupported_schema", f"expected {cls.KIND}.v{MESSAGES_VERSION}")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise MessageError("bad_fields", str(exc)) from None


def write_control_schema(out_dir: str | Path) -> Path:
    """Write ``rollout_control.v1.schema.json`` (draft 2020-12) into ``out_dir``."""
    from pydantic import TypeAdapter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edgeveil.dev/schemas/rollout_control.v{MESSAGES_VERSION}.schema.json",
        **TypeAdapter(RolloutControl).json_schema(),
    }
    schema["properties"]["schema"] = {"const": f"{RolloutControl.KIND}.v{MESSAGES_VERSION}"}
    schema["properties"]["action"] = {"enum": list(ROLLOUT_ACTIONS), "title": "Action",
                                      "type": "string"}
    schema["properties"]["seq"]["minimum"] = 1
    schema.setdefault("required", []).append("schema")
    path = out / f"rollout_control.v{MESSAGES_VERSION}.schema.json"
    path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    return path
