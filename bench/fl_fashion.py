"""Fashion-MNIST DP federated learning benchmark with its anchors, in one run.

Runs (same task, partitions, model, rounds, local steps; ``--features`` picks the model input,
default the task's: ScatterNet features or pixels, see ``pipeline/tasks/fashion.py``):
  * ``fl_dp_int8``     — 10 nodes, Dirichlet α=0.5, ε ≤ budget per node (δ=1e-5), int8 updates
  * ``fl_dp_float32``  — the same with float32 updates (compression cost)
  * ``fl_nodp``        — the same without DP
  * ``central_dp``     — one DP-SGD model on the union of the data at the same ε, processing the
                         same number of examples as the federated run

Usage: python bench/fl_fashion.py --rounds 20 --out bench/results/fl_fashion.json
       python bench/fl_fashion.py --features pixels --out bench/results/fl_fashion_pixels.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.plan import FederationPlan
from pipeline.privacy import make_private, noise_multiplier_for_budget, train_steps
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.sim import simulate
from pipeline.tasks import get_task


def _fl(task: Any, args: argparse.Namespace, *, epsilon: float | None, compression: str,
        ) -> dict[str, Any]:
    plan = FederationPlan(task=task.name, task_options=args.task_options, rounds=args.rounds,
                          epsilon=epsilon, delta=args.delta, accountant=args.accountant,
                          compression=compression, seed=args.seed,
                          local_steps=args.local_steps, batch_size=args.batch_size, lr=args.lr,
                          strategy=args.strategy)
    res = simulate(plan, task=task, eval_every=args.eval_every)
    return {
        "plan": plan.model_dump(),
        "accuracy": res.final_metrics["accuracy"],
        "accuracy_per_round": [round(r.metric, 4) for r in res.rounds],
        "epsilon_max": max(res.epsilons.values()) if epsilon else None,
        "noise_multiplier": sorted(set(res.noise_multipliers.values())),
        "bytes_per_update": res.rounds[-1].bytes_per_update,
        "raw_float32_bytes": res.rounds[-1].raw_float32_bytes,
        "seconds": round(res.seconds, 1),
    }


def _central_dp(task: Any, args: argparse.Namespace, *, examples: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    data = task.centralized_train_data()
    bs = args.batch_size * args.central_batch_factor
    steps = max(1, examples // bs)
    model = task.build_model()
    ledger = PrivacyLedger(node_id="central", budget=args.epsilon, delta=args.delta,
                           mechanism=args.accountant)
    loader = DataLoader(data, batch_size=bs)
    q = 1.0 / len(loader)
    sigma = noise_multiplier_for_budget(epsilon=args.epsilon, delta=args.delta, sample_rate=q,
                                        steps=steps, accountant=args.accountant)
    dp = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
                      data_loader=loader, ledger=ledger, noise_multiplier=sigma,
                      max_grad_norm=task.train_config.max_grad_norm,
                      grad_sample_mode=task.train_config.grad_sample_mode)
    train_steps(dp, loss_fn=task.loss_fn(), steps=steps)
    return {"accuracy": task.evaluate(model)["accuracy"], "epsilon": ledger.epsilon(),
            "noise_multiplier": sigma, "steps": steps, "batch_size": bs,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    ap.add_argument("--central-batch-factor", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--features", choices=["scatter", "pixels"], default=None,
                    help="model input (default: the task's)")
    ap.add_argument("--hidden", type=int, default=None, help="model width (default: the task's)")
    ap.add_argument("--head", choices=["linear", "cnn"], default=None,
                    help="model on ScatterNet features (default: the task's)")
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--accountant", default="prv")
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="fl_dp_int8,fl_dp_float32,fl_nodp,central_dp")
    ap.add_argument("--out", type=Path, default=Path("bench/results/fl_fashion.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    task_kw: dict[str, Any] = {k: v for k, v in (("features", args.features), ("head", args.head),
                                                  ("hidden", args.hidden)) if v is not None}
    args.task_options = {"num_nodes": args.nodes, "alpha": args.alpha, "seed": args.seed,
                         **task_kw}
    task = get_task("fashion-mnist", **args.task_options)
    for node in task.node_ids():  # the inputs (ScatterNet features: from the disk cache)
        task.train_data(node)
    task.evaluate(task.build_model())
    data_seconds = time.perf_counter() - t0
    args.features = getattr(task, "features", "pixels")
    cfg = task.train_config
    args.lr = cfg.lr if args.lr is None else args.lr
    args.local_steps = args.local_steps or cfg.local_steps
    args.batch_size = args.batch_size or cfg.batch_size
    out: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(args).items()},
                           "torch_threads": torch.get_num_threads(),
                           "model_parameters": sum(p.numel() for p in task.build_model().parameters()),
                           "data_seconds": round(data_seconds, 1), "results": {}}
    runs = args.runs.split(",")
    examples = 0
    for run in runs:
        t0 = time.perf_counter()
        if run == "fl_dp_int8":
            r = _fl(task, args, epsilon=args.epsilon, compression="int8")
        elif run == "fl_dp_float32":
            r = _fl(task, args, epsilon=args.epsilon, compression="float32")
        elif run == "fl_nodp":
            r = _fl(task, args, epsilon=None, compression="int8")
        elif run == "central_dp":
            examples = args.rounds * args.local_steps * args.batch_size * args.nodes
            r = _central_dp(task, args, examples=examples)
        else:
            raise SystemExit(f"unknown run {run}")
        out["results"][run] = r
        logging.info("%s: %s (%.0f s)", run, {k: v for k, v in r.items()
                                              if k != "accuracy_per_round"},
                     time.perf_counter() - t0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    res = out["results"]
    if "fl_dp_int8" in res and "fl_dp_float32" in res:
        out["int8_vs_float32"] = {
            "size_ratio": res["fl_dp_int8"]["bytes_per_update"] / res["fl_dp_int8"]["raw_float32_bytes"],
            "accuracy_points_lost": 100 * (res["fl_dp_float32"]["accuracy"] - res["fl_dp_int8"]["accuracy"]),
        }
    if "fl_dp_int8" in res:
        out["target_85pct_met"] = res["fl_dp_int8"]["accuracy"] >= 0.85
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
