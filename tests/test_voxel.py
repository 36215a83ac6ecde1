"""rc.voxelize / rc.points_to_voxel_coords against a brute-force float64 oracle, edge cases,
argument errors, and (GPU or emulator) the CUDA path against the NumPy path bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import robocache as rc
from robocache import _array, _runtime
from robocache.ops import _voxel_reference as ref
from robocache.ops import voxel as vx

GRID = {"grid_min": (-1.0, -2.25, 0.5), "voxel_size": (0.25, 0.5, 0.125), "grid_size": (8, 4, 16)}
MODES = ("occupancy", "count", "mean", "max")


def _cloud(rng, n, dtype=np.float32, spread=0.3):
    """Points over the GRID box and a margin `spread` (relative) around it."""
    lo = np.array(GRID["grid_min"])
    ext = np.array(GRID["voxel_size"]) * np.array(GRID["grid_size"])
    return (lo - spread * ext + rng.random((n, 3)) * (1 + 2 * spread) * ext).astype(dtype)


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a


def _mean_bound(pts, feats, kw):
    """The documented fixed-point error bound of every (voxel, column), shaped like the grid."""
    vid = ref.voxel_ids(pts, kw["grid_min"], kw["voxel_size"], kw["grid_size"],
                        kw.get("batch_index"), kw.get("batch_size"))
    f = np.asarray(feats, dtype=np.float64)
    keep = (vid >= 0) & np.isfinite(f).all(axis=1)
    lead = (kw["batch_size"],) if kw.get("batch_index") is not None else ()
    shape = lead + tuple(kw["grid_size"]) + (f.shape[1],)
    cells = int(np.prod(shape[:-1]))
    maxabs = np.zeros((cells, f.shape[1]))
    np.maximum.at(maxabs, vid[keep], np.abs(f[keep]))
    count = np.bincount(vid[keep], minlength=cells)[:, None]
    return np.where(count > 0, vx.mean_error_bound(maxabs, np.maximum(count, 1)), 0.0).reshape(shape)


def _assert_matches_reference(got, want, mode, bound=None):
    assert got.shape == want.shape
    if mode in ("count", "occupancy", "max"):
        assert got.dtype == {"count": np.int32, "occupancy": np.uint8, "max": np.float32}[mode]
        np.testing.assert_array_equal(got, want)
        return
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - want)
    q = 0.0 if bound is None else bound
    allowed = q * (1 + 1e-9) + (np.abs(want) + q) * 2.0**-24 + 1e-300
    assert (err <= allowed).all(), f"max err {(err - allowed).max()} above the documented bound"


# ---------------------------------------------------------------------------------------------
# Against the oracle


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batched", [False, True])
def test_random_cloud_matches_reference(mode, dtype, batched):
    rng = np.random.default_rng([7, MODES.index(mode), batched])
    n = 3000
    pts = _cloud(rng, n, dtype)
    kw = dict(GRID)
    if batched:
        kw.update(batch_index=rng.integers(0, 3, n).astype(np.int32), batch_size=3)
    feats = None
    if mode in ("mean", "max"):
        feats = rng.standard_normal((n, 5)).astype(dtype) * 3
    got, dropped = rc.voxelize(pts, mode=mode, features=feats, return_dropped=True, **kw)
    want = ref.voxelize(pts, mode=mode, features=feats, **kw)
    vid = ref.voxel_ids(pts, GRID["grid_min"], GRID["voxel_size"], GRID["grid_size"],
                        kw.get("batch_index"), kw.get("batch_size"))
    assert int(dropped) == int((vid < 0).sum()) > 0
    bound = _mean_bound(pts, feats, kw) if mode == "mean" else None
    _assert_matches_reference(got, want, mode, bound)


def test_features_default_to_points_for_mean_and_max():
    pts = _cloud(np.random.default_rng(1), 500)
    for mode in ("mean", "max"):
        a = rc.voxelize(pts, mode=mode, **GRID)
        b = rc.voxelize(pts, mode=mode, features=pts, **GRID)
        assert a.shape == tuple(GRID["grid_size"]) + (3,)
        np.testing.assert_array_equal(_bits(a), _bits(b))
    occupied = rc.voxelize(pts, mode="count", **GRID) > 0
    centroid = rc.voxelize(pts, mode="mean", **GRID)[occupied]
    lo = np.array(GRID["grid_min"])
    vs = np.array(GRID["voxel_size"])
    ijk = np.argwhere(occupied)
    # every centroid lies in its own voxel
    assert ((centroid >= lo + ijk * vs - 1e-6) & (centroid <= lo + (ijk + 1) * vs + 1e-6)).all()


def test_points_on_grid_faces():
    """Lattice points grid_min + k * voxel_size for k = 0..dims: k = dims (the upper face) is
    outside, every other k is voxel k. Values are dyadic, so exact in float32 and float64."""
    lo = np.array(GRID["grid_min"])
    vs = np.array(GRID["voxel_size"])
    dims = np.array(GRID["grid_size"])
    ks = np.stack(np.meshgrid(*[np.arange(d + 1) for d in dims], indexing="ij"), -1).reshape(-1, 3)
    for dtype in (np.float32, np.float64):
        pts = (lo + ks * vs).astype(dtype)
        count, dropped = rc.voxelize(pts, mode="count", return_dropped=True, **GRID)
        inside = (ks < dims).all(axis=1)
        want = np.zeros(tuple(dims), dtype=np.int32)
        want[tuple(ks[inside].T)] = 1
        np.testing.assert_array_equal(count, want)
        assert int(dropped) == int((~inside).sum())
    # one float32 ulp inside the upper face is in the last voxel (float32 - grid_min is exact in
    # float64 here); one ulp below grid_min is out
    top = np.nextafter((lo + dims * vs).astype(np.float32), np.float32(-np.inf))
    below = np.nextafter(lo.astype(np.float32), np.float32(-np.inf))
    c = rc.voxelize(np.stack([top, below]), mode="count", **GRID)
    assert c[tuple(dims - 1)] == 1 and c.sum() == 1


def test_voxel_index_is_the_float64_quotient():
    """The documented rule, pinned on a non-dyadic size: 0.3 / 0.1 is 2.9999999999999996 in
    float64, so the float64 point 0.3 is in voxel 2; float32(0.3) is a little above 0.3."""
    kw = {"grid_min": 0.0, "voxel_size": 0.1, "grid_size": 8}
    c64 = rc.voxelize(np.array([[0.3, 0.0, 0.0]]), mode="count", **kw)
    c32 = rc.voxelize(np.array([[0.3, 0.0, 0.0]], dtype=np.float32), mode="count", **kw)
    assert c64[2, 0, 0] == 1 and c32[3, 0, 0] == 1


def test_per_axis_scalars_broadcast():
    pts = _cloud(np.random.default_rng(2), 400)
    a = rc.voxelize(pts, grid_min=-1.0, voxel_size=0.25, grid_size=8, mode="count")
    b = rc.voxelize(pts, grid_min=[-1, -1, -1], voxel_size=np.array([0.25] * 3),
                    grid_size=(8, 8, 8), mode="count")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 8, 8)


# ---------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("mode", MODES)
def test_all_points_outside(mode):
    pts = np.array([[5.0, 0, 1], [-1.5, -2, 0.5], [0, 0, 2.5], [0, -2.5, 1]], np.float32)
    got, dropped = rc.voxelize(pts, mode=mode, return_dropped=True, **GRID)
    assert int(dropped) == 4
    assert not got.any()


@pytest.mark.parametrize("mode", MODES)
def test_no_points(mode):
    pts = np.zeros((0, 3), np.float32)
    got, dropped = rc.voxelize(pts, mode=mode, return_dropped=True, **GRID)
    F = (3,) if mode in ("mean", "max") else ()
    assert got.shape == tuple(GRID["grid_size"]) + F and not got.any()
    assert int(dropped) == 0
    coords, counts = rc.points_to_voxel_coords(pts, **GRID)
    assert coords.shape == (0, 3) and counts.shape == (0,)
    coords, counts = rc.points_to_voxel_coords(pts, batch_index=np.zeros(0, np.int64), **GRID)
    assert coords.shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_nan_and_inf_coordinates_are_dropped(dtype):
    big = [1e30, -1e30, np.inf, -np.inf, np.nan, np.finfo(dtype).max, -np.finfo(dtype).max]
    pts = np.array([[v, -1.0, 1.0] for v in big] + [[0.0, v, 1.0] for v in big]
                   + [[0.0, -1.0, 1.0]], dtype=dtype)
    for mode in MODES:
        got, dropped = rc.voxelize(pts, mode=mode, return_dropped=True, **GRID)
        assert int(dropped) == len(pts) - 1
        assert int((got != 0).any(axis=-1).sum() if got.ndim == 4 else (got != 0).sum()) == 1


def test_int_cast_cannot_wrap_into_the_grid():
    """q = 2^32 + 3 would become voxel 3 through a wrapping 32-bit cast, 2^64 + 3 through a
    64-bit one; both are far outside an 8-voxel axis."""
    pts = np.array([[2.0**32 + 3, 0.5, 0.5], [2.0**64, 0.5, 0.5], [3.5, 2.0**31 + 1, 0.5]])
    got, dropped = rc.voxelize(pts, grid_min=0.0, voxel_size=1.0, grid_size=8, mode="count",
                               return_dropped=True)
    assert int(dropped) == 3 and got.sum() == 0


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_non_finite_features_drop_their_point(mode):
    pts = np.array([[0.1, -1.9, 0.6]] * 3 + [[0.6, -1.9, 0.6]], np.float32)
    feats = np.array([[1.0, 2.0], [np.nan, 5.0], [3.0, np.inf], [-4.0, -8.0]], np.float32)
    got, dropped = rc.voxelize(pts, mode=mode, features=feats, return_dropped=True, **GRID)
    assert int(dropped) == 2
    a, b = got[4, 0, 0], got[6, 0, 0]
    np.testing.assert_array_equal(a, [1.0, 2.0])
    np.testing.assert_array_equal(b, [-4.0, -8.0])  # a negative max is kept, not clamped to 0


def test_max_empty_voxels_are_zero_and_float64_rounds_once():
    pts = np.array([[0.1, -1.9, 0.6], [0.1, -1.9, 0.6]])
    x = 1 + 2.0**-30  # float64 values that differ below float32 resolution
    feats = np.array([[x, -1e-40], [1.0, -3e-39]])
    got = rc.voxelize(pts, mode="max", features=feats, **GRID)
    np.testing.assert_array_equal(got[4, 0, 0], np.array([x, -1e-40], np.float64).astype(np.float32))
    assert got[4, 0, 0, 1] != 0  # subnormal float32 results are kept (no flush to zero)
    assert np.count_nonzero(got) == 2


def test_max_keeps_the_sign_of_zero():
    pts = np.array([[0.1, -1.9, 0.6], [0.6, -1.9, 0.6], [0.6, -1.9, 0.6]], np.float32)
    feats = np.array([[-0.0], [-0.0], [0.0]], np.float32)
    got = rc.voxelize(pts, mode="max", features=feats, **GRID)
    assert got[4, 0, 0, 0].tobytes() == np.float32(-0.0).tobytes()  # only -0: -0
    assert got[6, 0, 0, 0].tobytes() == np.float32(0.0).tobytes()  # -0 and +0: +0


@pytest.mark.parametrize("ftype", ["float16", "bfloat16", "float64"])
def test_feature_dtypes(ftype):
    ml = pytest.importorskip("ml_dtypes") if ftype == "bfloat16" else None
    dt = np.dtype(ml.bfloat16) if ml else np.dtype(ftype)
    rng = np.random.default_rng(3)
    pts = _cloud(rng, 800)
    feats = (rng.standard_normal((800, 4)) * 10).astype(dt)
    for mode in ("mean", "max"):
        got = rc.voxelize(pts, mode=mode, features=feats, **GRID)
        want = ref.voxelize(pts, mode=mode, features=feats.astype(np.float64), **GRID)
        _assert_matches_reference(got, want, mode, 1e-12 if mode == "mean" else None)


# ---------------------------------------------------------------------------------------------
# mean: determinism and the error bound


def test_mean_is_independent_of_point_order():
    rng = np.random.default_rng(4)
    n = 4000
    pts = _cloud(rng, n, spread=0.0)
    feats = (rng.standard_normal((n, 8)) * np.logspace(-6, 6, 8)).astype(np.float32)
    a = rc.voxelize(pts, mode="mean", features=feats, **GRID)
    perm = rng.permutation(n)
    b = rc.voxelize(pts[perm], mode="mean", features=feats[perm], **GRID)
    np.testing.assert_array_equal(_bits(a), _bits(b))
    # voxels hold several points, so a float summation could depend on their order
    assert rc.voxelize(pts, mode="count", **GRID).max() > 5


def test_mean_error_bound_holds_where_quantisation_dominates():
    """Voxels of three points with features 2^40, -2^40 and r in [0, 1): the exact mean r / 3
    survives the cancellation only to the fixed-point step of the voxel (E = 41, c = 3:
    s = 62 - 2 - 41 = 19), far coarser than float32 resolution. The bound must hold and is
    not vacuous."""
    rng = np.random.default_rng(5)
    lo = np.array(GRID["grid_min"])
    vs = np.array(GRID["voxel_size"])
    cells = rng.choice(int(np.prod(GRID["grid_size"])), 200, replace=False)
    centres = lo + (np.stack(np.unravel_index(cells, GRID["grid_size"]), 1) + 0.5) * vs
    r = rng.random(200)
    pts = np.repeat(centres, 3, axis=0)
    feats = np.stack([np.full(200, 2.0**40), np.full(200, -(2.0**40)), r], 1).reshape(-1, 1)
    got = rc.voxelize(pts, mode="mean", features=feats, **GRID)
    got = got.reshape(-1)[cells].astype(np.float64)
    bound = vx.mean_error_bound(2.0**40, 3)
    assert bound == 2.0**-20
    err = np.abs(got - r / 3)
    assert (err <= bound + (r / 3) * 2.0**-24).all()
    assert err.max() > bound / 8  # the quantisation is visible: the bound is not vacuous
    assert vx.mean_error_bound(1.0, 1) == 2.0**-61  # one point: 60 fraction bits, exact


def test_mean_large_magnitudes_do_not_overflow():
    pts = np.array([[0.1, -1.9, 0.6]] * 4, np.float32)
    feats = np.array([[1e308], [1e308], [-1e308], [1e308]])
    got = rc.voxelize(pts, mode="mean", features=feats, **GRID)
    assert np.isinf(got[4, 0, 0, 0])  # 5e307 is finite in float64 and inf in float32
    feats32 = np.array([[3e38], [3e38], [-3e38], [3e38]], np.float32)
    got = rc.voxelize(pts, mode="mean", features=feats32, **GRID)
    np.testing.assert_allclose(got[4, 0, 0, 0], 1.5e38, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Batches, out=, libraries


def test_batch_equals_separate_calls():
    rng = np.random.default_rng(6)
    clouds = [_cloud(rng, n) for n in (100, 0, 700)]
    pts = np.concatenate(clouds)
    bidx = np.repeat(np.arange(3), [len(c) for c in clouds]).astype(np.int64)
    for mode in MODES:
        batched = rc.voxelize(pts, mode=mode, batch_index=bidx, batch_size=4, **GRID)
        assert batched.shape[0] == 4 and not batched[3].any()
        for b, c in enumerate(clouds):
            np.testing.assert_array_equal(_bits(batched[b]), _bits(rc.voxelize(c, mode=mode, **GRID)))
    inferred = rc.voxelize(pts, mode="count", batch_index=bidx, **GRID)
    assert inferred.shape[0] == 3


def test_unchecked_out_of_range_batch_points_are_dropped():
    pts = np.array([[0.1, -1.9, 0.6]] * 3, np.float32)
    bidx = np.array([0, 2, -1], np.int32)
    got, dropped = rc.voxelize(pts, mode="count", batch_index=bidx, batch_size=2,
                               check_batch_index=False, return_dropped=True, **GRID)
    assert int(dropped) == 2 and got.sum() == 1 and got[0, 4, 0, 0] == 1


def test_out_sharing_memory_with_the_inputs_is_refused():
    """The grid is zeroed before the points (or features) are read: an out over them would
    give wrong grids on the device path, so every path refuses it."""
    buf = np.zeros(64, np.float32)
    pts = buf[:12].reshape(4, 3)
    pts[:] = [[0.1, 0.1, 0.1], [0.6, 0.1, 0.1], [0.1, 0.6, 0.1], [0.1, 0.1, 0.6]]
    grid = dict(grid_min=0.0, voxel_size=0.5, grid_size=(2, 2, 3))
    with pytest.raises(ValueError, match="out: expected an array that overlaps none"):
        rc.voxelize(pts, mode="count", out=buf[:12].view(np.int32).reshape(2, 2, 3), **grid)
    feats = buf[20:28].reshape(4, 2)
    with pytest.raises(ValueError, match="overlaps none"):
        rc.voxelize(pts, mode="max", features=feats, out=buf[20:44].reshape(2, 2, 3, 2), **grid)
    got = rc.voxelize(pts, mode="count", out=np.zeros((2, 2, 3), np.int32), **grid)
    assert got.sum() == 4


@pytest.mark.parametrize("mode", MODES)
def test_out_is_reused_and_zeroed(mode):
    rng = np.random.default_rng(8)
    pts = _cloud(rng, 300)
    fresh = rc.voxelize(pts, mode=mode, **GRID)
    out = np.full(fresh.shape, 7, dtype=fresh.dtype)
    got = rc.voxelize(pts, mode=mode, out=out, **GRID)
    assert got is out
    np.testing.assert_array_equal(_bits(out), _bits(fresh))


def test_torch_cpu_in_torch_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    pts = _cloud(rng, 300)
    t = torch.from_numpy(pts)
    for mode, tdt in zip(MODES, (torch.uint8, torch.int32, torch.float32, torch.float32),
                         strict=True):
        got, dropped = rc.voxelize(t, mode=mode, return_dropped=True, **GRID)
        assert isinstance(got, torch.Tensor) and got.dtype == tdt
        assert isinstance(dropped, torch.Tensor) and dropped.dtype == torch.int64
        np.testing.assert_array_equal(_bits(got.numpy()), _bits(rc.voxelize(pts, mode=mode, **GRID)))
    out = torch.full(tuple(GRID["grid_size"]), 3, dtype=torch.int32)
    assert rc.voxelize(t, mode="count", out=out, **GRID) is out
    np.testing.assert_array_equal(out.numpy(), rc.voxelize(pts, mode="count", **GRID))
    coords, counts = rc.points_to_voxel_coords(t, **GRID)
    assert isinstance(coords, torch.Tensor) and coords.dtype == torch.int32


# ---------------------------------------------------------------------------------------------
# points_to_voxel_coords


@pytest.mark.parametrize("batched", [False, True])
def test_coords_match_reference_and_dense_counts(batched):
    rng = np.random.default_rng(10)
    n = 1500
    pts = _cloud(rng, n)
    kw = dict(GRID)
    if batched:
        kw.update(batch_index=rng.integers(0, 2, n), batch_size=2)
    coords, counts, dropped = rc.points_to_voxel_coords(pts, return_dropped=True, **kw)
    want_c, want_n = ref.voxel_coords(pts, **kw)
    assert coords.dtype == np.int32 and counts.dtype == np.int32
    np.testing.assert_array_equal(coords, want_c)
    np.testing.assert_array_equal(counts, want_n)
    dense = rc.voxelize(pts, mode="count", **kw)
    np.testing.assert_array_equal(dense[tuple(coords.T)], counts)
    assert np.count_nonzero(dense) == len(coords) and int(dropped) + counts.sum() == n
    keys = [tuple(r) for r in coords.tolist()]
    assert keys == sorted(keys)


# ---------------------------------------------------------------------------------------------
# Argument errors (raised by validation, before any kernel launch)


def _pts(n=4):
    return np.zeros((n, 3), np.float32)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"points": np.zeros((4, 2), np.float32)}, ValueError, "points"),
    ({"points": np.zeros(12, np.float32)}, ValueError, "points"),
    ({"points": np.zeros((4, 3), np.int32)}, TypeError, "points"),
    ({"points": np.zeros((4, 3), np.float16)}, TypeError, "points"),
    ({"mode": "sum"}, ValueError, "mode"),
    ({"voxel_size": 0.0}, ValueError, "voxel_size"),
    ({"voxel_size": (0.1, -0.1, 0.1)}, ValueError, "voxel_size"),
    ({"voxel_size": float("nan")}, ValueError, "voxel_size"),
    ({"voxel_size": (0.1, 0.1)}, ValueError, "voxel_size"),
    ({"voxel_size": "0.1"}, TypeError, "voxel_size"),
    ({"grid_min": (0.0, float("inf"), 0.0)}, ValueError, "grid_min"),
    ({"grid_size": 0}, ValueError, "grid_size"),
    ({"grid_size": 8.0}, TypeError, "grid_size"),
    ({"grid_size": True}, TypeError, "grid_size"),
    ({"grid_size": 2048}, ValueError, "int32"),
    ({"grid_size": 1024, "batch_index": np.zeros(4, np.int32), "batch_size": 2}, ValueError,
     "int32"),
    ({"mode": "count", "features": np.zeros((4, 2), np.float32)}, ValueError, "features"),
    ({"mode": "mean", "features": np.zeros((5, 2), np.float32)}, ValueError, "features"),
    ({"mode": "mean", "features": np.zeros((4, 2), np.int32)}, TypeError, "features"),
    ({"mode": "mean", "features": np.zeros((4,), np.float32)}, ValueError, "features"),
    ({"mode": "max", "features": np.zeros((4, 0), np.float32)}, ValueError, "features"),
    ({"batch_index": np.zeros(4, np.float32)}, TypeError, "batch_index"),
    ({"batch_index": np.zeros(3, np.int32)}, ValueError, "batch_index"),
    ({"batch_index": np.array([0, 1, 2, 0]), "batch_size": 2}, ValueError, "batch_size (2)"),
    ({"batch_index": np.array([0, -1, 0, 0])}, ValueError, "batch_index"),
    ({"batch_size": 2}, ValueError, "batch_size"),
    ({"batch_index": np.zeros(4, np.int32), "batch_size": 1.5}, ValueError, "batch_size"),
    ({"out": np.zeros((8, 8, 7), np.uint8)}, ValueError, "out"),
    ({"out": np.zeros((8, 8, 8), np.int32)}, TypeError, "out"),
    ({"out": np.zeros((8, 8, 16), np.uint8)[:, :, ::2]}, ValueError, "contiguous"),
])
def test_invalid_arguments(kwargs, exc, words):
    kw = {"points": _pts(), "grid_min": 0.0, "voxel_size": 0.1, "grid_size": 8}
    kw.update(kwargs)
    with pytest.raises(exc, match=None) as info:
        rc.voxelize(kw.pop("points"), **kw)
    assert words in str(info.value)


def test_remembered_grid_parameters_are_still_validated():
    """Grid parameters are cached by value and type: True (== 1) must not hit 1's entry."""
    rc.voxelize(_pts(), grid_min=0, voxel_size=1, grid_size=(1, 1, 1))
    with pytest.raises(TypeError, match="grid_size"):
        rc.voxelize(_pts(), grid_min=0, voxel_size=1, grid_size=(True, 1, 1))
    with pytest.raises(TypeError, match="voxel_size"):
        rc.voxelize(_pts(), grid_min=0, voxel_size=True, grid_size=(1, 1, 1))


