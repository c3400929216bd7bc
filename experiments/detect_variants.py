#!/usr/bin/env python3
"""Detector variants on MTD, cheaply: the "prototype A" rows of docs/detect.md.

Not part of the product (which is `anomalyncd detect`): a measurement aid that computes the
offline DINOv2 ViT-S/14 patch tokens of MTD once (the longer side to 448, aspect kept, each
tapped block through the final LayerNorm; cached as a torch file), then scores feature variants
(which blocks, a k x k neighbourhood mean or none, bank size, zero-shot) with cosine 1-NN and
prints the share of maps whose maximum lies in the mask dilated by 2 % of the image side.

    .venv/bin/python experiments/detect_variants.py extract CACHE_DIR [N_NORMALS]
    .venv/bin/python experiments/detect_variants.py score CACHE_DIR '[{"taps":[6,9,12],"agg":1,"ntrain":100,"sub":0.3}]'

Needs torch (the project's .venv), numpy, scipy, pillow, safetensors, data/weights (setup.sh)
and ../shared/data/mtd.
"""
import json, os, random, sys, time, glob
import numpy as np, torch, torch.nn.functional as F
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), '..')
MTD = os.environ.get('MTD', os.path.join(ROOT, '..', 'shared', 'data', 'mtd'))
D, HEADS, P, TAPS = 384, 6, 14, list(range(4, 13))
torch.set_num_threads(2)


def vit():
    from safetensors.torch import load_file
    W = load_file(os.path.join(ROOT, 'data', 'weights', 'dinov2_vits14.safetensors'))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    ln = lambda x, p: F.layer_norm(x, (D,), W[p + '.weight'], W[p + '.bias'], 1e-6)

    @torch.no_grad()
    def forward(x):
        x = (x - mean) / std
        t = F.conv2d(x, W['patch_embed.proj.weight'], W['patch_embed.proj.bias'], stride=P)
        b, _, h, w = t.shape
        pe = W['pos_embed']
        grid = F.interpolate(pe[:, 1:].reshape(1, 37, 37, D).permute(0, 3, 1, 2), size=(h, w),
                             mode='bicubic', align_corners=False)
        t = torch.cat([W['cls_token'].expand(b, 1, D), t.flatten(2).transpose(1, 2)], 1)
        t = t + torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, D)], 1)
        out = {}
        for i in range(12):
            k = f'blocks.{i}'
            y = ln(t, k + '.norm1')
            qkv = F.linear(y, W[k + '.attn.qkv.weight'], W[k + '.attn.qkv.bias'])
            qkv = qkv.view(b, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, -1, D)
            t = t + W[k + '.ls1.gamma'] * F.linear(a, W[k + '.attn.proj.weight'], W[k + '.attn.proj.bias'])
            y = F.gelu(F.linear(ln(t, k + '.norm2'), W[k + '.mlp.fc1.weight'], W[k + '.mlp.fc1.bias']))
            t = t + W[k + '.ls2.gamma'] * F.linear(y, W[k + '.mlp.fc2.weight'], W[k + '.mlp.fc2.bias'])
            if i + 1 in TAPS:
                out[i + 1] = ln(t, 'norm')[:, 1:].reshape(b, h, w, D)
        return out
    return forward


def extract(cache, n_normals):
    forward = vit()
    test = sorted(glob.glob(f'{MTD}/test/*/*.jpg'))
    train = sorted(glob.glob(f'{MTD}/train/MT_Free/*.jpg'))
    random.Random(0).shuffle(train)
    os.makedirs(cache, exist_ok=True)
    for split, files in (('test', test), ('train', train[:n_normals])):
        feats = {}
        for f in files:
            im = Image.open(f).convert('RGB')
            s = 448 / max(im.size)
            size = tuple(max(P, round(v * s / P) * P) for v in im.size)
            x = torch.from_numpy(np.asarray(im.resize(size, Image.BILINEAR), dtype=np.float32))
            o = forward(x.permute(2, 0, 1)[None])
            feats[os.path.relpath(f, MTD)] = {k: v[0].half().numpy() for k, v in o.items()}
        torch.save(feats, f'{cache}/{split}.pt')
        print(split, len(files), 'images', flush=True)


