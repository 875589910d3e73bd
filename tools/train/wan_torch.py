"""PyTorch versions of the three networks mogagen runs, with the engine's tensor names.

Written from ../shared/wan-notes.md and ../shared/moga-spec.md (the engine's own
specification), for training the small default model; `check_golden.py` proves them
against the golden reference outputs before any training relies on them.

- WanDiT: the Wan2.1 DiT (original Wan names), dense or MoGA self-attention, one caption
  per shot in cross-attention.
- WanVaeDecoder: Wan2.1's causal VAE decoder (names `conv2.*`, `decoder.*`), run over the
  whole latent sequence at once (equal to Wan's frame-by-frame cached decode).
- ShapesEncoder: a small non-causal encoder used only in training (the engine decodes).
- UMT5Encoder: the umT5 encoder with Hugging Face names.
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


# How the MoGA window and frame branches run in training: "gather" (per window group and
# per frame, no N x N scores) or "mask" (full N x N masks). Both compute the same values.
MOGA_IMPL = "gather"


# Masked attention in training: "manual" (float32 N x N scores and softmax; the path of
# the first trained model) or "fused" (PyTorch's SDPA with the boolean mask). The first GPU
# runs with "fused" failed in backward, but that failure was traced to PyTorch's cuDNN SDPA
# backend, which train.py now turns off (docs/training.md): try "fused" with --preflight-only.
MASKED_KERNEL = "manual"


def attention(q, k, v, mask=None, fused=True):
    """q, k, v [..., N, D]; mask broadcastable to [..., Nq, Nk], True = attend."""
    have_sdpa = hasattr(F, "scaled_dot_product_attention")
    if fused and have_sdpa and (mask is None or MASKED_KERNEL == "fused"):
        if mask is not None and q.dim() == 4:
            mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    s = (q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1).to(v.dtype) @ v


def window_index(win_mask):
    """The window branch as gathered groups: queries with the same key set form a group.
    Returns qidx [G, Qm] (padding = N), kidx [G, Km] (padding = 0), kvalid [G, Km] and
    pos [N] (each token's place in the flattened [G * Qm] query order)."""
    N = win_mask.shape[0]
    rows, inv = torch.unique(win_mask.cpu(), dim=0, return_inverse=True)
    G = rows.shape[0]
    members = [torch.nonzero(inv == g).flatten() for g in range(G)]
    keys = [torch.nonzero(rows[g]).flatten() for g in range(G)]
    Qm = max(len(m) for m in members)
    Km = max(len(k) for k in keys)
    qidx = torch.full((G, Qm), N, dtype=torch.long)
    kidx = torch.zeros((G, Km), dtype=torch.long)
    kvalid = torch.zeros((G, Km), dtype=torch.bool)
    pos = torch.zeros(N, dtype=torch.long)
    for g in range(G):
        qidx[g, :len(members[g])] = members[g]
        pos[members[g]] = g * Qm + torch.arange(len(members[g]))
        kidx[g, :len(keys[g])] = keys[g]
        kvalid[g, :len(keys[g])] = True
    dev = win_mask.device
    return qidx.to(dev), kidx.to(dev), kvalid.to(dev), pos.to(dev)


def window_attention(q, k, v, index):
    """Exactly the masked window branch, computed per window group (no N x N scores)."""
    qidx, kidx, kvalid, pos = index
    B, H, N, D = q.shape
    qg = F.pad(q, (0, 0, 0, 1))[:, :, qidx]  # [B, H, G, Qm, D]
    o = attention(qg, k[:, :, kidx], v[:, :, kidx], kvalid[None, None, :, None, :])
    return o.flatten(2, 3)[:, :, pos]


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def load_arch(path=None):
    """The default model's architecture: configs/shapes-t2v.json (sections dit, t5, vae,
    tokenizer), the one place its sizes are written."""
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                            "shapes-t2v.json")
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# DiT


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def sinusoid(t, dim):
    """t [B] (float) -> [B, dim]: cos first, then sin, computed in float64."""
    half = dim // 2
    w = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    a = t.double()[:, None] * w[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1).float()