def test_device_grid_parameters_are_rejected_clearly():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="grid_min"):
        rc.voxelize(_pts(), grid_min=torch.zeros(3, requires_grad=True), voxel_size=0.1,
                    grid_size=8)


# ---------------------------------------------------------------------------------------------
# The CUDA path: on a GPU (CuPy) and on the CPU kernel emulator (tests/emulator).
# Both compare with the NumPy backend bit for bit.


def _cases():
    rng = np.random.default_rng(11)
    n = 1200
    pts = _cloud(rng, n)
    pts[:5] = [[np.nan, -1, 1], [1e30, -1, 1], [1.0, -2.0, 0.5], [-1.0, -0.25, 2.5],
               [-1.0, -2.25, 0.5]]  # NaN, huge, upper x face, upper y/z faces, lower corner
    bidx = rng.integers(0, 3, n).astype(np.int64)
    feats = (rng.standard_normal((n, 8)) * np.logspace(-3, 3, 8)).astype(np.float32)
    feats[7, 2] = np.inf
    yield "count", pts, None, None, None
    yield "occupancy", pts.astype(np.float64), bidx.astype(np.int32), 3, None
    yield "max", pts, bidx, 3, feats
    yield "max", pts, None, None, feats.astype(np.float64)
    with np.errstate(under="ignore"):
        yield "max", pts, None, None, (feats * 1e-6).astype(np.float16)  # many signed zeros
    yield "mean", pts, None, None, feats
    yield "mean", pts.astype(np.float64), bidx, 4, feats.astype(np.float16)
    yield "mean", pts[:0], None, None, feats[:0]


