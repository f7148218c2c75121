"""Which verified global model each node of an edge worker serves.

:class:`EdgeModels` is the edge's gate between ``edgeveil.models`` / ``edgeveil.control`` and
inference. A global model is served only after every check passed:

1. the aggregator's Ed25519 signature (:func:`pipeline.codec.global_model.decode_global_model`);
2. every tensor's name and shape against the task's own model (``shape_mismatch``);
3. finite weights (``non_finite``);
4. onnxruntime loads the ONNX and a probe inference gives one finite row per input row
   (``onnx_load``, ``non_finite_output``, ``bad_output_shape``).

A model that fails raises a :class:`~pipeline.codec.CodecError` with that ``reason`` (the agent
puts it on the DLQ) and changes nothing: every node keeps what it served. A correctly signed
model of another task (``edgeveil.models`` is keyed by task) is ignored. A verified model's
signed bytes are kept in ``store_dir``, so a rollback to an older version, or a restarted worker,
verifies those bytes again (all four checks) before serving them.

Which version a node serves comes from :func:`pipeline.serving.rollout.served_version`: the newest
verified version until a signed :class:`~schemas.control.RolloutControl` says otherwise. A node
whose wanted version is not available (not received yet, or refused) keeps serving its current
one: it never serves a model that failed a check.

Examples
--------
>>> import numpy as np, torch
>>> from pipeline.codec import generate_keypair
>>> from pipeline.codec.global_model import encode_global_model
>>> from pipeline.serving.onnx_export import export_onnx
>>> from schemas.messages import GlobalModel, GlobalModelHeader
>>> priv, pub = generate_keypair()
>>> net = torch.nn.Linear(3, 1)
>>> w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
>>> h = GlobalModelHeader(task="t", version=1, round=1, participants=[], num_examples=0,
...                       strategy="fedavg", metrics={}, epsilon_by_node={}, delta=1e-5,
...                       created_at=0.0)
>>> blob = encode_global_model(GlobalModel(h, w, export_onnx(net, example=torch.zeros(1, 3))),
...                            private_key=priv)
>>> models = EdgeModels(task="t", node_ids=["a", "b"], public_key=pub,
...                     expected={k: v.shape for k, v in w.items()},
...                     probe=np.zeros((1, 3), np.float32))
>>> models.admit(blob).header.version
1
>>> models.refresh(), models.version_of("a")
({'a': 1, 'b': 1}, 1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.codec.exceptions import CodecError
from pipeline.codec.global_model import decode_global_model
from pipeline.serving.hotswap import LoadedModel, ModelLoadError, NoModelError, load_onnx
from pipeline.serving.rollout import ControlError, check_sequence, decode_control, served_version
from schemas.control import RolloutControl
from schemas.messages import GlobalModel

log = logging.getLogger(__name__)

__all__ = ["EdgeModels", "ModelRejectedError"]

_CONTROL_FILE = "control.evc"


class ModelRejectedError(CodecError):
    """A signed global model that fails the edge's own checks (``shape_mismatch``,
    ``non_finite``, ``onnx_load``, ``non_finite_output``, ``bad_output_shape``); ``version`` is
    the version it claimed."""

    default_reason = "model_rejected"

    def __init__(self, reason: str | None = None, detail: str = "", version: int = -1) -> None:
        super().__init__(reason, detail)
        self.version = version


def check_model(model: GlobalModel, *, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`ModelRejectedError` unless ``model`` has exactly the ``expected`` tensor
    names and shapes and finite weights."""
    h = model.header
    got = {k: tuple(np.shape(v)) for k, v in model.weights.items()}
    want = {k: tuple(v) for k, v in expected.items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:4]
        raise ModelRejectedError("shape_mismatch", f"tensors differ from the task model: {diff}",
                                 h.version)
    for k, v in model.weights.items():
        if not np.isfinite(v).all():
            raise ModelRejectedError("non_finite", f"tensor {k!r} has NaN or infinite values",
                                     h.version)