def rope_angles(F_, H, W, head_dim, device):
    """[N, head_dim/2] angles (float64) for tokens laid out frame, row, column."""
    c = head_dim // 2
    splits = [c - 2 * (c // 3), c // 3, c // 3]
    out = []
    for n, pos in zip(splits, [torch.arange(F_), torch.arange(H), torch.arange(W)]):
        d = 2 * n
        inv = 1.0 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
        out.append(pos.double()[:, None] * inv[None])
    f = out[0][:, None, None, :].expand(F_, H, W, -1)
    h = out[1][None, :, None, :].expand(F_, H, W, -1)
    w = out[2][None, None, :, :].expand(F_, H, W, -1)
    return torch.cat([f, h, w], dim=-1).reshape(F_ * H * W, c).to(device)


def apply_rope(x, cos, sin):
    """x [B, H, N, D] with interleaved pairs (2j, 2j+1); cos/sin [N, D/2]."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    return torch.stack([y1, y2], dim=-1).flatten(-2).to(x.dtype)


def window_mask(shots, H, W, windows, temporal_group, kv_extend, device):
    """[N, N] bool: the shot-aware window branch of moga-spec.md (query row, key column)."""
    F_ = sum(shots)
    wh, ww = windows
    row_win = torch.zeros(H, dtype=torch.long)
    for i in range(wh):
        row_win[(i * H) // wh:((i + 1) * H) // wh] = i
    col_win = torch.zeros(W, dtype=torch.long)
    for j in range(ww):
        col_win[(j * W) // ww:((j + 1) * W) // ww] = j
    spatial = (row_win[:, None] * ww + col_win[None, :]).reshape(-1)  # [H*W]
    # chunk id per frame and the frames every chunk's queries may see
    chunk_of = torch.zeros(F_, dtype=torch.long)
    allowed = []
    start = 0
    starts = [sum(shots[:s]) for s in range(len(shots))]
    for s, n in enumerate(shots):
        nchunks = (n + temporal_group - 1) // temporal_group
        for c in range(nchunks):
            a = start + c * temporal_group
            b = min(start + n, a + temporal_group)
            row = torch.zeros(F_, dtype=torch.bool)
            row[a:b] = True
            if c == 0 and s > 0:
                e = starts[s]
                row[max(starts[s - 1], e - kv_extend):e] = True
            if c == nchunks - 1 and s < len(shots) - 1:
                e = starts[s + 1]
                row[e:min(e + shots[s + 1], e + kv_extend)] = True
            chunk_of[a:b] = len(allowed)
            allowed.append(row)
        start += n
    allowed = torch.stack(allowed)  # [chunks, F]
    frame = torch.arange(F_).repeat_interleave(H * W)
    sp = spatial.repeat(F_)
    m = (sp[:, None] == sp[None, :]) & allowed[chunk_of[frame]][:, frame]
    return m.to(device)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, eps, groups):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.router = nn.Linear(dim, groups) if groups > 0 else None

    def forward(self, x, rope, layout, stats=None):
        B, N, D = x.shape
        h = self.heads

        def split(t):
            return t.view(B, N, h, D // h).transpose(1, 2)

        q = apply_rope(split(self.norm_q(self.q(x))), *rope)
        k = apply_rope(split(self.norm_k(self.k(x))), *rope)
        v = split(self.v(x))
        if self.router is None or layout.get("dense", False):
            o = attention(q, k, v)
        else:
            logits = F.linear(x.float(), self.router.weight.float(), self.router.bias.float())
            p = torch.softmax(logits, dim=-1)
            pwin, gid = p.max(dim=-1)  # ties: lowest index, as argmax
            gmask = (gid[:, :, None] == gid[:, None, :])[:, None]
            o_grp = attention(q, k, v, gmask) * pwin[:, None, :, None].to(q.dtype)
            if "win_index" in layout:
                o_win = window_attention(q, k, v, layout["win_index"])
                F_, HW = layout["frames"], N // layout["frames"]
                # the frame branch: every frame's tokens attend among themselves, as a
                # batch of [h * F] short sequences (no mask, so the fused kernels apply)
                o_frm = attention(q.reshape(B, h * F_, HW, -1), k.reshape(B, h * F_, HW, -1),
                                  v.reshape(B, h * F_, HW, -1)).reshape(B, h, N, -1)
            else:
                o_win = attention(q, k, v, layout["win"][None, None])
                o_frm = attention(q, k, v, layout["frm"][None, None])
            o = (o_grp + o_win + o_frm) / 3
            if stats is not None:
                stats.append((p, gid))
        return self.o(o.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, ctx, shot_tokens):
        """x [B, N, D]; ctx [B, S, L, D] (embedded); shot_tokens: tokens per shot."""
        B, N, D = x.shape
        h = self.heads
        q = self.norm_q(self.q(x)).view(B, N, h, D // h).transpose(1, 2)
        outs = []
        a = 0
        for s, n in enumerate(shot_tokens):
            c = ctx[:, s]
            L = c.shape[1]
            k = self.norm_k(self.k(c)).view(B, L, h, D // h).transpose(1, 2)
            v = self.v(c).view(B, L, h, D // h).transpose(1, 2)
            outs.append(attention(q[:, :, a:a + n], k, v))
            a += n
        o = torch.cat(outs, dim=2)
        return self.o(o.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim, ffn_dim, heads, eps, groups):
        super().__init__()
        self.eps = eps
        self.self_attn = SelfAttention(dim, heads, eps, groups)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, e0, ctx, rope, layout, stats=None):
        m = (self.modulation.float() + e0.float()).chunk(6, dim=1)  # each [B, 1, D]
        D = x.shape[-1]
        u = F.layer_norm(x.float(), (D,), eps=self.eps) * (1 + m[1]) + m[0]
        x = x + self.self_attn(u.to(x.dtype), rope, layout, stats).float() * m[2]
        x = x + self.cross_attn(self.norm3(x.float()).to(x.dtype), ctx, layout["shot_tokens"]).float()
        u2 = F.layer_norm(x.float(), (D,), eps=self.eps) * (1 + m[4]) + m[3]
        x = x + self.ffn(u2.to(x.dtype)).float() * m[5]
        return x


class Head(nn.Module):
    def __init__(self, dim, out, eps):
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x, e):
        m = (self.modulation.float() + e.float()[:, None]).chunk(2, dim=1)
        D = x.shape[-1]
        u = F.layer_norm(x.float(), (D,), eps=self.eps) * (1 + m[1]) + m[0]
        return self.head(u)


class WanDiT(nn.Module):
    """cfg: the engine's DiT config dict (dim, ffn_dim, freq_dim, text_dim, text_len,
    in_dim, out_dim, num_heads, num_layers, eps, attention{type, groups, windows,
    temporal_group, kv_extend})."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim = cfg["dim"]
        att = cfg.get("attention", {})
        self.groups = att.get("groups", 0) if att.get("type", "dense") == "moga" else 0
        self.windows = att.get("windows", [2, 2])
        self.temporal_group = att.get("temporal_group", 4)
        self.kv_extend = att.get("kv_extend", 2)
        self.patch = cfg.get("patch_size", [1, 2, 2])
        self.patch_embedding = nn.Conv3d(cfg["in_dim"], dim, self.patch, self.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg["text_dim"], dim),
                                            nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg["freq_dim"], dim), nn.SiLU(),
                                            nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg["ffn_dim"], cfg["num_heads"], cfg["eps"], self.groups)
            for _ in range(cfg["num_layers"]))
        pt, ph, pw = self.patch
        self.head = Head(dim, cfg["out_dim"] * pt * ph * pw, cfg["eps"])

    def layout(self, shots, H, W, dense, device):
        """Static per-shape data: RoPE tables, MoGA masks, tokens per shot."""
        F_ = sum(shots)
        hd = self.cfg["dim"] // self.cfg["num_heads"]
        ang = rope_angles(F_, H, W, hd, device)
        lay = {"rope": (torch.cos(ang).float(), torch.sin(ang).float()),
               "shot_tokens": [n * H * W for n in shots], "dense": dense or self.groups == 0}
        if not lay["dense"]:
            win = window_mask(shots, H, W, self.windows, self.temporal_group, self.kv_extend, device)
            if MOGA_IMPL == "gather":
                lay["win_index"] = window_index(win)
                lay["frames"] = F_
            else:
                frame = torch.arange(F_, device=device).repeat_interleave(H * W)
                lay["win"], lay["frm"] = win, frame[:, None] == frame[None, :]
        return lay

    def forward(self, x, t, ctx, shots, dense=False, layout=None, stats=None):
        """x [B, C, F, h, w] latents; t [B] timesteps (float); ctx [B, S, L_txt, text_dim]
        per-shot contexts, zero-padded to text_len; shots: latent frames per shot."""
        B, C, F_, h, w = x.shape
        pt, ph, pw = self.patch
        H, W = h // ph, w // pw
        if layout is None:
            layout = self.layout(shots, H, W, dense, x.device)
        tok = self.patch_embedding(x).flatten(2).transpose(1, 2).float()  # [B, N, D]
        e = self.time_embedding(sinusoid(t, self.cfg["freq_dim"]))
        e0 = self.time_projection(e).view(B, 6, -1)
        c = self.text_embedding(ctx)
        for blk in self.blocks:
            tok = blk(tok, e0, c, layout["rope"], layout, stats)
        out = self.head(tok, e)  # [B, N, (a, b, c)]
        out = out.view(B, F_, H, W, ph, pw, C).permute(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(B, C, F_, H * ph, W * pw)


# ---------------------------------------------------------------------------------------
# VAE


class CausalConv3d(nn.Conv3d):
    def __init__(self, cin, cout, k, pad):
        super().__init__(cin, cout, k, padding=0)
        pt, ph, pw = pad
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self._pad))