def _check_cuda_path(to_dev, from_dev):
    for mode, pts, bidx, bsize, feats in _cases():
        kw = dict(GRID, mode=mode, batch_size=bsize, return_dropped=True)
        want, wd = rc.voxelize(pts, features=feats, batch_index=bidx, **kw)
        pts_d, feats_d, bidx_d = (None if a is None else to_dev(a) for a in (pts, feats, bidx))
        points, b, grid = vx._check_inputs(pts_d, GRID["grid_min"], GRID["voxel_size"],
                                           GRID["grid_size"], bidx_d, bsize, True)
        if feats_d is None and mode in ("mean", "max"):
            feats_d = points
        got, gd = vx._voxelize_cuda(points, b, feats_d, grid, mode, None, True)
        np.testing.assert_array_equal(_bits(from_dev(got)), _bits(want), err_msg=mode)
        assert int(from_dev(gd)) == int(wd)
        coords, counts, cd = vx._coords_cuda(points, b, grid, True)
        wc, wn, _ = rc.points_to_voxel_coords(pts, batch_index=bidx, batch_size=bsize,
                                              return_dropped=True, **GRID)
        np.testing.assert_array_equal(from_dev(coords), wc)
        np.testing.assert_array_equal(from_dev(counts), wn)
        assert int(from_dev(cd)) == int((ref.voxel_ids(pts, GRID["grid_min"],
                                                       GRID["voxel_size"], GRID["grid_size"],
                                                       bidx, bsize) < 0).sum())


