"""The CUDA path of the window batch builder (windows.cu) against the NumPy path.

- On the CPU: the kernel runs under the g++ emulator (tests/emulator) on NumPy arrays, through the
  same internal function (WindowOp.run_cuda) the GPU uses; skipped where the emulator is absent.
- On a GPU (@pytest.mark.gpu, skipped without one): CUDA stores, datasets and loaders against CPU
  ones built from the same arrays, batch by batch.
"""

from __future__ import annotations

import numpy as np
import pytest

import robocache as rc
from robocache import _runtime
from robocache import windows as W
from robocache.ops.windows import DTYPE_CODES, OUT_FLOAT, WindowKey, WindowOp

ALL_DTYPES = [d for d in DTYPE_CODES if d != "uint64"]


def _emulator():
    try:
        import emulator
    except ImportError:
        pytest.skip("the kernel emulator (tests/emulator) is not in this tree")
    if not emulator.compiler_available():
        pytest.skip("the kernel emulator needs a C++ compiler")
    return emulator


def _random_source(rng, dtype: str, shape):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return (rng.standard_normal(shape) * 8).astype(ml_dtypes.bfloat16)
    if dtype.startswith("float"):
        return (rng.standard_normal(shape) * 8).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)


def _random_keys(rng, N, n_keys):
    keys = []
    for i in range(n_keys):
        dt = ALL_DTYPES[int(rng.integers(len(ALL_DTYPES)))]
        shape = (N, *[int(s) for s in rng.integers(1, 5, size=int(rng.integers(0, 3)))])
        src = _random_source(rng, dt, shape)
        deltas = None if rng.random() < 0.3 else np.unique(rng.integers(-20, 20, size=int(
            rng.integers(1, 9)))).astype(np.int64)
        if rng.random() < 0.15:
            keys.append(WindowKey(f"k{i}", src, deltas, kind="rows"))
            continue
        out = None if rng.random() < 0.3 else OUT_FLOAT[int(rng.integers(4))]
        norm = None if out is None or rng.random() < 0.4 else (
            "affine", "range", "scale_offset")[int(rng.integers(3))]
        F = int(np.prod(shape[1:], dtype=np.int64))
        keys.append(WindowKey(
            f"k{i}", src, deltas, out_dtype=out, norm=norm,
            norm_a=(rng.standard_normal(F) * 2).astype(np.float32) if norm else None,
            norm_b=(rng.random(F) * 3 + 0.1).astype(np.float32) if norm else None,
            norm_f64=bool(norm) and rng.random() < 0.5))  # float64 arithmetic, rounded once
    return keys


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        if x.dtype.kind == "V" or x.dtype.name == "bfloat16":
            x, y = x.view(np.uint16), y.view(np.uint16)
        np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.mark.parametrize("seed", range(12))
def test_emulated_kernel_equals_numpy_path(seed):
    emulator = _emulator()
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 12, size=int(rng.integers(1, 8)))
    ends = np.cumsum(lens).astype(np.int64)
    N = int(ends[-1])
    drop = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    tab = W.anchor_table(ends, *drop)
    if tab.shape[0] == 0:
        tab = W.anchor_table(ends, 0, 0)
    keys = _random_keys(rng, N, int(rng.integers(1, 7)))
    for zero_pad in (False, True):
        host = WindowOp(keys, tab, zero_pad=zero_pad)
        dev = WindowOp(keys, tab, zero_pad=zero_pad, like=np.zeros(1))
        order = rng.integers(0, tab.shape[0], size=int(rng.integers(1, 50))).astype(np.int64)
        off = int(rng.integers(0, order.size))
        with emulator.emulated(order=("forward", "reverse", "shuffle")[seed % 3]) as launches:
            got = dev.run_cuda(order, off, order.size - off)
        assert len(launches) == 1  # one launch for every key of the batch
        _assert_same(got, host.run_numpy(order[off:]))


def test_emulated_kernel_wide_samples_use_several_blocks():
    """Per-sample work wider than one block: gridDim.y > 1 blocks share a sample."""
    emulator = _emulator()
    rng = np.random.default_rng(1)
    ends = np.array([40, 70], np.int64)
    src = rng.standard_normal((70, 61)).astype(np.float32)
    keys = [WindowKey("a", src, np.arange(-3, 9), out_dtype="float16", norm="affine",
                      norm_a=np.zeros(61, np.float32), norm_b=np.full(61, 3, np.float32))]
    tab = W.anchor_table(ends)
    dev = WindowOp(keys, tab, zero_pad=False, like=np.zeros(1))
    idx = rng.integers(0, 70, size=9).astype(np.int64)
    with emulator.emulated(order="shuffle") as launches:
        got = dev.run_cuda(idx)
    assert launches[0].grid[1] > 1
    _assert_same(got, WindowOp(keys, tab, zero_pad=False).run_numpy(idx))