class VaeRMS(nn.Module):
    def __init__(self, dim, images):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return F.normalize(x, dim=1, eps=1e-12) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.residual = nn.Sequential(VaeRMS(cin, False), nn.SiLU(), CausalConv3d(cin, cout, 3, (1, 1, 1)),
                                      VaeRMS(cout, False), nn.SiLU(), nn.Identity(),
                                      CausalConv3d(cout, cout, 3, (1, 1, 1)))
        self.shortcut = CausalConv3d(cin, cout, 1, (0, 0, 0)) if cin != cout else None

    def forward(self, x):
        h = self.shortcut(x) if self.shortcut is not None else x
        return self.residual(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = VaeRMS(dim, True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y)).reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        y = attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        y = self.proj(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + y


class Resample(nn.Module):
    def __init__(self, dim, temporal):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), (1, 0, 0))

    def forward(self, x):
        b, c, t, h, w = x.shape
        if self.temporal and t > 1:
            # Wan's rule: the first latent frame skips the time conv (the 'Rep' cache);
            # the rest run it with zero history before frame 1, each frame becoming two.
            rest = self.time_conv(x[:, :, 1:]).reshape(b, 2, c, t - 1, h, w)
            rest = torch.stack((rest[:, 0], rest[:, 1]), 3).reshape(b, c, 2 * (t - 1), h, w)
            x = torch.cat([x[:, :, :1], rest], dim=2)
        b, c, t, h, w = x.shape
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, c // 2, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, (1, 1, 1))
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        ups = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i in (1, 2, 3):
                cin = cin // 2
            for _ in range(num_res_blocks + 1):
                ups.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(dim_mult) - 1:
                ups.append(Resample(cout, temperal_upsample[i]))
        self.upsamples = nn.Sequential(*ups)
        self.head = nn.Sequential(VaeRMS(dims[-1], False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, (1, 1, 1)))

    def forward(self, x):
        return self.head(self.upsamples(self.middle(self.conv1(x))))


