"""Ten signed nodes -> the aggregation core (verify, admit, robust aggregation), one poisoned."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.codec import CodecError, KeyRegistry, encode_update, generate_keypair
from pipeline.sim import InProcessServer
from schemas.update import ModelUpdate, PrivacyStamp

STAMP = PrivacyStamp(
    epsilon=1.0, delta=1e-5, noise_multiplier=1.0, sample_rate=0.05, steps=20, accountant="prv"
)
SHAPES = {"w": (4, 3), "b": (3,)}


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_round_trip_through_codec_and_admission(name: str) -> None:
    # Prepare: 10 nodes, node 7 scales its update x100, node 2's message is delivered twice
    rng = np.random.default_rng(1)
    true = {k: rng.normal(0, 1, size=s).astype(np.float32) for k, s in SHAPES.items()}
    keys = KeyRegistry()
    frames: list[bytes] = []
    honest: list[dict[str, np.ndarray]] = []
    for i in range(10):
        private, public = generate_keypair()
        keys.register(f"n{i}", public)
        delta = {
            k: (v + rng.normal(0, 0.05, size=v.shape)).astype(np.float32) for k, v in true.items()
        }
        honest.append(delta)
        if i == 7:
            delta = {k: v * 100 for k, v in delta.items()}
        u = ModelUpdate(
            node_id=f"n{i}",
            task="t",
            round=5,
            base_version=0,
            num_examples=100,
            metrics={},
            privacy=STAMP,
            delta=delta,
        )
        frames.append(encode_update(u, private_key=private, compression="int8"))
    frames.append(frames[2])  # at-least-once redelivery: a silent duplicate
    tampered = bytearray(frames[4])
    tampered[-1] ^= 1
    frames.append(bytes(tampered))  # refused as bad_signature, the round goes on
    glob = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    server = InProcessServer.build(task="t", keys=keys, initial=glob, nodes=10, strategy=name)
    # Execute
    rejected = []
    for frame in frames:
        try:
            server.receive(frame)
        except CodecError as err:
            rejected.append(err.reason)
    # Assert: the tenth distinct update made the quorum and closed the round
    assert server.end_round() is None and server.version == 1
    outcome = server.last_outcome
    assert rejected == ["bad_signature"] and outcome is not None
    assert sorted(outcome.participants) == [f"n{i}" for i in range(10)]
    reference = {k: np.mean([h[k] for h in honest], axis=0) for k in SHAPES}
    for k in SHAPES:
        assert np.abs(server.weights[k] - reference[k]).max() < 0.1
