"""Run the kernels whose speed targets are still missed, twice each, for a profiler to look at.

    ncu --clock-control none -k "regex:resample_kernel|crop_resize_kernel" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section Occupancy python3 tools/profile_kernels.py

Workloads (PERF.md): resample 256x1000x256 -> 1000 bf16 (sorted source and target times), and
the crop-84 image batch (20,000 frames 96x96x3 uint8, 256 x 2 frames, random crop, /255,
mean/std, CHW) with float32 and bfloat16 output, through the dataset's plan path. Needs a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import numpy as np
    import torch

    import robocache as rc
    from robocache.ops import _random, images

    g = torch.Generator().manual_seed(0)
    B, S, T, D = 256, 1000, 1000, 256
    src = torch.sort(torch.rand(B, S, generator=g), dim=1).values.cuda()
    tgt = torch.sort(torch.rand(B, T, generator=g), dim=1).values.cuda()
    data = torch.randn(B, S, D, generator=g).to(device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        rc.resample(data, src, tgt, check_times=False)
    frames = torch.randint(0, 256, (20_000, 96, 96, 3), dtype=torch.uint8, device="cuda")
    idx = torch.from_numpy(np.random.default_rng(0).integers(0, 20_000, (256, 2))).cuda()
    for dtype in ("float32", "bfloat16"):
        plan = images.make_plan((96, 96, 3), crop=84, crop_mode="random", out_dtype=dtype,
                                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        out = torch.empty(plan.out_shape(256, 2), dtype=getattr(torch, dtype), device="cuda")
        for batch in range(2):
            images.apply_cuda(plan, frames, idx, None, out, _random.rand_key(0, 0, batch))
    torch.cuda.synchronize()
    print("profile_kernels: ran resample x2, crop84 float32 x2, crop84 bfloat16 x2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