class WanVaeDecoder(nn.Module):
    """cfg: base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample. forward takes
    the de-normalised latent [B, z, T, h, w] and returns [B, 3, 1+4(T-1), 8h, 8w]."""

    def __init__(self, cfg):
        super().__init__()
        z = cfg["z_dim"]
        self.conv2 = CausalConv3d(z, z, 1, (0, 0, 0))
        self.decoder = Decoder3d(cfg["base_dim"], z, list(cfg["dim_mult"]), cfg["num_res_blocks"],
                                 list(cfg["temperal_downsample"])[::-1])

    def forward(self, z):
        return self.decoder(self.conv2(z))


class ShapesEncoder(nn.Module):
    """Training-only encoder: video [B, 3, 1+4K, H, W] -> mean and log-variance
    [B, z, 1+K, H/8, W/8]. Latent frame 0 sees frame 0 (repeated four times), latent
    frame j frames 4j-3 .. 4j, as Wan's causal VAE lays them out."""

    def __init__(self, z_dim, width=64):
        super().__init__()
        self.stem = nn.Conv3d(3, width // 2, (1, 4, 4), (1, 4, 4))
        self.down = nn.Conv3d(width // 2, width, (4, 2, 2), (4, 2, 2))
        self.body = nn.ModuleList(nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(),
                                                nn.Conv3d(width, width, 3, padding=1))
                                  for _ in range(4))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv3d(width, 2 * z_dim, 1))

    def forward(self, video):
        x = torch.cat([video[:, :, :1].expand(-1, -1, 3, -1, -1), video], dim=2)
        x = self.down(F.silu(self.stem(x)))
        for blk in self.body:
            x = x + blk(x)
        mu, logvar = self.out(x).chunk(2, dim=1)
        return mu, logvar.clamp(-20, 5)


