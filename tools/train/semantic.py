"""What a trained model's videos show, measured the way the engine's semantic tests measure
it (tests/test_default_model.cpp with tests/video_analysis.h): for the eight single-colour
test prompts, over several seeds, is the object the named colour, and does it move the
named way? train.py's export runs it on the GPU and records the rates in training.json
and the model card, so that a training run says how it would fare in the tests before a
model is copied out. On an exported model (CPU is fine, about a minute a sample on two
cores):

    python3 tools/train/semantic.py --model .train/model --prep .train/prep [--seeds 3] [--guidance G]

The analysis is a port of tests/video_analysis.h (the C++ tests stay the judge):
- the background is the per-channel median of all frames;
- the object is the pixels whose L1 distance from it is over 0.35 (0..3 scale);
- its colour is the palette hue nearest to their mean colour (white: saturation under
  0.25 and value over 0.7; "none" for other unsaturated means);
- its motion is the least-squares slope of its centroid, in pixels per frame, and must
  exceed 0.3 in the named direction.
`--self-test` checks the analysis on drawn clips (ctest: SemanticMeasure).
"""
import argparse
import json
import os
import sys

try:
    import torch
except ImportError:  # ctest: skipped where Python has no torch
    print("semantic.py: no torch (apt-get install python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

# tests/test_default_model.cpp, SingleColourPromptsShowTheNamedColourAndMotion
CASES = [("a red circle moves right on a black background", "red", 1, 0),
         ("a orange square moves left on a blue background", "orange", -1, 0),
         ("a yellow triangle moves up on a gray background", "yellow", 0, -1),
         ("a green circle moves down on a white background", "green", 0, 1),
         ("a cyan square grows on a black background", "cyan", 0, 0),
         ("a blue triangle moves right on a white background", "blue", 1, 0),
         ("a purple circle shrinks on a gray background", "purple", 0, 0),
         ("a white square moves left on a green background", "white", -1, 0)]


def hsv(c):
    """(r, g, b) in [0, 1] -> (hue in degrees, saturation, value)."""
    mx, mn = max(c), min(c)
    d = mx - mn
    h = 0.0
    if d > 1e-9:
        if mx == c[0]:
            h = ((c[1] - c[2]) / d + 6.0) % 6.0
        elif mx == c[1]:
            h = (c[2] - c[0]) / d + 2.0
        else:
            h = (c[0] - c[1]) / d + 4.0
    return 60.0 * h, (d / mx if mx > 0 else 0.0), mx


def colour_name(c):
    """The palette colour nearest to c (video_analysis.h's colour_name)."""
    h, s, v = hsv(c)
    if s < 0.25:
        return "white" if v > 0.7 else "none"
    best, bd = "none", 1e9
    for name, rgb in shapes.COLOURS.items():
        if name == "white":
            continue
        d = abs(h - hsv(rgb)[0])
        d = min(d, 360.0 - d)
        if d < bd:
            bd, best = d, name
    return best


def analyse(video):
    """video [3, T, H, W] in [-1, 1] -> (object rgb or None, object share, (vx, vy) px/frame),
    on the 8-bit frames the engine writes."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0
    bg = x.flatten(1).median(dim=1).values
    mask = (x - bg[:, None, None, None]).abs().sum(0) > 0.35  # [T, H, W]
    share = float(mask.float().mean())
    obj = x[:, mask].mean(1).tolist() if bool(mask.any()) else None
    ys = torch.arange(x.shape[2], dtype=torch.float64)[:, None]
    xs = torch.arange(x.shape[3], dtype=torch.float64)[None]
    t, cx, cy = [], [], []
    for f in range(x.shape[1]):
        m = mask[f].double()
        n = float(m.sum())
        if n > 0:
            t.append(float(f))
            cx.append(float((m * xs).sum()) / n)
            cy.append(float((m * ys).sum()) / n)
    if len(t) < 2:
        return obj, share, (0.0, 0.0)
    tt, xx, yy = (torch.tensor(v, dtype=torch.float64) for v in (t, cx, cy))
    tc = tt - tt.mean()
    den = float((tc * tc).sum())
    if den == 0:
        return obj, share, (0.0, 0.0)
    return obj, share, (float((tc * xx).sum()) / den, float((tc * yy).sum()) / den)


def judge(video, colour, dx, dy):
    """One case's verdict as the C++ test gives it: colour and motion right or not."""
    obj, share, (vx, vy) = analyse(video)
    name = colour_name(obj) if obj is not None and share > 0.002 else "none"
    moved = (dx == 0 or dx * vx > 0.3) and (dy == 0 or dy * vy > 0.3)
    return {"colour": name, "colour_ok": name == colour, "motion": [round(vx, 2), round(vy, 2)],
            "motion_ok": moved, "share": round(share, 4)}


def evaluate(render, seeds, log=print):
    """render(prompt, seed) -> video [3, T, H, W]; every case over `seeds` seeds (100, 101,
    ...: the test's seed for case i is 100 + i, a different stream from the engine's). Returns
    the rates and each verdict."""
    rows, colour_ok, motion_ok, both = [], 0, 0, 0
    for prompt, colour, dx, dy in CASES:
        for s in range(seeds):
            v = judge(render(prompt, 100 + s), colour, dx, dy)
            v.update(prompt=prompt, seed=100 + s)
            rows.append(v)
            colour_ok += v["colour_ok"]
            motion_ok += v["motion_ok"]
            both += v["colour_ok"] and v["motion_ok"]
            log(f"semantic: {prompt}, seed {100 + s}: {v['colour']} "
                f"({'ok' if v['colour_ok'] else 'WRONG'}), motion {v['motion'][0]:+.2f},{v['motion'][1]:+.2f} "
                f"px/frame ({'ok' if v['motion_ok'] else 'WRONG'})")
    n = max(len(rows), 1)
    out = {"samples": len(rows), "seeds": seeds, "colour_right": round(colour_ok / n, 3),
           "motion_right": round(motion_ok / n, 3), "both_right": round(both / n, 3), "cases": rows}
    log(f"semantic: colour right {colour_ok}/{len(rows)}, motion right {motion_ok}/{len(rows)}, "
        f"both {both}/{len(rows)}")
    return out


def self_test():
    """The analysis on drawn clips (shapes.render): a cyan square moving left, a red circle
    moving down and a white square moving right must be named and measured as drawn, and
    judged wrong against the opposite motion or another colour; on flat backgrounds and on
    run 11's background ramp (which must stay under the object threshold). Exit status 0
    when so."""
    bad = 0
    cases = [(colour, motion, want, shade) for shade in (0.0, 0.12)  # flat, and run 11's ramp
             for colour, motion, want in (("cyan", "moves left", (-1, 0)), ("red", "moves down", (0, 1)),
                                          ("white", "moves right", (1, 0)))]
    for colour, motion, want, shade in cases:
        shapes.set_background_shading(shade)
        cid = shapes.CAPTIONS.index(("", colour, "square" if colour != "red" else "circle", motion,
                                     "black" if colour != "white" else "blue"))
        gen = torch.Generator().manual_seed(3)
        p = shapes.sample_params(gen, 1, 49, 128, 160, caption_ids=torch.tensor([cid]))
        video = shapes.render(p, 128, 160)[0]
        v = judge(video, colour, *want)
        ok = v["colour_ok"] and v["motion_ok"]
        # and the verdicts can fail: the opposite direction, and a neighbouring colour
        rev = judge(video, colour, -want[0], -want[1])
        other = judge(video, "blue" if colour != "blue" else "purple", *want)
        ok = ok and not rev["motion_ok"] and not other["colour_ok"]
        print(f"{colour} {motion} (background ramp {shade:g}): {v['colour']}, motion {v['motion']} "
              f"{'ok' if ok else 'WRONG'}")
        bad += not ok
    shapes.set_background_shading(0.0)
    return 1 if bad else 0


def load_exported(model_dir, prep, device):
    """An exported model folder -> (DiT, VAE decoder, Text, latent mean, std, defaults)."""
    import st
    import train as T
    import wan_torch as wt
    idx = json.load(open(os.path.join(model_dir, "model_index.json")))
    dflt = idx["_mogagen"]["defaults"]
    cfg = json.load(open(os.path.join(model_dir, "transformer", "config.json")))
    model = wt.WanDiT(cfg)
    model.load_state_dict(st.load(os.path.join(model_dir, "transformer", "diffusion_pytorch_model.safetensors")))
    model.to(device).eval()
    text = T.Text(prep, device, False)
    sd = st.load(os.path.join(model_dir, "text_encoder", "model.safetensors"))
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    text.t5.load_hf(sd)
    text.freeze()
    vcfg = json.load(open(os.path.join(model_dir, "vae", "config.json")))
    dec = wt.WanVaeDecoder(T.VAE_CFG)
    dec.load_state_dict(st.load(os.path.join(model_dir, "vae", "diffusion_pytorch_model.safetensors")))
    dec.to(device).eval()
    mean = torch.tensor(vcfg["latents_mean"], device=device)
    std = torch.tensor(vcfg["latents_std"], device=device)
    return model, dec, text, mean, std, dflt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an exported model folder (train.py --out)")
    ap.add_argument("--prep", default=".train/prep", help="prepare.py's folder (caption ids)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's (model_index.json)")
    ap.add_argument("--self-test", action="store_true", help="check the analysis on drawn clips")
    a = ap.parse_args()
    if a.self_test:
        sys.exit(self_test())
    if not a.model:
        ap.error("--model is required")
    import train as T
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, dec, text, mean, std, dflt = load_exported(a.model, a.prep, device)
    width, height = (int(v) for v in dflt["size"].split("x"))
    frames = 1 + (int(dflt["frames"]) - 1) // 4
    video = argparse.Namespace(height=height, width=width, sample_shift=float(dflt["shift"]),
                               sample_guidance=float(dflt.get("guidance", 5.0)))
    caps = json.load(open(os.path.join(a.prep, "captions.json")))["captions"]

    def render(prompt, seed):
        return T.sample(model, dec, text, [caps.index(prompt)], [frames], video, mean, std, device,
                        a.steps, a.guidance, seed).cpu()

    out = evaluate(render, a.seeds, log=lambda s: print(s, flush=True))
    print(json.dumps({k: v for k, v in out.items() if k != "cases"}))


if __name__ == "__main__":
    main()
