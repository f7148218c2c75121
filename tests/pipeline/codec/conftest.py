"""Shared fixtures for codec tests: one node key, its registry, a small update factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from pipeline.codec import KeyRegistry, generate_keypair
from schemas.update import ModelUpdate, PrivacyStamp

NODE = "node-1"
STAMP = PrivacyStamp(
    epsilon=0.8, delta=1e-5, noise_multiplier=1.1, sample_rate=0.02, steps=50, accountant="rdp"
)

UpdateFactory = Callable[..., ModelUpdate]


@pytest.fixture(scope="session")
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


@pytest.fixture()
def registry(keypair: tuple[bytes, bytes]) -> KeyRegistry:
    return KeyRegistry({NODE: keypair[1]})


def small_delta() -> dict[str, np.ndarray]:
    return {
        "fc.weight": np.array([[0.5, -1.0, 0.25], [2.0, 0.0, -0.125]], np.float32),
        "fc.bias": np.array([0.1, -0.2], np.float32),
    }


def expected_of(delta: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), "float32") for k, v in delta.items()}


@pytest.fixture()
def make_update() -> UpdateFactory:
    def factory(**overrides: Any) -> ModelUpdate:
        args: dict[str, Any] = dict(
            node_id=NODE,
            task="akl-ped",
            round=3,
            base_version=7,
            num_examples=128,
            metrics={"loss": 0.42, "mae": 3.5},
            privacy=STAMP,
            delta=small_delta(),
            created_at=1_700_000_000.5,
        )
        args.update(overrides)
        return ModelUpdate(**args)

    return factory
