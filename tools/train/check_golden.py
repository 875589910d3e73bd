"""Proves tools/train/wan_torch.py against the golden reference outputs (float32, CPU).

    python3 tools/train/check_golden.py [GOLDEN_DIR]   (default $MOGAGEN_GOLDEN_DIR or ../shared/golden)

Training relies on these modules computing what the engine computes; this script fails
(exit 1) if any of the DiT (dense and MoGA, one and several shots), the VAE decoder or the
umT5 encoder is off by more than 1e-4 relative error.
"""
import json
import os
import sys

try:
    import torch
except ImportError:
    print("skipped: this Python has no torch (Debian: python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
import wan_torch as wt  # noqa: E402


def rel(a, b):
    return float((a - b).norm() / b.norm())


def dit_cfg(c, moga=None):
    cfg = {k: c[k] for k in ("dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "in_dim",
                             "out_dim", "num_heads", "num_layers", "eps")}
    cfg["patch_size"] = c.get("patch_size", [1, 2, 2])
    if moga:
        cfg["attention"] = {"type": "moga", **moga}
    return cfg


def pad_ctx(c, L):
    out = torch.zeros(L, c.shape[1])
    out[:c.shape[0]] = c
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "MOGAGEN_GOLDEN_DIR", os.path.join(here, "..", "..", "..", "shared", "golden"))
    torch.set_grad_enabled(False)
    results = []

    for s in ("wan-a", "wan-c"):
        d = os.path.join(root, s)
        if not os.path.isdir(d):
            continue
        c = json.load(open(os.path.join(d, "dit", "config.json")))
        m = wt.WanDiT(dit_cfg(c))
        wt.load_into(m, st.load(os.path.join(d, "dit", "weights_wan.safetensors")))
        case = st.load(os.path.join(d, "dit", "case.safetensors"))
        ctx = pad_ctx(case["context"], c["text_len"])[None, None]
        x = case["x"][None]
        for i in range(3):
            out = m(x, case[f"t{i}"], ctx, [x.shape[2]])[0]
            results.append((f"{s} dit t{i}", rel(out, case[f"out_t{i}"])))

        t = json.load(open(os.path.join(d, "t5", "config.json")))
        enc = wt.UMT5Encoder(t)
        enc.load_hf(st.load(os.path.join(d, "t5", "weights_hf.safetensors")))
        tc = st.load(os.path.join(d, "t5", "case.safetensors"))
        n = int(tc["attention_mask"].sum())
        out = enc(tc["input_ids"][:n])
        results.append((f"{s} t5", rel(out, tc["last_hidden_state"][:n])))
        # the batched, differentiable encode() that training uses: the caption padded to
        # its full length beside a shorter copy of itself
        ids = tc["input_ids"][:n]
        m2 = max(1, n // 2)
        batch = torch.zeros(2, n + 3, dtype=torch.long)
        batch[0, :n], batch[1, :m2] = ids, ids[:m2]
        with torch.no_grad():
            both = enc.encode(batch, torch.tensor([n, m2]))
        results.append((f"{s} t5 batched", rel(both[0, :n], tc["last_hidden_state"][:n])))
        results.append((f"{s} t5 batched short", rel(both[1, :m2], enc(ids[:m2]))
                        + float(both[1, m2:].abs().max()) + float(both[0, n:].abs().max())))

        v = json.load(open(os.path.join(d, "vae", "config.json")))
        dec = wt.WanVaeDecoder(v)
        w = {k: x for k, x in st.load(os.path.join(d, "vae", "weights_wan.safetensors")).items()
             if k.startswith("decoder.") or k.startswith("conv2.")}
        wt.load_into(dec, w)
        vc = st.load(os.path.join(d, "vae", "case.safetensors"))
        z = vc["z"] * vc["latents_std"][:, None, None, None] + vc["latents_mean"][:, None, None, None]
        out = dec(z[None])[0]
        results.append((f"{s} vae", rel(out, vc["video_unclamped"])))

    d = os.path.join(root, "moga-a")
    if os.path.isdir(d):
        cfg = json.load(open(os.path.join(d, "config.json")))
        case = st.load(os.path.join(d, "case.safetensors"))
        w = st.load(os.path.join(d, "weights_wan.safetensors"))
        for name, cc in cfg["cases"].items():
            moga = {k: cc[k] for k in ("groups", "windows", "temporal_group", "kv_extend") if k in cc}
            m = wt.WanDiT(dit_cfg(cfg["model"], moga))
            wt.load_into(m, w, fill_missing=lambda k, p: p.zero_())  # optional router biases
            L = cfg["model"]["text_len"]
            ctx = torch.stack([pad_ctx(case[f"context{i}"], L) for i in range(cc["contexts"])])[None]
            stats = []
            out = m(case["x"][None], case[f"{name}.t"], ctx, cc["shots"],
                    dense=cc["attention"] == "dense", stats=stats)[0]
            results.append((f"moga-a {name}", rel(out, case[f"{name}.out"])))
            if stats:
                p, gid = stats[0]
                same = bool((gid[0] == case[f"{name}.layer0_gid"]).all())
                results.append((f"moga-a {name} layer0 gid mismatch", 0.0 if same else 1.0))

    bad = 0
    for n, e in results:
        ok = e <= 1e-4
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {n}: {e:.3e}")
    if not results:
        print("skipped: no golden sets under", root, "(MOGAGEN_GOLDEN_DIR sets the folder)")
        return 77
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
