"""Auckland pedestrian-forecast DP federated benchmark with its anchors, in one run.

Runs (test = 2025, all windows where lags and target exist):
  * ``seasonal_naive``  — same hour one week earlier
  * ``fl_dp``           — 21 nodes (one per sensor), ε ≤ budget per node, int8 updates; the
                          global model after the last round
  * ``fl_dp_personal``  — with ``--personalize-steps n``: the same run, each node then fine-tunes
                          the global model with n more DP-SGD steps on its own data (ledger-
                          accounted; σ calibrated for rounds × local steps + n) and forecasts
                          with its own model; with ``--local-head`` each node keeps its last
                          layer through the rounds (FedPer) and forecasts with global body +
                          own head
  * ``local_dp``        — each sensor trains alone with the same σ, sample rate and total steps
                          (rounds × local steps + n, hence the same ε), pooled the same way; it
                          always uses the task's local recipe (Adam, lr 3e-3, state kept over
                          all its steps), whatever ``--local-optimizer`` the federation uses
  * ``central_nodp``    — one non-private model on all sensors' training windows

Usage (the measured recipe, ~26 min on 2 cores; see docs/fl.md):
  python bench/fl_pedestrian.py --rounds 500 --local-optimizer sgd --lr 0.1 \
      --strategy fedadam --strategy-options '{"server_lr": 0.03}' --personalize-steps 200 \
      --personalize-optimizer adam --personalize-lr 3e-4 \
      --out bench/results/fl_pedestrian_r500_sgd_fedadam_ft200.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.node import common_batch_sizes
from pipeline.plan import FederationPlan
from pipeline.privacy import make_private, noise_multiplier_for_budget, train_steps
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.sim import simulate
from pipeline.tasks import get_task
from pipeline.tasks.pedestrian import smape


def _pooled(task: Any, preds: dict[str, np.ndarray], split: str = "test") -> dict[str, float]:
    ys = np.concatenate([task.windows(n, split).counts for n in preds])
    ps = np.concatenate(list(preds.values()))
    out = {"mae": float(np.abs(ys - ps).mean()), "smape": smape(ys, ps)}
    out.update({f"mae:{n}": float(np.abs(task.windows(n, split).counts - p).mean())
                for n, p in preds.items()})
    return out


def _total_steps(args: argparse.Namespace) -> int:
    """DP-SGD steps every node takes in the whole plan (federated rounds + personalisation)."""
    return int(args.rounds * args.local_steps + args.personalize_steps)


_LOCAL: dict[str, Any] = {}  # what the forked local-only workers read (set before forking)


def _local_node(i: int) -> tuple[str, np.ndarray, np.ndarray, float]:
    """Train node ``i`` alone with DP-SGD; return its test and val forecasts and its ε."""
    task, args, sigma_by_node = _LOCAL["task"], _LOCAL["args"], _LOCAL["sigmas"]
    torch.set_num_threads(1)
    cfg = task.train_config
    ids = task.node_ids()
    batches = common_batch_sizes([len(task.train_data(n)) for n in ids],
                                 batch_size=args.batch_size)
    nid = ids[i]
    torch.manual_seed(args.seed * 1000 + i)
    model = task.build_model()
    ledger = PrivacyLedger(node_id=nid, budget=args.epsilon, delta=args.delta,
                           mechanism=args.accountant)
    dp = make_private(module=model,
                      optimizer=cfg.make_optimizer(model.parameters(), lr=args.local_dp_lr),
                      data_loader=DataLoader(task.train_data(nid), batch_size=batches[i]),
                      ledger=ledger, noise_multiplier=sigma_by_node[nid],
                      max_grad_norm=cfg.max_grad_norm, grad_sample_mode=cfg.grad_sample_mode)
    train_steps(dp, loss_fn=task.loss_fn(), steps=_total_steps(args))
    assert ledger.total_steps == _total_steps(args)
    return (nid, task.predict_counts(model, nid, "test"), task.predict_counts(model, nid, "val"),
            ledger.epsilon())


def _local_dp(task: Any, args: argparse.Namespace, sigma_by_node: dict[str, float]
              ) -> dict[str, Any]:
    """Every sensor alone (one torch thread each; ``--workers`` forked processes, default 2)."""
    t0 = time.perf_counter()
    _LOCAL.update(task=task, args=args, sigmas=sigma_by_node)
    n = len(task.node_ids())
    workers = min(args.workers or 2, n)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            done = pool.map(_local_node, range(n), chunksize=1)
    else:
        done = [_local_node(i) for i in range(n)]
    preds = {nid: p for nid, p, _, _ in done}
    val_preds = {nid: v for nid, _, v, _ in done}
    eps = {nid: e for nid, _, _, e in done}
    out = _pooled(task, preds)
    return {"mae": out["mae"], "smape": out["smape"],
            "val_mae": _pooled(task, val_preds, "val")["mae"],
            "steps_per_node": _total_steps(args), "epsilon_max": max(eps.values()),
            "per_node_mae": {k[4:]: round(v, 2) for k, v in out.items() if k.startswith("mae:")},
            "seconds": round(time.perf_counter() - t0, 1)}


def _log_progress(rounds: int) -> Any:
    """A ``simulate`` progress callback that logs the global val MAE about 20 times a run."""
    every = max(1, rounds // 20)

    def log(r: int, row: Any) -> None:
        if r % every == 0 or r == rounds:
            logging.info("fl_dp round %d/%d: global val mae %.2f, eps %.3f (%.1f s/round)",
                         r, rounds, row.metric, row.epsilon_max, row.seconds)
    return log


def _central(task: Any, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = task.build_model()
    data = task.centralized_train_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = task.loss_fn()
    loader = DataLoader(data, batch_size=1024, shuffle=True)
    best, best_state = float("inf"), None
    for _ in range(args.central_epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        val = task.evaluate(model, split="val")["mae"]
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    m = task.evaluate(model, split="test")
    return {"mae": m["mae"], "smape": m["smape"], "val_mae": best,
            "epochs": args.central_epochs, "seconds": round(time.perf_counter() - t0, 1)}


_PLAN_ARGS = ("rounds", "epsilon", "delta", "accountant", "seed", "lr", "local_steps",
              "batch_size", "strategy", "strategy_options", "personalize_steps",
              "personalize_lr", "personalize_layers", "local_head", "local_optimizer",
              "momentum", "personalize_optimizer", "keep_optimizer_state")


def _plan_from_args(args: argparse.Namespace) -> FederationPlan:
    """fl_dp's recipe as a plan (what `edgeveil simulate --plan` and the Kafka federation run)."""
    return FederationPlan(task="pedestrian-forecast", task_options={"horizon": args.horizon},
                          **{k: getattr(args, k) for k in _PLAN_ARGS})