# ---------------------------------------------------------------------------------------
# umT5 encoder (Hugging Face names: shared.weight, encoder.block.N.layer.M....)


def t5_bucket(rel, num_buckets, max_distance):
    num_buckets //= 2
    out = (rel > 0).long() * num_buckets
    n = rel.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return out + torch.where(n < max_exact, n, large)


class UMT5Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, inner, L = cfg["d_model"], cfg["d_kv"] * cfg["num_heads"], cfg["num_layers"]
        eps = cfg["layer_norm_epsilon"]
        self.shared = nn.Embedding(cfg["vocab_size"], d)
        self.layers = nn.ModuleList()
        for _ in range(L):
            m = nn.Module()
            m.q, m.k, m.v = (nn.Linear(d, inner, bias=False) for _ in range(3))
            m.o = nn.Linear(inner, d, bias=False)
            m.rel = nn.Embedding(cfg["relative_attention_num_buckets"], cfg["num_heads"])
            m.ln0, m.ln1 = RMSNorm(d, eps), RMSNorm(d, eps)
            m.wi_0 = nn.Linear(d, cfg["d_ff"], bias=False)
            m.wi_1 = nn.Linear(d, cfg["d_ff"], bias=False)
            m.wo = nn.Linear(cfg["d_ff"], d, bias=False)
            self.layers.append(m)
        self.final = RMSNorm(d, eps)

    def hf_state_dict(self):
        sd = {"shared.weight": self.shared.weight, "encoder.embed_tokens.weight": self.shared.weight,
              "encoder.final_layer_norm.weight": self.final.weight}
        for i, m in enumerate(self.layers):
            a = f"encoder.block.{i}.layer.0."
            f = f"encoder.block.{i}.layer.1."
            sd.update({a + "SelfAttention.q.weight": m.q.weight, a + "SelfAttention.k.weight": m.k.weight,
                       a + "SelfAttention.v.weight": m.v.weight, a + "SelfAttention.o.weight": m.o.weight,
                       a + "SelfAttention.relative_attention_bias.weight": m.rel.weight,
                       a + "layer_norm.weight": m.ln0.weight,
                       f + "DenseReluDense.wi_0.weight": m.wi_0.weight,
                       f + "DenseReluDense.wi_1.weight": m.wi_1.weight,
                       f + "DenseReluDense.wo.weight": m.wo.weight, f + "layer_norm.weight": m.ln1.weight})
        return sd

    def load_hf(self, sd):
        own = self.hf_state_dict()
        with torch.no_grad():
            for k, p in own.items():
                if k == "encoder.embed_tokens.weight" and k not in sd:
                    continue  # tied to shared.weight
                p.copy_(sd[k])

    def encode(self, ids, lengths):
        """ids [B, L] (padded with 0), lengths [B] -> [B, L, d_model], differentiable. Keys
        past a caption's length are masked and its rows past the length are zero, so each
        row equals forward() on the caption's real tokens, zero-padded (the engine's
        per-shot context)."""
        c = self.cfg
        B, L = ids.shape
        x = self.shared(ids)
        pos = torch.arange(L, device=ids.device)
        bucket = t5_bucket(pos[None, :] - pos[:, None], c["relative_attention_num_buckets"],
                           c["relative_attention_max_distance"])
        real = pos[None, :] < lengths.to(ids.device)[:, None]  # [B, L]
        h, dk = c["num_heads"], c["d_kv"]
        for m in self.layers:
            y = m.ln0(x)
            q = m.q(y).view(B, L, h, dk).transpose(1, 2)
            k = m.k(y).view(B, L, h, dk).transpose(1, 2)
            v = m.v(y).view(B, L, h, dk).transpose(1, 2)
            bias = m.rel(bucket).permute(2, 0, 1)[None]
            sc = (q @ k.transpose(-1, -2) + bias).float().masked_fill(~real[:, None, None, :], float("-inf"))
            att = torch.softmax(sc, dim=-1).to(v.dtype)
            x = x + m.o((att @ v).transpose(1, 2).reshape(B, L, h * dk))
            y = m.ln1(x)
            x = x + m.wo(F.gelu(m.wi_0(y), approximate="tanh") * m.wi_1(y))
        return self.final(x) * real[..., None].to(x.dtype)

    @torch.no_grad()
    def forward(self, ids):
        """ids [L] (real tokens only) -> [L, d_model]."""
        c = self.cfg
        x = self.shared(ids)[None]
        L = ids.shape[0]
        pos = torch.arange(L, device=ids.device)
        bucket = t5_bucket(pos[None, :] - pos[:, None], c["relative_attention_num_buckets"],
                           c["relative_attention_max_distance"])
        h, dk = c["num_heads"], c["d_kv"]
        for m in self.layers:
            y = m.ln0(x)
            q = m.q(y).view(1, L, h, dk).transpose(1, 2)
            k = m.k(y).view(1, L, h, dk).transpose(1, 2)
            v = m.v(y).view(1, L, h, dk).transpose(1, 2)
            bias = m.rel(bucket).permute(2, 0, 1)[None]
            s = torch.softmax((q @ k.transpose(-1, -2) + bias).float(), dim=-1)
            x = x + m.o((s @ v).transpose(1, 2).reshape(1, L, h * dk))
            y = m.ln1(x)
            x = x + m.wo(F.gelu(m.wi_0(y), approximate="tanh") * m.wi_1(y))
        return self.final(x)[0]


def load_into(module, sd, strict=True, fill_missing=None):
    """Copies tensors by name; fill_missing(name, param) handles names absent from sd."""
    own = dict(module.named_parameters())
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if strict and (extra or (missing and fill_missing is None)):
        raise KeyError(f"missing {missing[:8]} extra {extra[:8]}")
    with torch.no_grad():
        for k, p in own.items():
            if k in sd:
                if tuple(sd[k].shape) != tuple(p.shape):
                    raise ValueError(f"{k}: shape {tuple(sd[k].shape)} != {tuple(p.shape)}")
                p.copy_(sd[k])
            else:
                fill_missing(k, p)
