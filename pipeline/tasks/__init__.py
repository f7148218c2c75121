"""Federated learning tasks and their registry.

Examples
--------
>>> from pipeline.tasks import TASKS, get_task
>>> sorted(TASKS)
['fashion-mnist', 'pedestrian-forecast']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.tasks.base import GradSampleMode, Split, Task, TrainConfig

__all__ = ["TASKS", "GradSampleMode", "Split", "Task", "TrainConfig", "get_task"]


def _fashion(**kw: Any) -> Task:
    from pipeline.tasks.fashion import FashionMnistTask

    return FashionMnistTask(**kw)


def _pedestrian(**kw: Any) -> Task:
    from pipeline.tasks.pedestrian import PedestrianForecastTask

    return PedestrianForecastTask(**kw)


TASKS: dict[str, Callable[..., Task]] = {"fashion-mnist": _fashion, "pedestrian-forecast": _pedestrian}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build task ``name`` with keyword options (see each task class).

    Raises
    ------
    ValueError
        unknown task name; the message lists the known ones.

    Examples
    --------
    >>> get_task("fashion-mnist", num_nodes=2, max_train_per_node=32, max_test=32).name
    'fashion-mnist'
    """
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
    return factory(**kwargs)
