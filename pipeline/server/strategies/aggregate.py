"""Aggregation math: pure functions over ``(weights, num_examples)`` pairs (after Flower's
``aggregate.py``).

* :func:`weighted_average` — FedAvg, McMahan et al. 2017, "Communication-Efficient Learning of
  Deep Networks from Decentralized Data" (AISTATS).
* :func:`coordinate_median` and :func:`trimmed_mean` — Yin, Chen, Ramchandran & Bartlett 2018,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates" (ICML).
* :func:`krum_scores` and :func:`multi_krum` — Blanchard, El Mhamdi, Guerraoui & Stainer 2017,
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS).
* :func:`staleness_weight` — the ``1/sqrt(1+τ)`` polynomial staleness scaling used by FedBuff,
  Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation" (AISTATS).
* :func:`clip_l2` — per-update clipping of DP-FedAvg, McMahan et al. 2018, "Learning
  Differentially Private Recurrent Language Models" (ICLR).

Every function returns fresh float32 arrays and never mutates its inputs. Robust rules treat
the parameters of all tensors as one flat vector (coordinate-wise rules are per coordinate
anyway; Krum needs whole-update distances).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pipeline.server.strategies.base import Weights

__all__ = [
    "add_scaled",
    "clip_l2",
    "coordinate_median",
    "flatten",
    "global_l2_norm",
    "krum_scores",
    "multi_krum",
    "staleness_weight",
    "trimmed_mean",
    "unflatten",
    "weighted_average",
]

Pairs = Sequence[tuple[Mapping[str, np.ndarray], float]]


def _require(results: Pairs) -> None:
    if not results:
        raise ValueError("need at least one (weights, num_examples) pair")


def flatten(weights: Mapping[str, np.ndarray]) -> npt.NDArray[np.float64]:
    """Concatenate all tensors (in order) into one float64 vector.

    Examples
    --------
    >>> import numpy as np
    >>> flatten({"a": np.array([[1, 2]]), "b": np.array([3])}).tolist()
    [1.0, 2.0, 3.0]
    """
    if not weights:
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in weights.values()])


def unflatten(vector: npt.ArrayLike, like: Mapping[str, np.ndarray]) -> Weights:
    """Split a flat vector back into float32 tensors shaped like ``like``.

    Examples
    --------
    >>> import numpy as np
    >>> unflatten([1.0, 2.0, 3.0], {"a": np.zeros((1, 2)), "b": np.zeros(1)})["a"].tolist()
    [[1.0, 2.0]]
    """
    vec = np.asarray(vector)
    out: Weights = {}
    offset = 0
    for name, ref in like.items():
        size = int(np.size(ref))
        out[name] = vec[offset : offset + size].astype(np.float32).reshape(np.shape(ref))
        offset += size
    if offset != vec.size:
        raise ValueError(f"vector has {vec.size} elements, the weights need {offset}")
    return out


def _stack(results: Pairs) -> npt.NDArray[np.float64]:
    return np.stack([flatten(w) for w, _ in results])


def weighted_average(results: Pairs) -> Weights:
    """Sample-weighted mean ``Σ n_k w_k / Σ n_k`` (FedAvg), accumulated in float64.

    Raises ``ValueError`` if ``results`` is empty or the weights sum to zero.

    Examples
    --------
    >>> import numpy as np
    >>> out = weighted_average([({"w": np.array([1.0, 2.0])}, 1), ({"w": np.array([4.0, 8.0])}, 2)])
    >>> out["w"].tolist()
    [3.0, 6.0]
    """
    _require(results)
    total = float(sum(n for _, n in results))
    if total <= 0:
        raise ValueError("the weights (num_examples) sum to zero")
    first = results[0][0]
    acc = {k: np.zeros(np.shape(v), np.float64) for k, v in first.items()}
    for weights, n in results:
        for k, a in acc.items():
            a += np.asarray(weights[k], dtype=np.float64) * (float(n) / total)
    return {k: a.astype(np.float32) for k, a in acc.items()}


def coordinate_median(results: Pairs) -> Weights:
    """Coordinate-wise median (unweighted; ``num_examples`` is ignored, as in Yin et al.).

    Examples
    --------
    >>> import numpy as np
    >>> rs = [({"w": np.array([1.0, 10.0])}, 1), ({"w": np.array([2.0, 20.0])}, 1),
    ...       ({"w": np.array([300.0, -5.0])}, 1)]
    >>> coordinate_median(rs)["w"].tolist()
    [2.0, 10.0]
    """
    _require(results)
    return unflatten(np.median(_stack(results), axis=0), results[0][0])


def trimmed_mean(results: Pairs, *, beta: float) -> Weights:
    """Coordinate-wise β-trimmed mean: drop the ``floor(β n)`` largest and smallest values per
    coordinate, average the rest (unweighted).

    Parameters
    ----------
    results : sequence of (weights, num_examples)
    beta : float
        Fraction trimmed from each end, ``0 <= beta < 0.5``.

    Examples
    --------
    >>> import numpy as np
    >>> rs = [({"w": np.array([v])}, 1) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    >>> trimmed_mean(rs, beta=0.2)["w"].tolist()
    [3.0]
    """
    _require(results)
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
    n = len(results)
    k = math.floor(beta * n)
    if n - 2 * k < 1:
        raise ValueError(f"trimming {k} from each end of {n} results leaves nothing")
    stacked = np.sort(_stack(results), axis=0)
    return unflatten(stacked[k : n - k].mean(axis=0), results[0][0])


def krum_scores(results: Pairs, *, num_byzantine: int) -> npt.NDArray[np.float64]:
    """Krum score of each update: the sum of squared L2 distances to its ``n - f - 2`` nearest
    other updates (lower is more central).

    Requires ``n > 2f + 2`` (Blanchard et al. 2017).

    Examples
    --------
    >>> import numpy as np
    >>> rs = [({"w": np.array([v])}, 1) for v in (0.0, 1.0, 2.0, 10.0)]
    >>> krum_scores(rs, num_byzantine=0).tolist()
    [5.0, 2.0, 5.0, 145.0]
    """
    _require(results)
    n = len(results)
    if num_byzantine < 0:
        raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine!r}")
    if n <= 2 * num_byzantine + 2:
        raise ValueError(f"Krum needs n > 2f + 2; got n={n}, f={num_byzantine}")
    x = _stack(results)
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(dist, np.inf)
    closest = n - num_byzantine - 2
    scores: npt.NDArray[np.float64] = np.sort(dist, axis=1)[:, :closest].sum(axis=1)
    return scores


def multi_krum(
    results: Pairs, *, num_byzantine: int, num_selected: int | None = None
) -> tuple[Weights, list[int]]:
    """Multi-Krum: average (unweighted) the ``m`` updates with the lowest Krum scores.

    Parameters
    ----------
    results : sequence of (weights, num_examples)
    num_byzantine : int
        ``f``, the number of Byzantine clients tolerated; ``n > 2f + 2``.
    num_selected : int, optional
        ``m``; default ``n - f``. ``m = 1`` is plain Krum.

    Returns
    -------
    tuple of (Weights, list of int)
        The average and the indices of the selected updates (ascending score).

    Examples
    --------
    >>> import numpy as np
    >>> rs = [({"w": np.array([v])}, 1) for v in (0.0, 1.0, 2.0, 10.0)]
    >>> avg, chosen = multi_krum(rs, num_byzantine=0, num_selected=3)
    >>> avg["w"].tolist(), sorted(chosen)
    ([1.0], [0, 1, 2])
    """
    scores = krum_scores(results, num_byzantine=num_byzantine)
    n = len(results)
    m = n - num_byzantine if num_selected is None else num_selected
    if not 1 <= m <= n:
        raise ValueError(f"num_selected must be in [1, {n}], got {m}")
    chosen = [int(i) for i in np.argsort(scores, kind="stable")[:m]]
    return weighted_average([(results[i][0], 1) for i in chosen]), chosen


def staleness_weight(staleness: int) -> float:
    """FedBuff's staleness scaling ``s(τ) = 1 / sqrt(1 + τ)``.

    Examples
    --------
    >>> staleness_weight(0), staleness_weight(3)
    (1.0, 0.5)
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness!r}")
    return 1.0 / math.sqrt(1.0 + staleness)


