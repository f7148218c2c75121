"""Federated rounds in one process: the nodes (:mod:`pipeline.node`), forked workers that keep
them (:mod:`pipeline.sim.pool`), the aggregation core in-process (:mod:`pipeline.sim.server`) and
:func:`simulate` (:mod:`pipeline.sim.run`)."""

from pipeline.sim.pool import balance
from pipeline.sim.run import RoundRow, SimulationResult, simulate, summarize_rows
from pipeline.sim.server import InProcessServer

__all__ = ["InProcessServer", "RoundRow", "SimulationResult", "balance", "simulate",
           "summarize_rows"]
