"""Temporal coherence of a trained model's single-shot videos, measured in latent space.

Samples each prompt with PyTorch (Euler with classifier-free guidance, as train.py's export
checks do) and follows the object from latent frame to latent frame: the centroid of the
strongest deviation from the background (each frame's top 10% of distance from the
per-channel median). A coherent video moves its object a little every frame; a video cut
into pieces jumps. Run 9 (docs/training.md) jumped between latent frames 3 and 4 and 7 and
8, the boundaries of MoGA's window chunks of 4 frames.

    python3 tools/train/coherence.py --model .train/model --prep .train/prep [--seeds 3] \\
        ["a orange square moves left on a blue background" ...]

Prints, per prompt and seed, how far the centroid moves between consecutive latent frames
(latent pixels), then the mean over all samples per frame pair, and the largest mean step
over the median one (1 to 2: smooth; run 9: about 5 at its chunk boundaries).
CPU is fine: about 15 s a sample for the default model on two cores.
"""
import argparse
import json
import os
import sys

try:
    import torch
except ImportError:  # ctest: skipped where Python has no torch
    print("coherence.py: no torch (apt-get install python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import semantic  # noqa: E402
import train as T  # noqa: E402

PROMPTS = ["a orange square moves left on a blue background",
           "a green circle moves down on a white background",
           "a red circle moves right on a black background"]


def centroid_steps(z):
    """z [16, F, h, w] latent -> [F - 1] distance the object's centroid moves per frame."""
    bg = z.flatten(2).median(dim=2).values[:, :, None, None]
    dist = (z - bg).norm(dim=0)  # [F, h, w]
    w = (dist - dist.flatten(1).quantile(0.9, dim=1)[:, None, None]).clamp(min=0)
    ys = torch.arange(z.shape[2], dtype=torch.float32)[:, None]
    xs = torch.arange(z.shape[3], dtype=torch.float32)[None]
    mass = w.flatten(1).sum(1).clamp(min=1e-6)
    cy = (w * ys).flatten(1).sum(1) / mass
    cx = (w * xs).flatten(1).sum(1) / mass
    return ((cx[1:] - cx[:-1]) ** 2 + (cy[1:] - cy[:-1]) ** 2).sqrt()


def self_test():
    """centroid_steps on a drawn latent: a blob moving one latent pixel a frame, moved 6
    pixels at frame 4, on a background that is not zero. Exit status 0 when the steps are
    what was drawn (ctest: CoherenceMeasure)."""
    F_, h, w = 8, 16, 20
    z = torch.full((16, F_, h, w), 0.3)
    ys, xs = torch.arange(h)[:, None].float(), torch.arange(w)[None].float()
    for f in range(F_):
        cx = 4.0 + f + (6.0 if f >= 4 else 0.0)
        blob = torch.exp(-((xs - cx) ** 2 + (ys - 8.0) ** 2) / 2.0)
        z[:, f] += 2.0 * blob
    s = centroid_steps(z)
    want = torch.tensor([1.0, 1.0, 1.0, 7.0, 1.0, 1.0, 1.0])
    err = float((s - want).abs().max())
    print("steps " + " ".join(f"{float(v):.2f}" for v in s) + f", max error {err:.3f}")
    return 0 if err < 0.2 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an exported model folder (train.py --out)")
    ap.add_argument("--self-test", action="store_true", help="check the measure on a drawn latent")
    ap.add_argument("--prep", default=".train/prep", help="prepare.py's folder (caption ids)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's (model_index.json)")
    ap.add_argument("prompts", nargs="*", default=PROMPTS)
    a = ap.parse_args()
    if a.self_test:
        sys.exit(self_test())
    if not a.model:
        ap.error("--model is required")
    model, _, text, _, _, dflt = semantic.load_exported(a.model, a.prep, torch.device("cpu"))
    width, height = (int(v) for v in dflt["size"].split("x"))
    frames = 1 + (int(dflt["frames"]) - 1) // 4
    caps = json.load(open(os.path.join(a.prep, "captions.json")))["captions"]
    total, n = torch.zeros(frames - 1), 0
    video = argparse.Namespace(height=height, width=width, sample_shift=float(dflt["shift"]),
                               sample_guidance=float(dflt.get("guidance", 5.0)))
    for p in a.prompts:
        if p not in caps:
            sys.exit(f"coherence.py: '{p}' is not a caption of the grammar ({a.prep}/captions.json)")
        for seed in range(a.seeds):
            z = T.sample_latent(model, text, [caps.index(p)], [frames], video, torch.device("cpu"),
                                a.steps, a.guidance, seed)[0]
            s = centroid_steps(z)
            total += s
            n += 1
            print(f"{p}, seed {seed}: " + " ".join(f"{float(v):.1f}" for v in s), flush=True)
    mean = total / max(n, 1)
    print("mean step per latent frame pair (f-1 -> f, f = 1..%d): " % (frames - 1) +
          " ".join(f"{float(v):.2f}" for v in mean))
    print(f"largest mean step / median mean step: {float(mean.max() / mean.median()):.2f}")


if __name__ == "__main__":
    main()