def test_cuda_path_on_emulator_matches_numpy(emulated_cuda):
    _check_cuda_path(lambda a: a, np.asarray)
    assert {launch.source for launch in emulated_cuda} == {"voxel.cu", "voxel_features.cu"}


def test_hot_path_on_emulator_matches_numpy_and_checks_out(emulated_cuda, monkeypatch):
    """count / occupancy calls repeating a signature launch straight away (vx._HOT): same grids
    as the NumPy backend for new point values, dropped counts, a reused `out`, and a bad `out`
    refused before any launch. torch CPU tensors stand in for CUDA tensors."""
    torch = pytest.importorskip("torch")
    real = _array.is_device
    monkeypatch.setattr(_array, "is_device", lambda x: isinstance(x, torch.Tensor) or real(x))
    monkeypatch.setattr(_array, "device_key", _array.device_key_with_host_standins)
    monkeypatch.setattr(_array, "zero_", lambda x: x.zero_())  # the memset, on the host
    monkeypatch.setattr(vx, "_HOT", {})
    rng = np.random.default_rng(21)
    for mode in ("count", "occupancy"):
        for call in range(3):
            pts = _cloud(rng, 700)
            want, wd = rc.voxelize(pts, mode=mode, return_dropped=True, **GRID)
            out = torch.full(want.shape, 5, dtype=torch.from_numpy(want).dtype)
            n = len(emulated_cuda)
            got, gd = rc.voxelize(torch.from_numpy(pts), mode=mode, return_dropped=True,
                                  out=out if call == 2 else None, **GRID)
            assert len(emulated_cuda) == n + 1  # one kernel launch (and a memset)
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{mode} call {call}")
            assert int(gd) == int(wd) and (call != 2 or got is out)
    assert len(vx._HOT) == 2
    pts = torch.from_numpy(_cloud(rng, 700))
    n = len(emulated_cuda)
    with pytest.raises(ValueError, match=r"out: expected shape"):
        rc.voxelize(pts, mode="count", out=torch.zeros(3, 3, 3, dtype=torch.int32), **GRID)
    with pytest.raises(TypeError, match="out: expected dtype int32"):
        rc.voxelize(pts, mode="count", out=torch.zeros(want.shape, dtype=torch.uint8), **GRID)
    # an out sharing the points' memory: the memset would wipe them before the launch reads
    shared = torch.zeros(int(np.prod(want.shape)) + pts.numel(), dtype=torch.int32)
    pts_in = shared[:pts.numel()].view(torch.float32).reshape(pts.shape)
    pts_in.copy_(pts)
    with pytest.raises(ValueError, match="out: expected an array that overlaps none"):
        rc.voxelize(pts_in, mode="count", out=shared[:int(np.prod(want.shape))].reshape(
            want.shape), **GRID)
    assert len(emulated_cuda) == n
    other = dict(GRID, voxel_size=0.5)  # other grid numbers: checked, then their own entry
    np.testing.assert_array_equal(rc.voxelize(pts, mode="count", **other).numpy(),
                                  rc.voxelize(pts.numpy(), mode="count", **other))
    assert len(vx._HOT) == 3