def test_emulated_dataset_batch_equals_cpu_batch():
    """The dataset's own keys (normalization parameters, dtypes, camera rows) through the kernel
    equal the CPU path's batch."""
    emulator = _emulator()
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(2)
    lens = [1, 7, 3, 15]
    ends = np.cumsum(lens)
    N = int(ends[-1])
    arrays = {"state": rng.standard_normal((N, 5)).astype(ml_dtypes.bfloat16),
              "action": rng.standard_normal((N, 3)).astype(np.float32),
              "grip": rng.integers(0, 3, N).astype(np.int16),
              "cam": rng.integers(0, 255, (N, 3, 4, 3), dtype=np.uint8),
              "pose": rng.standard_normal((N, 2)) * [1, 1e-3] + [0, 1234.5]}  # float64
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, fps=5,
                                        timestamps=np.arange(N) / 5.0, device="cpu")
    # negative drops: windows anchored before / past their episode (anchor-only keys "grip" and
    # "timestamp" read the clamped anchor, also under pad="zero")
    for pad, drops in (("edge", (0, 0)), ("zero", (0, 0)), ("edge", (-2, -3)),
                       ("zero", (-1, -4))):
        ds = rc.TrajectoryDataset(
            st, delta_indices={"state": [-1, 0], "action": range(-1, 7), "cam": [-1, 0]},
            pad=pad, normalize={"state": "mean_std", "action": "quantiles", "grip": "limits",
                                "pose": "robomimic_obs", "goal": "robomimic_obs"},
            goal_keys={"goal": "pose", "goal_cam": "cam"},  # goal rows read at the anchor
            dtype={"state": "bfloat16"}, drop_n_first_frames=drops[0],
            drop_n_last_frames=drops[1])
        op = ds._op
        dev = WindowOp(op.keys, op.anchors, zero_pad=op.zero_pad, like=np.zeros(1))
        idx = rng.permutation(len(ds)).astype(np.int64)
        with emulator.emulated():
            got = ds._finish(dev.run_cuda(idx), torch_from_numpy=True)
        want = ds.get_batch(idx)
        assert set(got) == set(want)
        # equal offsets, separate masks (the kernel writes each key's own)
        assert got["state_is_pad"].data_ptr() != got["cam_is_pad"].data_ptr()
        for k in want:
            assert got[k].dtype == want[k].dtype, k
            assert (got[k] == want[k]).all(), k
        if drops != (0, 0):
            a, ep = want["index"].numpy(), want["episode_index"].numpy()
            start = ends[ep] - np.asarray(lens)[ep]
            outside = (a < start) | (a >= ends[ep])
            assert outside.any()
            # a key without offsets reads the clamped anchor, never zeros (pad="zero" too)
            ts = want["timestamp"].numpy()
            want_ts = (np.clip(a, start, ends[ep] - 1) / 5.0).astype(np.float32)
            np.testing.assert_array_equal(ts, want_ts)


def test_emulated_empty_offset_list_writes_nothing():
    """A key with an empty offset array has outputs [B, 0, F] and [B, 0] (the NumPy path); the
    kernel used to give it one row per sample and wrote B * F elements past its empty output.
    Outputs are views into buffers with a sentinel tail that must stay untouched."""
    emulator = _emulator()
    src = np.arange(30, dtype=np.float32).reshape(10, 3)
    keys = [WindowKey("a", src, np.zeros(0, np.int64)),
            WindowKey("r", src, np.zeros(0, np.int64), kind="rows"),
            WindowKey("b", src, np.array([-1, 0], np.int64), out_dtype="float16")]
    tab = W.anchor_table(np.array([4, 10], np.int64))
    dev = WindowOp(keys, tab, zero_pad=True, like=np.zeros(1))
    idx = np.array([3, 0, 9, 4, 4], dtype=np.int64)
    bufs, out = {}, {}
    for name, (shape, dt) in dev.output_spec(idx.size).items():
        nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
        bufs[name] = np.full(nbytes + 64, 0xAB, np.uint8)
        out[name] = bufs[name][:nbytes].view(dt).reshape(shape)
    with emulator.emulated():
        got = dev.run_cuda(idx, out=out)
    for name, b in bufs.items():
        assert (b[-64:] == 0xAB).all(), f"{name}: written past its end"
    _assert_same(got, WindowOp(keys, tab, zero_pad=True).run_numpy(idx))


