"""Benchmark: decode + verify + admit + FedAvg throughput of signed updates of a 100k-parameter
model, through the aggregation core the Kafka aggregator and ``simulate`` run.

Run ``python bench/codec_aggregate.py [--updates N] [--nodes K]``; prints one JSON object.
Single-threaded by construction (BLAS/OpenMP pinned to one thread). The timed loop feeds
``K``-node synchronous rounds to :class:`pipeline.sim.InProcessServer` (the
:class:`~pipeline.server.rounds.RoundCoordinator`: verify, decode, replay check, SHA-256, aggregate in
key order, non-finite check), without a broker.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.codec import (  # noqa: E402
    Compression,
    KeyRegistry,
    decode_update,
    encode_update,
    generate_keypair,
    public_key_of,
)
from pipeline.sim import InProcessServer  # noqa: E402
from schemas.update import ModelUpdate, PrivacyStamp  # noqa: E402

SHAPES = {"fc1.weight": (300, 256), "fc1.bias": (300,), "fc2.weight": (80, 300), "fc2.bias": (80,)}
STAMP = PrivacyStamp(
    epsilon=2.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.01, steps=100, accountant="rdp"
)


def _updates(nodes: int, seed: int) -> list[tuple[ModelUpdate, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(nodes):
        private, _ = generate_keypair()
        delta = {k: rng.normal(0.0, 0.01, size=s).astype(np.float32) for k, s in SHAPES.items()}
        update = ModelUpdate(
            node_id=f"node-{i:04d}",
            task="bench",
            round=1,
            base_version=0,
            num_examples=int(rng.integers(50, 500)),
            metrics={"loss": 0.5},
            privacy=STAMP,
            delta=delta,
            created_at=time.time(),
        )
        out.append((update, private))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=2000, help="updates decoded per compression")
    parser.add_argument("--nodes", type=int, default=32, help="distinct signed updates (cycled)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    population = _updates(args.nodes, args.seed)
    params = sum(int(np.prod(s)) for s in SHAPES.values())
    raw_bytes = 4 * params
    expected = {k: (s, "float32") for k, s in SHAPES.items()}
    report: dict[str, object] = {
        "parameters": params,
        "raw_float32_bytes": raw_bytes,
        "updates_per_compression": args.updates,
        "nodes_per_round": args.nodes,
        "results": {},
    }
    results: dict[str, object] = {}
    runs = [(c.value, c, 3) for c in Compression]
    runs += [(f"{c.value}@level-1", c, -1) for c in (Compression.FLOAT32, Compression.FLOAT16)]
    for label, comp, level in runs:
        keys = KeyRegistry()
        frames = []
        for update, private in population:
            keys.register(update.node_id, public_key_of(private))
            frames.append(encode_update(update, private_key=private, compression=comp, level=level))
        # reconstruction error over the population
        max_abs, sq_err, sq_ref = 0.0, 0.0, 0.0
        for (update, _), frame in zip(population, frames, strict=True):
            back = decode_update(frame, keys=keys, expected=expected)
            for k, ref in update.delta.items():
                err = back.delta[k].astype(np.float64) - ref
                max_abs = max(max_abs, float(np.abs(err).max()))
                sq_err += float(np.vdot(err, err))
                sq_ref += float(np.vdot(ref, ref))
        # one frame per (round, node): the coordinator admits each (node, round) once
        rounds = -(-args.updates // args.nodes)
        by_round = [
            [encode_update(dataclasses.replace(update, round=r + 1, base_version=r),
                           private_key=private, compression=comp, level=level)
             for update, private in population]
            for r in range(rounds)
        ]
        server = InProcessServer.build(
            task="bench", keys=keys, nodes=args.nodes,
            initial={k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
        # timed: verify + decode + admit + FedAvg, round by round
        start = time.perf_counter()
        done = 0
        for r in range(rounds):
            batch = by_round[r][: args.updates - done]
            for frame in batch:
                server.receive(frame)  # the round closes at its quorum (all nodes)
            done += len(batch)
            server.end_round()  # a last, partial round
        elapsed = time.perf_counter() - start
        assert server.version == rounds and done == args.updates
        size = float(np.mean([len(f) for f in frames]))
        results[label] = {
            "zstd_level": level,
            "updates_per_s": round(args.updates / elapsed, 1),
            "ms_per_update": round(1e3 * elapsed / args.updates, 3),
            "encoded_bytes_per_update": round(size, 1),
            "encoded_vs_raw_float32": round(size / raw_bytes, 4),
            "max_abs_error": max_abs,
            "relative_rms_error": (sq_err / sq_ref) ** 0.5,
        }
    report["results"] = results
    report["targets"] = {
        "updates_per_s_ge_500_int8": results["int8"]["updates_per_s"] >= 500,  # type: ignore[index]
        "int8_bytes_le_25pct": results["int8"]["encoded_vs_raw_float32"] <= 0.25,  # type: ignore[index]
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
