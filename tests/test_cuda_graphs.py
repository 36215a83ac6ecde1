"""The GPU ops inside a CUDA graph (torch.cuda.graph): captured once, replayed on new values of
the same input buffers, each replay equals an eager call on those values.

A training step captured whole (torch.compile(mode="reduce-overhead") or a hand-made graph)
pays the kernels' time per call instead of Python's and the launch's; that only works if the
ops launch on the capturing stream, allocate through torch and never synchronise. Eager calls
with the checks that synchronise (check_times, check_indices) are the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import robocache as rc

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def _capture(fn):
    """(graph, output of the captured call): fn run once on a side stream (torch's warm-up
    recipe), then captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _refill(gen, *pairs):
    """Copy new random values into captured input buffers: (tensor, make(gen) -> cpu tensor)."""
    for t, make in pairs:
        t.copy_(make(gen))


def _sorted_times(gen, B, S):
    return torch.sort(torch.rand(B, S, generator=gen), dim=1).values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resample_and_fuse_replay(dtype):
    gen = torch.Generator().manual_seed(7)
    B, S, T, D = 6, 37, 23, 40
    data = torch.randn(B, S, D, generator=gen).to("cuda", dtype)
    src = _sorted_times(gen, B, S).cuda()
    tgt = _sorted_times(gen, B, T).cuda()
    s2 = torch.randn(B, 11, 5, generator=gen).to("cuda", dtype)
    t2 = _sorted_times(gen, B, 11).cuda()

    def step():
        return (rc.resample(data, src, tgt, check_times=False),
                rc.fuse([(data, src), (s2, t2)], tgt, method="nearest", check_times=False))

    graph, (res, fused) = _capture(step)
    for _ in range(3):
        _refill(gen, (data, lambda g: torch.randn(B, S, D, generator=g).to(dtype)),
                (src, lambda g: _sorted_times(g, B, S)), (tgt, lambda g: _sorted_times(g, B, T)),
                (s2, lambda g: torch.randn(B, 11, 5, generator=g).to(dtype)),
                (t2, lambda g: _sorted_times(g, B, 11)))
        res.fill_(float("nan"))
        fused.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(res, rc.resample(data, src, tgt))
        assert torch.equal(fused, rc.fuse([(data, src), (s2, t2)], tgt, method="nearest"))
        host = rc.resample(data.float().cpu().numpy(), src.cpu().numpy(), tgt.cpu().numpy())
        np.testing.assert_allclose(res.float().cpu().numpy(), host,
                                   atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_voxelize_count_into_out_replays():
    gen = torch.Generator().manual_seed(3)
    N = 5000
    points = (torch.rand(N, 3, generator=gen) * 1.2 - 0.1).cuda()  # some outside the grid
    grid = torch.empty((16, 16, 16), dtype=torch.int32, device="cuda")
    kw = dict(grid_min=0.0, voxel_size=1 / 16, grid_size=16, mode="count")

    graph, out = _capture(lambda: rc.voxelize(points, out=grid, **kw))
    assert out is grid
    for _ in range(3):
        _refill(gen, (points, lambda g: torch.rand(N, 3, generator=g) * 1.2 - 0.1))
        grid.fill_(-1)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(grid, rc.voxelize(points, **kw))
        expect = rc.voxelize(points.cpu().numpy(), **kw)
        np.testing.assert_array_equal(grid.cpu().numpy(), expect)


def test_crop_resize_normalize_replays():
    gen = torch.Generator().manual_seed(5)
    N, H, W = 12, 20, 24
    frames = torch.randint(0, 256, (N, H, W, 3), generator=gen, dtype=torch.uint8).cuda()
    idx = torch.randint(0, N, (4, 2), generator=gen).cuda()
    kw = dict(crop=(16, 16), crop_mode="random", resize=(8, 10), mean=[0.4, 0.5, 0.6],
              std=[0.2, 0.25, 0.3], seed=11, check_indices=False)

    graph, out = _capture(lambda: rc.crop_resize_normalize(frames, idx, **kw))
    for _ in range(3):
        _refill(gen, (frames, lambda g: torch.randint(0, 256, (N, H, W, 3), generator=g,
                                                      dtype=torch.uint8)),
                (idx, lambda g: torch.randint(0, N, (4, 2), generator=g)))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        eager = rc.crop_resize_normalize(frames, idx, **{**kw, "check_indices": True})
        assert torch.equal(out, eager)
        host = rc.crop_resize_normalize(frames.cpu().numpy(), idx.cpu().numpy(), **kw)
        np.testing.assert_array_equal(out.cpu().numpy(), host)


def test_readme_example_runs():
    """README's "In a CUDA graph" block, as written: its `out` equals an eager call."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- cuda-graph-example")[1].split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(compile(block, "README.md (cuda-graph-example)", "exec"), scope)  # noqa: S102
    torch.cuda.synchronize()
    data, src, tgt = scope["data"], scope["src"], scope["tgt"]
    assert torch.equal(scope["out"], rc.resample(data, src, tgt))
    data.copy_(torch.randn_like(data, dtype=torch.float32).to(data.dtype))
    scope["graph"].replay()
    torch.cuda.synchronize()
    assert torch.equal(scope["out"], rc.resample(data, src, tgt))
