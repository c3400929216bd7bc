#!/usr/bin/env python3
"""Writes what tests/parity/efficientnet_parity.rs needs to check the Rust EfficientNet-Lite0
(src/model/efficientnet.rs) against an independent implementation: the PyPI package
efficientnet-lite-pytorch==0.1.0 (lukemelas' EfficientNet-PyTorch with the Lite settings,
Apache-2.0) with the weights data/weights/efficientnet_lite0.pth.

The package is built with image_size=None, i.e. TensorFlow SAME padding computed from each
input's size, as the Rust model does. The input is 2 deterministic images of an odd size
(75x90, so the strided convolutions pad asymmetrically and on odd sizes), normalised as the Lite
weights expect ((pixel - 127) / 128).

Output data/weights/efficientnet_lite0.check.safetensors: `input` [2,3,75,90], `block4`,
`block7`, `block10` (outputs of those `_blocks`), `logits` [2,1000].

    python scripts/check_efficientnet_lite.py [--weights F] [--out F]
"""
import argparse
import os
import sys


def fail(msg):
    print(f"check_efficientnet_lite: error: {msg}", file=sys.stderr)
    sys.exit(1)


def images():
    import numpy as np

    yy, xx = np.mgrid[0:75, 0:90].astype(np.float32)
    yy, xx = yy / 74.0, xx / 89.0
    a = np.stack([xx, yy, 0.5 + 0.5 * np.sin(8 * np.pi * xx * yy)], 0)
    base = 0.35 + 0.05 * np.sin(2 * np.pi * 6 * xx) * np.cos(2 * np.pi * 4 * yy)
    blob = np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.005)
    gray = np.clip(base + 0.5 * blob, 0, 1)
    b = np.stack([gray, gray, gray], 0)
    pixels = np.stack([a, b], 0) * 255.0
    return ((pixels - 127.0) / 128.0).astype(np.float32)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(root, "data/weights/efficientnet_lite0.pth"))
    ap.add_argument("--out", default=os.path.join(root, "data/weights/efficientnet_lite0.check.safetensors"))
    args = ap.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        fail(f"{e}: pip install torch safetensors and efficientnet-lite-pytorch==0.1.0 (--no-deps)")
    if not os.path.isfile(args.weights):
        fail(f"{args.weights} not found; run scripts/prepare_weights.sh")

    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    state = torch.load(args.weights, map_location="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()

    x = torch.from_numpy(images())
    taps = {4: "block4", 7: "block7", 10: "block10"}
    out = {"input": x.contiguous()}
    with torch.no_grad():
        h = model._swish(model._bn0(model._conv_stem(x)))
        for i, block in enumerate(model._blocks):
            h = block(h)  # no drop connect at inference
            if i in taps:
                out[taps[i]] = h.contiguous()
        out["logits"] = model(x).contiguous()
    save_file(out, args.out)
    print(f"check_efficientnet_lite: wrote {args.out} ({', '.join(f'{k} {list(v.shape)}' for k, v in out.items())})")


if __name__ == "__main__":
    main()
