#!/usr/bin/env python3
"""The peer's attention call (PyTorch SDPA on its cuDNN backend, as ../shared/bench/peer_bench.py
times it in part_attn) timed sustained: ITERS back-to-back calls, each between CUDA events,
the median printed as a JSON line. peer_bench.py times one warm-up and three calls, a burst
that ends before the H200 reaches its 700 W cap; `mogagen_bench attention --segment 0
--tokens 32760 --heads H --iters N` is ours timed the same sustained way (docs/performance.md).

usage: sdpa_sustained.py HEADS ITERS [TOKENS]
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    h, iters = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) == 4 else 32760
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ts = []
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            F.scaled_dot_product_attention(q, k, v)
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    s = ts[len(ts) // 2]
    print(json.dumps({"what": f"sdpa_cudnn_sustained_h{h}_n{n}", "iters": iters, "s": s,
                      "tflops": 4 * n * n * 128 * h / s / 1e12}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