def _args_from_plan(args: argparse.Namespace, plan: FederationPlan) -> None:
    if plan.task != "pedestrian-forecast" or plan.nodes or set(plan.task_options) - {"horizon"}:
        raise SystemExit(f"{args.plan}: this bench runs every node of pedestrian-forecast")
    for k in _PLAN_ARGS:
        setattr(args, k, getattr(plan, k))
    args.local_steps = plan.local_steps or args.local_steps
    args.batch_size = plan.batch_size or args.batch_size
    args.horizon = plan.task_options.get("horizon", args.horizon)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None,
                    help="fl_dp's local learning rate (default: the task's)")
    ap.add_argument("--local-dp-lr", type=float, default=None,
                    help="local_dp's Adam learning rate (default: the task's, 3e-3)")
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--accountant", default="prv")
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--horizon", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--central-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strategy-options", type=json.loads, default={},
                    help='JSON, e.g. \'{"server_lr": 1.0, "momentum": 0.9}\'')
    ap.add_argument("--personalize-steps", type=int, default=0,
                    help="DP fine-tuning steps per node after the last round (0: global model)")
    ap.add_argument("--personalize-lr", type=float, default=None)
    ap.add_argument("--personalize-layers", choices=("all", "head"), default="all")
    ap.add_argument("--local-head", action="store_true",
                    help="FedPer: each node keeps the last layer; the server averages the body")
    ap.add_argument("--local-optimizer", choices=("sgd", "adam"), default=None,
                    help="fl_dp's local optimizer (default: the task's, Adam); local_dp keeps "
                         "the task's")
    ap.add_argument("--momentum", type=float, default=None, help="local SGD momentum (fl_dp)")
    ap.add_argument("--keep-optimizer-state", action="store_true",
                    help="fl_dp nodes keep their local optimizer state across rounds")
    ap.add_argument("--personalize-optimizer", choices=("sgd", "adam"), default=None,
                    help="optimizer of the personalisation steps (default: the local one)")
    ap.add_argument("--workers", type=int, default=None,
                    help="node worker processes for fl_dp (default: one per CPU) and local_dp "
                         "(default 2)")
    ap.add_argument("--plan", type=Path, default=None,
                    help="a FederationPlan file (e.g. bench/plans/pedestrian-personalised.json):"
                         " fl_dp runs it unchanged and the other runs use its budget and steps;"
                         " it replaces the recipe flags above")
    ap.add_argument("--runs", default="seasonal_naive,fl_dp,local_dp,central_nodp")
    ap.add_argument("--out", type=Path, default=Path("bench/results/fl_pedestrian.json"))
    args = ap.parse_args()
    if args.plan is not None:
        _args_from_plan(args, FederationPlan.load(args.plan))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    torch.set_num_threads(args.threads)
    task: Any = get_task("pedestrian-forecast", horizon=args.horizon)
    if args.lr is None:
        args.lr = task.train_config.lr
    plan = _plan_from_args(args)
    if args.local_dp_lr is None:
        args.local_dp_lr = task.train_config.lr
    out: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(args).items()},
                           "plan": plan.model_dump(),
                           "nodes": len(task.node_ids()), "results": {}}
    res = out["results"]
    sigmas: dict[str, float] = {}
    personal: dict[str, Any] | None = None
    for run in args.runs.split(","):
        t0 = time.perf_counter()
        if run == "seasonal_naive":
            m = task.seasonal_naive(split="test")
            r: dict[str, Any] = {"mae": m["mae"], "smape": m["smape"]}
        elif run == "fl_dp":
            sim = simulate(plan, task=task, eval_split="val", workers=args.workers,
                           progress=_log_progress(args.rounds))
            sigmas = dict(sim.noise_multipliers)
            from pipeline.weights import set_weights

            model = task.build_model()
            set_weights(model, sim.weights)
            m = task.evaluate(model, split="test")
            r = {"mae": m["mae"], "smape": m["smape"],
                 "val_mae_per_round": [round(x.metric, 2) for x in sim.rounds],
                 "epsilon_max": max(x.epsilon_max for x in sim.rounds),
                 "noise_multiplier": sorted(set(sigmas.values())),
                 "bytes_per_update": sim.rounds[-1].bytes_per_update,
                 "per_node_mae": {k[4:]: round(v, 2) for k, v in m.items()
                                  if k.startswith("mae:")},
                 "seconds": round(sim.seconds, 1)}
            if args.local_head:
                r["note"] = ("--local-head: the server never trains the head, so this global "
                             "model (trained body, initial head) is not what any node serves")
            if args.personalize_steps or args.local_head:
                if set(sim.personal_weights) != set(task.node_ids()):
                    raise SystemExit("some nodes could not personalise (budget): see the log")
                test, val = {}, {}
                for nid, w in sim.personal_weights.items():
                    set_weights(model, w)
                    test[nid] = task.predict_counts(model, nid, "test")
                    val[nid] = task.predict_counts(model, nid, "val")
                pm = _pooled(task, test)
                personal = {
                    "mae": pm["mae"], "smape": pm["smape"],
                    "val_mae": _pooled(task, val, "val")["mae"],
                    "global_val_mae": sim.rounds[-1].metric,
                    "steps_per_node": _total_steps(args),
                    "personalize": {"local_head": args.local_head,
                                    "steps": args.personalize_steps,
                                    "lr": args.personalize_lr or args.lr,
                                    "optimizer": (args.personalize_optimizer
                                                  or args.local_optimizer
                                                  or task.train_config.optimizer),
                                    "layers": args.personalize_layers},
                    "epsilon_max": max(sim.epsilons.values()),
                    "per_node_mae": {k[4:]: round(v, 2) for k, v in pm.items()
                                     if k.startswith("mae:")},
                    "seconds": round(sim.seconds + sim.personal_seconds, 1)}
                logging.info("fl_dp_personal: mae=%.2f", pm["mae"])
            else:
                personal = None
        elif run == "local_dp":
            if not sigmas:
                ids = task.node_ids()
                b = common_batch_sizes([len(task.train_data(n)) for n in ids],
                                       batch_size=args.batch_size)
                for i, nid in enumerate(ids):
                    q = 1.0 / len(DataLoader(task.train_data(nid), batch_size=b[i]))
                    sigmas[nid] = noise_multiplier_for_budget(
                        epsilon=args.epsilon, delta=args.delta, sample_rate=q,
                        steps=_total_steps(args), accountant=args.accountant)
            r = _local_dp(task, args, sigmas)
        elif run == "central_nodp":
            r = _central(task, args)
        else:
            raise SystemExit(f"unknown run {run}")
        res[run] = r
        if run == "fl_dp" and personal is not None:
            res["fl_dp_personal"] = personal
        logging.info("%s: mae=%.2f (%.0f s)", run, r["mae"], time.perf_counter() - t0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    # the federated system's forecasts: the personalised models when the nodes fine-tune
    fl = "fl_dp_personal" if "fl_dp_personal" in res else "fl_dp"
    if fl in res:
        out["fl_run_compared"] = fl
    if fl in res and "seasonal_naive" in res:
        out["fl_vs_seasonal_naive_pct"] = 100 * (1 - res[fl]["mae"] / res["seasonal_naive"]["mae"])
    if fl in res and "local_dp" in res:
        out["fl_vs_local_dp_pct"] = 100 * (1 - res[fl]["mae"] / res["local_dp"]["mae"])
    out["targets"] = {"15pct_below_naive": out.get("fl_vs_seasonal_naive_pct", 0) >= 15,
                      "10pct_below_local_dp": out.get("fl_vs_local_dp_pct", 0) >= 10}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