def score(cache, configs):
    from scipy import ndimage
    test = torch.load(f'{cache}/test.pt', weights_only=False)
    train = torch.load(f'{cache}/train.pt', weights_only=False) if any(not c.get('zs') for c in configs) else None
    keys = sorted(test)
    gts = {}
    for k in keys:
        typ, stem = k.split('/')[1], os.path.splitext(os.path.basename(k))[0]
        gt = np.asarray(Image.open(f'{MTD}/ground_truth/{typ}/{stem}.png').convert('L')) > 127
        r = max(1, round(0.02 * max(gt.shape)))
        gts[k] = (typ, gt, ndimage.binary_dilation(gt, structure=np.ones((2 * r + 1,) * 2, bool)))

    def feat(d, taps, agg):
        f = torch.stack([torch.from_numpy(d[t]).float() for t in taps]).mean(0).permute(2, 0, 1)[None]
        if agg > 1:
            f = F.avg_pool2d(f, agg, 1, agg // 2, count_include_pad=False)
        return F.normalize(f[0].permute(1, 2, 0), dim=-1)

    def nearest(q, b):
        return torch.cat([1 - (q[s:s + 2048] @ b.T).max(1).values for s in range(0, len(q), 2048)])

    for c in configs:
        t0 = time.time()
        taps, agg = c.get('taps', [6, 9, 12]), c.get('agg', 1)
        tf = {k: feat(test[k], taps, agg) for k in keys}
        flat = lambda f: f.reshape(-1, D)
        maps = {}
        if c.get('zs'):
            refs = sorted(np.random.default_rng(0).choice(len(keys), c['zs'], replace=False))
            for i, k in enumerate(keys):
                d = torch.stack([nearest(flat(tf[k]), flat(tf[keys[j]])) for j in refs if j != i], 1)
                n = max(1, int(c.get('frac', 0.3) * d.shape[1]))
                maps[k] = d.sort(1).values[:, :n].mean(1).reshape(tf[k].shape[:2])
        else:
            bank = torch.cat([flat(feat(train[x], taps, agg)) for x in sorted(train)[:c.get('ntrain', 100)]])
            if c.get('sub'):
                g = torch.Generator().manual_seed(0)
                bank = bank[torch.randperm(len(bank), generator=g)[:int(c['sub'] * len(bank))]]
            maps = {k: nearest(flat(tf[k]), bank).reshape(tf[k].shape[:2]) for k in keys}
        hits, ious = {}, []
        for k in keys:
            typ, gt, dil = gts[k]
            h, w = gt.shape
            m = F.interpolate(maps[k][None, None], size=(h, w), mode='bilinear', align_corners=False)[0, 0].numpy()
            m = ndimage.gaussian_filter(m, 4.0 * max(h, w) / 256)
            y, x = np.unravel_index(np.argmax(m), m.shape)
            hits.setdefault(typ, []).append(bool(dil[y, x]))
            if gt.any():
                # 30 quantile thresholds (maps-eval uses each 8-bit level, so its IoU differs a little)
                ious.append(max(((m >= t) & gt).sum() / ((m >= t) | gt).sum()
                                for t in np.quantile(m, np.linspace(0.5, 0.999, 30))))
        row = {t: round(100 * np.mean(v), 1) for t, v in sorted(hits.items())}
        row['all'] = round(100 * np.mean([x for v in hits.values() for x in v]), 1)
        row['best_iou'] = round(float(np.mean(ious)), 3)
        row['seconds'] = round(time.time() - t0)
        print(json.dumps(c), json.dumps(row), flush=True)


if __name__ == '__main__':
    if len(sys.argv) >= 3 and sys.argv[1] == 'extract':
        extract(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300)
    elif len(sys.argv) == 4 and sys.argv[1] == 'score':
        score(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(__doc__)
