"""Per-worker runtime objects, kept on the faust app instead of in module globals.

A worker's runtime (the aggregator's round coordinator and keys, an edge's nodes and models) is
built from the run directory once per worker. :func:`build_on_start` registers a faust start-up
task that builds it in a thread as the worker starts (loading data and calibrating σ take
seconds, which must not block the event loop); agents, timers and hooks reach it with
:func:`runtime` (waits for, or builds, the object) or :func:`peek` (``None`` until it is built).
Objects live in ``app.edgeveil_runtime[name]``, so two apps in one process never share one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["build_on_start", "peek", "runtime"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_ATTR = "edgeveil_runtime"
_LOCK = threading.Lock()  # guards the per-app dict and each build (agents build from threads)


def _slots(app: Any) -> dict[str, Any]:
    slots = getattr(app, _ATTR, None)
    if slots is None:
        slots = {}
        setattr(app, _ATTR, slots)
    return slots


def runtime(app: Any, name: str, factory: Callable[[], T]) -> T:
    """The runtime ``name`` of ``app``, built by ``factory()`` on first use (thread-safe: one
    build, whoever asks first). A failed build raises to the caller and is retried next time."""
    with _LOCK:
        slots = _slots(app)
        if name not in slots:
            slots[name] = factory()
        return slots[name]  # type: ignore[no-any-return]


def peek(app: Any, name: str) -> Any:
    """The runtime ``name`` if it is built, else ``None`` (for timers that should not build it)."""
    return _slots(app).get(name)


def build_on_start(app: Any, name: str, factory: Callable[[], Any]) -> None:
    """Build runtime ``name`` in a worker thread when the app starts (a faust app task)."""

    async def _build() -> None:
        try:
            await asyncio.to_thread(runtime, app, name, factory)
            log.info("%s runtime ready", name)
        except Exception:  # the agents build it again on first use and raise there
            log.exception("building the %s runtime at start-up failed", name)

    _build.__name__ = f"build_{name}_runtime"
    app.task(_build)