@pytest.fixture
def cupy():
    if not _runtime.cuda_available():
        pytest.skip(f"no GPU: {_runtime.cuda_status()[1]}")
    import cupy

    return cupy


@pytest.mark.gpu
def test_cuda_matches_numpy_bitwise(cupy):
    _check_cuda_path(cupy.asarray, cupy.asnumpy)


@pytest.mark.gpu
def test_cuda_public_api_torch_and_out(cupy):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    pts = _cloud(rng, 5000)
    feats = rng.standard_normal((5000, 8)).astype(np.float32)
    for mode in MODES:
        f = feats if mode in ("mean", "max") else None
        want = rc.voxelize(pts, mode=mode, features=f, **GRID)
        for _ in range(2):  # count / occupancy: the second call takes the hot path
            got = rc.voxelize(torch.from_numpy(pts).cuda(), mode=mode, **GRID,
                              features=None if f is None else torch.from_numpy(f).cuda())
            assert got.is_cuda
            np.testing.assert_array_equal(_bits(got.cpu().numpy()), _bits(want))
        out = cupy.full(want.shape, 9, dtype=want.dtype)
        res = rc.voxelize(cupy.asarray(pts), mode=mode, out=out, **GRID,
                          features=None if f is None else cupy.asarray(f))
        assert res is out
        np.testing.assert_array_equal(_bits(cupy.asnumpy(out)), _bits(want))


