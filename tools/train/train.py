"""Step 2 of training the default model (GPU): the VAE, then the MoGA DiT, then export.

    python3 tools/train/train.py --prep .train/prep --out models/default \
        --seed 1

1. Text: the small umT5 of prepare.py (random from its seed) encodes each caption; each
   caption's rows are kept to its real tokens and zero-padded to text_len (what the engine
   does per shot). By default it trains with the DiT (--text-encoder train); --text-encoder
   frozen keeps it as prepared.
2. VAE: the Wan2.1 causal decoder (wan_torch.WanVaeDecoder, base_dim 16) and a small
   training-only encoder learn to reconstruct procedural clips (shapes.py) with L1 + MSE
   and a light KL term. Per-channel latent statistics become latents_mean / latents_std.
3. DiT: Wan2.1 DiT with MoGA self-attention (M router groups, window and frame branches,
   moga-spec.md) and one caption per shot, trained by flow matching (x_t = (1-s) x0 + s e,
   target e - x0, t = 1000 s, logit-normal s with shift 3) on clips of one to three shots,
   10% of them with the empty caption (classifier-free guidance), plus the MoGA paper's
   group-balancing loss  M * sum_g f_g P_g  (weight 0.02). EMA weights are exported.
4. Export: a diffusers-layout folder the engine loads (transformer/, vae/, text_encoder/,
   tokenizer/, model_index.json with the sampling defaults), training.json with the losses.

Budgets are wall-clock seconds (--vae-seconds, --dit-seconds) or exact step counts
(--vae-steps, --dit-steps: reproduces a run from training.json). Everything random is
seeded by --seed.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402
import st  # noqa: E402
import semantic  # noqa: E402
import wan_torch as wt  # noqa: E402

ARCH = wt.load_arch()  # configs/shapes-t2v.json
VAE_CFG = ARCH["vae"]


def dit_config(text_dim, text_len, a):
    """The DiT section of the architecture, with the text encoder's width, the caption
    length, and this run's router group count and, where --dit-dim / --dit-layers /
    --dit-heads ask for them, its width (the FFN three times it), depth and heads."""
    cfg = json.loads(json.dumps(ARCH["dit"]))
    cfg.update(text_dim=text_dim, text_len=text_len)
    cfg["attention"]["groups"] = a.groups
    if getattr(a, "dit_dim", 0):
        cfg.update(dim=a.dit_dim, ffn_dim=3 * a.dit_dim)
    if getattr(a, "dit_layers", 0):
        cfg["num_layers"] = a.dit_layers
    if getattr(a, "dit_heads", 0):
        cfg["num_heads"] = a.dit_heads
    if cfg["dim"] % cfg["num_heads"] or (cfg["dim"] // cfg["num_heads"]) % 2:
        raise SystemExit(f"train.py: dim {cfg['dim']} does not split into {cfg['num_heads']} heads of an even size")
    return cfg


# shot layouts (latent frames per shot) the DiT sees; 13 latent frames = 49 video frames.
# A third are one 13-frame shot, the default video: with two in twelve (up to run 9) the
# model cut single-shot prompts into pieces as if they were shot lists.
DIT_LAYOUTS = [[13], [13], [13], [13], [7, 6], [6, 7], [9, 4], [4, 9], [5, 4, 4], [4, 5, 4],
               [5, 5, 3], [9], [5, 4], [3, 3, 3]]
# The VAE's clips: (latent frames per shot, clips per batch). Nine-frame clips alone
# (run 8's 'short' recipe) left the causal decoder untrained on the long histories of a
# 49-frame video: decoded whole, run 8's samples lost their background and colours after
# about 16 frames, while the same latents decoded three latent frames at a time kept them.
# 'mixed' adds 49-frame clips (with cuts) at a quarter of the batch, about the same frames
# per step.
VAE_LAYOUTS = {"short": [([3], 8), ([3], 8), ([2, 1], 8), ([1, 2], 8)],
               "mixed": [([3], 8), ([13], 2), ([2, 1], 8), ([5, 4, 4], 2), ([1, 2], 8), ([7, 6], 2)]}


def amp(device):
    """bf16 autocast on the GPU; plain float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def adamw(params, lr, weight_decay, device):
    """AdamW; on the GPU the fused single-kernel update (PyTorch 2), where the per-tensor
    update would launch several kernels for each of the model's ~170 tensors every step."""
    kw = dict(lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(params, **kw)


def lr_at(base, step, warmup, frac):
    """Linear warm-up, then cosine decay to 10% over the budget (frac = share used)."""
    cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))
    return base * min(1.0, (step + 1) / warmup) * cos


def used(steps_budget, seconds_budget, step, t0):
    return step / steps_budget if steps_budget else (time.time() - t0) / seconds_budget