def test_emulated_float32_float64_conversions_are_exact_for_special_values():
    """float32 -> float64 and float64 -> float32 outputs equal NumPy's astype bit for bit for
    subnormals, signed zeros, the FLT_MIN rounding boundary, overflow, inf and NaN. (On a GPU,
    -ftz=true would flush the subnormals of a plain cast; test_kernel_contracts checks that the
    kernel's widening has no flushing cvt, and common.cuh's narrowing guards its cvt.)"""
    emulator = _emulator()
    tiny = float(np.finfo(np.float32).tiny)
    f32 = np.array([1e-45, -3e-42, 1e-40, tiny, -tiny * (1 - 2**-24), 0.0, -0.0, 1.5, np.inf,
                    -np.inf, np.nan, 3.4e38], dtype=np.float32)
    f64 = np.array([1e-45, 7e-46, 2e-46, -1e-40, tiny * (1 - 2**-25), tiny * (1 - 2**-23),
                    -0.0, 1e-300, 1e39, -np.inf, np.nan, 0.1, 3.4028235e38], dtype=np.float64)
    n = max(f32.size, f64.size)
    a = np.resize(f32, n)[:, None].copy()
    b = np.resize(f64, n)[:, None].copy()
    with np.errstate(over="ignore"):  # 1e39 -> inf in float32
        b32 = b.astype(np.float32)
        keys = [WindowKey("a", a, None, out_dtype="float64"),
                WindowKey("b", b, None, out_dtype="float32"),
                WindowKey("c", b32, np.array([0, 1], np.int64), out_dtype="float64")]
        tab = W.anchor_table(np.array([n], np.int64))
        dev = WindowOp(keys, tab, zero_pad=False, like=np.zeros(1))
        idx = np.arange(n, dtype=np.int64)
        with emulator.emulated():
            got = dev.run_cuda(idx)
        want = WindowOp(keys, tab, zero_pad=False).run_numpy(idx)
    ok = ~np.isnan(b[:, 0])
    assert (want["b"][ok, 0].view(np.uint32) == b32[ok, 0].view(np.uint32)).all()
    for k in ("a", "b", "c"):
        x, y = np.asarray(got[k]), np.asarray(want[k])
        nan = np.isnan(y)
        assert (np.isnan(x) == nan).all(), k
        np.testing.assert_array_equal(x[~nan].view(np.uint8), y[~nan].view(np.uint8), err_msg=k)


# ---------------------------------------------------------------------------------------------
# On a GPU

def _ftz(t):
    """CuPy compiles with -ftz=true: float results below the normal range are flushed to 0."""
    import torch

    if not t.dtype.is_floating_point:
        return t
    tiny = torch.finfo(t.dtype).tiny
    return torch.where(t.abs() < tiny, torch.zeros_like(t), t)


def _assert_batches_equal(cuda_batch, cpu_batch):
    import torch

    assert set(cuda_batch) == set(cpu_batch)
    for k, v in cpu_batch.items():
        g = cuda_batch[k]
        assert g.is_cuda and g.dtype == v.dtype and g.shape == v.shape, k
        torch.testing.assert_close(_ftz(g.cpu()), _ftz(v), rtol=0, atol=0, equal_nan=True,
                                   msg=k)