class EdgeModels:
    """Verified global models of one edge worker and the version each of its nodes serves.

    Parameters
    ----------
    task
        The federation's task; models for another task are refused.
    node_ids
        The nodes this worker hosts.
    public_key
        The model authority's Ed25519 key: it signs global models and control messages.
    expected
        ``name -> shape`` of the task model's tensors.
    probe
        One or more model inputs; every model must give finite outputs on them before it serves.
    store_dir
        Where verified models (their signed bytes) and the control in force are kept; ``None``
        keeps them in memory only.
    keep
        Verified models kept (the newest; versions a control names are always kept).
    """

    def __init__(self, *, task: str, node_ids: Sequence[str], public_key: bytes,
                 expected: Mapping[str, tuple[int, ...]], probe: np.ndarray,
                 store_dir: Path | None = None, keep: int = 32) -> None:
        if not node_ids:
            raise ValueError("node_ids is empty")
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.task = task
        self.node_ids = list(node_ids)
        self._public_key = public_key
        self._expected = {k: tuple(v) for k, v in expected.items()}
        self._probe = np.asarray(probe, dtype=np.float32)
        self._store = store_dir
        self._keep = keep
        self._blobs: dict[int, bytes] = {}  # verified versions' signed bytes (memory store)
        self._loaded: dict[int, LoadedModel] = {}  # sessions of served versions (+ the newest)
        self._serving: dict[str, int] = {}  # node -> version it serves
        self.latest: int | None = None  # newest verified version
        self.control: RolloutControl | None = None
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ models
    def _verify(self, blob: bytes) -> tuple[GlobalModel, LoadedModel | None]:
        """Decode and check ``blob``; the session is None for another task's model."""
        model = decode_global_model(blob, public_key=self._public_key)
        if model.header.task != self.task:
            return model, None
        check_model(model, expected=self._expected)
        try:
            loaded = load_onnx(model.onnx, version=model.header.version, probe=self._probe)
        except ModelLoadError as err:
            raise ModelRejectedError(err.reason, err.detail, model.header.version) from None
        return model, loaded

    def admit(self, blob: bytes) -> GlobalModel | None:
        """Verify a global model from ``edgeveil.models`` and keep it; returns it (the caller
        trains on its weights), or None for another task's model. Serving changes only at
        :meth:`refresh`.

        Raises
        ------
        CodecError
            signature or format (:func:`~pipeline.codec.global_model.decode_global_model`), or
            :class:`ModelRejectedError` for the edge's own checks. Nothing changes then.
        """
        model, loaded = self._verify(blob)
        if loaded is None:
            return None
        v = model.header.version
        self._keep_blob(v, blob)
        self._loaded[v] = loaded
        if self.latest is None or v > self.latest:
            self.latest = v
        return model

    def _keep_blob(self, version: int, blob: bytes) -> None:
        self._blobs[version] = blob
        if self._store is not None:
            path = self._store / f"v{version:06d}.evm"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        pinned = set(self._pinned())
        for old in sorted(self._blobs)[:-self._keep]:
            if old not in pinned:
                del self._blobs[old]
                if self._store is not None:
                    (self._store / f"v{old:06d}.evm").unlink(missing_ok=True)

    def _pinned(self) -> list[int]:
        c = self.control
        out = [v for v in self._serving.values()]
        if c is not None:
            out += [v for v in (c.stable_version, c.canary_version) if v is not None]
        return out

    def _stored_blob(self, version: int) -> bytes | None:
        blob = self._blobs.get(version)
        if blob is None and self._store is not None:
            path = self._store / f"v{version:06d}.evm"
            if path.is_file():
                blob = path.read_bytes()
        return blob

    def _session(self, version: int) -> LoadedModel | None:
        """The loaded session of ``version``, verifying its kept bytes again if needed; None if
        it was never verified here or fails now (logged; the caller keeps the old version)."""
        if version in self._loaded:
            return self._loaded[version]
        blob = self._stored_blob(version)
        if blob is None:
            return None
        try:
            model, loaded = self._verify(blob)
        except CodecError as err:
            log.warning("kept model v%d fails its checks now (%s); not serving it", version, err)
            return None
        if loaded is None or model.header.version != version:
            log.warning("kept model file v%d holds v%d; not serving it", version,
                        model.header.version)
            return None
        self._loaded[version] = loaded
        return loaded

    # ------------------------------------------------------------------ control
    def apply_control(self, blob: bytes) -> RolloutControl:
        """Verify a signed control message and make it the one in force (kept in
        ``store_dir``). Serving changes only at :meth:`refresh`.

        The command in force itself, delivered again, is accepted and changes nothing.

        Raises
        ------
        ControlError
            bad signature or format, another task, or older than the control in force.
        """
        control = decode_control(blob, public_key=self._public_key)
        if control == self.control:  # redelivered (at-least-once) or replayed after a restart
            return control
        check_sequence(self.control, control, task=self.task)
        self.control = control
        if self._store is not None:
            path = self._store / _CONTROL_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        return control

    def wanted(self, node_id: str) -> int | None:
        """The version ``node_id`` should serve under the control in force."""
        return served_version(self.control, node_id, latest=self.latest)

    def refresh(self) -> dict[str, int]:
        """Point every node at the version it should serve, when that version is verified;
        returns the nodes whose version changed (node -> new version)."""
        changed: dict[str, int] = {}
        serving = dict(self._serving)
        for node in self.node_ids:
            want = self.wanted(node)
            if want is None or serving.get(node) == want:
                continue
            if self._session(want) is None:
                log.warning("%s should serve v%s, which this edge has not verified; it keeps "
                            "serving v%s", node, want, serving.get(node))
                continue
            serving[node] = want
            changed[node] = want
        self._serving = serving  # one assignment: readers see the old or the new map
        in_use = set(serving.values()) | ({self.latest} if self.latest is not None else set())
        for v in [v for v in self._loaded if v not in in_use]:
            del self._loaded[v]
        return changed

    def version_of(self, node_id: str) -> int | None:
        """The version ``node_id`` serves now (None: nothing yet)."""
        return self._serving.get(node_id)

    def predict(self, node_id: str, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Run the model ``node_id`` serves on ``x``; returns (output, version)."""
        version = self._serving.get(node_id)
        loaded = self._loaded.get(version) if version is not None else None
        if loaded is None:
            raise NoModelError(f"{node_id} serves no model yet")
        return loaded.predict(x), loaded.version

    # ------------------------------------------------------------------ restart
    def restore(self) -> list[int]:
        """After a restart: the control in force and the kept models from ``store_dir``, each
        verified again; returns the versions that passed. Call :meth:`refresh` after it."""
        if self._store is None:
            return []
        cpath = self._store / _CONTROL_FILE
        if cpath.is_file():
            try:
                self.apply_control(cpath.read_bytes())
            except ControlError as err:
                log.warning("kept control message fails its checks (%s); ignoring it", err)
        ok: list[int] = []
        for path in sorted(self._store.glob("v*.evm")):
            try:
                version = int(path.stem[1:])
            except ValueError:
                continue
            self._blobs[version] = path.read_bytes()
            ok.append(version)
        # verify lazily (only what will serve), but the newest must pass to count as latest
        for version in sorted(ok, reverse=True):
            if self._session(version) is not None:
                self.latest = version
                break
            self._blobs.pop(version, None)
        return sorted(v for v in ok if v in self._blobs)
