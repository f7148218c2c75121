"""Ed25519 keys and the key registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.codec import (
    KeyRegistry,
    SignatureError,
    UnknownNodeError,
    generate_keypair,
    public_key_of,
    sign,
    verify,
)


def test_sign_verify_and_tamper() -> None:
    private, public = generate_keypair()
    sig = sign(b"abc", private_key=private)
    verify(b"abc", sig, public_key=public)
    with pytest.raises(SignatureError) as info:
        verify(b"abd", sig, public_key=public)
    assert info.value.reason == "bad_signature"
    assert public_key_of(private) == public


def test_registry_save_load(tmp_path: Path) -> None:
    # Prepare
    reg = KeyRegistry()
    keys = {f"n{i}": generate_keypair()[1] for i in range(3)}
    for node, key in keys.items():
        reg.register(node, key)
    # Execute
    reg.save(tmp_path / "keys.json")
    loaded = KeyRegistry.load(tmp_path / "keys.json")
    # Assert
    assert list(loaded) == sorted(keys) and all(loaded.public_key(n) == k for n, k in keys.items())
    assert json.loads((tmp_path / "keys.json").read_text())["format"] == "edgeveil.keyregistry.v1"


def test_registry_unknown_node_is_key_error() -> None:
    reg = KeyRegistry()
    with pytest.raises(KeyError):
        reg.public_key("ghost")
    with pytest.raises(UnknownNodeError) as info:
        reg.verify("ghost", b"m", bytes(64))
    assert info.value.reason == "unknown_node"


def test_registry_refuses_silent_key_change() -> None:
    reg = KeyRegistry()
    a, b = generate_keypair()[1], generate_keypair()[1]
    reg.register("n1", a)
    reg.register("n1", a)  # idempotent
    with pytest.raises(ValueError, match="replace=True"):
        reg.register("n1", b)
    reg.register("n1", b, replace=True)
    assert reg.public_key("n1") == b
    reg.unregister("n1")
    assert "n1" not in reg


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_registry_rejects_bad_keys(key: bytes) -> None:
    with pytest.raises(ValueError):
        KeyRegistry().register("n1", key)


def test_load_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"keys": {}}')
    with pytest.raises(ValueError):
        KeyRegistry.load(path)
