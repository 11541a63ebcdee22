#!/usr/bin/env bash
# Builds mmcv 2.1.0 (the newest release mmdet 3.3.0 accepts) with its CPU ops from the PyPI sdist
# into the folder $1, for when no prebuilt wheel is at hand (about 15-30 CPU-minutes).
# torch >= 2.6 headers need C++20, which mmcv's setup.py does not ask for, hence the patch.
set -euo pipefail
out=$(realpath -m "${1:-.wheels}")
pip=${PIP:-python -m pip}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$pip install -q 'setuptools<81' ninja
# mmcv's setup.py imports pkg_resources, so even reading its metadata needs setuptools<81 in place.
$pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" mmcv==2.1.0
tar -xzf "$work"/mmcv-2.1.0.tar.gz -C "$work"
sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$work"/mmcv-2.1.0/setup.py
grep -q 'c++20' "$work"/mmcv-2.1.0/setup.py || { echo "could not patch mmcv's setup.py for C++20" >&2; exit 1; }
echo "building mmcv 2.1.0 with CPU ops (this takes a while; set VISIONATTN_WHEELS to a folder holding the wheel to skip it)"
MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} CFLAGS=-g0 \
  $pip wheel -q --no-deps --no-build-isolation -w "$out" "$work"/mmcv-2.1.0
