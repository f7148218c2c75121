"""pedestrian-forecast task: honest timestamps, gaps, chronological split, train-only scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.tasks import get_task
from pipeline.tasks.pedestrian import hourly_series, sensor_node_id, smape


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    return get_task("pedestrian-forecast", sensors=3)


def test_early_morning_rows_belong_to_the_next_day():  # type: ignore[no-untyped-def]
    s = hourly_series()["45 Queen Street"]
    # New Year's Eve crowd: the source's "2019-12-31 0:00" row is 2020-01-01 00:00
    nye = s[pd.Timestamp("2020-01-01 00:00")]
    assert nye > 10 * s[pd.Timestamp("2020-01-02 00:00")]  # an ordinary midnight
    assert nye > s[pd.Timestamp("2019-12-31 23:00")]
    assert s.index.is_monotonic_increasing and s.index.is_unique
    assert (s.index.to_series().diff().dropna() == pd.Timedelta(hours=1)).all()  # gaps are NaN


def test_late_starting_sensor_has_gaps_not_zeros():  # type: ignore[no-untyped-def]
    s = hourly_series()["188 Quay Street Lower Albert (EW)"]
    assert s[s.index.year == 2020].isna().all()


def test_windows_are_chronological_and_complete(task):  # type: ignore[no-untyped-def]
    for node in task.node_ids():
        for split in ("train", "val", "test"):
            w = task.windows(node, split)
            assert len(w.y) > 1000
            assert np.isfinite(w.x).all() and np.isfinite(w.y).all()
    # scaling comes from train years only: train targets are standardised, test ones need not be
    w = task.windows(task.node_ids()[0], "train")
    assert abs(float(w.y.mean())) < 0.1 < float(w.y.std()) < 10


def test_horizon_changes_lags():  # type: ignore[no-untyped-def]
    t1 = get_task("pedestrian-forecast", sensors=1, horizon=1)
    t6 = get_task("pedestrian-forecast", sensors=1, horizon=6)
    assert t1.lags[0] == 1 and t6.lags[0] == 6 and 168 in t6.lags
    with pytest.raises(ValueError):
        get_task("pedestrian-forecast", sensors=1, horizon=0)


def test_seasonal_naive_and_metrics(task):  # type: ignore[no-untyped-def]
    naive = task.seasonal_naive(split="test")
    assert naive["mae"] > 0 and 0 < naive["smape"] < 2
    assert set(f"mae:{n}" for n in task.node_ids()) <= set(naive)
    metrics = task.evaluate(task.build_model(), split="val")
    assert {"mae", "smape"} <= set(metrics)
    assert smape(np.array([1.0, 0.0]), np.array([3.0, 0.0])) == pytest.approx(0.5)


def test_node_ids_are_wire_safe():  # type: ignore[no-untyped-def]
    import re

    assert re.fullmatch(r"[A-Za-z0-9_.:/-]{1,128}", sensor_node_id("188 Quay Street (NS)"))
