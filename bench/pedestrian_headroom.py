"""How much can pooling the 21 sensors gain at all on pedestrian-forecast? Non-private bounds.

The FL-core target asks the federated DP model to be >= 10 % below local-only DP models at the
same epsilon. Differential privacy only takes accuracy away, so the gain of pooling *without*
privacy bounds what federation can show. This script trains, without DP, with the task's own
windows, model (``PedestrianMLP``) and loss (L1 on scaled log1p counts), Adam, batch 512:

  * ``local``            — each sensor alone, for each of ``--local-steps`` (pooled test MAE);
  * ``central``          — one model on every sensor's training windows, ``--central-steps``;
  * ``central_finetune`` — that model fine-tuned on each sensor's own windows
                           (``--finetune-steps``): the non-private analogue of the personalised
                           federated model in ``bench/fl_pedestrian.py``.

It prints one JSON object: test and validation MAE of each, the best local run (chosen on
validation), and ``pooling_gain_vs_best_local`` = 1 - MAE(central_finetune) / MAE(best local).

Usage: python bench/pedestrian_headroom.py [--out bench/results/pedestrian_headroom.json]
(about 4 minutes on 2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.tasks import get_task
from pipeline.tasks.pedestrian import smape


def _say(msg: str) -> None:
    sys.stderr.write(f"[pedestrian_headroom {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, lr: float,
           batch: int, gen: torch.Generator) -> nn.Module:
    loss_fn = nn.L1Loss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (batch,), generator=gen)
        loss = loss_fn(model(x[i]).reshape(-1), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _score(task: Any, models: dict[str, nn.Module], split: str) -> dict[str, float]:
    ys, ps = [], []
    for node, model in models.items():
        if len(task.windows(node, split).counts) == 0:
            continue
        ys.append(task.windows(node, split).counts)
        ps.append(task.predict_counts(model, node, split))
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"mae": round(float(np.abs(p - y).mean()), 3), "smape": round(smape(y, p), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local-steps", default="600,3000,10000",
                    help="comma-separated step counts for the local-only models")
    ap.add_argument("--central-steps", type=int, default=30000)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    local_steps = [int(s) for s in args.local_steps.split(",") if s]
    if not local_steps or min(local_steps) < 1:
        ap.error("--local-steps needs positive integers")

    task = get_task("pedestrian-forecast")
    nodes = task.node_ids()
    data = {n: task.train_data(n).tensors for n in nodes}
    kw = {"lr": args.lr, "batch": args.batch}
    out: dict[str, Any] = {"bench": "pedestrian_headroom", "dp": False, "nodes": len(nodes),
                           "config": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(args).items()},
                           "seasonal_naive": task.seasonal_naive(split="test")["mae"],
                           "local": {}}

    for steps in local_steps:
        t0 = time.perf_counter()
        models = {}
        for n in nodes:
            torch.manual_seed(args.seed)
            gen = torch.Generator().manual_seed(args.seed)
            models[n] = _train(task.build_model(), *data[n], steps, gen=gen, **kw)
        out["local"][str(steps)] = {"test": _score(task, models, "test"),
                                    "val": _score(task, models, "val"),
                                    "seconds": round(time.perf_counter() - t0, 1)}
        _say(f"local {steps} steps: test MAE {out['local'][str(steps)]['test']['mae']}")

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    x, y = task.centralized_train_data().tensors
    central = _train(task.build_model(), x, y, args.central_steps,
                     gen=torch.Generator().manual_seed(args.seed), **kw)
    everyone = {n: central for n in nodes}
    out["central"] = {"steps": args.central_steps, "test": _score(task, everyone, "test"),
                      "val": _score(task, everyone, "val"),
                      "seconds": round(time.perf_counter() - t0, 1)}
    _say(f"central {args.central_steps} steps: test MAE {out['central']['test']['mae']}")

    tuned = {n: _train(copy.deepcopy(central), *data[n], args.finetune_steps, lr=args.finetune_lr,
                       batch=args.batch, gen=torch.Generator().manual_seed(args.seed))
             for n in nodes}
    out["central_finetune"] = {"steps": args.finetune_steps, "test": _score(task, tuned, "test"),
                               "val": _score(task, tuned, "val")}
    _say(f"central + fine-tuning: test MAE {out['central_finetune']['test']['mae']}")

    best = min(out["local"], key=lambda s: out["local"][s]["val"]["mae"])
    best_mae = out["local"][best]["test"]["mae"]
    out["best_local_by_val"] = {"steps": int(best), "test_mae": best_mae}
    out["pooling_gain_vs_best_local"] = round(
        1 - out["central_finetune"]["test"]["mae"] / best_mae, 4)
    out["note"] = ("no differential privacy anywhere: DP only adds noise, so a federated DP model "
                   "is not expected to beat the best local model by more than this pooling gain "
                   "plus what noise does to the local-only DP anchor")
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