@pytest.mark.gpu
def test_cuda_mean_is_bitwise_reproducible(cupy):
    rng = np.random.default_rng(13)
    pts = cupy.asarray(_cloud(rng, 200_000, spread=0.0))
    feats = cupy.asarray(rng.standard_normal((200_000, 8)).astype(np.float32))
    a = rc.voxelize(pts, mode="mean", features=feats, **GRID)
    for _ in range(3):
        b = rc.voxelize(pts, mode="mean", features=feats, **GRID)
        assert bool((a.view(cupy.uint32) == b.view(cupy.uint32)).all())


def test_dropped_is_0_d_in_every_library():
    """`dropped` is a 0-d int64 array in the points' library (torch CPU tensors too: NumPy's
    ascontiguousarray made it [1] there)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    pts = (rng.random((50, 3)) * 3 - 1).astype(np.float32)
    want = int(((pts < 0) | (pts >= 1)).any(axis=1).sum())
    for x in (pts, torch.from_numpy(pts)):
        _, dropped = rc.voxelize(x, grid_min=0.0, voxel_size=0.25, grid_size=4,
                                 return_dropped=True)
        *_, dropped2 = rc.points_to_voxel_coords(x, grid_min=0.0, voxel_size=0.25, grid_size=4,
                                                 return_dropped=True)
        for d in (dropped, dropped2):
            assert tuple(d.shape) == () and int(d) == want and type(d) is type(x)


@pytest.mark.parametrize("flag", ["return_dropped", "check_batch_index"])
@pytest.mark.parametrize("bad", ["no", None, 1])
def test_flags_are_true_or_false(flag, bad):
    pts = np.zeros((3, 3), np.float32)
    for op in (rc.voxelize, rc.points_to_voxel_coords):
        with pytest.raises(TypeError, match=rf"{flag}: expected True or False, got {bad!r}"):
            op(pts, grid_min=0.0, voxel_size=1.0, grid_size=2, **{flag: bad})
    got = rc.voxelize(pts, grid_min=0.0, voxel_size=1.0, grid_size=2, return_dropped=np.True_)
    assert isinstance(got, tuple)


def test_unchecked_negative_batch_points_are_dropped_when_batch_size_is_inferred():
    pts = np.array([[0.1, -1.9, 0.6]] * 3, np.float32)
    bidx = np.array([1, -1, -5], np.int64)
    got, dropped = rc.voxelize(pts, mode="count", batch_index=bidx, check_batch_index=False,
                               return_dropped=True, **GRID)
    assert got.shape[0] == 2 and int(dropped) == 2 and got.sum() == 1 and got[1, 4, 0, 0] == 1
    only_negative, dropped = rc.voxelize(pts[:2], mode="count", batch_index=bidx[1:],
                                         check_batch_index=False, return_dropped=True, **GRID)
    assert only_negative.shape[0] == 0 and int(dropped) == 2
    with pytest.raises(ValueError, match="batch_index: expected indices >= 0, got minimum -5"):
        rc.voxelize(pts, mode="count", batch_index=bidx, **GRID)


@pytest.mark.parametrize("count, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                          (np.array([3, 0]), ValueError)])
def test_mean_error_bound_refuses_counts_that_are_not_point_counts(count, error):
    with pytest.raises(error, match="count: expected integers >= 1"):
        vx.mean_error_bound(1.0, count)
