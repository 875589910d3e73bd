"""Procedural training videos for the default model: simple shapes that move, turn, grow
or shrink over plain backgrounds, with captions from a small grammar, in one or several
shots with hard cuts between them. Reproducible from a seed (torch's Philox/CPU
generators), on the CPU or the GPU.

    python3 tools/train/shapes.py --seed 1 --count 4 --out /tmp/shapes   # PPM frames + captions

Grammar:  a [small|big] <colour> <shape> <motion> on a <background> background
  colour      red orange yellow green cyan blue purple white
  shape       circle square triangle
  motion      moves left | moves right | moves up | moves down | turns | grows | shrinks
              (a circle does not "turn": it would look the same)
  background  black white gray blue green red (never the object's own colour name)
"""
import argparse
import math
import os
import sys

try:
    import torch
except ImportError:  # ctest: skipped where Python has no torch
    print("shapes.py: no torch (apt-get install python3-torch)")
    sys.exit(77)

COLOURS = {  # object colours (RGB in [0, 1]); hues spread round the wheel
    "red": (0.90, 0.12, 0.10), "orange": (0.98, 0.55, 0.05), "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.20), "cyan": (0.10, 0.80, 0.85), "blue": (0.12, 0.25, 0.90),
    "purple": (0.60, 0.20, 0.85), "white": (0.95, 0.95, 0.95),
}
BACKGROUNDS = {  # darker or greyer than the objects, so that every object stands out
    "black": (0.04, 0.04, 0.05), "white": (0.88, 0.88, 0.86), "gray": (0.45, 0.45, 0.47),
    "blue": (0.10, 0.14, 0.45), "green": (0.08, 0.35, 0.12), "red": (0.45, 0.08, 0.07),
}
SHAPES = ["circle", "square", "triangle"]
# Backgrounds brighten towards the top by up to this much (0: flat). A flat background makes
# every background token of a latent frame identical once the noise is gone, and a token-wise
# router must then send them all to one group (90% of the tokens: 3.6x a fair share at
# M = 4). Shading gives the rows distinct values, as texture does in real video, so that the
# groups can split the background. train.py's --bg-shading sets it (run 11: 0.12).
BG_SHADING = 0.0


def set_background_shading(amount):
    global BG_SHADING
    BG_SHADING = float(amount)
MOTIONS = ["moves left", "moves right", "moves up", "moves down", "turns", "grows", "shrinks"]
SIZES = ["", "small", "big"]


def caption(size, colour, shape, motion, bg):
    s = f"{size} " if size else ""
    return f"a {s}{colour} {shape} {motion} on a {bg} background"


def all_captions():
    """Every caption of the grammar, in a fixed order (index = caption id)."""
    out = []
    for size in SIZES:
        for colour in COLOURS:
            for shape in SHAPES:
                for motion in MOTIONS:
                    if shape == "circle" and motion == "turns":
                        continue
                    for bg in BACKGROUNDS:
                        if bg != colour:
                            out.append((size, colour, shape, motion, bg))
    return out


CAPTIONS = all_captions()
CAPTION_TEXT = [caption(*c) for c in CAPTIONS]


def shot_video_frames(shots):
    """Latent frames per shot -> video frames per shot (the first shot owns frame 0)."""
    return [1 + 4 * (n - 1) if i == 0 else 4 * n for i, n in enumerate(shots)]


