"""Swap the ONNX model an edge serves without stopping its stream.

:class:`OnnxModelSlot` holds one onnxruntime session. :meth:`OnnxModelSlot.swap` builds the new
session first (the slow part, outside any lock) and then replaces the reference in one assignment,
so a prediction running on another thread finishes on the model it started with and the next one
uses the new model. A model that fails to load leaves the old one serving.

Examples
--------
>>> slot = OnnxModelSlot()
>>> slot.version is None
True
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from pipeline.exceptions import EdgeVeilError

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "ModelLoadError", "NoModelError", "OnnxModelSlot", "load_onnx"]


class ModelLoadError(EdgeVeilError):
    """An ONNX model could not be loaded, or its probe inference failed; the old model (if any)
    keeps serving. ``reason``: ``onnx_load`` (onnxruntime refused the bytes),
    ``non_finite_output`` or ``bad_output_shape`` (the probe inference)."""

    def __init__(self, version: int, detail: str, reason: str = "onnx_load") -> None:
        self.version = version
        self.detail = detail
        self.reason = reason
        super().__init__(f"global model v{version} could not be loaded ({reason}): {detail}")


class NoModelError(EdgeVeilError):
    """Prediction was asked for before any model was loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """One onnxruntime session and the global version it holds (immutable: share it freely)."""

    version: int
    session: object  # onnxruntime.InferenceSession
    input_name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's first output for ``x`` (cast to float32)."""
        out = self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})  # type: ignore[attr-defined]
        return np.asarray(out[0])


def load_onnx(onnx_bytes: bytes, *, version: int, providers: list[str] | None = None,
              intra_op_threads: int = 1, probe: np.ndarray | None = None) -> LoadedModel:
    """Build an onnxruntime session for ``onnx_bytes``; with ``probe``, also run it once and
    require one finite output row per probe row.

    Raises
    ------
    ModelLoadError
        ``onnx_load``, ``non_finite_output`` or ``bad_output_shape``.

    Examples
    --------
    >>> import torch
    >>> from pipeline.serving.onnx_export import export_onnx
    >>> m = load_onnx(export_onnx(torch.nn.Linear(3, 1), example=torch.zeros(1, 3)), version=1,
    ...               probe=np.zeros((2, 3), np.float32))
    >>> m.predict(np.zeros((4, 3), np.float32)).shape
    (4, 1)
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(onnx_bytes, sess_options=opts,
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelLoadError(version, str(exc)) from exc
    loaded = LoadedModel(version, session, session.get_inputs()[0].name)
    if probe is not None:
        try:
            y = loaded.predict(probe)
        except Exception as exc:  # noqa: BLE001 - a graph that loads but cannot run
            raise ModelLoadError(version, f"probe inference failed: {exc}") from exc
        if y.ndim == 0 or y.shape[0] != len(probe):
            raise ModelLoadError(version, f"probe of {len(probe)} rows gave output {y.shape}",
                                 reason="bad_output_shape")
        if not np.isfinite(y).all():
            raise ModelLoadError(version, "probe inference gave NaN or infinite outputs",
                                 reason="non_finite_output")
    return loaded


class OnnxModelSlot:
    """A thread-safe, hot-swappable onnxruntime model.

    Parameters
    ----------
    providers
        onnxruntime execution providers, CPU by default.
    intra_op_threads
        Threads per inference (1 suits a small forecaster beside a video pipeline).
    """

    def __init__(self, *, providers: list[str] | None = None, intra_op_threads: int = 1) -> None:
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = intra_op_threads
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()  # serializes swaps only; predictions never take it
        self.swaps = 0

    @property
    def version(self) -> int | None:
        cur = self._current
        return cur.version if cur else None

    def swap(self, onnx_bytes: bytes, *, version: int, probe: np.ndarray | None = None) -> bool:
        """Load ``onnx_bytes`` and make it current; False if ``version`` is not newer.

        Raises
        ------
        ModelLoadError
            the bytes are not a loadable ONNX model, or the ``probe`` inference fails
            (:func:`load_onnx`); the old model stays current.
        """
        cur = self._current
        if cur is not None and version <= cur.version:
            return False
        loaded = load_onnx(onnx_bytes, version=version, providers=self._providers,
                           intra_op_threads=self._threads, probe=probe)
        with self._swap_lock:
            if self._current is not None and version <= self._current.version:
                return False
            self._current = loaded  # one reference assignment: atomic for readers
            self.swaps += 1
        log.info("serving global model v%d", version)
        return True

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Run the current model on ``x`` (float32); returns (output, model version)."""
        cur = self._current
        if cur is None:
            raise NoModelError("no global model loaded yet")
        return cur.predict(x), cur.version
