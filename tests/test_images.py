"""rc.crop_resize_normalize: the NumPy path against a torch reference (slicing + F.interpolate +
normalise), the random draws, errors, and the CUDA path against the NumPy path (GPU tests, and
the CPU kernel emulator, tests/emulator)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robocache as rc
from robocache import _array, _runtime
from robocache.ops import _random, images

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _frames(rng, N, H, W, C):
    return rng.integers(0, 256, (N, H, W, C), dtype=np.uint8)


def torch_reference(frames, indices, *, zero=None, crop=None, crop_mode="center", shift=0,
                    resize=None, scale=1 / 255, mean=None, std=None, brightness=0.0,
                    contrast=0.0, per_frame_crop=False, per_frame_jitter=False, seed=0, epoch=0,
                    batch=0):
    """Per image with torch ops: replicate-pad, slice, F.interpolate, scale, jitter, normalise.
    Random origins and factors come from images._draws (tested on their own below)."""
    N, H, W, C = frames.shape
    B, K = indices.shape
    ch, cw = (H, W) if crop is None else ((crop, crop) if isinstance(crop, int) else crop)
    size = (ch, cw) if resize is None else resize
    plan = images.make_plan(frames.shape[1:], crop=crop, crop_mode=crop_mode, shift=shift,
                            per_frame_crop=per_frame_crop, brightness=brightness,
                            contrast=contrast, per_frame_jitter=per_frame_jitter)
    oy, ox, fb, fc = images._draws(plan, B, K, _random.rand_key(seed, epoch, batch))
    if crop_mode == "center":  # torchvision's CenterCrop origin, computed here independently
        oy = np.full((B, K), int(round((H - ch) / 2.0))) + (oy - plan.center[0])
        ox = np.full((B, K), int(round((W - cw) / 2.0))) + (ox - plan.center[1])
    mean_t = torch.zeros(C) if mean is None else torch.tensor(mean, dtype=torch.float32) * \
        torch.ones(C)
    std_t = torch.ones(C) if std is None else torch.tensor(std, dtype=torch.float32) * \
        torch.ones(C)
    vmax = 255.0 * scale
    out = torch.zeros((B, K, C) + tuple(size), dtype=torch.float32)
    for b in range(B):
        for k in range(K):
            if indices[b, k] < 0 or (zero is not None and zero[b, k]):
                continue
            img = torch.from_numpy(frames[indices[b, k]]).permute(2, 0, 1).float()
            if shift:
                img = F.pad(img[None], (shift, shift, shift, shift), mode="replicate")[0]
            y, x = int(oy[b, k]) + shift, int(ox[b, k]) + shift
            win = img[:, y:y + ch, x:x + cw]
            if tuple(size) != (ch, cw):
                win = F.interpolate(win[None], size=tuple(size), mode="bilinear",
                                    align_corners=False, antialias=False)[0]
            v = win * scale
            if brightness:
                v = (v * float(fb[b, k])).clamp(0, vmax)
            if contrast:
                v = ((v - vmax / 2) * float(fc[b, k]) + vmax / 2).clamp(0, vmax)
            out[b, k] = (v - mean_t[:, None, None]) / std_t[:, None, None]
    return out.numpy()


REFERENCE_CASES = [
    # (N, H, W, C), op kwargs
    ((6, 16, 16, 3), dict(crop=10)),                                          # centre crop
    ((6, 17, 21, 3), dict(crop=(8, 11))),                                     # odd margins
    ((8, 96, 96, 3), dict(crop=84, crop_mode="random", mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225])),                        # PERF workload
    ((5, 10, 12, 1), dict(resize=(23, 31))),                                  # upsample, C=1
    ((5, 30, 40, 4), dict(resize=(7, 9), mean=0.5, std=0.25)),                # downsample, C=4
    ((5, 48, 64, 3), dict(crop=(40, 50), crop_mode="random", resize=(21, 13))),
    ((5, 20, 20, 3), dict(shift=4)),                                          # DrQ shift
    ((5, 24, 30, 3), dict(crop=(12, 20), crop_mode="random", shift=3, resize=(16, 16),
                          brightness=0.4, contrast=0.5, mean=[0.5] * 3, std=[0.2, 0.3, 0.4],
                          per_frame_crop=True)),
    ((4, 12, 12, 3), dict(brightness=1.5, contrast=0.3, per_frame_jitter=True)),
    ((4, 12, 14, 1), dict(scale=None, resize=(12, 14))),                      # explicit same size
]


@pytest.mark.parametrize("shape,kw", REFERENCE_CASES)
def test_matches_torch_reference(shape, kw):
    rng = np.random.default_rng(sum(shape))
    frames = _frames(rng, *shape)
    idx = rng.integers(0, shape[0], (5, 3))
    got = rc.crop_resize_normalize(frames, idx, seed=3, epoch=1, batch=7, **kw)
    ref_kw = dict(kw)
    if ref_kw.get("scale", 1) is None:
        ref_kw["scale"] = 1.0
    want = torch_reference(frames, idx, seed=3, epoch=1, batch=7, **ref_kw)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("size", [(37, 29, 45, 56), (96, 128, 224, 224), (16, 66, 14, 61),
                                  (480, 640, 84, 84), (5, 300, 7, 2), (2, 2, 13, 3)])
def test_resize_weights_are_torchs(size, channels):
    """The taps' weights are torch's bits (the source index scale * (dst + 0.5) - 0.5 rounded
    once, a fused multiply-add, as torch's AVX2 / AVX-512 kernels compute it): a frame whose
    only non-zero pixels are on even rows and columns gives each output pixel one product of
    weights and a value, which equals torch's F.interpolate to the bit (formed in one of the
    two orders torch's paths use); the full sums stay within 4 float32 ulps, in either memory
    format (torch groups the four products otherwise; 4 is reached with 4 channels, e.g. 2x2
    -> 13x3). Rounding every step in float32 put some weights 200+ ulps away."""
    torch = pytest.importorskip("torch")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch's CPU kernels contract the source index into an FMA only in their "
                    "AVX2 / AVX-512 builds")
    F = torch.nn.functional
    H, W, h, w = size
    rng = np.random.default_rng(H * W)
    frames = rng.integers(0, 256, (2, H, W, channels), dtype=np.uint8)
    got = rc.crop_resize_normalize(frames, np.array([0, 1]), resize=(h, w), scale=None)
    nchw = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    for fmt in (torch.contiguous_format, torch.channels_last):
        want = F.interpolate(nchw.contiguous(memory_format=fmt), size=(h, w), mode="bilinear",
                             align_corners=False).contiguous().numpy()
        assert got.shape == want.shape
        ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))
        assert ulps[want != 0].max() <= 4, fmt
    y0, y1, ly = images._taps(np.float32(H) / np.float32(h), h, H)
    x0, x1, lx = images._taps(np.float32(W) / np.float32(w), w, W)
    wy = np.stack([np.float32(1) - ly, ly])  # [2, h]: the weights of rows y0, y1
    wx = np.stack([np.float32(1) - lx, lx])
    sparse = np.zeros_like(frames)
    sparse[:, ::2, ::2] = frames[:, ::2, ::2]
    want = F.interpolate(torch.from_numpy(sparse).permute(0, 3, 1, 2).float(), size=(h, w),
                         mode="bilinear", align_corners=False).numpy()
    # the one non-zero tap of each output pixel, times torch's product of its two weights
    rows = np.where(y0 % 2 == 0, 0, 1)
    cols = np.where(x0 % 2 == 0, 0, 1)
    ys = np.where(rows == 0, y0, y1)
    xs = np.where(cols == 0, x0, x1)
    ry, rx = wy[rows, np.arange(h)][:, None], wx[cols, np.arange(w)][None, :]
    v = sparse[:, ys][:, :, xs].astype(np.float32).transpose(0, 3, 1, 2)
    # torch forms the product as (wy * wx) * v or as (v * wx) * wy, by path; at the last row /
    # column both taps are one pixel (a sum), left out
    same = ((want == (ry * rx) * v) | (want == (v * rx) * ry))
    inner = (y0 != y1)[:, None] & (x0 != x1)[None, :]
    assert inner.sum() > h * w // 2 and same[..., inner].all()


def test_cameras_of_different_sizes_are_separate_calls():
    rng = np.random.default_rng(5)
    cams = {"top": _frames(rng, 7, 48, 64, 3), "wrist": _frames(rng, 7, 30, 30, 3),
            "depth": _frames(rng, 7, 24, 32, 1)}
    idx = rng.integers(0, 7, (4, 2))
    for name, frames in cams.items():
        got = rc.crop_resize_normalize(frames, idx, resize=(20, 20), batch=2)
        want = torch_reference(frames, idx, resize=(20, 20), batch=2)
        assert got.shape == (4, 2, frames.shape[3], 20, 20), name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_layout_bkhwc_is_a_transpose():
    rng = np.random.default_rng(6)
    frames = _frames(rng, 4, 20, 24, 3)
    idx = rng.integers(0, 4, (3, 2))
    kw = dict(crop=12, crop_mode="random", resize=(9, 7), seed=1)
    a = rc.crop_resize_normalize(frames, idx, **kw)
    b = rc.crop_resize_normalize(frames, idx, layout="BKHWC", **kw)
    assert b.shape == (3, 2, 9, 7, 3)
    np.testing.assert_array_equal(a, b.transpose(0, 1, 4, 2, 3))


def test_torch_cpu_tensors_in_torch_out():
    rng = np.random.default_rng(7)
    frames = _frames(rng, 6, 16, 16, 3)
    idx = rng.integers(0, 6, (4, 2))
    want = rc.crop_resize_normalize(frames, idx, crop=8, crop_mode="random", seed=2)
    for idx_t in (torch.from_numpy(idx), torch.from_numpy(idx.astype(np.int32))):
        got = rc.crop_resize_normalize(torch.from_numpy(frames), idx_t, crop=8,
                                       crop_mode="random", seed=2)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want)
    got = rc.crop_resize_normalize(torch.from_numpy(frames), idx, crop=8, crop_mode="random",
                                   seed=2, out_dtype="bfloat16", device="cpu")
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.float().numpy(),
                                  torch.from_numpy(want).bfloat16().float().numpy())


@pytest.mark.parametrize("out_dtype", ["float16", "bfloat16"])
def test_half_outputs_round_the_float32_result(out_dtype):
    rng = np.random.default_rng(8)
    frames = _frames(rng, 5, 20, 20, 3)
    idx = rng.integers(-1, 5, (4, 2))
    kw = dict(resize=(13, 17), mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], brightness=0.2)
    f32 = rc.crop_resize_normalize(frames, idx, **kw)
    got = rc.crop_resize_normalize(frames, idx, out_dtype=out_dtype, **kw)
    want = torch.from_numpy(f32).to(getattr(torch, out_dtype)).float().numpy()
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_uint8_output():
    rng = np.random.default_rng(9)
    frames = _frames(rng, 6, 20, 22, 3)
    idx = rng.integers(0, 6, (3, 2))
    # no resize, no normalisation: an exact crop, in HWC layout the same bytes as slicing
    got = rc.crop_resize_normalize(frames, idx, crop=(10, 12), out_dtype="uint8", layout="BKHWC")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, frames[idx][:, :, 5:15, 5:17])
    # resized: the float32 result rounded half to even and clamped
    f = rc.crop_resize_normalize(frames, idx, resize=(9, 31), scale=None)
    u = rc.crop_resize_normalize(frames, idx, resize=(9, 31), out_dtype="uint8")
    np.testing.assert_array_equal(u, np.rint(np.clip(f, 0, 255)).astype(np.uint8))
    # explicit normalisation into uint8 clamps
    u = rc.crop_resize_normalize(frames, idx, out_dtype="uint8", scale=None, mean=100, std=0.5)
    f = rc.crop_resize_normalize(frames, idx, scale=None, mean=100, std=0.5)
    np.testing.assert_array_equal(u, np.rint(np.clip(f, 0, 255)).astype(np.uint8))
    assert u.min() == 0 and u.max() == 255


def test_random_crops_in_bounds_reproducible_and_varied():
    H, W, ch, cw = 13, 20, 9, 12
    plan = images.make_plan((H, W, 3), crop=(ch, cw), crop_mode="random")
    oy, ox, _, _ = images._draws(plan, 3000, 2, _random.rand_key(0, 0, 0))
    assert oy.min() == 0 and oy.max() == H - ch and ox.min() == 0 and ox.max() == W - cw
    assert len(np.unique(oy)) == H - ch + 1 and len(np.unique(ox)) == W - cw + 1
    rng = np.random.default_rng(10)
    frames = _frames(rng, 8, H, W, 3)
    idx = rng.integers(0, 8, (64, 2))
    kw = dict(crop=(ch, cw), crop_mode="random")
    a = rc.crop_resize_normalize(frames, idx, seed=5, epoch=2, batch=9, **kw)
    b = rc.crop_resize_normalize(frames, idx, seed=5, epoch=2, batch=9, **kw)
    np.testing.assert_array_equal(a, b)
    keys = [(5, 2, 10), (5, 3, 9), (6, 2, 9)]
    base = images._draws(plan, 64, 2, _random.rand_key(5, 2, 9))[:2]
    for key in keys:
        c = rc.crop_resize_normalize(frames, idx, seed=key[0], epoch=key[1], batch=key[2], **kw)
        assert not np.array_equal(a, c), key
        other = images._draws(plan, 64, 2, _random.rand_key(*key))[:2]
        assert (other[0] != base[0]).mean() > 0.5   # most samples get another crop


def test_per_sample_vs_per_frame_crop():
    rng = np.random.default_rng(11)
    frames = _frames(rng, 3, 24, 24, 3)
    idx = np.repeat(rng.integers(0, 3, (32, 1)), 4, axis=1)  # each sample: one frame 4 times
    kw = dict(crop=12, crop_mode="random", shift=2, seed=1)
    same = rc.crop_resize_normalize(frames, idx, **kw)
    assert all(np.array_equal(same[:, 0], same[:, k]) for k in range(1, 4))
    per = rc.crop_resize_normalize(frames, idx, per_frame_crop=True, **kw)
    assert not np.array_equal(per[:, 0], per[:, 1])
    plan = images.make_plan((24, 24, 3), crop=12, crop_mode="random", per_frame_crop=True)
    oy, ox, _, _ = images._draws(plan, 32, 4, _random.rand_key(1, 0, 0))
    assert (oy != oy[:, :1]).any() and (ox != ox[:, :1]).any()


def test_shift_offsets_and_edges():
    plan = images.make_plan((20, 20, 3), shift=4)
    oy, ox, _, _ = images._draws(plan, 2000, 1, _random.rand_key(0, 0, 0))
    assert oy.min() == -4 and oy.max() == 4 and ox.min() == -4 and ox.max() == 4
    # a frame whose value is 10 * its row: each output row shows which frame row it came from
    frames = np.broadcast_to(np.arange(20, dtype=np.uint8)[None, :, None, None] * 10,
                             (2, 20, 20, 3)).copy()
    out = rc.crop_resize_normalize(frames, np.zeros((60, 1), np.int64), shift=4, scale=None,
                                   out_dtype="uint8")
    rows = out[:, 0, 0, :, 0].astype(int) // 10                 # [60, 20]
    dy, _, _, _ = images._draws(plan, 60, 1, _random.rand_key(0, 0, 0))
    np.testing.assert_array_equal(rows, np.clip(dy[:, :1] + np.arange(20), 0, 19))
    assert set(dy[:, 0].tolist()) == set(range(-4, 5))          # both edges replicated


def test_zero_mask_and_minus_one_write_zeros():
    rng = np.random.default_rng(12)
    frames = _frames(rng, 5, 16, 16, 3)
    idx = rng.integers(0, 5, (6, 3))
    kw = dict(crop=8, crop_mode="random", mean=[0.5] * 3, std=[0.2] * 3, brightness=0.3, seed=4)
    full = rc.crop_resize_normalize(frames, idx, **kw)
    mask = rng.random((6, 3)) < 0.4
    idx2 = idx.copy()
    idx2[0, 1] = -1
    got = rc.crop_resize_normalize(frames, idx2, zero_mask=mask, **kw)
    zero = mask.copy()
    zero[0, 1] = True
    assert np.all(got[zero] == 0)
    np.testing.assert_array_equal(got[~zero], full[~zero])   # other images keep their draws
    # every image padded, even with no frames at all
    empty = np.zeros((0, 16, 16, 3), np.uint8)
    z = rc.crop_resize_normalize(empty, -np.ones((2, 2), np.int64), resize=(4, 4))
    assert z.shape == (2, 2, 3, 4, 4) and not z.any()


def test_jitter_ranges_respected():
    plan = images.make_plan((8, 8, 3), brightness=0.25, contrast=1.5)
    _, _, fb, fc = images._draws(plan, 4000, 2, _random.rand_key(0, 0, 0))
    assert fb.dtype == np.float32 and fb.min() >= 0.75 and fb.max() < 1.25
    assert fb.max() - fb.min() > 0.45                     # the range is covered
    assert fc.min() >= 0.0 and fc.max() < 2.5 and fc.min() < 0.01
    assert np.array_equal(fb[:, 0], fb[:, 1])             # one draw per sample by default
    rng = np.random.default_rng(13)
    frames = _frames(rng, 4, 8, 8, 3)
    out = rc.crop_resize_normalize(frames, rng.integers(0, 4, (200, 2)), brightness=0.25,
                                   contrast=1.5)
    assert out.min() >= 0 and out.max() <= 1              # clamped to the scaled range
    # brightness alone scales pixels by a factor in range (before clamping)
    img = np.full((1, 8, 8, 3), 100, np.uint8)
    o = rc.crop_resize_normalize(img, np.zeros((300, 1), np.int64), brightness=0.25, scale=None)
    ratios = o[:, 0, 0, 0, 0] / 100
    assert ratios.min() >= 0.75 - 1e-6 and ratios.max() <= 1.25 + 1e-6


def test_one_dimensional_indices_and_empty_batches():
    rng = np.random.default_rng(14)
    frames = _frames(rng, 4, 10, 10, 3)
    idx = rng.integers(0, 4, 5)
    a = rc.crop_resize_normalize(frames, idx, crop=6, crop_mode="random", seed=1)
    b = rc.crop_resize_normalize(frames, idx[:, None], crop=6, crop_mode="random", seed=1)
    assert a.shape == (5, 3, 6, 6)
    np.testing.assert_array_equal(a, b[:, 0])
    assert rc.crop_resize_normalize(frames, np.zeros((0, 2), np.int64)).shape == (0, 2, 3, 10, 10)
    assert rc.crop_resize_normalize(frames, np.zeros((3, 0), np.int32)).shape == (3, 0, 3, 10, 10)
    one = rc.crop_resize_normalize(frames[:1, :1, :1], np.zeros((1, 1), np.int64), resize=(3, 2))
    np.testing.assert_allclose(one, np.broadcast_to(frames[0, 0, 0][:, None, None] / 255,
                                                    (1, 1, 3, 3, 2)), rtol=1e-6)


def test_bad_inputs():
    f = np.zeros((4, 10, 12, 3), np.uint8)
    idx = np.zeros((2, 2), np.int64)
    call = rc.crop_resize_normalize
    with pytest.raises(TypeError, match="frames"):
        call(f.astype(np.float32), idx)
    with pytest.raises(ValueError, match="frames"):
        call(f[..., :2], idx)
    with pytest.raises(ValueError, match="frames"):
        call(f[0], idx)
    with pytest.raises(ValueError, match=r"crop.*\(10, 12\)"):
        call(f, idx, crop=11)
    with pytest.raises(ValueError, match="crop"):
        call(f, idx, crop=(0, 4))
    with pytest.raises(TypeError, match="crop"):
        call(f, idx, crop=(4.5, 4))
    with pytest.raises(ValueError, match=r"indices.*\[-1, 4\).*4"):
        call(f, np.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"indices.*-2"):
        call(f, np.array([[0, -2]]))
    with pytest.raises(TypeError, match="indices"):
        call(f, idx.astype(np.float32))
    with pytest.raises(ValueError, match="indices"):
        call(f, np.zeros((2, 2, 2), np.int64))
    with pytest.raises(ValueError, match="zero_mask"):
        call(f, idx, zero_mask=np.zeros((2, 3), bool))
    with pytest.raises(TypeError, match="zero_mask"):
        call(f, idx, zero_mask=np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="crop_mode"):
        call(f, idx, crop_mode="left")
    with pytest.raises(ValueError, match="out_dtype"):
        call(f, idx, out_dtype="float64")
    with pytest.raises(ValueError, match="layout"):
        call(f, idx, layout="BCHW")
    with pytest.raises(ValueError, match="shift"):
        call(f, idx, shift=-1)
    with pytest.raises(ValueError, match="resize"):
        call(f, idx, resize=(0, 5))
    with pytest.raises(ValueError, match="std"):
        call(f, idx, std=[1, 0, 1])
    with pytest.raises(ValueError, match="mean"):
        call(f, idx, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="mean"):
        call(f, idx, mean=[0.5, np.nan, 0.5])
    for bad in ("0.5", [0.5, "x", 0.5], [[0.1], [0.2, 0.3]], [None] * 3, True,
                np.array(["0.5"] * 3)):  # not channel values: named, not NumPy's message
        with pytest.raises(TypeError, match=r"mean: expected a number or 3 numbers"):
            call(f, idx, mean=bad)
        with pytest.raises(TypeError, match=r"std: expected a number or 3 numbers"):
            call(f, idx, std=bad)
    with pytest.raises(ValueError, match="scale"):
        call(f, idx, scale=0)
    with pytest.raises(ValueError, match="brightness"):
        call(f, idx, brightness=-0.1)
    with pytest.raises(ValueError, match="seed"):
        call(f, idx, seed=-1)
    with pytest.raises(ValueError, match="batch"):
        call(f, idx, batch=2**64)
    with pytest.raises(ValueError, match="device"):
        call(f, idx, device="tpu")
    with pytest.raises(TypeError, match="per_frame_crop"):
        call(f, idx, per_frame_crop="yes")
    call(f, idx, shift=1)                     # a cached plan must not let shift=True through
    with pytest.raises(ValueError, match="shift"):
        call(f, idx, shift=True)
    for kw, match in (({"scale": 1e300}, r"scale: expected a number in \[1e-30, 1e30\]"),
                      ({"scale": 1e-50}, "scale"), ({"std": 1e-45}, "float32 inverse"),
                      ({"mean": 1e39}, "values float32 holds")):  # float32 would overflow
        with pytest.raises(ValueError, match=match):
            call(f, idx, **kw)
    # the kernel's exact float pixel indices and int32 window origins
    with pytest.raises(ValueError, match=r"resize: expected output and crop sides below 2\*\*23"):
        images.make_plan((4, 4, 1), resize=(2**23, 1))
    images.make_plan((4, 4, 1), resize=(2**23 - 1, 1))
    with pytest.raises(ValueError, match="shift: expected frame sides plus twice the shift"):
        images.make_plan((2**31 - 1, 1, 1), crop=1, crop_mode="random", shift=2**30 - 1)
    # the kernel's int32 pixel counter steps past the last pixel by up to 65535 tiles of threads
    with pytest.raises(ValueError, match=r"resize: expected at most 2147483647 output elements "
                                         r"and 2130706687 pixels per image, got 1x46340x46340"):
        images.make_plan((4, 4, 1), resize=(46340, 46340), layout="BKHWC")
    images.make_plan((4, 4, 1), resize=(46000, 46000), layout="BKHWC")
    for ok, bad in (((4, 4), (4.0, 4.0)), ([3, 3], [3.0, 3.0])):  # nor floats in a pair
        call(f, idx, crop=ok)
        with pytest.raises(TypeError, match="crop: expected an int or a pair of ints"):
            call(f, idx, crop=bad)


def test_unchecked_indices_are_clamped_not_read_out_of_bounds():
    rng = np.random.default_rng(15)
    frames = _frames(rng, 3, 6, 6, 1)
    got = rc.crop_resize_normalize(frames, np.array([[7]]), check_indices=False)
    want = rc.crop_resize_normalize(frames, np.array([[2]]))
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(_runtime.cuda_available(), reason="checks the no-GPU error")
def test_host_resident_mode_needs_cuda():
    frames = torch.zeros((2, 4, 4, 3), dtype=torch.uint8)
    with pytest.raises(rc.BackendUnavailableError):
        rc.crop_resize_normalize(frames, np.zeros((1, 1), np.int64), device="cuda")


def test_host_resident_semantics_on_numpy_path():
    """Host-resident mode runs the same op on frames the host holds; its NumPy semantics are
    those of the host path (device='cpu'), whatever library holds the frames."""
    rng = np.random.default_rng(16)
    frames = _frames(rng, 5, 20, 20, 3)
    idx = rng.integers(-1, 5, (4, 2))
    kw = dict(crop=12, crop_mode="random", resize=(8, 8), seed=3, mean=0.5, std=0.5)
    a = rc.crop_resize_normalize(frames, idx, device="cpu", **kw)
    b = rc.crop_resize_normalize(torch.from_numpy(frames), torch.from_numpy(idx), device="cpu",
                                 **kw)
    np.testing.assert_array_equal(a, b.numpy())


def test_compiles_without_spills():
    """Every instance on the main target (the all-arch check is `robocache compile --check`)."""
    pytest.importorskip("cuda.bindings")
    from robocache import _kernels

    for arch in ("sm_90",):
        r = _runtime.compile_for_arch(_kernels.IMAGES, arch, verbose_ptxas=True)
        assert r.ok, r.log
        assert set(r.lowered_names) == set(_kernels.IMAGES.name_expressions)
        assert "bytes spill stores" in r.log
        assert all(" 0 bytes spill stores" in line for line in r.log.splitlines()
                   if "spill stores" in line), r.log


# ---------------------------------------------------------------------------------------------
# CUDA path == NumPy path

CUDA_CASES = [
    ((20, 96, 96, 3), dict(crop=84, crop_mode="random", mean=[0.485, 0.456, 0.406],
                           std=[0.229, 0.224, 0.225])),
    ((6, 48, 64, 3), dict(resize=(22, 22), out_dtype="bfloat16")),
    ((6, 30, 40, 4), dict(crop=(20, 30), crop_mode="random", shift=3, resize=(33, 17),
                          brightness=0.3, contrast=0.4, per_frame_crop=True,
                          out_dtype="float16", layout="BKHWC")),
    ((6, 25, 19, 1), dict(resize=(9, 40), out_dtype="uint8", shift=2, per_frame_jitter=True,
                          contrast=0.2)),
    ((6, 16, 16, 3), dict(out_dtype="uint8")),
    # widths of a multiple of 4 in "BKCHW": the kernels writing 4 pixels per store
    ((6, 48, 64, 3), dict(resize=(24, 32), out_dtype="bfloat16", brightness=0.2)),
    ((6, 30, 40, 4), dict(crop=(20, 28), crop_mode="random", shift=2, out_dtype="float16",
                          per_frame_crop=True, contrast=0.3)),
    # images of several blocks, threads with several work items (rows stepped with a carry)
    ((3, 60, 80, 3), dict(crop=(56, 76), crop_mode="random", out_dtype="bfloat16",
                          brightness=0.2)),
    ((3, 60, 80, 3), dict(crop=(57, 75), crop_mode="random", shift=1)),
]


def _compare(got, want, out_dtype):
    """A GPU result against the NumPy backend's. The kernel rounds every step as NumPy does (no
    FMA contraction), but a GPU may still differ in the last bit (flushed subnormals): a
    tolerance of a few units in the last place of the output type."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if out_dtype == "uint8":          # a last-bit difference may cross a .5 boundary
        assert np.abs(got - want).max() <= 1
        assert (got != want).mean() < 0.01
    else:
        tol = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}[out_dtype]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _same(got, want):
    """The emulated kernel against the NumPy backend: bit for bit (no FMA contraction, no
    flushing on the CPU, and the kernel rounds each step in NumPy's order)."""
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def _case_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    frames = _frames(rng, *shape)
    idx = rng.integers(-1, shape[0], (9, 2))
    mask = rng.random((9, 2)) < 0.2
    return frames, idx, mask


