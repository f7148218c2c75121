"""Measure Opacus grad-sample modes against a non-private step for each task's model.

Usage: python bench/dp_grad_sample_modes.py [--threads 1] [--reps 20] > out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from pipeline.privacy import make_private
from pipeline.privacy.ledger import PrivacyLedger
from pipeline.tasks import get_task


def _time_plain(task, data, bs, reps):  # type: ignore[no-untyped-def]
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = task.loss_fn()
    x, y = data.tensors
    times = []
    for i in range(reps + 3):
        j = torch.randint(0, len(y), (bs,))
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x[j]), y[j]).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _time_mode(task, data, bs, reps, mode):  # type: ignore[no-untyped-def]
    model = task.build_model()
    dp = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      data_loader=DataLoader(data, batch_size=bs),
                      ledger=PrivacyLedger(node_id="bench", budget=1e9, delta=1e-5),
                      noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    x, y = data.tensors
    loss_fn = task.loss_fn()
    times = []
    for i in range(reps + 3):
        j = torch.randint(0, len(y), (bs,))
        t = time.perf_counter()
        dp.optimizer.zero_grad(set_to_none=True)
        loss_fn(dp.module(x[j]), y[j]).backward()
        dp.optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"threads": args.threads, "torch": torch.__version__, "results": {}}
    for name, kw in [("fashion-mnist", {"num_nodes": 1, "max_test": 10, "features": "pixels"}),
                     ("pedestrian-forecast", {"sensors": 1})]:
        task = get_task(name, **kw)
        data = task.train_data(task.node_ids()[0])
        bs = task.train_config.batch_size
        plain = _time_plain(task, data, bs, args.reps)
        res = {"batch_size": bs, "plain_ms": round(plain * 1e3, 2)}
        for mode in ("hooks", "ew", "functorch"):
            try:
                t = _time_mode(task, data, bs, args.reps, mode)
                res[f"{mode}_ms"] = round(t * 1e3, 2)
                res[f"{mode}_x"] = round(t / plain, 2)
            except Exception as exc:  # noqa: BLE001 - report any failure of a mode
                res[f"{mode}_error"] = f"{type(exc).__name__}: {exc}"[:200]
        out["results"][name] = res
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
