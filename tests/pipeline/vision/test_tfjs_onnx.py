"""The TF.js -> ONNX converter: the converted NanoDet equals TF.js itself, run in Node.js.

The reference is the real TF.js runtime (``@tensorflow/tfjs-core`` + converter + pure-JS CPU
backend, installed by ``scripts/fetch_nanodet.sh`` into ``$EDGEVEIL_CACHE/node``) executing the
original ``nanodet.json``/``.bin`` on the same input: a real vtest.avi frame, preprocessed as
:class:`~pipeline.vision.detectors.nanodet.NanoDetPersonDetector` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.assets import cache_dir, locate
from pipeline.vision.tfjs_onnx import TfjsConversionError, convert_tfjs, load_tfjs_weights

ROOT = Path(__file__).resolve().parents[3]


def _node_modules() -> Path:
    nm = cache_dir() / "node" / "node_modules"
    ok = shutil.which("node") and (nm / "@tensorflow" / "tfjs-converter").is_dir()
    if not ok:
        msg = f"TF.js reference runtime missing in {nm} (make setup installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return nm


@pytest.fixture(scope="module")
def frame_blob(vtest_frames: list[np.ndarray]) -> np.ndarray:
    from pipeline.vision.detectors.nanodet import NanoDetPersonDetector

    det = NanoDetPersonDetector()
    return det._blob(vtest_frames[60])


def test_converted_nanodet_equals_tfjs_reference(tmp_path: Path, frame_blob: np.ndarray) -> None:
    import onnxruntime as ort

    nm = _node_modules()
    model_json = locate("nanodet-tfjs")
    onnx_bytes = convert_tfjs(model_json)
    inp = tmp_path / "x.f32"
    frame_blob.astype("<f4").tofile(inp)
    out = tmp_path / "ref"
    subprocess.run(["node", str(ROOT / "scripts" / "tfjs_reference.js"), str(model_json),
                    str(inp), ",".join(map(str, frame_blob.shape)), str(out)],
                   check=True, env={**os.environ, "NODE_PATH": str(nm)}, timeout=300,
                   capture_output=True)
    shapes = json.loads((out / "shapes.json").read_text())
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"input_1": frame_blob}), strict=True))
    assert sorted(shapes) == sorted(names) and len(names) == 6
    for name, shape in shapes.items():
        ref = np.fromfile(out / f"{name}.f32", "<f4").reshape(shape)
        assert got[name].shape == ref.shape
        np.testing.assert_allclose(got[name], ref, atol=2e-4, rtol=1e-4, err_msg=name)
    # the frame has people in it: the person scores the reference gives are not all ~0
    person_max = max(np.fromfile(out / f"{n}.f32", "<f4").reshape(s)[..., 0].max()
                     for n, s in shapes.items() if s[-1] == 80)
    assert person_max > 0.5


def test_the_cached_onnx_is_what_the_converter_makes_today() -> None:
    """The set-up's cached model is this converter's output (the stamp did its job)."""
    assert locate("nanodet-m-416.onnx").read_bytes() == convert_tfjs(locate("nanodet-tfjs"))


def test_weights_dequantize_float16() -> None:
    spec = json.loads(locate("nanodet-tfjs").read_text())
    weights = load_tfjs_weights(locate("nanodet-tfjs"))
    manifest = spec["weightsManifest"][0]["weights"]
    assert len(weights) == len(manifest)
    quantized = [w for w in manifest if w.get("quantization", {}).get("dtype") == "float16"]
    assert quantized and all(weights[w["name"]].dtype == np.float32 for w in quantized)
    w0 = weights[quantized[0]["name"]]
    assert list(w0.shape) == quantized[0]["shape"] and np.isfinite(w0).all() and w0.std() > 0


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TfjsConversionError, match="does not exist"):
        convert_tfjs(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TfjsConversionError, match="not a readable JSON"):
        convert_tfjs(tmp_path / "bad.json")
    spec = json.loads(locate("nanodet-tfjs").read_text())
    (tmp_path / "short.json").write_text(json.dumps(spec))
    (tmp_path / "nanodet.bin").write_bytes(b"\0" * 100)
    with pytest.raises(TfjsConversionError, match="weight shards end at byte 100"):
        convert_tfjs(tmp_path / "short.json")
    spec["modelTopology"]["node"].append({"name": "x", "op": "FancyOp", "input": ["input_1"]})
    (tmp_path / "nanodet.bin").write_bytes(locate("nanodet-tfjs").with_suffix(".bin").read_bytes())
    (tmp_path / "fancy.json").write_text(json.dumps(spec))
    with pytest.raises(TfjsConversionError, match="'FancyOp'"):
        convert_tfjs(tmp_path / "fancy.json")


def test_decode_matches_an_independent_reading_of_the_outputs(vtest_frames) -> None:
    """NanoDet's box decoding, recomputed here from the raw outputs, gives the detector's boxes."""
    import onnxruntime as ort

    from pipeline.vision.detectors.nanodet import NanoDetPersonDetector

    det = NanoDetPersonDetector(score_threshold=0.5, nms_iou=1.0)
    img = vtest_frames[60]
    boxes, scores = det.raw_people(img)
    sess = ort.InferenceSession(str(locate("nanodet-m-416.onnx")),
                                providers=["CPUExecutionProvider"])
    outs = {o.name: v for o, v in zip(sess.get_outputs(),
                                      sess.run(None, {"input_1": det._blob(img)}), strict=True)}
    mine = []
    for stride, (cls_name, reg_name) in {8: ("Identity", "Identity_3"),
                                         16: ("Identity_1", "Identity_4"),
                                         32: ("Identity_2", "Identity_5")}.items():
        n = 416 // stride
        for i in np.flatnonzero(outs[cls_name][0, :, 0] > 0.5):
            y, x = divmod(int(i), n)
            bins = outs[reg_name][0, i].reshape(4, 11)
            p = np.exp(bins - bins.max(1, keepdims=True))
            d = (p / p.sum(1, keepdims=True) * np.arange(11)).sum(1) * stride
            mine.append([(x * stride - d[0]) * 768 / 416, (y * stride - d[1]) * 576 / 416,
                         (x * stride + d[2]) * 768 / 416, (y * stride + d[3]) * 576 / 416])
    mine_arr = np.asarray(sorted(mine))
    assert len(mine_arr) == len(boxes) >= 3
    np.testing.assert_allclose(np.asarray(sorted(boxes.tolist())), mine_arr, atol=0.05)
    assert (scores > 0.5).all()