def sample_params(gen, n, frames, height, width, caption_ids=None):
    """Random object tracks for n shots of `frames` frames: returns a dict of tensors
    [n, frames] (cx, cy, r, angle) and [n] ints (colour, bg, shape, caption id)."""
    if caption_ids is None:
        caption_ids = torch.randint(len(CAPTIONS), (n,), generator=gen)
    u = torch.rand(n, 8, generator=gen)
    t = torch.arange(frames, dtype=torch.float32)[None]  # [1, T]
    cols, bgs, shp, base_r = [], [], [], []
    vx = torch.zeros(n)
    vy = torch.zeros(n)
    spin = torch.zeros(n)
    grow = torch.zeros(n)
    for i, cid in enumerate(caption_ids.tolist()):
        size, colour, shape, motion, bg = CAPTIONS[cid]
        cols.append(list(COLOURS).index(colour))
        bgs.append(list(BACKGROUNDS).index(bg))
        shp.append(SHAPES.index(shape))
        lo, hi = {"": (0.10, 0.15), "small": (0.065, 0.085), "big": (0.17, 0.21)}[size]
        base_r.append((lo + (hi - lo) * float(u[i, 0])) * height)
        speed = (0.9 + 0.6 * float(u[i, 1])) * height / 96.0  # pixels per frame
        if motion == "moves left":
            vx[i] = -speed
        elif motion == "moves right":
            vx[i] = speed
        elif motion == "moves up":
            vy[i] = -speed
        elif motion == "moves down":
            vy[i] = speed
        elif motion == "turns":
            spin[i] = (0.05 + 0.04 * float(u[i, 2])) * (1 if u[i, 3] < 0.5 else -1)
        elif motion == "grows":
            grow[i] = 1.0
        elif motion == "shrinks":
            grow[i] = -1.0
    r0 = torch.tensor(base_r)
    # grows: r0 -> 1.7 r0 over the shot; shrinks: 1.7 r0 -> r0
    prog = t / max(frames - 1, 1)
    r = r0[:, None] * torch.where(grow[:, None] > 0, 1 + 0.7 * prog,
                                  torch.where(grow[:, None] < 0, 1.7 - 0.7 * prog, torch.ones_like(prog)))
    rmax = r.max(dim=1).values
    # keep the whole track inside the frame: travel fits between the margins
    travel_x = (vx.abs() * (frames - 1)).clamp(max=width - 2.2 * rmax)
    travel_y = (vy.abs() * (frames - 1)).clamp(max=height - 2.2 * rmax)
    vx = torch.sign(vx) * travel_x / max(frames - 1, 1)
    vy = torch.sign(vy) * travel_y / max(frames - 1, 1)
    free_x = width - 2.2 * rmax - travel_x
    free_y = height - 2.2 * rmax - travel_y
    x0 = 1.1 * rmax + u[:, 4] * free_x + torch.where(vx < 0, travel_x, torch.zeros_like(travel_x))
    y0 = 1.1 * rmax + u[:, 5] * free_y + torch.where(vy < 0, travel_y, torch.zeros_like(travel_y))
    cx = x0[:, None] + vx[:, None] * t
    cy = y0[:, None] + vy[:, None] * t
    ang = u[:, 6:7] * 2 * math.pi + spin[:, None] * t
    return {"cx": cx, "cy": cy, "r": r, "angle": ang, "colour": torch.tensor(cols),
            "bg": torch.tensor(bgs), "shape": torch.tensor(shp), "caption": caption_ids}


def render(p, height, width, device="cpu", alpha_out=None):
    """p from sample_params -> video [n, 3, frames, height, width] in [-1, 1]. alpha_out (a
    list): the object's coverage [n, 1, frames, height, width] in [0, 1] is appended."""
    cx, cy, r, ang = (p[k].to(device)[:, :, None, None] for k in ("cx", "cy", "r", "angle"))
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, None, :, None] + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, None, :] + 0.5
    dx, dy = xs - cx, ys - cy
    c, s = torch.cos(ang), torch.sin(ang)
    u = c * dx + s * dy  # object frame
    v = -s * dx + c * dy
    d_circle = torch.sqrt(dx * dx + dy * dy) - r
    d_square = torch.maximum(u.abs(), v.abs()) - 0.82 * r
    d_tri = None
    for k in range(3):  # equilateral triangle, circumradius r, inradius r/2
        a = math.pi / 2 + k * 2 * math.pi / 3
        e = u * math.cos(a) + v * math.sin(a) - 0.5 * r
        d_tri = e if d_tri is None else torch.maximum(d_tri, e)
    shape = p["shape"].to(device)[:, None, None, None]
    d = torch.where(shape == 0, d_circle, torch.where(shape == 1, d_square, d_tri))
    alpha = (0.5 - d).clamp(0, 1)[:, None]  # [n, 1, T, H, W], one-pixel antialiasing
    pal = torch.tensor(list(COLOURS.values()), device=device)
    bgp = torch.tensor(list(BACKGROUNDS.values()), device=device)
    fg = pal[p["colour"].to(device)][:, :, None, None, None]
    bg = bgp[p["bg"].to(device)][:, :, None, None, None]
    if BG_SHADING:  # brighter at the top: BG_SHADING at row 0, none at the bottom
        ramp = BG_SHADING * (1 - ys[0, 0, :, 0] / height)  # [H]
        bg = (bg + ramp[None, None, None, :, None]).clamp(max=1.0)
    if alpha_out is not None:
        alpha_out.append(alpha)
    return (bg * (1 - alpha) + fg * alpha) * 2 - 1