@pytest.mark.parametrize("shape,kw", CUDA_CASES)
def test_cuda_path_under_emulator(shape, kw, emulated_cuda):
    """apply_cuda on NumPy arrays runs images.cu in the CPU kernel emulator."""
    frames, idx, mask = _case_inputs(shape, 17)
    plan = images.make_plan(shape[1:], **kw)
    key = _random.rand_key(9, 1, 4)
    for ix in (idx, idx.astype(np.int32)):
        want = images.apply_numpy(plan, frames, ix, mask, key)
        out = np.full(plan.out_shape(9, 2), 77, dtype=want.dtype)
        images.apply_cuda(plan, frames, ix, mask, out, key)
        _same(out, want)
    assert emulated_cuda and all(launch.source == "images.cu" for launch in emulated_cuda)


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16", "uint8"])
def test_wide_store_kernel_only_for_aligned_outputs(out_dtype, emulated_cuda):
    """4-pixel stores need an `out` aligned to 4 elements: a view that is not gets the one-pixel
    kernel, and both write exactly what the NumPy path computes."""
    frames, idx, mask = _case_inputs((8, 20, 24, 3), 5)
    plan = images.make_plan((20, 24, 3), crop=(12, 16), crop_mode="random", out_dtype=out_dtype)
    exact = "true" if plan.exact else "false"
    assert plan.run_width == 4 and plan.kernel.endswith(f", 4, {exact}>")
    key = _random.rand_key(1, 2, 3)
    want = images.apply_numpy(plan, frames, idx, mask, key)
    n = int(np.prod(plan.out_shape(9, 2)))
    for offset in (0, 1):  # element offset 1: 1 to 4 bytes past an aligned address
        buf = np.full(n + 4, 77, dtype=want.dtype)
        start = (-buf.ctypes.data // buf.itemsize) % 4 + offset  # aligned (0) or not (1)
        out = buf[start:start + n].reshape(want.shape)
        images.apply_cuda(plan, frames, idx, mask, out, key)
        _same(out, want)
        assert emulated_cuda[-1].name.endswith(f", {4 if offset == 0 else 1}, {exact}>")
    assert images.make_plan((20, 24, 3), crop=(12, 14)).run_width == 1       # width 14
    assert images.make_plan((20, 24, 3), crop=12, layout="BKHWC").run_width == 1


@pytest.mark.parametrize("C", [1, 3, 4])
@pytest.mark.parametrize("misalign", [0, 1, 2, 3])
def test_word_loads_of_four_pixels_stay_inside_the_frame_store(C, misalign, emulated_cuda):
    """Without resize the 4-pixel kernel reads each run's 4*C bytes as C + 1 aligned words: from
    frames at any byte alignment, with the store ending exactly where its memory ends (the last
    pixels of the last frame fall back to byte loads; run under ASan to see no read past it),
    and with shifted windows whose columns are clamped (byte loads): same values as NumPy."""
    N, H, W = 5, 10, 16
    nbytes = N * H * W * C
    buf = np.random.default_rng(C + misalign).integers(0, 256, nbytes + misalign, dtype=np.uint8)
    frames = buf[misalign:].reshape(N, H, W, C)  # ends at the end of buf's memory
    assert frames.ctypes.data % 4 == (buf.ctypes.data + misalign) % 4
    idx = np.array([[N - 1, 0], [2, N - 1], [N - 1, N - 1]])
    key = _random.rand_key(3, 0, 1)
    for kw in (dict(crop=(H, W)),                                   # the whole frame
               dict(crop=(6, 8), crop_mode="random", per_frame_crop=True),
               dict(crop=(6, 12), shift=3, out_dtype="bfloat16")):  # clamped columns
        plan = images.make_plan((H, W, C), **kw)
        assert plan.run_width == 4
        want = images.apply_numpy(plan, frames, idx, None, key)
        out = np.full(plan.out_shape(3, 2), 77, dtype=want.dtype)
        images.apply_cuda(plan, frames, idx, None, out, key)
        _same(out, want)


def test_cuda_path_with_no_frames_reads_nothing(emulated_cuda):
    """N == 0 with unchecked rows >= 0: the NumPy path gives zeros; the kernel clamped the row
    to N - 1 = -1 and read the 48 bytes before the frames (here: a sentinel in the same
    buffer; on a GPU an illegal address or another tensor's bytes)."""
    buf = np.full((2, 4, 4, 3), 200, np.uint8)
    frames = np.ndarray((0, 4, 4, 3), np.uint8, buffer=buf, offset=buf[0].nbytes)
    plan = images.make_plan((4, 4, 3))
    idx = np.array([[0, 3], [-1, 1]])
    key = _random.rand_key(1, 2, 3)
    out = np.full(plan.out_shape(2, 2), 7, np.float32)
    images.apply_cuda(plan, frames, idx, None, out, key)
    np.testing.assert_array_equal(out, images.apply_numpy(plan, frames, idx, None, key))
    assert not out.any() and len(emulated_cuda) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("lib", ["cupy", "torch"])
@pytest.mark.parametrize("shape,kw", CUDA_CASES)
def test_cuda_matches_numpy(shape, kw, lib):
    if not _runtime.cuda_available():
        pytest.skip("no CUDA device")
    frames, idx, mask = _case_inputs(shape, 18)
    want = rc.crop_resize_normalize(frames, idx, zero_mask=mask, seed=2, epoch=3, batch=4, **kw)
    if lib == "cupy":
        import cupy

        args = [cupy.asarray(a) for a in (frames, idx, mask)]
        got = rc.crop_resize_normalize(args[0], args[1], zero_mask=args[2], seed=2, epoch=3,
                                       batch=4, **kw)
        got = cupy.asnumpy(got)
    else:
        args = [torch.from_numpy(a).cuda() for a in (frames, idx, mask)]
        got = rc.crop_resize_normalize(args[0], args[1].int(), zero_mask=args[2], seed=2,
                                       epoch=3, batch=4, **kw)
        assert got.is_cuda
        got = got.float().cpu().numpy() if kw.get("out_dtype") == "bfloat16" else got.cpu().numpy()
    _compare(got, want, kw.get("out_dtype", "float32"))
    # every step is rounded as on the NumPy backend: no value differs (values are far from
    # subnormal, so -ftz changes nothing); bfloat16 compared through float32
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.gpu
def test_cuda_bad_indices_raise_before_launch():
    if not _runtime.cuda_available():
        pytest.skip("no CUDA device")
    frames = torch.zeros((4, 8, 8, 3), dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="indices"):
        rc.crop_resize_normalize(frames, torch.tensor([[0, 4]], device="cuda"))
    with pytest.raises(ValueError, match="indices"):
        rc.crop_resize_normalize(frames, torch.tensor([[0, 1]]))   # on the host


def test_pinned_frames_are_held_until_their_kernel_is_done():
    """The host-resident path returns before the kernel reads the frames; they are kept alive
    (in images._PINNED_IN_USE) until the event recorded after the launch has completed."""
    import gc
    import weakref

    class FakeEvent:
        def __init__(self):
            self.finished = False

        def query(self):
            return self.finished

    saved = list(images._PINNED_IN_USE)
    images._PINNED_IN_USE.clear()
    try:
        ev1, ev2 = FakeEvent(), FakeEvent()
        frames = np.zeros((2, 4, 4, 3), np.uint8)
        alive = weakref.ref(frames)
        images._hold_until_done(frames, ev1)
        del frames
        gc.collect()
        assert alive() is not None            # the kernel may still be reading
        images._hold_until_done(np.zeros(1, np.uint8), ev2)
        assert alive() is not None            # ev1 still pending: kept
        ev1.finished = True
        images._hold_until_done(np.zeros(1, np.uint8), FakeEvent())
        gc.collect()
        assert alive() is None                # done: released at the next call
        assert len(images._PINNED_IN_USE) == 2
    finally:
        images._PINNED_IN_USE[:] = saved


@pytest.mark.gpu
def test_temporary_pinned_frames_are_not_recycled_under_the_kernel():
    """The stream is kept busy so the kernel runs well after the call returned; meanwhile the
    caller's temporary pinned frames are dropped and pinned memory is reallocated and filled
    with other bytes. The output must still be computed from the original frames."""
    if not _runtime.cuda_available():
        pytest.skip("no CUDA device")
    frames, idx, mask = _case_inputs((12, 40, 50, 3), 21)
    kw = dict(crop=32, resize=(24, 24), seed=1)
    want = rc.crop_resize_normalize(frames, idx, zero_mask=mask, **kw)
    for _ in range(3):
        torch.cuda._sleep(100_000_000)       # ~50-100 ms of GPU time ahead of the kernel
        got = rc.crop_resize_normalize(torch.from_numpy(frames).pin_memory(),
                                       torch.from_numpy(idx), zero_mask=torch.from_numpy(mask),
                                       device="cuda", **kw)
        junk = [torch.full(frames.shape, 255, dtype=torch.uint8).pin_memory() for _ in range(4)]
        torch.cuda.synchronize()
        _compare(got.cpu().numpy(), want, "float32")
        del junk


@pytest.mark.gpu
def test_host_resident_frames_on_gpu():
    if not _runtime.cuda_available():
        pytest.skip("no CUDA device")
    frames, idx, mask = _case_inputs((12, 40, 50, 3), 19)
    kw = dict(crop=32, crop_mode="random", resize=(24, 24), mean=0.5, std=0.25, seed=1)
    want = rc.crop_resize_normalize(frames, idx, zero_mask=mask, **kw)
    pinned = torch.from_numpy(frames).pin_memory()
    got = rc.crop_resize_normalize(pinned, torch.from_numpy(idx), zero_mask=torch.from_numpy(mask),
                                   device="cuda", **kw)
    assert got.is_cuda
    _compare(got.cpu().numpy(), want, "float32")
    import cupyx

    host = cupyx.empty_pinned(frames.shape, dtype=np.uint8)
    host[...] = frames
    got = rc.crop_resize_normalize(host, idx, zero_mask=mask, device="cuda:0", **kw)
    _compare(got.get(), want, "float32")
    with pytest.raises(ValueError, match="pinned"):
        rc.crop_resize_normalize(torch.from_numpy(frames), idx, device="cuda", **kw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_kernel_paths_equal_numpy_bit_for_bit_on_random_plans(data, emulated_cuda):
    """Random plans through every kernel path (V = 1 / 4; the interior loop and the clamped one;
    jitter compiled in or out; exact division or scale and normalise; resize; every output dtype
    and layout; misaligned frame stores), emulated: the same bytes as the NumPy backend."""
    H = data.draw(st.integers(1, 14), "H")
    W = data.draw(st.integers(1, 14), "W")
    C = data.draw(st.sampled_from([1, 3, 4]), "C")
    N = data.draw(st.integers(1, 4), "N")
    ch = data.draw(st.integers(1, H), "ch")
    cw = data.draw(st.integers(1, W), "cw")
    kw = dict(crop=(ch, cw), crop_mode=data.draw(st.sampled_from(["center", "random"]), "mode"),
              shift=data.draw(st.sampled_from([0, 0, 1, 3]), "shift"),
              out_dtype=data.draw(st.sampled_from(["float32", "bfloat16", "float16", "uint8"]),
                                  "dtype"),
              layout=data.draw(st.sampled_from(["BKCHW", "BKCHW", "BKHWC"]), "layout"),
              per_frame_crop=data.draw(st.booleans(), "per_frame_crop"))
    if data.draw(st.booleans(), "resize"):
        kw["resize"] = (data.draw(st.integers(1, 12), "h"), data.draw(st.sampled_from([4, 8, 5]), "w"))
    if data.draw(st.booleans(), "jitter"):
        kw.update(brightness=0.4, contrast=0.3)
    if data.draw(st.booleans(), "normalise"):
        kw.update(mean=[0.5] * C, std=[0.25 + 0.1 * c for c in range(C)])
    kw["scale"] = data.draw(st.sampled_from(["auto", "auto", None, 0.01, 1 / 127.5, 3.0]), "scale")
    misalign = data.draw(st.integers(0, 3), "misalign")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    buf = rng.integers(0, 256, N * H * W * C + misalign, dtype=np.uint8)
    frames = buf[misalign:].reshape(N, H, W, C)  # the store ends where its memory ends
    idx = rng.integers(-1, N, (3, 2))
    plan = images.make_plan((H, W, C), **kw)
    key = _random.rand_key(5, 1, 2)
    want = images.apply_numpy(plan, frames, idx, None, key)
    out = np.full(plan.out_shape(3, 2), 77, dtype=want.dtype)
    images.apply_cuda(plan, frames, idx, None, out, key)
    _same(out, want)


@pytest.mark.parametrize("out_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["BKCHW", "BKHWC"])
@pytest.mark.parametrize("backend", ["numpy", "emulated",
                                     pytest.param("cuda", marks=pytest.mark.gpu)])
def test_unit_range_frames_are_the_peers_bits(out_dtype, layout, backend, request):
    """With no mean/std and no jitter the default scale divides: every byte value comes out as
    torch's frames.float() / 255 (the [0, 1] frames of LeRobot, diffusion_policy and robomimic),
    then cast as torch casts it, bit for bit, on both backends. (Multiplying by float32(1/255)
    instead is an ulp off for about half of the byte values, which this test would catch.)"""
    frames = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    frames[..., 1] = frames[..., 0][:, ::-1]
    idx = np.array([[0, 0]])
    plan = images.make_plan((16, 16, 3), out_dtype=out_dtype, layout=layout)
    assert plan.exact and plan.divisor == 255.0
    if backend == "numpy":
        got = images.apply_numpy(plan, frames, idx, None, np.uint64(1))
    elif backend == "cuda":
        if not _runtime.cuda_available():
            pytest.skip("no CUDA device")
        got = rc.crop_resize_normalize(torch.from_numpy(frames).cuda(),
                                       torch.from_numpy(idx).cuda(), out_dtype=out_dtype,
                                       layout=layout)
        got = (got.view(torch.int16) if out_dtype == "bfloat16" else got).cpu().numpy()
    else:
        request.getfixturevalue("emulated_cuda")
        got = np.empty(plan.out_shape(1, 2), dtype=_array.numpy_dtype(out_dtype))
        images.apply_cuda(plan, frames, idx, None, got, np.uint64(1))
    t = torch.from_numpy(frames).float() / 255
    want = t.to(getattr(torch, out_dtype))[idx[0]][None]        # [1, K, H, W, C]
    if layout == "BKCHW":
        want = want.permute(0, 1, 4, 2, 3)
    want = want.contiguous()
    if out_dtype == "bfloat16":
        want = want.view(torch.int16)
    np.testing.assert_array_equal(got.view(np.uint8), want.numpy().view(np.uint8))
    # what a multiply would give: not the peers' bits
    v = np.arange(256, dtype=np.float32)
    assert (v * np.float32(1 / 255) != (torch.arange(256).float() / 255).numpy()).sum() > 100


def test_exact_division_only_for_plain_float_outputs():
    """mean / std, jitter or uint8 outputs keep the documented multiply-then-normalise steps;
    an explicit scale divides by its float32 inverse."""
    shape = (8, 8, 3)
    assert images.make_plan(shape).exact
    assert images.make_plan(shape, scale=1 / 255, out_dtype="bfloat16").divisor == 255.0
    assert images.make_plan(shape, scale=1 / 127.5).divisor == 127.5
    assert images.make_plan(shape, mean=0.0, std=1.0).exact      # the identity normalisation
    for kw in (dict(mean=0.5), dict(std=0.5), dict(brightness=0.2), dict(contrast=0.2),
               dict(out_dtype="uint8")):
        plan = images.make_plan(shape, **kw)
        assert not plan.exact and plan.kernel.endswith(", false>"), kw
    frames = np.full((1, 8, 8, 3), 129, np.uint8)
    normalised = images.apply_numpy(images.make_plan(shape, std=2.0), frames, np.zeros((1, 1),
                                    np.int64), None, np.uint64(0))
    assert normalised[0, 0, 0, 0, 0] == np.float32(129) * np.float32(1 / 255) * np.float32(0.5)


@pytest.mark.parametrize("bad", ["no", None])
def test_check_indices_is_true_or_false(bad):
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(TypeError, match=rf"check_indices: expected True or False, got {bad!r}"):
        rc.crop_resize_normalize(frames, np.array([0]), check_indices=bad)
