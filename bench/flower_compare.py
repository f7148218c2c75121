"""EdgeVeil's in-process simulation vs Flower's simulation engine, side by side.

Same task (fashion-mnist, Dirichlet α=0.5, same partitions), same model, same per-node batch
sizes (hence sample rates), same Opacus DP-SGD settings (σ calibrated once, clip, grad-sample
mode, local steps), same rounds and FedAvg, evaluation of the global model on the test set after
every round on both sides. Flower runs ``flwr.simulation.run_simulation`` with its Ray backend
(flwr is a bench extra, never a runtime dependency). EdgeVeil's run goes through its full
encode → sign → verify → decode → admit path with int8 updates; Flower ships float32 arrays.

By default both sides also draw the same random streams: Flower's client for partition i in round
r seeds one generator exactly as EdgeVeil's node i does (sampling and noise), so with equal
batches and noise the accuracy difference comes from the systems (EdgeVeil's int8 updates,
aggregation arithmetic); ``--flower-streams own`` restores Opacus' unseeded streams.

EdgeVeil trains its nodes in forked worker processes (``simulate(workers=None)``: one per CPU,
``--threads`` torch threads shared among them); Flower runs one Ray actor per CPU with
``--flower-client-threads`` torch threads each. The load average is recorded around every run:
the machine may be shared, and ratios within one run are what to compare.

Usage: python bench/flower_compare.py --rounds 10 --out bench/results/flower_compare.json
       python bench/flower_compare.py --rounds 3 --seeds 0,1,2   # one subprocess per seed,
                                                                 # mean ± std over seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.node import common_batch_sizes
from pipeline.node.edge import _seed as stream_seed
from pipeline.plan import FederationPlan
from pipeline.privacy import noise_multiplier_for_budget
from pipeline.sim import simulate
from pipeline.tasks import get_task
from pipeline.weights import get_weights, set_weights

_TASKS: dict[tuple[int, int], Any] = {}
_FLOWER_LOG: dict[str, Any] = {"accuracy": []}


def _task(nodes: int, seed: int) -> Any:
    if (nodes, seed) not in _TASKS:
        _TASKS[(nodes, seed)] = get_task("fashion-mnist", num_nodes=nodes, seed=seed)
    return _TASKS[(nodes, seed)]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_flower(args: argparse.Namespace, *, sigma: float, batches: list[int],
               names: list[str]) -> dict[str, Any]:
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation
    from opacus import PrivacyEngine

    nodes, seed, lr, steps = args.nodes, args.seed, args.lr, args.local_steps
    threads = args.flower_client_threads
    same_streams = args.flower_streams == "edgeveil"

    class DPClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
                ) -> tuple[list[np.ndarray], int, dict[str, float]]:
            torch.set_num_threads(threads)
            task = _task(nodes, seed)
            nid = task.node_ids()[self.pid]
            data = task.train_data(nid)
            model = task.build_model()
            set_weights(model, dict(zip(names, parameters, strict=True)))
            cfg = task.train_config
            generator = None
            if same_streams:  # EdgeVeil's per-(seed, node, round) stream for batches and noise
                generator = torch.Generator().manual_seed(
                    stream_seed(seed, self.pid, int(config["round"])))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine = PrivacyEngine(accountant="prv")
                m, opt, loader = engine.make_private(
                    module=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                    data_loader=DataLoader(data, batch_size=batches[self.pid],
                                           generator=generator),
                    noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                    grad_sample_mode=cfg.grad_sample_mode, noise_generator=generator)
                loss_fn = task.loss_fn()
                done = 0
                while done < steps:
                    for x, y in loader:
                        opt.zero_grad()
                        loss = loss_fn(m(x), y) if len(y) else m(x).sum() * 0.0
                        loss.backward()
                        opt.step()
                        done += 1
                        if done == steps:
                            break
            w = get_weights(model)
            return [w[k] for k in names], len(data), {}

    def client_fn(context: Context) -> Any:
        return DPClient(int(context.node_config["partition-id"])).to_client()

    def server_fn(context: Context) -> Any:
        task = _task(nodes, seed)
        torch.manual_seed(seed)
        init = get_weights(task.build_model())
        eval_model = task.build_model()

        def evaluate(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]
                     ) -> tuple[float, dict[str, float]]:
            set_weights(eval_model, dict(zip(names, parameters, strict=True)))
            m = task.evaluate(eval_model)
            _FLOWER_LOG["accuracy"].append(m["accuracy"])
            return m["loss"], {"accuracy": m["accuracy"]}

        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=nodes,
                          min_available_clients=nodes, min_evaluate_clients=0,
                          evaluate_fn=evaluate, on_fit_config_fn=lambda rnd: {"round": rnd},
                          initial_parameters=ndarrays_to_parameters([init[k] for k in names]))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    _FLOWER_LOG["accuracy"] = []
    # Ray starts its workers at nice 15 by default: on a shared machine that hands EdgeVeil's
    # (nice 0) workers an unfair advantage, so Flower's clients get the same priority here
    os.environ["RAY_worker_niceness"] = str(args.flower_niceness)
    load_before = _load()
    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=nodes,
                   backend_name="ray",
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.flower_cpus,
                                                 "include_dashboard": False}})
    seconds = time.perf_counter() - t0
    acc = _FLOWER_LOG["accuracy"]
    return {"accuracy": acc[-1] if acc else None,
            "accuracy_per_round": [round(a, 4) for a in acc[1:]],
            "seconds": round(seconds, 1), "backend": "ray",
            "ray_cpus": args.flower_cpus, "client_threads": threads,
            "streams": args.flower_streams, "worker_niceness": args.flower_niceness,
            "loadavg_before": load_before, "loadavg_after": _load()}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def run_seeds(args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    """Run every seed in its own subprocess (fresh Ray, fresh caches) and summarise."""
    per_seed: list[dict[str, Any]] = []
    passthrough = [a for a in sys.argv[1:]]
    drop = {"--seeds", "--seed", "--out"}
    argv: list[str] = []
    skip = False
    for a in passthrough:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.split("=", 1)[0] in drop:
            continue
        argv.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"seed{seed}.json"
            cmd = [sys.executable, __file__, *argv, "--seed", str(seed), "--out", str(out)]
            logging.info("seed %d: %s", seed, " ".join(cmd))
            subprocess.run(cmd, check=False)
            per_seed.append(json.loads(out.read_text()) if out.exists()
                            else {"config": {"seed": seed}, "error": "no result written"})
    summary: dict[str, Any] = {}
    for side in ("edgeveil", "flower"):
        ok = [r["results"][side] for r in per_seed
              if r.get("results", {}).get(side, {}).get("seconds")]
        if ok:
            summary[side] = {"accuracy": _mean_std([r["accuracy"] for r in ok]),
                             "seconds": _mean_std([r["seconds"] for r in ok])}
    ratios = [r["time_ratio_edgeveil_over_flower"] for r in per_seed
              if "time_ratio_edgeveil_over_flower" in r]
    diffs = [r["accuracy_diff_points"] for r in per_seed if "accuracy_diff_points" in r]
    if ratios:
        summary["time_ratio_edgeveil_over_flower"] = _mean_std(ratios)
        summary["ratio_of_mean_seconds"] = (summary["edgeveil"]["seconds"]["mean"]
                                            / summary["flower"]["seconds"]["mean"])
        summary["accuracy_diff_points"] = _mean_std(diffs)
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seeds": seeds, "summary": summary, "per_seed": per_seed,
            "flwr_version": next((r.get("flwr_version") for r in per_seed
                                  if r.get("flwr_version")), None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds: one subprocess per seed, both sides each, "
                         "then mean ± std (overrides --seed)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads for EdgeVeil (split among its node workers)")
    ap.add_argument("--workers", type=int, default=None,
                    help="EdgeVeil node worker processes (default: one per CPU)")
    ap.add_argument("--flower-cpus", type=int, default=2, help="CPUs given to Ray")
    ap.add_argument("--flower-client-threads", type=int, default=1)
    ap.add_argument("--flower-niceness", type=int, default=0,
                    help="nice value of Ray's worker processes (Ray's own default is 15)")
    ap.add_argument("--flower-streams", choices=("edgeveil", "own"), default="edgeveil",
                    help="edgeveil: Flower clients draw Poisson batches and DP noise from the "
                         "same per-(seed, node, round) generator as EdgeVeil's nodes, so the "
                         "accuracy gap is the systems' (int8 updates, aggregation), not luck; "
                         "own: Opacus' unseeded default streams")
    ap.add_argument("--runs", default="edgeveil,flower")
    ap.add_argument("--out", type=Path, default=Path("bench/results/flower_compare.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    if args.seeds:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        out_all = run_seeds(args, seeds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out_all, indent=1))
        print(json.dumps(out_all["summary"], indent=1))
        return
    torch.set_num_threads(args.threads)
    task = _task(args.nodes, args.seed)
    if args.lr is None:
        args.lr = task.train_config.lr
    ids = task.node_ids()
    batches = common_batch_sizes([len(task.train_data(n)) for n in ids],
                                 batch_size=args.batch_size)
    q = 1.0 / len(DataLoader(task.train_data(ids[0]), batch_size=batches[0]))
    sigma = noise_multiplier_for_budget(epsilon=args.epsilon, delta=args.delta, sample_rate=q,
                                        steps=args.rounds * args.local_steps, accountant="prv")
    torch.manual_seed(args.seed)
    names = list(get_weights(task.build_model()))
    out: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(args).items()},
                           "noise_multiplier": sigma, "sample_rate": q, "results": {}}
    for run in args.runs.split(","):
        if run == "edgeveil":
            load_before = _load()
            plan = FederationPlan(task=task.name, rounds=args.rounds,
                                  task_options={"num_nodes": args.nodes, "seed": args.seed}, epsilon=args.epsilon,
                                  delta=args.delta, seed=args.seed, local_steps=args.local_steps,
                                  batch_size=args.batch_size, lr=args.lr, noise_multiplier=sigma)
            out["plan"] = plan.model_dump()
            sim = simulate(plan, task=task, workers=args.workers)
            out["results"]["edgeveil"] = {
                "accuracy": sim.final_metrics["accuracy"],
                "accuracy_per_round": [round(r.metric, 4) for r in sim.rounds],
                "epsilon_max": max(sim.epsilons.values()), "seconds": round(sim.seconds, 1),
                "seconds_per_round": [round(r.seconds, 1) for r in sim.rounds],
                "bytes_per_update": sim.rounds[-1].bytes_per_update,
                "workers": args.workers, "loadavg_before": load_before,
                "loadavg_after": _load()}
        elif run == "flower":
            try:
                import flwr

                out["flwr_version"] = flwr.__version__
                out["results"]["flower"] = run_flower(args, sigma=sigma, batches=batches,
                                                      names=names)
            except Exception as exc:  # noqa: BLE001 - report why Flower could not run here
                out["results"]["flower"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    r = out["results"]
    if r.get("flower", {}).get("seconds") and "edgeveil" in r:
        out["time_ratio_edgeveil_over_flower"] = r["edgeveil"]["seconds"] / r["flower"]["seconds"]
        out["accuracy_diff_points"] = 100 * (r["edgeveil"]["accuracy"] - r["flower"]["accuracy"])
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    sys.stdout.flush()
    os._exit(0)  # Ray may leave non-daemon threads behind


if __name__ == "__main__":
    main()