def _stores(seed=0):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(seed)
    lens = [1, 30, 2, 50, 17, 1, 64]
    ends = np.cumsum(lens)
    N = int(ends[-1])
    arrays = {"observation.state": rng.standard_normal((N, 32)).astype(np.float32),
              "action": rng.standard_normal((N, 14)).astype(ml_dtypes.bfloat16),
              "done": rng.random(N) < 0.1,
              "observation.images.top": rng.integers(0, 255, (N, 6, 5, 3), dtype=np.uint8),
              "pose": rng.standard_normal((N, 3)) * [1, 1e-3, 5] + [0, 1234.5, 0]}  # float64
    ts = np.concatenate([np.arange(n) / 10.0 for n in lens])
    cpu = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, fps=10, timestamps=ts,
                                         device="cpu")
    return cpu, cpu.to("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_gpu_dataset_batches_equal_cpu(pad):
    cpu, cuda = _stores()
    kw = dict(delta_timestamps={"observation.state": [-0.1, 0.0],
                                "action": [i / 10 for i in range(16)],
                                "observation.images.top": [-0.1, 0.0]},
              pad=pad, drop_n_last_frames=3,
              normalize={"observation.state": "mean_std", "action": "min_max",
                         "pose": "robomimic_obs"},  # float64 arithmetic, rounded once
              goal_keys={"goal": "pose", "goal_cam": "observation.images.top"})
    a, b = rc.TrajectoryDataset(cuda, **kw), rc.TrajectoryDataset(cpu, **kw)
    idx = np.random.default_rng(0).permutation(len(a))[:100]
    _assert_batches_equal(a.get_batch(idx), b.get_batch(idx))
    item_g, item_c = a[5], b[5]
    for k in item_c:
        assert (item_g[k].cpu() == item_c[k]).all(), k


@pytest.mark.gpu
@pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampling", ["frame", "episode"])
def test_gpu_loader_same_batches_as_cpu(sampling):
    cpu, cuda = _stores(1)
    kw = dict(delta_indices={"observation.state": [-1, 0], "action": range(16)},
              normalize={"observation.state": "quantiles"})
    dg, dc = rc.TrajectoryDataset(cuda, **kw), rc.TrajectoryDataset(cpu, **kw)
    for reuse in (0, 3):
        lg = rc.DataLoader(dg, batch_size=32, shuffle=True, seed=11, sampling=sampling,
                           reuse_outputs=reuse)
        lc = rc.DataLoader(dc, batch_size=32, shuffle=True, seed=11, sampling=sampling)
        for epoch in range(2):
            n = 0
            for bg, bc in zip(lg, lc, strict=True):
                _assert_batches_equal({k: v.clone() for k, v in bg.items()}, bc)
                n += 1
            assert n == len(lg) and lg.epoch == epoch + 1
        if reuse == 0:  # a whole epoch held (filled ahead, several per launch): all intact
            for bg, bc in zip(list(lg), list(lc), strict=True):
                _assert_batches_equal(bg, bc)
        epochs = 3 if reuse == 0 else 2  # several batches per launch, not one each
        assert len(lg) > 4 and lg._builder[2].launches <= epochs * (len(lg) // 2 + 1)
        # shards of a 3-rank job and resume mid-epoch
        lg = rc.DataLoader(dg, batch_size=8, shuffle=True, seed=2, rank=1, world_size=3)
        lc = rc.DataLoader(dc, batch_size=8, shuffle=True, seed=2, rank=1, world_size=3)
        it = iter(lg)
        next(it)
        state = lg.state_dict()
        lg2 = rc.DataLoader(dg, batch_size=8, shuffle=True, rank=1, world_size=3)
        lg2.load_state_dict(state)
        for bg, bc in zip(lg2, list(lc)[1:], strict=True):
            _assert_batches_equal(bg, bc)


@pytest.mark.gpu
@pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")
def test_gpu_store_stats_memory_check_and_torch_dataloader(monkeypatch):
    import torch

    from robocache import store as store_mod

    cpu, cuda = _stores(2)
    assert cuda.device == "cuda:0" and cuda["action"].is_cuda
    assert cuda["action"].dtype == torch.bfloat16 and cuda.nbytes == cpu.nbytes
    for k in cpu.keys:
        a, b = cuda.stats(k)[k], cpu.stats(k)[k]
        for s in a:
            np.testing.assert_allclose(a[s], b[s], rtol=1e-12, atol=1e-12, err_msg=f"{k} {s}")
    back = cuda.to("cpu")
    for k in cpu.keys:
        np.testing.assert_array_equal(back[k].view(np.uint8), cpu[k].view(np.uint8))
    ds = rc.TrajectoryDataset(cuda, delta_indices={"action": range(4)})
    dl = torch.utils.data.DataLoader(ds, batch_size=16)
    b = next(iter(dl))
    assert b["action"].is_cuda and b["action"].shape == (16, 4, 14)
    workers = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=1)
    with pytest.raises(RuntimeError, match="num_workers=0"):  # said plainly, not torch's fork
        next(iter(workers))                                    # error from inside CUDA
    free = torch.cuda.mem_get_info()[0]
    monkeypatch.setattr(store_mod, "_free_bytes", lambda device: 100)
    with pytest.raises(rc.DeviceMemoryError, match=r"only .* \(100 bytes\)"):
        cpu.to("cuda")
    assert free > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")
def test_gpu_loader_on_a_side_stream_equals_cpu():
    """Batches built while another torch stream is current run on that stream and stay right;
    the epoch's index array and the tables are marked as used there (record_stream)."""
    import torch

    cpu, cuda = _stores(2)
    kw = dict(delta_indices={"observation.state": [-1, 0], "action": range(8)})
    lg = rc.DataLoader(rc.TrajectoryDataset(cuda, **kw), batch_size=16, shuffle=True, seed=4)
    lc = rc.DataLoader(rc.TrajectoryDataset(cpu, **kw), batch_size=16, shuffle=True, seed=4)
    side = torch.cuda.Stream()
    got = []
    it = iter(lg)
    got.append({k: v.clone() for k, v in next(it).items()})  # default stream
    with torch.cuda.stream(side):
        for b in it:
            got.append({k: v.clone() for k, v in b.items()})
    side.synchronize()
    del lg, it
    torch.cuda.synchronize()
    for bg, bc in zip(got, lc, strict=True):
        _assert_batches_equal(bg, bc)