class Log:
    def __init__(self, path):
        self.f = open(path, "a")
        self.t0 = time.time()

    def __call__(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


class Text:
    """The caption side: every caption's token ids (prepare.py) and the small umT5 that
    encodes them, either frozen (its outputs computed once, a table) or trained with the
    DiT (--text-encoder train: each step encodes the batch's captions). The last caption is
    the empty one (caption id -1), used for classifier-free guidance."""

    def __init__(self, prep, device, train):
        self.cfg = json.load(open(os.path.join(prep, "text_encoder", "config.json")))
        self.caps = json.load(open(os.path.join(prep, "captions.json")))
        self.t5 = wt.UMT5Encoder(self.cfg)
        self.t5.load_hf(st.load(os.path.join(prep, "text_encoder", "model.safetensors")))
        self.t5 = self.t5.to(device)
        self.len = self.caps["text_len"]
        self.dim = self.cfg["d_model"]
        self.count = len(self.caps["ids"])
        self.ids = torch.zeros(self.count, self.len, dtype=torch.long)
        for i, t in enumerate(self.caps["ids"]):
            self.ids[i, :len(t)] = torch.tensor(t)
        self.lens = torch.tensor([len(t) for t in self.caps["ids"]])
        self.ids, self.lens = self.ids.to(device), self.lens.to(device)
        self.train = train
        self.table = None
        self.t5.requires_grad_(train)
        if not train:
            self.freeze()

    def freeze(self):
        """From now on the captions come from a table of the encoder's present outputs."""
        with torch.no_grad():
            self.table = torch.cat([self.t5.encode(self.ids[i:i + 512], self.lens[i:i + 512]).float()
                                    for i in range(0, self.count, 512)])
        self.t5.requires_grad_(False)

    def ctx(self, ids):
        """ids [B, S] caption ids (-1: the empty caption) -> contexts [B, S, L, d]."""
        ids = ids.to(self.ids.device)
        ids = torch.where(ids < 0, torch.full_like(ids, self.count - 1), ids)
        if self.table is not None:
            return self.table[ids]
        B, S = ids.shape
        flat = ids.flatten()
        return self.t5.encode(self.ids[flat], self.lens[flat]).view(B, S, self.len, self.dim)


def train_vae(a, log, gen, device):
    enc = wt.ShapesEncoder(16).to(device)
    dec = wt.WanVaeDecoder(VAE_CFG).to(device)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = adamw(params, a.vae_lr, 0.0, device)
    w, h = a.width, a.height
    step, t0, hist = 0, time.time(), []
    while True:
        if a.vae_steps:
            if step >= a.vae_steps:
                break
        elif time.time() - t0 > a.vae_seconds:
            break
        lay, batch = VAE_LAYOUTS[a.vae_clips][step % len(VAE_LAYOUTS[a.vae_clips])]
        alpha = [] if a.vae_object_weight else None
        video, _ = shapes.sample_clips(gen, max(1, batch * a.vae_batch // 8), lay, h, w, device,
                                       alpha_out=alpha)
        lr = lr_at(a.vae_lr, step, 200, used(a.vae_steps, a.vae_seconds, step, t0) if a.lr_decay == "cosine" else 0)
        for g in opt.param_groups:
            g["lr"] = lr
        with amp(device):
            mu, logvar = enc(video)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec = dec(z).float()
        err = rec - video
        l1 = err.abs().mean()
        l2 = (err ** 2).mean()
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
        if a.vae_object_weight:  # the object's pixels (its coverage) weigh 1 + W; l1, l2 stay plain
            wgt = 1.0 + a.vae_object_weight * alpha[0]
            loss = ((err.abs() + err ** 2) * wgt).mean() / wgt.mean() + a.vae_kl * kl
        else:
            loss = l1 + l2 + a.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.append(torch.stack([l1.detach(), l2.detach(), kl.detach()]))  # no per-step sync
        step += 1
        if step % 100 == 0:
            m = torch.stack(hist[-100:]).mean(0).tolist()
            log(f"vae step {step}: l1 {m[0]:.4f} mse {m[1]:.5f} kl {m[2]:.3f}")
    final = torch.stack(hist[-100:]).mean(0).tolist()
    return enc, dec, {"steps": step, "seconds": round(time.time() - t0, 1),
                      "final_l1": final[0], "final_mse": final[1], "final_kl": final[2],
                      "psnr_db": -10 * math.log10(final[1] / 4.0)}


@torch.no_grad()
def long_clip_psnr(enc, dec, a, device):
    """The VAE on whole 49-frame single-shot clips (the default video), as the engine
    decodes them: PSNR (dB) of frames 0-8, 9-24 and 25-48. A decoder that only knows short
    histories loses the late frames (run 8: the background went black after frame 16)."""
    gen = torch.Generator().manual_seed(12345)
    video, _ = shapes.sample_clips(gen, 8, [13], a.height, a.width, device)
    with amp(device):
        mu, _ = enc(video)
        rec = dec(mu).float().clamp(-1, 1)
    out = {}
    for lo, hi in ((0, 9), (9, 25), (25, 49)):
        mse = float(((rec[:, :, lo:hi] - video[:, :, lo:hi]) ** 2).mean())
        out[f"frames {lo}-{hi - 1}"] = round(-10 * math.log10(max(mse, 1e-12) / 4.0), 2)
    return out


@torch.no_grad()
def vae_colour_check(enc, dec, a, device):
    """The VAE alone, per object colour: four 33-frame clips of that colour (shape, size,
    motion and background drawn from the grammar), encoded and decoded; the object's colour
    named as the tests name it (semantic.py) in each drawn clip and its reconstruction. A
    colour the VAE does not carry, the DiT cannot draw."""
    out = {}
    for ci, colour in enumerate(shapes.COLOURS):
        ids = [i for i, c in enumerate(shapes.CAPTIONS) if c[1] == colour]
        gen = torch.Generator().manual_seed(777 + ci)
        pick = torch.tensor(ids)[torch.randint(len(ids), (4,), generator=gen)]
        p = shapes.sample_params(gen, 4, 33, a.height, a.width, caption_ids=pick)
        video = shapes.render(p, a.height, a.width, device)
        with amp(device):
            mu, _ = enc(video)
            rec = dec(mu).float().clamp(-1, 1)
        drawn, recon = [], []
        for b in range(video.shape[0]):
            for v, names in ((video[b], drawn), (rec[b], recon)):
                obj, share, _ = semantic.analyse(v.cpu())
                names.append(semantic.colour_name(obj) if obj is not None and share > 0.002 else "none")
        out[colour] = {"drawn": drawn, "reconstructed": recon,
                       "right": sum(r == colour for r in recon), "of": len(recon)}
    return out


@torch.no_grad()
def latent_stats(enc, a, gen, device):
    mus = []
    for i in range(16):
        video, _ = shapes.sample_clips(gen, 8, DIT_LAYOUTS[i % len(DIT_LAYOUTS)], a.height, a.width, device)
        with amp(device):
            mu, _ = enc(video)
        mus.append(mu.float().transpose(0, 1).reshape(16, -1))
    m = torch.cat(mus, 1)
    return m.mean(1), m.std(1)


def balance_loss(stats, groups):
    """Switch-style load balancing, M * sum_g f_g * P_g, per video and per MoGA layer, then
    averaged: the engine routes one video at a time, so each video must be balanced (a
    batch-wide average let single videos route 3.9x a group's fair share at inference)."""
    out = 0.0
    for p, gid in stats:
        f = F.one_hot(gid, groups).float().mean(dim=1)  # [B, M]
        P = p.mean(dim=1)
        out = out + groups * (f.detach() * P).sum(dim=1).mean()
    return out / max(len(stats), 1)


def train_dit(a, log, gen, device, enc, mean, std, text, resume=None, slice_seconds=0.0,
              probe=True):
    """Flow-matching training of the MoGA DiT. resume: a state from an earlier call (the
    budget --dit-seconds / --dit-steps counts over all calls); slice_seconds: stop this call
    after so many seconds (0: run to the end of the budget); probe: every 500 steps, measure
    how much worse the prediction gets with another clip's captions (the model's use of the
    text). With text.train the umT5 trains too (same optimizer, its own EMA). Returns
    (model, config, info, state); state["done"] says whether the budget is used up."""
    cfg = dit_config(text.dim, text.len, a)
    model = wt.WanDiT(cfg).to(device)
    with torch.no_grad():
        for blk in model.blocks:
            blk.self_attn.router.weight.normal_(0, 0.02)
            blk.self_attn.router.bias.zero_()
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    t5_ema = {k: v.detach().clone().float() for k, v in text.t5.state_dict().items()} if text.train else {}
    params = list(model.parameters()) + (list(text.t5.parameters()) if text.train else [])
    opt = adamw(params, a.dit_lr, 0.01, device)
    # noise and timesteps are drawn on the device (a CPU draw of the noise, copied over,
    # cost as much as the step); losses stay on the device until a log line needs them
    dgen = torch.Generator(device=device).manual_seed(a.seed * 1000 + 17)
    step, hist, before, probes, low_hist, low_share = 0, [], 0.0, [], [], float("nan")
    if resume:
        model.load_state_dict(resume["model"])
        if text.train:
            text.t5.load_state_dict(resume["t5"])
            t5_ema = {k: v.to(device) for k, v in resume["t5_ema"].items()}
        probes = resume.get("probes", [])
        opt.load_state_dict(resume["opt"])
        ema = {k: v.to(device) for k, v in resume["ema"].items()}
        step, hist, before = resume["step"], resume["hist"], resume["seconds"]
        gen.set_state(resume["gen"].cpu())
        dgen.set_state(resume["dgen"].cpu())
        log(f"dit: resumed at step {step} after {before:.0f} s")
    ema_keys, t5_keys = list(ema), list(t5_ema)
    ema_list = [ema[k] for k in ema_keys] + [t5_ema[k] for k in t5_keys]
    layouts = {}
    t0 = time.time() - before  # so that time.time() - t0 counts every call's training time
    t_call = time.time()
    mean5, std5 = mean[None, :, None, None, None], std[None, :, None, None, None]
    done = False
    reuse_left = 0
    while True:
        if a.dit_steps:
            if step >= a.dit_steps:
                done = True
                break
        elif time.time() - t0 > a.dit_seconds:
            done = True
            break
        if slice_seconds and time.time() - t_call > slice_seconds:
            break
        if reuse_left == 0:  # a new batch: drawn, rendered and encoded
            if a.dit_preflight:  # every layout once, in order
                shots = DIT_LAYOUTS[step % len(DIT_LAYOUTS)]
            else:
                shots = DIT_LAYOUTS[int(torch.randint(len(DIT_LAYOUTS), (1,), generator=gen))]
            with torch.no_grad():
                alpha = []
                video, ids = shapes.sample_clips(gen, a.dit_batch, shots, a.height, a.width, device,
                                                 drop_caption=0.1, alpha_out=alpha)
                with amp(device):
                    mu, _ = enc(video)
                x0 = (mu.float() - mean5) / std5
                # the loss weight: 1, plus --object-weight where the object is (the object is a
                # few percent of the pixels, so an unweighted loss is mostly the background's)
                obj = shapes.latent_mask(alpha[0])  # also the text-use probe's object positions
            # --data-reuse: the same clips for that many steps, each with its own noise and
            # noise levels (drawing and encoding a batch is about a quarter of a step)
            reuse_left = 1 if a.dit_preflight else max(1, a.data_reuse)
        reuse_left -= 1
        ctx = text.ctx(ids)
        B = x0.shape[0]
        u = torch.sigmoid(torch.randn(B, generator=dgen, device=device))
        s = shifted(u, a.shift)
        if a.uniform_t > 0:  # a share of the clips at uniform noise levels (routing balance at low noise)
            flat = torch.rand(B, generator=dgen, device=device)
            pick = torch.rand(B, generator=dgen, device=device) < a.uniform_t
            s = torch.where(pick, flat, s)
        noise = torch.randn(x0.shape, generator=dgen, device=device)
        s5 = s[:, None, None, None, None]
        xt = (1 - s5) * x0 + s5 * noise
        key = tuple(shots)
        if key not in layouts:
            layouts[key] = model.layout(list(shots), x0.shape[3] // 2, x0.shape[4] // 2, False, device)
        lr = lr_at(a.dit_lr, step, 300, used(a.dit_steps, a.dit_seconds, step, t0) if a.lr_decay == "cosine" else 0)
        for g in opt.param_groups:
            g["lr"] = lr
        stats = []
        with amp(device):
            pred = model(xt, s * 1000, ctx, list(shots), layout=layouts[key], stats=stats)
        err = (pred.float() - (noise - x0)) ** 2
        mse = err.mean()  # the plain flow MSE, reported (comparable across runs)
        if a.object_weight:
            wgt = 1.0 + a.object_weight * obj
            flow = (err * wgt).mean() / wgt.mean()
        else:
            flow = mse
        bal = balance_loss(stats, a.groups)
        loss = flow + a.balance * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if probe and step % 500 == 0:
            with torch.no_grad(), amp(device):
                wrong = model(xt, s * 1000, ctx.detach().roll(1, dims=0), list(shots), layout=layouts[key])
            werr = (wrong.float() - (noise - x0)) ** 2
            gap = float(werr.mean() - mse.detach())
            # the same on the object's latent positions only: colour, shape and motion live there
            on = obj.expand_as(err).bool()
            ogap = float(werr[on].mean() - err.detach()[on].mean()) if bool(on.any()) else float("nan")
            probes.append([step, gap, ogap])
            log(f"dit step {step}: text use: another clip's captions add {gap:.4f} to the mse "
                f"({float(mse):.4f}), {ogap:.4f} on the object")
        with torch.no_grad():
            d = min(a.ema, (1 + step) / (10 + step))
            cur = model.state_dict()
            cur_t5 = text.t5.state_dict() if text.train else {}
            torch._foreach_mul_(ema_list, d)
            torch._foreach_add_(ema_list, [cur[k].float() for k in ema_keys] +
                                [cur_t5[k].float() for k in t5_keys], alpha=1 - d)
            per_video = torch.stack([F.one_hot(gid, a.groups).float().mean(dim=1).amax(dim=1)
                                     for _, gid in stats]).amax(dim=0)  # [B] over groups and layers
            hist.append(torch.stack([mse.detach(), torch.as_tensor(bal, device=device).detach().float(),
                                     per_video.max() * a.groups]))
            # the same over the clips below s = 0.5, the sampler's second half (-1: none this step)
            low_hist.append(torch.where(s < 0.5, per_video, torch.full_like(per_video, -1.0)).max() * a.groups)
        step += 1
        if step % 100 == 0:
            hist = hist[:-100] + [h.tolist() if torch.is_tensor(h) else h for h in hist[-100:]]
            m = torch.tensor(hist[-100:]).mean(0).tolist()
            low = [v for v in torch.stack(low_hist[-100:]).tolist() if v >= 0]
            low_hist = low_hist[-100:]
            low_share = sum(low) / len(low) if low else float("nan")
            log(f"dit step {step} ({step / (time.time() - t0):.1f} steps/s): mse {m[0]:.4f} "
                f"balance {m[1]:.3f} largest group of one video {m[2]:.2f}x fair "
                f"({low_share:.2f}x below s = 0.5)")
    hist = [h.tolist() if torch.is_tensor(h) else h for h in hist]
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step,
             "hist": hist, "seconds": time.time() - t0, "gen": gen.get_state(),
             "dgen": dgen.get_state(), "done": done, "probes": probes,
             "t5": text.t5.state_dict() if text.train else None, "t5_ema": t5_ema}
    final = torch.tensor(hist[-200:]).mean(0).tolist() if hist else [float("nan")] * 3
    info = {"steps": step, "seconds": round(time.time() - t0, 1), "final_mse": final[0],
            "final_balance_loss": final[1], "final_largest_group_vs_fair": final[2],
            "final_largest_group_vs_fair_below_s05": low_share,
            "text_encoder": "trained" if text.train else "frozen",
            "text_use_mse_gap": probes[-1][1] if probes else None,
            "text_use_object_mse_gap": probes[-1][2] if probes and len(probes[-1]) > 2 else None,
            "object_weight": a.object_weight, "uniform_t": a.uniform_t, "bg_shading": a.bg_shading,
            "data_reuse": a.data_reuse}
    return model, cfg, info, state


def timed(fn, device):
    """(seconds, fn()) with the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - t1, out


def choose_attention(a, log, device, text):
    """--moga-impl / --masked-kernel auto: time one DiT training step (forward, backward)
    of each way of running the MoGA branches on a three-shot batch of the training size,
    check that its prediction and gradients match the tested reference (N x N masks,
    float32 scores) and pick the fastest that does. Returns (impl, kernel)."""
    impls = ["mask", "gather"] if a.moga_impl == "auto" else [a.moga_impl]
    kernels = ["manual", "fused"] if a.masked_kernel == "auto" else [a.masked_kernel]
    combos = [("mask", "manual")] + [(i, k) for i in impls for k in kernels if (i, k) != ("mask", "manual")]
    torch.manual_seed(a.seed)
    model = wt.WanDiT(dit_config(text.dim, text.len, a)).to(device)
    with torch.no_grad():
        for blk in model.blocks:
            blk.self_attn.router.weight.normal_(0, 0.5)  # spread tokens over the groups
    gen = torch.Generator().manual_seed(a.seed)
    shots = [5, 4, 4]
    B = a.dit_batch
    x = torch.randn(B, 16, sum(shots), a.height // 8, a.width // 8, generator=gen).to(device)
    ids = torch.randint(text.count - 1, (B, len(shots)), generator=gen)
    with torch.no_grad():
        ctx = text.ctx(ids)
    t = torch.rand(B, generator=gen).to(device) * 1000
    ref, results = None, []
    for impl, kern in combos:
        wt.MOGA_IMPL, wt.MASKED_KERNEL = impl, kern
        try:
            lay = model.layout(shots, x.shape[3] // 2, x.shape[4] // 2, False, device)
            def step():
                model.zero_grad(set_to_none=True)
                with amp(device):
                    pred = model(x, t, ctx, shots, layout=lay).float()
                pred.square().mean().backward()
                return pred

            times = []
            for it in range(4):
                sec, pred = timed(step, device)
                times.append(sec)
            grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
            out = (pred.detach(), grads)
        except RuntimeError as e:  # a backend that cannot run this shape is skipped
            log(f"attention {impl}/{kern}: fails ({str(e).splitlines()[0][:160]})")
            continue
        if ref is None:
            ref = out
        err = max(float((o - r).norm() / r.norm()) for o, r in zip(out, ref))
        sec = min(times[1:])
        results.append((sec, impl, kern, err))
        log(f"attention {impl}/{kern}: {sec * 1000:.1f} ms per step (forward + backward, batch {B}), "
            f"relative difference to mask/manual {err:.2e}")
    enc = wt.ShapesEncoder(16).to(device)
    @torch.no_grad()
    def data():  # the data path of one step: drawing the clips and encoding them
        video, _ = shapes.sample_clips(gen, B, shots, a.height, a.width, device, drop_caption=0.1)
        with amp(device):
            return enc(video)

    times = [timed(data, device)[0] for it in range(3)]
    log(f"data: {min(times[1:]) * 1000:.1f} ms per batch of {B} clips (drawn and encoded)")
    good = [r for r in results if r[3] < 2e-2]
    if not good:
        raise SystemExit("no MoGA attention implementation runs on this device")
    sec, impl, kern, err = min(good)
    log(f"attention: using {impl}/{kern}")
    del model, enc
    return impl, kern


def profile_dit(a, log, device, text):
    """--profile-steps N: N DiT training steps (untrained encoder, throw-away weights) under
    torch.profiler; logs the ops that take the most device time and the CPU/device totals,
    to see whether a step is bound by kernels or by launching them."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    run = argparse.Namespace(**vars(a))
    run.dit_steps, run.dit_preflight = a.profile_steps, False
    t1 = time.time()
    with profile(activities=acts) as prof:
        train_dit(run, log, torch.Generator().manual_seed(0), device, wt.ShapesEncoder(16).to(device),
                  torch.zeros(16, device=device), torch.ones(16, device=device), copy.deepcopy(text),
                  probe=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.time() - t1
    table = None
    for key in (("self_cuda_time_total", "self_device_time_total") if device.type == "cuda"
                else ("self_cpu_time_total",)):
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=25)
            break
        except Exception:  # noqa: BLE001 -- the sort key's name changed across versions
            continue
    log(f"profile of {a.profile_steps} DiT steps ({wall:.2f} s wall, with the profiler):\n{table}")


def ema_model(cfg, state, device):
    model = wt.WanDiT(cfg).to(device)
    model.load_state_dict({k: v.to(device) for k, v in state["ema"].items()})
    return model.eval()


def shifted(sigma, shift):
    """Flow matching's timestep shift (Wan's sample_shift): sigma -> shift sigma / (1 + (shift - 1) sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@torch.no_grad()
def sample(model, dec, text, caption_ids, shots, a, mean, std, device, steps=25, guidance=None,
           seed=0):
    """Euler flow-matching sampler with CFG, decoded (a check; the engine uses UniPC)."""
    x = sample_latent(model, text, caption_ids, shots, a, device, steps, guidance, seed)
    z = x * std[None, :, None, None, None] + mean[None, :, None, None, None]
    return dec(z).float().clamp(-1, 1)[0]


@torch.no_grad()
def sample_latent(model, text, caption_ids, shots, a, device, steps=25, guidance=None, seed=0):
    """The DiT's normalised latent [1, 16, F, h, w] after Euler flow-matching sampling with
    CFG: one caption id per shot, a.height / a.width as the video's settings, and the
    sampling defaults the export writes (a.sample_shift; a.sample_guidance unless given)."""
    if guidance is None:
        guidance = a.sample_guidance
    g = torch.Generator().manual_seed(seed)
    F_ = sum(shots)
    x = torch.randn(1, 16, F_, a.height // 8, a.width // 8, generator=g).to(device)
    sig = shifted(torch.linspace(1, 0, steps + 1), a.sample_shift)
    cond = text.ctx(torch.tensor([caption_ids]))
    unc = text.ctx(torch.full((1, len(shots)), -1))
    lay = model.layout(list(shots), x.shape[3] // 2, x.shape[4] // 2, False, device)
    for i in range(steps):
        t = torch.full((1,), float(sig[i]) * 1000, device=device)
        with amp(device):
            vc = model(x, t, cond, shots, layout=lay).float()
            vu = model(x, t, unc, shots, layout=lay).float()
        x = x + float(sig[i + 1] - sig[i]) * (vu + guidance * (vc - vu))
    return x


@torch.no_grad()
def calibrate_routers(model, text, a, device, log, rounds=12, videos=16, steps=10):
    """Loss-free balancing of the trained routers, after training (the bias update of
    DeepSeek-V3's auxiliary-loss-free balancing): sample `videos` random captions along the
    sampler's trajectory (cond and uncond forwards, as guidance runs them), average each
    block's group shares over all those forwards, and move each router bias by -step *
    log(share), with a shrinking step. The training loss balances the groups on average over
    training clips; this evens out what is left in the regime the engine routes, from pure
    noise to the last step.

    The step is measured in each block's own logit scale: half the mean gap between a
    token's two largest router logits. Run 10's routers were nearly flat (gaps of 0.04 to
    0.2, p_win about 0.3), so a fixed step of 0.5 moved whole populations from group to
    group and the worst share did not improve (3.98x to 3.97x).

    Before and after are measured on the same held-out videos (their own seed); the new
    biases are kept only if the worst per-video share there is no worse. Returns a summary."""
    gen = torch.Generator().manual_seed(a.seed + 7)
    F_, h, w = 13, a.height // 8, a.width // 8
    lay = model.layout([F_], h // 2, w // 2, False, device)
    sig = shifted(torch.linspace(1, 0, steps + 1), a.sample_shift)  # the exported defaults' trajectory
    M = a.groups

    def shares(g):
        x = torch.randn(videos, 16, F_, h, w, generator=g).to(device)
        ids = torch.randint(text.count - 1, (videos, 1), generator=g)
        cond, unc = text.ctx(ids), text.ctx(torch.full((videos, 1), -1))
        mean, gap, worst = None, None, 0.0
        for i in range(steps):
            t = torch.full((videos,), float(sig[i]) * 1000, device=device)
            vs = []
            for ctx in (cond, unc):
                st = []
                with amp(device):
                    vs.append(model(x, t, ctx, [F_], layout=lay, stats=st).float())
                f = torch.stack([F.one_hot(gid, M).float().mean(dim=1) for _, gid in st])  # [L, B, M]
                top = torch.stack([torch.log(p.float().clamp(min=1e-12)).topk(2, dim=-1).values for p, _ in st])
                gp = (top[..., 0] - top[..., 1]).flatten(1).mean(dim=1)  # [L] mean top-2 logit gap
                worst = max(worst, float(f.max()) * M)
                mean = f.mean(dim=1) if mean is None else mean + f.mean(dim=1)
                gap = gp if gap is None else gap + gp
            x = x + float(sig[i + 1] - sig[i]) * (vs[1] + a.sample_guidance * (vs[0] - vs[1]))
        return mean / (2 * steps), gap / (2 * steps), worst  # [L, M] shares, [L] gaps, worst share

    held_out = lambda: torch.Generator().manual_seed(a.seed + 11)  # noqa: E731 -- the same videos each time
    original = [blk.self_attn.router.bias.clone() for blk in model.blocks]
    _, _, before = shares(held_out())
    decay = 1.0
    for r in range(rounds):
        sh, gap, _ = shares(gen)
        for blk, s_b, g_b in zip(model.blocks, sh, gap):
            b = blk.self_attn.router.bias
            step = 0.5 * float(g_b) * decay
            b -= step * torch.clamp(torch.log(torch.clamp(s_b * M, min=1e-3)), -1.0, 1.0).to(b.dtype)
        decay *= 0.85
    _, _, after = shares(held_out())
    kept = after <= before
    if not kept:  # no better on its own measure: the trained biases stay
        for blk, b in zip(model.blocks, original):
            blk.self_attn.router.bias.copy_(b)
    out = {"rounds": rounds, "videos": videos, "steps": steps, "kept": kept,
           "largest_group_vs_fair_before": round(before, 2), "largest_group_vs_fair_after": round(after, 2)}
    log(f"routers calibrated: {out}")
    return out


def export(a, model, cfg, dec, mean, std, prep, text, info):
    out = a.out
    if os.path.exists(out):
        shutil.rmtree(out)
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        os.makedirs(os.path.join(out, sub))
    meta = {"format": "pt", "producer": "mogagen tools/train/train.py", "seed": a.seed}
    sd = {k: v.float() for k, v in model.state_dict().items()}
    matrices = {k for k, v in sd.items() if v.dim() >= 2 and "modulation" not in k}
    st.save(os.path.join(out, "transformer", "diffusion_pytorch_model.safetensors"), sd, meta, bf16=matrices)
    json.dump(cfg, open(os.path.join(out, "transformer", "config.json"), "w"), indent=2)
    st.save(os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"),
            {k: v.float() for k, v in dec.state_dict().items()}, meta)
    vcfg = dict(VAE_CFG, latents_mean=[round(float(v), 6) for v in mean],
                latents_std=[round(float(v), 6) for v in std])
    json.dump(vcfg, open(os.path.join(out, "vae", "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(prep, "text_encoder", "config.json"), os.path.join(out, "text_encoder"))
    # the umT5 as trained (or as prepare.py made it, if frozen); the embedding is tied
    t5 = {k: v.detach().float() for k, v in text.t5.hf_state_dict().items()
          if k != "encoder.embed_tokens.weight"}
    st.save(os.path.join(out, "text_encoder", "model.safetensors"), t5, meta)
    shutil.copy(os.path.join(prep, "tokenizer", "spiece.model"), os.path.join(out, "tokenizer"))
    index = {"_class_name": "WanPipeline",
             "_mogagen": {"name": "mogagen-shapes", "trained": True,
                          "defaults": {"size": f"{a.width}x{a.height}", "frames": 49, "steps": 25,
                                       "shift": a.sample_shift, "guidance": a.sample_guidance,
                                       "negative_prompt": "",
                                       "fps": 24}},
             "transformer": ["diffusers", "WanTransformer3DModel"],
             "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5TokenizerFast"],
             "vae": ["diffusers", "AutoencoderKLWan"]}
    json.dump(index, open(os.path.join(out, "model_index.json"), "w"), indent=2)
    json.dump(info, open(os.path.join(out, "training.json"), "w"), indent=2)
    with open(os.path.join(out, "MODEL_CARD.md"), "w") as f:
        f.write(model_card(a, info))


def model_card(a, info):
    """The model card: data, architecture, training command, time and final losses, and
    the export's own colour checks. What the engine's renders show is added by the
    semantic tests (tests/test_default_model.cpp) before the model is committed."""
    v, d = info["vae"], info["dit"]
    cmds = [v.get("command")] + d.get("commands", []) + [info["command"]]
    commands = "\n".join(f"- `{c}`" for c in dict.fromkeys(c for c in cmds if c))
    checks = "\n".join(
        f"| {c['caption']} | {c['colour']} | {c['want']} |" for c in info.get("checks", []))
    cal = d.get("router_calibration", {})
    calibration = (
        f"Router biases calibrated after training (loss-free balancing over {cal.get('videos', 0)} sampled videos "
        f"x {cal.get('steps', 0)} steps, cond and uncond): the largest group of one video and block went from "
        f"{cal.get('largest_group_vs_fair_before')}x to {cal.get('largest_group_vs_fair_after')}x its fair share "
        f"({'kept' if cal.get('kept') else 'not kept: the trained biases stay'})."
        if cal.get("rounds") else "Router biases not calibrated after training (`--calibrate-rounds 0`).")
    sem = info.get("semantic", {})
    sem_rows = "\n".join(
        f"| {r['prompt']} | {r['seed']} | {r['colour']} | {'yes' if r['colour_ok'] else 'no'} | "
        f"{r['motion'][0]:+.2f}, {r['motion'][1]:+.2f} | {'yes' if r['motion_ok'] else 'no'} |"
        for r in sem.get("cases", []))
    return f"""# mogagen-shapes: the small default text-to-video model

Trained by `tools/train/` (docs/training.md) on procedural videos, so that
`mogagen --prompt` draws something real on any machine. It is not a general model.

## What it was trained on
Circles, squares and triangles in eight colours (red, orange, yellow, green, cyan, blue,
purple, white) that move left, right, up or down, turn, grow or shrink over six plain
backgrounds (black, white, gray, blue, green, red). Captions follow one grammar:
`a [small|big] <colour> <shape> <motion> on a <background> background` (2,640 captions).
Clips are {a.width}x{a.height}, 33 or 49 frames at 24 fps, with one to three shots cut
together. Anything outside the grammar (other objects, words, scenes, textures, people) is
beyond it: unknown words reach the text encoder as unknown pieces.

## Architecture (`configs/shapes-t2v.json`)
- Wan2.1 DiT: dim {info['dit_config']['dim']}, {info['dit_config']['num_layers']} layers, \
{info['dit_config']['num_heads']} heads, MoGA with M = {info['dit_config']['attention']['groups']} router groups \
(windows {'x'.join(map(str, info['dit_config']['attention']['windows']))}, temporal group \
{info['dit_config']['attention']['temporal_group']}, kv extend {info['dit_config']['attention']['kv_extend']}), one caption per shot.
- umT5 encoder: width 64, 2 layers, {"trained with the DiT" if d.get("text_encoder") == "trained" else "random and frozen"}. \
SentencePiece BPE tokenizer with 128 pieces over the grammar, case-folding.
- Wan2.1 VAE decoder: base width 16, z 16. Latent mean and std are in `vae/config.json`.
- Sampling defaults in `model_index.json`: 25 UniPC steps, shift {a.sample_shift:g}, guidance
  {a.sample_guidance:g}, empty negative prompt, {a.width}x{a.height}, 49 frames
  (`--sample-shift`, `--sample-guidance`; docs/training.md says how they were chosen).

## Training
Seed {info['seed']}, torch {info['torch']}. Training time: {v['seconds'] + d['seconds']:.0f} s on \
{info['device']} (VAE {v['seconds']} s, DiT {d['seconds']} s over all calls). Commands, in order:
{commands}

| stage | steps | seconds | final losses |
|---|---|---|---|
| VAE | {v['steps']} | {v['seconds']} | L1 {v['final_l1']:.4f}, MSE {v['final_mse']:.5f} ({v['psnr_db']:.1f} dB), KL {v['final_kl']:.3f} |
| DiT | {d['steps']} | {d['seconds']} | flow MSE {d['final_mse']:.4f}, balance {d['final_balance_loss']:.3f}, largest group {d['final_largest_group_vs_fair']:.2f}x fair |

The VAE on whole 49-frame clips, as the engine decodes them: {", ".join(f"{k} {x} dB" for k, x in v.get("long_clip_psnr_db", {}).items()) or "not measured"}.
The VAE alone per object colour (four clips each, encoded and decoded; the reconstruction's object named as the tests name it): {", ".join(f"{k} {c['right']}/{c['of']}" for k, c in v.get("colour_check", {}).items()) or "not measured"}.

Text use at the end: another clip's captions raise the flow MSE by {d.get('text_use_mse_gap') or float('nan'):.4f} ({d.get('text_use_object_mse_gap') or float('nan'):.4f} on the object's latent positions). The flow loss weighted the object's positions {1 + d.get('object_weight', 0.0):g}x (`--object-weight {d.get('object_weight', 0.0):g}`), {d.get('uniform_t', 0.0):.0%} of the clips had a uniform noise level (`--uniform-t`), and the backgrounds brightened towards the top by {d.get('bg_shading', 0.0):g} (`--bg-shading`; 0 is flat).

{calibration}

## Semantic evaluation at export (PyTorch, Euler, {a.check_steps} steps, guidance {a.sample_guidance:g}, shift {a.sample_shift:g})
The engine's semantic test prompts, {sem.get('seeds', 0)} seeds each, judged as the tests judge them
(`tools/train/semantic.py`): colour right in {sem.get('colour_right', float('nan')):.0%}, motion right in {sem.get('motion_right', float('nan')):.0%}, both in {sem.get('both_right', float('nan')):.0%} of {sem.get('samples', 0)} samples.

| prompt | seed | colour seen | right | motion (px/frame, x, y) | right |
|---|---|---|---|---|---|
{sem_rows}

The test shot list (`configs/shapes-shots.json`), one sample:

| caption | colour seen | named |
|---|---|---|
{checks}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prep", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--vae-seconds", type=float, default=160)
    ap.add_argument("--vae-steps", type=int, default=0)
    ap.add_argument("--vae-batch", type=int, default=8, help="nine-frame clips per batch (49-frame clips: a quarter)")
    ap.add_argument("--vae-clips", default="mixed", choices=list(VAE_LAYOUTS),
                    help="the VAE's clips: nine frames only (short) or with 49-frame clips (mixed)")
    ap.add_argument("--vae-lr", type=float, default=4e-4)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--vae-object-weight", type=float, default=0.0,
                    help="the VAE's reconstruction loss weighs the object's pixels 1 + W times (0: plain, "
                         "as up to run 11); the object is a few percent of the pixels")
    ap.add_argument("--dit-seconds", type=float, default=320)
    ap.add_argument("--dit-steps", type=int, default=0)
    ap.add_argument("--dit-batch", type=int, default=64,
                    help="clips per DiT step (run 8 at 32: 80 ms of GPU work in a 145 ms step, "
                         "bound by launching kernels, so a larger batch is nearly free)")
    ap.add_argument("--data-reuse", type=int, default=1,
                    help="DiT steps per drawn batch of clips (each step draws new noise; 1: a new batch "
                         "every step, as up to run 11)")
    ap.add_argument("--dit-lr", type=float, default=6e-4,
                    help="peak learning rate of the DiT (and of the umT5 when it trains)")
    ap.add_argument("--groups", type=int, default=ARCH["dit"]["attention"]["groups"])
    ap.add_argument("--dit-dim", type=int, default=0, help="DiT width (0: configs/shapes-t2v.json's)")
    ap.add_argument("--dit-layers", type=int, default=0, help="DiT blocks (0: the config's)")
    ap.add_argument("--dit-heads", type=int, default=0, help="DiT attention heads (0: the config's)")
    ap.add_argument("--eval-seeds", type=int, default=3,
                    help="seeds per prompt of the export's semantic evaluation (tools/train/semantic.py)")
    ap.add_argument("--object-weight", type=float, default=0.0,
                    help="extra flow-loss weight on the object's latent positions (0: plain MSE)")
    ap.add_argument("--uniform-t", type=float, default=0.0,
                    help="share of the DiT's clips whose noise level is uniform in (0, 1) instead of "
                         "shifted logit-normal (the low-noise states the sampler's last steps route)")
    ap.add_argument("--calibrate-rounds", type=int, default=12,
                    help="rounds of the export's router bias calibration (0: none; a CPU smoke run)")
    ap.add_argument("--bg-shading", type=float, default=0.0,
                    help="backgrounds brighten towards the top by this much (0: flat, as up to run 10); "
                         "flat backgrounds leave a token-wise router nothing to split them by")
    ap.add_argument("--balance", type=float, default=0.05)
    ap.add_argument("--sample-guidance", type=float, default=3.5,
                    help="the exported model's default guidance (run 12's sweep: 3.5 keeps every MoGA group "
                         "under 2x its fair share, 5 does not)")
    ap.add_argument("--sample-shift", type=float, default=7.0,
                    help="the exported model's default sampling shift (run 12's sweep)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--samples", default="", help="write check samples (PPM) to this folder")
    ap.add_argument("--moga-impl", default="auto", choices=["auto", "gather", "mask"],
                    help="MoGA window/frame branches with N x N masks, or per window group and "
                         "frame (same values, see docs/training.md); auto: the fastest that "
                         "matches mask/manual")
    ap.add_argument("--masked-kernel", default="auto", choices=["auto", "manual", "fused"],
                    help="masked attention: float32 scores (tested) or PyTorch SDPA with the "
                         "mask; auto: the fastest that matches")
    ap.add_argument("--text-encoder", default="train", choices=["train", "frozen"],
                    help="train the small umT5 with the DiT, or keep prepare.py's random one frozen")
    ap.add_argument("--lr-decay", default="none", choices=["none", "cosine"],
                    help="learning rate after warm-up: constant, or cosine to 10%% over the budget")
    ap.add_argument("--check-steps", type=int, default=25, help="sampling steps of the final checks")
    ap.add_argument("--stages", default="vae,dit,export",
                    help="which stages run: vae, dit, export (checkpoints beside --out)")
    ap.add_argument("--resume", action="store_true", help="continue the DiT from its checkpoint")
    ap.add_argument("--slice-seconds", type=float, default=0,
                    help="pause the DiT after so many seconds of this call (exit 3; --resume continues)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="before training, profile so many DiT steps (torch.profiler) and log the "
                         "top ops by device time")
    ap.add_argument("--preflight-only", action="store_true",
                    help="run one full-size DiT step per shot layout and stop (checks the GPU path)")
    a = ap.parse_args()
    a.width, a.height = (int(v) for v in a.size.split("x"))
    a.dit_preflight = False
    shapes.set_background_shading(a.bg_shading)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        # PyTorch's cuDNN SDPA backend failed in backward for some shot layouts (per-shot
        # cross-attention slices): "mha_graph.execute(...) is_good()" or an illegal memory
        # access. Flash / memory-efficient attention take those calls instead.
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)
    os.makedirs(a.out, exist_ok=True)
    log = Log(os.path.join(os.path.dirname(os.path.abspath(a.out)), "train.log"))
    t_start = time.time()
    gen = torch.Generator().manual_seed(a.seed)
    text = Text(a.prep, device, a.text_encoder == "train")
    caps = text.caps
    log(f"{text.count} captions of up to {text.len} tokens; text encoder {a.text_encoder}")

    work = os.path.dirname(os.path.abspath(a.out))
    vae_ckpt, dit_ckpt = os.path.join(work, "vae_stage.pt"), os.path.join(work, "dit_stage.pt")
    stages = a.stages.split(",")

    if "dit" in stages:
        a.moga_impl, a.masked_kernel = choose_attention(a, log, device, text)
    wt.MOGA_IMPL = a.moga_impl if a.moga_impl != "auto" else "mask"
    wt.MASKED_KERNEL = a.masked_kernel if a.masked_kernel != "auto" else "manual"
    if "dit" in stages:
        # fail fast: one full-size DiT step per shot layout (untrained encoder) before the
        # long stages
        pre = argparse.Namespace(**vars(a))
        pre.dit_steps, pre.dit_preflight = len(DIT_LAYOUTS), True
        train_dit(pre, log, torch.Generator().manual_seed(0), device, wt.ShapesEncoder(16).to(device),
                  torch.zeros(16, device=device), torch.ones(16, device=device), copy.deepcopy(text),
                  probe=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        log(f"preflight: DiT forward and backward run (MoGA branches: {wt.MOGA_IMPL}, "
            f"masked attention: {wt.MASKED_KERNEL})")
    if a.profile_steps and "dit" in stages:
        try:  # a diagnosis: it never stops the training
            profile_dit(a, log, device, text)
        except Exception as e:  # noqa: BLE001
            log(f"profile failed: {type(e).__name__}: {e}")
    if a.preflight_only:
        return 0

    if "vae" in stages:
        enc, dec, vinfo = train_vae(a, log, gen, device)
        vinfo["command"] = " ".join(sys.argv)
        enc.eval()
        dec.eval()
        vinfo["long_clip_psnr_db"] = long_clip_psnr(enc, dec, a, device)
        vinfo["colour_check"] = vae_colour_check(enc, dec, a, device)
        vinfo["vae_object_weight"] = a.vae_object_weight
        log(f"vae done: {vinfo}")
        mean, std = latent_stats(enc, a, gen, device)
        torch.save({"enc": enc.state_dict(), "dec": dec.state_dict(), "mean": mean, "std": std,
                    "info": vinfo, "gen": gen.get_state()}, vae_ckpt)
    else:
        ck = torch.load(vae_ckpt, map_location=device)
        enc, dec = wt.ShapesEncoder(16).to(device), wt.WanVaeDecoder(VAE_CFG).to(device)
        enc.load_state_dict(ck["enc"])
        dec.load_state_dict(ck["dec"])
        mean, std, vinfo = ck["mean"].to(device), ck["std"].to(device), ck["info"]
        if "vae" not in stages and not (a.resume and os.path.exists(dit_ckpt)):
            gen.set_state(ck["gen"].cpu())
    enc.eval()
    dec.eval()
    for p in list(enc.parameters()) + list(dec.parameters()):
        p.requires_grad_(False)
    log(f"latent mean {[round(float(v), 3) for v in mean]} std {[round(float(v), 3) for v in std]}")

    cfg = dit_config(text.dim, text.len, a)
    if "dit" in stages:
        resume = torch.load(dit_ckpt, map_location=device) if a.resume and os.path.exists(dit_ckpt) else None
        if resume and resume["done"]:
            log("dit: the checkpoint has used its whole budget; nothing to train")
            state, dinfo = resume, resume["info"]
        else:
            _, cfg, dinfo, state = train_dit(a, log, gen, device, enc, mean, std, text, resume,
                                             a.slice_seconds)
            earlier = resume["info"].get("commands", []) if resume else []
            dinfo["commands"] = earlier + [" ".join(sys.argv)]
            dinfo["attention"] = f"{wt.MOGA_IMPL}/{wt.MASKED_KERNEL}"
            state["info"] = dinfo
            torch.save(state, dit_ckpt)
        log(f"dit {'done' if state['done'] else 'paused (rerun with --resume)'}: {dinfo}")
        if not state["done"]:
            return 3
    if "export" not in stages:
        return 0
    state = torch.load(dit_ckpt, map_location=device)
    if not state["done"]:
        log("export: the DiT has not used its budget yet; rerun --stages dit --resume first")
        return 3
    dinfo = state["info"]
    model = ema_model(cfg, state, device)
    if text.train:  # the umT5's EMA weights, then its outputs as a table for the checks
        text.t5.load_state_dict({k: v.to(device) for k, v in state["t5_ema"].items()})
    text.freeze()
    dinfo["router_calibration"] = (calibrate_routers(model, text, a, device, log, rounds=a.calibrate_rounds)
                                   if a.calibrate_rounds else {"rounds": 0, "kept": False})

    index = {c: i for i, c in enumerate(caps["captions"])}
    # the engine's semantic test prompts over several seeds, judged as the tests judge them
    sem = semantic.evaluate(
        lambda prompt, seed: sample(model, dec, text, [index[prompt]], [13], a, mean, std, device,
                                    steps=a.check_steps, seed=seed).cpu(), a.eval_seeds, log)
    # the shot list of tests/test_default_model.cpp's EachShotFollowsItsOwnCaption
    # (configs/shapes-shots.json): each shot's object named as the test names it
    shot_texts = ["a big red square moves right on a black background",
                  "a small green circle moves up on a white background",
                  "a blue triangle turns on a gray background"]
    checks, shots = [], [5, 4, 4]
    video = sample(model, dec, text, [index[t] for t in shot_texts], shots, a, mean, std, device,
                   steps=a.check_steps, seed=0).cpu()
    start = 0
    for t, n in zip(shot_texts, shapes.shot_video_frames(shots)):
        obj, share, _ = semantic.analyse(video[:, start:start + n])
        name = semantic.colour_name(obj) if obj is not None and share > 0.002 else "none"
        checks.append({"caption": t, "object_rgb": None if obj is None else [round(v, 3) for v in obj],
                       "colour": name, "want": [w for w in t.split() if w in shapes.COLOURS][0]})
        log(f"check: {checks[-1]}")
        start += n
    if a.samples:
        os.makedirs(a.samples, exist_ok=True)
        T = video.shape[1]
        picks = [0, T // 4, T // 2, 3 * T // 4, T - 1]
        shapes.write_ppm(os.path.join(a.samples, "shots.ppm"), torch.cat([video[:, i] for i in picks], dim=2))

    info = {"command": " ".join(sys.argv), "seed": a.seed, "device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else "cpu", "torch": torch.__version__, "size": [a.width, a.height],
            "vae": vinfo, "dit": dinfo, "total_seconds": round(time.time() - t_start, 1),
            "checks": checks, "semantic": sem, "dit_config": cfg, "vae_config": VAE_CFG}
    export(a, model, cfg, dec, mean, std, a.prep, text, info)
    log(f"exported to {a.out} in {info['total_seconds']} s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
