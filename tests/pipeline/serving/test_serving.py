"""An edge serves only verified models, and each node the version the rollout gives it."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from pipeline.codec import CodecError, generate_keypair, sign
from pipeline.codec.global_model import GLOBAL_MAGIC, encode_global_model
from pipeline.serving.hotswap import NoModelError
from pipeline.serving.models import EdgeModels
from pipeline.serving.onnx_export import export_onnx
from pipeline.serving.rollout import ControlError, encode_control, promote, rollback
from schemas.messages import GlobalModel, GlobalModelHeader

NODES = ["a", "b", "c"]
PRIV, PUB = generate_keypair()
X = np.ones((1, 3), np.float32)


def _net(bias: float) -> torch.nn.Linear:
    net = torch.nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(bias)
    return net


def _weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _header(version: int, task: str = "t") -> GlobalModelHeader:
    return GlobalModelHeader(task=task, version=version, round=version, participants=[],
                             num_examples=0, strategy="fedavg", metrics={}, epsilon_by_node={},
                             delta=1e-5, created_at=0.0)


def _model(version: int, *, key: bytes = PRIV, task: str = "t") -> bytes:
    """A correctly signed model whose output on X is 3 + version (bias = version)."""
    net = _net(float(version))
    onnx = export_onnx(net, example=torch.zeros(1, 3))
    return encode_global_model(GlobalModel(_header(version, task), _weights(net), onnx),
                               private_key=key)


def _signed_raw(version: int, weights: dict[str, np.ndarray], onnx: bytes) -> bytes:
    """The global-model frame without encode_global_model's finite check (a buggy or hostile
    aggregator holding the real key)."""
    tensors = [{"name": k, "shape": list(v.shape)} for k, v in weights.items()]
    hbytes = json.dumps({"header": dataclasses.asdict(_header(version)), "tensors": tensors},
                        sort_keys=True, separators=(",", ":")).encode()
    payload = zstandard.ZstdCompressor().compress(
        b"".join(np.ascontiguousarray(v, "<f4").tobytes() for v in weights.values()))
    body = b"".join([GLOBAL_MAGIC, struct.pack(">I", len(hbytes)), hbytes,
                     struct.pack(">I", len(payload)), payload, struct.pack(">I", len(onnx)), onnx])
    return body + sign(body, private_key=PRIV)


def _nan_onnx() -> bytes:
    """An ONNX graph whose bias initializer is NaN (finite weights beside it)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(export_onnx(_net(3.0), example=torch.zeros(1, 3)))
    for init in proto.graph.initializer:
        if init.name.endswith("bias"):
            init.CopyFrom(numpy_helper.from_array(np.array([np.nan], np.float32), init.name))
    return proto.SerializeToString()


def _edge(store: Path | None = None, nodes: list[str] = NODES) -> EdgeModels:
    return EdgeModels(task="t", node_ids=nodes, public_key=PUB,
                      expected={k: v.shape for k, v in _weights(_net(0.0)).items()},
                      probe=np.zeros((1, 3), np.float32), store_dir=store)


def _served(m: EdgeModels) -> dict[str, tuple[int | None, float]]:
    return {n: (m.version_of(n), float(m.predict(n, X)[0][0, 0])) for n in m.node_ids}


def test_new_models_serve_every_node_until_a_command_says_otherwise() -> None:
    m = _edge()
    with pytest.raises(NoModelError):
        m.predict("a", X)
    assert m.admit(_model(1)).header.version == 1
    assert m.refresh() == {n: 1 for n in NODES}
    assert m.admit(_model(2)) is not None
    assert m.refresh() == {n: 2 for n in NODES}
    assert _served(m) == {n: (2, 5.0) for n in NODES}  # 1+1+1 + bias 2
    assert m.refresh() == {}  # nothing new


@pytest.mark.parametrize("make, reason", [
    (lambda: _model(3, key=generate_keypair()[0]), "bad_signature"),
    (lambda: encode_global_model(GlobalModel(_header(3), {"weight": np.ones((2, 3), np.float32),
                                                          "bias": np.ones(1, np.float32)},
                                             export_onnx(_net(3.0), example=torch.zeros(1, 3))),
                                 private_key=PRIV), "shape_mismatch"),
    (lambda: _signed_raw(3, {"weight": np.full((1, 3), np.nan, np.float32),
                             "bias": np.zeros(1, np.float32)},
                         export_onnx(_net(3.0), example=torch.zeros(1, 3))), "non_finite"),
    (lambda: encode_global_model(GlobalModel(_header(3), _weights(_net(3.0)), b"not onnx"),
                                 private_key=PRIV), "onnx_load"),
    (lambda: encode_global_model(GlobalModel(_header(3), _weights(_net(3.0)), _nan_onnx()),
                                 private_key=PRIV), "non_finite_output"),
])
def test_a_model_that_fails_a_check_is_never_served(make, reason: str, tmp_path: Path) -> None:
    m = _edge(tmp_path)
    m.admit(_model(2))
    m.refresh()
    with pytest.raises(CodecError) as err:
        m.admit(make())
    assert err.value.reason == reason
    assert m.latest == 2 and m.refresh() == {}
    assert _served(m) == {n: (2, 5.0) for n in NODES}
    assert not (tmp_path / "v000003.evm").exists()  # nothing of it is kept
    # a command that names the refused version cannot make anyone serve it
    m.apply_control(encode_control(rollback(None, task="t", version=3, issued_at=0.0),
                                   private_key=PRIV))
    assert m.refresh() == {} and _served(m) == {n: (2, 5.0) for n in NODES}


