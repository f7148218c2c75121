"""Lossy element encodings for model deltas: float32 (exact), float16, int8 (symmetric per-tensor).

int8 uses symmetric linear quantization with one scale per tensor,
``scale = max|x| / 127`` and ``q = round(x / scale)`` clipped to ``[-127, 127]``, as in
Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (CVPR), with the zero point fixed at 0. The reconstruction
error per element is at most ``scale / 2 = max|x| / 254``. float16 keeps a relative error of at
most ``2**-11`` for values in its normal range (``|x| >= 2**-14``) and an absolute error of at
most ``2**-25`` below it; values beyond ±65504 would overflow, so they are rejected.

Compression of the byte stream (zstd) is done by :mod:`pipeline.codec.codec`.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Compression", "dequantize", "element_size", "quantize"]

logger = logging.getLogger(__name__)

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_WIRE_DTYPE: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}


class Compression(StrEnum):
    """Element encoding of the tensors in an update payload.

    Examples
    --------
    >>> Compression("int8") is Compression.INT8
    True
    """

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"  # symmetric, one scale per tensor


def element_size(compression: Compression | str) -> int:
    """Bytes per element on the wire for ``compression``.

    Examples
    --------
    >>> element_size(Compression.FLOAT16)
    2
    """
    return int(_WIRE_DTYPE[Compression(compression).value].itemsize)


def quantize(
    array: npt.NDArray[np.floating], compression: Compression | str
) -> tuple[bytes, float | None]:
    """Encode a finite float array as little-endian wire bytes (C order) and an int8 scale.

    Parameters
    ----------
    array : numpy.ndarray
        Finite floating-point values (any float dtype; float32 is the contract).
    compression : Compression
        Element encoding.

    Returns
    -------
    tuple of (bytes, float or None)
        The element bytes and, for int8, the per-tensor scale (``None`` otherwise).

    Raises
    ------
    ValueError
        If the array is not floating point, holds NaN/Inf, or overflows float16.

    Examples
    --------
    >>> import numpy as np
    >>> raw, scale = quantize(np.array([-1.0, 0.5, 1.0], np.float32), Compression.INT8)
    >>> list(np.frombuffer(raw, np.int8)), round(scale * 127, 6)
    ([np.int8(-127), np.int8(64), np.int8(127)], 1.0)
    """
    comp = Compression(compression)
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        raise ValueError(f"delta tensors must be floating point, got dtype {arr.dtype}")
    x = arr.astype(np.float32, copy=False)
    if x.size:
        peak = float(np.max(np.abs(x)))
        if not np.isfinite(peak):
            raise ValueError("delta tensor holds NaN or Inf")
    else:
        peak = 0.0
    if comp is Compression.FLOAT32:
        return np.ascontiguousarray(x, dtype="<f4").tobytes(), None
    if comp is Compression.FLOAT16:
        if peak > _FLOAT16_MAX:
            raise ValueError(
                f"value {peak:g} overflows float16 (max {_FLOAT16_MAX:g}); use float32 or int8"
            )
        return np.ascontiguousarray(x, dtype="<f2").tobytes(), None
    scale = peak / 127.0
    if scale == 0.0:
        return bytes(x.size), 0.0
    q = np.rint(x / np.float32(scale))
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8).tobytes(), scale


def dequantize(
    raw: bytes | memoryview,
    compression: Compression | str,
    shape: tuple[int, ...],
    *,
    scale: float | None = None,
) -> npt.NDArray[np.float32]:
    """Decode wire bytes from :func:`quantize` into a new, writable float32 array.

    The caller checks that ``len(raw)`` matches ``shape``; the scale must be finite.

    Examples
    --------
    >>> import numpy as np
    >>> raw, scale = quantize(np.array([0.25, -2.0], np.float32), "float16")
    >>> dequantize(raw, "float16", (2,)).tolist()
    [0.25, -2.0]
    """
    comp = Compression(compression)
    values = np.frombuffer(raw, dtype=_WIRE_DTYPE[comp.value])
    if comp is Compression.INT8:
        if scale is None:
            raise ValueError("int8 tensors need a scale")
        out = values.astype(np.float32)
        out *= np.float32(scale)
    else:
        out = values.astype(np.float32)  # copies: the result never aliases the input buffer
    result: npt.NDArray[np.float32] = out.reshape(shape)
    return result