def global_l2_norm(weights: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all tensors taken together.

    Examples
    --------
    >>> import numpy as np
    >>> global_l2_norm({"a": np.array([3.0]), "b": np.array([4.0])})
    5.0
    """
    return math.sqrt(
        sum(float(np.vdot(v, v)) for v in (np.asarray(w, np.float64) for w in weights.values()))
    )


def clip_l2(weights: Mapping[str, np.ndarray], *, max_norm: float) -> tuple[Weights, float]:
    """Scale ``weights`` so their global L2 norm is at most ``max_norm``.

    Returns the clipped copy and the original norm.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_l2({"a": np.array([3.0]), "b": np.array([4.0])}, max_norm=1.0)
    >>> norm, [round(float(v[0]), 6) for v in clipped.values()]
    (5.0, [0.6, 0.8])
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    norm = global_l2_norm(weights)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {
        k: (np.asarray(v, np.float64) * factor).astype(np.float32) for k, v in weights.items()
    }, norm


def add_scaled(
    global_weights: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray], *, scale: float = 1.0
) -> Weights:
    """Return ``global + scale * step`` as new arrays in the global weights' dtypes.

    Examples
    --------
    >>> import numpy as np
    >>> add_scaled({"w": np.array([1.0], np.float32)}, {"w": np.array([2.0])}, scale=0.5)["w"].tolist()
    [2.0]
    """
    out: Weights = {}
    for k, g in global_weights.items():
        g_arr = np.asarray(g)
        dtype = g_arr.dtype if g_arr.dtype.kind == "f" else np.dtype(np.float32)
        out[k] = (g_arr.astype(np.float64) + scale * np.asarray(step[k], np.float64)).astype(dtype)
    return out