def sample_clips(gen, batch, shots, height, width, device="cpu", drop_caption=0.0, alpha_out=None):
    """A batch of multi-shot clips: video [B, 3, 1+4(F-1), H, W] and caption ids [B, S]
    (-1 = the empty caption, for classifier-free guidance training). alpha_out (a list):
    the object's coverage [B, 1, 1+4(F-1), H, W] is appended."""
    vf = shot_video_frames(shots)
    parts, ids, alphas = [], [], []
    for n in vf:
        p = sample_params(gen, batch, n, height, width)
        parts.append(render(p, height, width, device, alphas))
        ids.append(p["caption"])
    ids = torch.stack(ids, dim=1)
    if drop_caption > 0:
        drop = torch.rand(batch, generator=gen) < drop_caption
        ids[drop] = -1
    if alpha_out is not None:
        alpha_out.append(torch.cat(alphas, dim=2))
    return torch.cat(parts, dim=2), ids


def latent_mask(alpha, spatial=8, temporal=4):
    """The object's coverage [B, 1, 1+4(F-1), H, W] -> where it is in the latent
    [B, 1, F, H/8, W/8]: the maximum over the pixels each latent position encodes (the
    causal VAE: latent frame 0 is video frame 0, latent frame k frames 4k-3..4k), grown by
    one latent pixel (the encoder's receptive field spreads an object past its pixels)."""
    B, _, T, H, W = alpha.shape
    first, rest = alpha[:, :, :1], alpha[:, :, 1:]
    rest = rest.reshape(B, 1, (T - 1) // temporal, temporal, H, W).amax(dim=3)
    m = torch.cat([first, rest], dim=2)  # [B, 1, F, H, W]
    F_ = m.shape[2]
    m = torch.nn.functional.max_pool2d(m.reshape(B * F_, 1, H, W), spatial)
    m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
    return m.reshape(B, 1, F_, H // spatial, W // spatial)


def write_ppm(path, frame):
    """frame [3, H, W] in [-1, 1]."""
    a = ((frame.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous()
    with open(path, "wb") as f:
        f.write(f"P6 {a.shape[1]} {a.shape[0]} 255\n".encode())
        f.write(a.numpy().tobytes())


def self_test():
    """latent_mask against the track it was drawn from: a circle moving right, and one moving
    down. For each latent frame the mask must cover the object's centre in every video frame
    that latent frame encodes, and reach no further than its radius, its travel over those
    frames and the one-pixel growth. Exit status 0 when it does (ctest: ShapesLatentMask)."""
    bad = 0
    for motion in ("moves right", "moves down"):
        cid = CAPTIONS.index(("", "red", "circle", motion, "black"))
        p = sample_params(torch.Generator().manual_seed(3), 1, 49, 128, 160, caption_ids=torch.tensor([cid]))
        alpha = []
        render(p, 128, 160, alpha_out=alpha)
        m = latent_mask(alpha[0])[0, 0]  # [13, 16, 20]
        for k in range(m.shape[0]):
            frames = [0] if k == 0 else list(range(4 * k - 3, 4 * k + 1))
            cx = p["cx"][0, frames] / 8
            cy = p["cy"][0, frames] / 8
            r = float(p["r"][0, frames].max()) / 8
            cols = torch.nonzero(m[k].amax(0)).flatten()
            rows = torch.nonzero(m[k].amax(1)).flatten()
            covers = all(bool(m[k, int(y), int(x)] > 0) for x, y in zip(cx.tolist(), cy.tolist()))
            near = (float(cols.min()) >= float(cx.min()) - r - 2 and float(cols.max()) <= float(cx.max()) + r + 2 and
                    float(rows.min()) >= float(cy.min()) - r - 2 and float(rows.max()) <= float(cy.max()) + r + 2)
            if not (covers and near):
                print(f"{motion}, latent frame {k}: mask columns {cols.tolist()}, rows {rows.tolist()}; "
                      f"centre x {cx.tolist()}, y {cy.tolist()}, radius {r:.1f}")
                bad += 1
    print("latent_mask: " + ("ok" if not bad else f"{bad} latent frames wrong"))
    return 1 if bad else 0


def main():
    if "--self-test" in sys.argv[1:]:
        sys.exit(self_test())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--shots", default="5,4,4", help="latent frames per shot")
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    shots = [int(v) for v in a.shots.split(",")]
    gen = torch.Generator().manual_seed(a.seed)
    video, ids = sample_clips(gen, a.count, shots, h, w)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "captions.txt"), "w") as f:
        for b in range(a.count):
            f.write(f"clip {b}: " + " | ".join(CAPTION_TEXT[i] for i in ids[b].tolist()) + "\n")
            for t in range(video.shape[2]):
                write_ppm(os.path.join(a.out, f"clip{b}_{t:03d}.ppm"), video[b, :, t])
    print(f"wrote {a.count} clips of {video.shape[2]} frames to {a.out} ({len(CAPTIONS)} captions in the grammar)")


if __name__ == "__main__":
    main()