def test_another_tasks_model_is_ignored() -> None:
    m = _edge()
    assert m.admit(_model(4, task="other")) is None
    assert m.latest is None


def test_canary_then_rollback_and_a_forged_command_changes_nothing(tmp_path: Path) -> None:
    m = _edge(tmp_path)
    for v in (1, 2):
        m.admit(_model(v))
    m.refresh()
    pinned = rollback(None, task="t", version=1, issued_at=0.0)
    m.apply_control(encode_control(pinned, private_key=PRIV))
    assert m.refresh() == {n: 1 for n in NODES}
    canary = promote(pinned, task="t", version=2, nodes=NODES, target=["b"], issued_at=1.0)
    m.apply_control(encode_control(canary, private_key=PRIV))
    assert m.refresh() == {"b": 2}
    assert _served(m) == {"a": (1, 4.0), "b": (2, 5.0), "c": (1, 4.0)}
    # forged: signed by another key; and a replay of an older, genuine command
    forged = rollback(canary, task="t", version=2, issued_at=2.0)
    for blob, reason in ((encode_control(forged, private_key=generate_keypair()[0]),
                          "bad_signature"),
                         (encode_control(pinned, private_key=PRIV), "stale_control")):
        with pytest.raises(ControlError) as err:
            m.apply_control(blob)
        assert err.value.reason == reason
        assert m.control == canary and m.refresh() == {}
    # the command in force, delivered again, is accepted and changes nothing
    m.apply_control(encode_control(canary, private_key=PRIV))
    back = rollback(canary, task="t", version=1, issued_at=3.0)
    m.apply_control(encode_control(back, private_key=PRIV))
    assert m.refresh() == {"b": 1}
    assert {v for v, _ in _served(m).values()} == {1}


def test_a_rollback_verifies_the_kept_bytes_again(tmp_path: Path) -> None:
    m = _edge(tmp_path, nodes=["a"])
    for v in (1, 2, 3):
        m.admit(_model(v))
    m.refresh()
    assert m.version_of("a") == 3
    # v1's session is no longer loaded; its kept file is tampered with on disk
    path = tmp_path / "v000001.evm"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    m._blobs.pop(1)  # as after a restart: only the file is left
    m.apply_control(encode_control(rollback(None, task="t", version=1, issued_at=0.0),
                                   private_key=PRIV))
    assert m.refresh() == {} and m.version_of("a") == 3  # refused; v3 keeps serving
    m.apply_control(encode_control(
        rollback(m.control, task="t", version=2, issued_at=1.0), private_key=PRIV))
    assert m.refresh() == {"a": 2}


def test_a_restarted_edge_restores_its_models_and_command(tmp_path: Path) -> None:
    m = _edge(tmp_path)
    for v in (1, 2):
        m.admit(_model(v))
    canary = promote(None, task="t", version=2, nodes=NODES, target=["a"], issued_at=0.0)
    m.apply_control(encode_control(canary, private_key=PRIV))
    m.refresh()
    before = _served(m)
    again = _edge(tmp_path)
    assert again.restore() == [1, 2]
    assert again.control == canary and again.latest == 2
    again.refresh()
    assert _served(again) == before == {"a": (2, 5.0), "b": (1, 4.0), "c": (1, 4.0)}
    # an old command replayed onto the topic after the restart is still refused
    with pytest.raises(ControlError, match="stale_control"):
        again.apply_control(encode_control(dataclasses.replace(canary, seq=1, action="rollback",
                                                               canary_version=None,
                                                               canary_nodes=[]),
                                           private_key=PRIV))


def test_only_the_newest_models_are_kept_but_pinned_ones_stay(tmp_path: Path) -> None:
    m = EdgeModels(task="t", node_ids=["a"], public_key=PUB,
                   expected={k: v.shape for k, v in _weights(_net(0.0)).items()},
                   probe=np.zeros((1, 3), np.float32), store_dir=tmp_path, keep=2)
    m.admit(_model(1))
    m.apply_control(encode_control(rollback(None, task="t", version=1, issued_at=0.0),
                                   private_key=PRIV))
    m.refresh()
    for v in (2, 3, 4):
        m.admit(_model(v))
    kept = sorted(p.name for p in tmp_path.glob("v*.evm"))
    assert kept == ["v000001.evm", "v000003.evm", "v000004.evm"]
