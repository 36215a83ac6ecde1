"""rc.voxelize and rc.points_to_voxel_coords: point clouds to voxel grids.

Semantics (both backends, bit for bit):

- Voxel of a point. Per axis a: ``q = (float64(p[a]) - grid_min[a]) / voxel_size[a]``, computed
  in IEEE float64 for float32 and float64 points alike (the widening is exact, subtraction and
  division are correctly rounded; grid_min and voxel_size are used as the float64 numbers given).
  The point is kept iff ``0 <= q < grid_size[a]`` on every axis, so a point exactly on the lower
  face of the grid is inside and one exactly on the upper face (grid_min + grid_size*voxel_size)
  is outside; its voxel is ``floor(q)``. NaN, inf and huge coordinates fail the test before any
  integer cast (they cannot wrap into the grid). With batch_index, a point whose index is not in
  [0, batch_size) is dropped too.
- With mode "mean" or "max", a point whose features are not all finite is dropped as well, so a
  point either contributes to every output of its voxel or to none.
- Dropped points are counted: ``return_dropped=True`` returns ``(grid, dropped)`` with dropped a
  0-d int64 array in the points' library and device (no host synchronisation).
- Outputs: [X, Y, Z] (or [B, X, Y, Z] with batch_index), a trailing F axis for mean / max.
  occupancy uint8 (1 = at least one point), count int32, mean and max float32. Empty voxels hold
  0 in every mode, max included (the dense-scatter convention of PointPillars-style models and
  torch_scatter.scatter_max; use the count or occupancy grid to tell an empty voxel from a
  maximum of 0). max of float64 features is the float32 rounding of the float64 maximum.
- mean is computed in 64-bit fixed point, which makes it bitwise reproducible and independent of
  the order of the points. For a voxel of c points and a feature column: E is the largest binary
  exponent (numpy.frexp) of its nonzero values, s = min(62 - c.bit_length() - E, 1000), the
  sum of the integers rint(x * 2**s) cannot overflow int64, and the result is
  ``float32(ldexp(float64(sum) / c, -s))``. Its error is at most ``2**-(s + 1)``, which is
  ``<= max|x| * 2**(c.bit_length() - 62)`` unless the cap s = 1000 applies (max|x| below
  ~1e-283, whose means round to 0 in float32 anyway), max over the voxel's own points
  (4e-19 * max|x| for one point, 3e-17 for 100, 1e-13 for 500,000), plus one float64 division
  and the rounding to float32: in practice the float32 rounding of the exact mean. A voxel's mean depends on
  its own points only, not on the rest of the cloud or the batch. ``mean_error_bound`` gives the
  first term.
- Ids: ``((b * X + x) * Y + y) * Z + z`` must fit in int32 (B*X*Y*Z <= 2**31 - 1), else
  ValueError before any work.

CUDA launches per call (each grid zeroed by a cudaMemsetAsync in the same sequence):
occupancy / count 2, max 3, mean 6 (+1 memset with return_dropped). mean also allocates scratch:
int32 [cells] twice, int32 [N], and int64 + int32 [min(N, cells), F] (one row per occupied voxel).
"""

from __future__ import annotations

import functools

import numpy as np

from .. import _array, _kernels, _runtime
from .. import _validate as V
from .._argblock import ArgBlock

MODES = ("occupancy", "count", "mean", "max")
OUT_DTYPES = {"occupancy": "uint8", "count": "int32", "mean": "float32", "max": "float32"}
POINT_DTYPES = ("float32", "float64")
INDEX_DTYPES = ("int32", "int64")
INT32_MAX = 2**31 - 1
# constants shared with cuda_src/voxel.cuh, voxel.cu and voxel_features.cu
THREADS = 256  # RC_VOXEL_THREADS
SCAN_THREADS = 1024  # RC_VOXEL_SCAN_THREADS
CELLS_PER_THREAD = 8  # RC_VOXEL_CELLS_PER_THREAD
EXP_BIAS = 2048  # RC_VOXEL_EXP_BIAS
MAX_SHIFT = 1000  # RC_VOXEL_MAX_SHIFT

VOXEL_GRID_DTYPE = np.dtype({
    "names": ["origin", "size", "dims", "batch", "bidx64"],
    "formats": [(np.float64, 3), (np.float64, 3), (np.int32, 3), np.int32, np.int32],
}, align=True)  # the layout of struct VoxelGrid in voxel.cuh
VOXEL_SCATTER_DTYPE = np.dtype({
    "names": ["pts", "bidx", "out", "dropped", "n", "g"],
    "formats": [np.uint64, np.uint64, np.uint64, np.uint64, np.int64, VOXEL_GRID_DTYPE],
}, align=True)  # the layout of struct VoxelScatterArgs in voxel.cu


class _Grid:
    """A validated grid: origin and voxel size (float64), dims, batch size, batched or not."""

    def __init__(self, origin, size, dims, batch: int, batched: bool):
        self.origin = origin  # np.float64 [3]
        self.size = size  # np.float64 [3]
        self.dims = dims  # tuple of 3 ints
        self.batch = batch  # B, 1 without batch_index
        self.batched = batched

    @property
    def cells(self) -> int:
        X, Y, Z = self.dims
        return self.batch * X * Y * Z

    def shape(self, features: int = 0) -> tuple[int, ...]:
        lead = (self.batch,) if self.batched else ()
        return lead + self.dims + ((features,) if features else ())

    def desc(self, bidx64: bool) -> np.void:
        """The kernels' VoxelGrid struct, by value."""
        return _desc(self.origin.tobytes(), self.size.tobytes(), self.dims, self.batch,
                     bool(bidx64))


@functools.lru_cache(maxsize=256)
def _desc(origin: bytes, size: bytes, dims: tuple, batch: int, bidx64: bool) -> np.void:
    d = np.zeros((), dtype=VOXEL_GRID_DTYPE)
    d["origin"] = np.frombuffer(origin, dtype=np.float64)
    d["size"] = np.frombuffer(size, dtype=np.float64)
    d["dims"] = dims
    d["batch"] = batch
    d["bidx64"] = int(bidx64)
    return d[()]


# ---------------------------------------------------------------------------------------------
# Public API


def voxelize(points, *, grid_min, voxel_size, grid_size, mode: str = "occupancy", features=None,
             batch_index=None, batch_size=None, out=None, return_dropped: bool = False,
             check_batch_index: bool = True):
    """Voxelize `points` [N, 3] into a dense grid of `grid_size` voxels starting at `grid_min`.

    mode: "occupancy" (uint8), "count" (int32), "mean" or "max" (float32) of `features` [N, F]
    (float32, float64, float16 or bfloat16; by default the points themselves, giving per-voxel
    centroids or maxima).
    voxel_size: a positive number or one per axis; grid_min: a number or one per axis;
    grid_size: an int or one per axis. batch_index [N] (int32/int64) puts several clouds in one
    call: the output gets a leading batch axis of `batch_size` (default max(batch_index) + 1,
    which reads the indices back from a GPU). `out`: a contiguous array of the output's shape,
    dtype and device to reuse; it is overwritten (zeroed first) and returned.
    `check_batch_index` verifies 0 <= batch_index < batch_size (one reduction and a host
    synchronisation on a GPU; with False, out-of-range points - negative ones included, also
    when batch_size is inferred - are dropped and counted).
    Returns the grid, or (grid, dropped) with `return_dropped`. See the module docstring for the
    exact voxel rule, dropping, empty-voxel values and the error bound of "mean".
    """
    V.check_flag("return_dropped", return_dropped)
    V.check_flag("check_batch_index", check_batch_index)
    hot_key = None
    if features is None and batch_index is None and batch_size is None \
            and type(mode) is str:  # the plain count / occupancy call of a training loop
        hot_key = (mode, _array.device_key(points), _scalar_key(grid_min),
                   _scalar_key(voxel_size), _scalar_key(grid_size))
        hot = None if None in hot_key else _HOT.get(hot_key)
        if hot is not None:
            return hot(points, out, return_dropped)
    V.check_choice("mode", mode, MODES)
    points, bidx, grid = _check_inputs(points, grid_min, voxel_size, grid_size, batch_index,
                                       batch_size, check_batch_index)
    if features is not None and mode in ("occupancy", "count"):
        V.fail("features", f"None for mode {mode!r} (features are pooled by 'mean' and 'max')",
               "an array")
    feats = None
    if mode in ("mean", "max"):
        feats = points if features is None else _check_features(features, points)
    F = int(feats.shape[1]) if feats is not None else 0
    dtype = OUT_DTYPES[mode]
    shape = grid.shape(F)
    if out is not None:
        V.check_out(out, points, shape, dtype)
        V.check_no_overlap(out, _array.nbytes(out), [
            (_array.address(x), _array.nbytes(x)) for x in (points, feats, bidx)
            if x is not None])
    if _array.is_device(points):
        if hot_key is not None and None not in hot_key and mode in ("occupancy", "count"):
            hot = _HotCount(points, grid, mode)  # contiguous points: later calls launch at once
            if len(_HOT) >= 256:
                _HOT.clear()
            _HOT[hot_key] = hot
            return hot(points, out, return_dropped)
        result, dropped = _voxelize_cuda(points, bidx, feats, grid, mode, out, return_dropped)
    else:
        res, n_dropped = _voxelize_numpy(_array.to_numpy(points), _host(bidx), _host(feats),
                                         grid, mode)
        if out is None:
            result = _array.from_numpy(res, points, dtype)
        else:
            np.copyto(_array.to_numpy(out), res)
            result = out
        dropped = _array.from_numpy(np.array(n_dropped, dtype=np.int64), points, "int64")
    return (result, dropped) if return_dropped else result


def points_to_voxel_coords(points, *, grid_min, voxel_size, grid_size, batch_index=None,
                           batch_size=None, return_dropped: bool = False,
                           check_batch_index: bool = True):
    """The occupied voxels of `points` [N, 3] as a sparse list: (coords, counts).

    coords: int32 [M, 3] = (x, y, z), or [M, 4] = (b, x, y, z) with batch_index; counts: int32
    [M] points per voxel. Rows are sorted by (b, x, y, z) ascending (the C order of the dense
    grid voxelize returns), each voxel once. spconv and torchsparse take integer coordinates
    with a batch column too; spconv orders them (b, z, y, x): ``coords[:, [0, 3, 2, 1]]``.
    Arguments and dropping rules as in voxelize. On a GPU the number of voxels M is read back to
    the host (one synchronisation) to allocate the outputs.
    """
    V.check_flag("return_dropped", return_dropped)
    V.check_flag("check_batch_index", check_batch_index)
    points, bidx, grid = _check_inputs(points, grid_min, voxel_size, grid_size, batch_index,
                                       batch_size, check_batch_index)
    if _array.is_device(points):
        coords, counts, dropped = _coords_cuda(points, bidx, grid, return_dropped)
    else:
        vid = _voxel_ids_numpy(_array.to_numpy(points), _host(bidx), grid)
        kept = vid[vid >= 0]
        ids, cnt = np.unique(kept, return_counts=True)
        c = _unravel(ids, grid)
        coords = _array.from_numpy(c, points, "int32")
        counts = _array.from_numpy(cnt, points, "int32")
        dropped = _array.from_numpy(np.array(vid.size - kept.size, dtype=np.int64), points,
                                    "int64")
    return (coords, counts, dropped) if return_dropped else (coords, counts)


def mean_error_bound(max_abs, count) -> np.ndarray:
    """How far mode "mean"'s fixed-point sums can move a voxel's mean (before the float64
    division and the rounding to float32): 2**-(s + 1), for a voxel of `count` points whose
    largest feature magnitude in the column is `max_abs` (elementwise over arrays)."""
    m = np.asarray(max_abs, dtype=np.float64)
    c = np.asarray(count)
    if c.dtype.kind not in "iu" or (c < 1).any():
        V.fail("count", "integers >= 1 (points in the voxel)", repr(count)[:80],
               TypeError if c.dtype.kind not in "iu" else ValueError)
    stored = np.where(m != 0.0, np.frexp(m)[1] + EXP_BIAS, 0)
    return np.ldexp(1.0, -(_mean_shift(stored, count) + 1))


# ---------------------------------------------------------------------------------------------
# Validation (everything here runs before any kernel launch)


def _per_axis(name: str, value, kinds: str, what: str) -> np.ndarray:
    """A number or 3 numbers (NumPy dtype kinds `kinds`) on the host, as a length-3 array."""
    try:
        arr = np.asarray(value)
    except Exception:  # a CuPy array or a CUDA tensor: grid parameters live on the host
        V.fail(name, f"{what} given as host numbers", type(value).__name__, TypeError)
    if arr.dtype.kind not in kinds or (isinstance(value, (list, tuple))
                                       and any(isinstance(x, (bool, np.bool_)) for x in value)):
        V.fail(name, what, repr(value)[:80], TypeError)
    if arr.shape not in ((), (1,), (3,)):
        V.fail(name, f"{what}: one number or one per axis (x, y, z)", f"shape {arr.shape}")
    return np.broadcast_to(arr.reshape(-1), (3,)).copy()


def _scalar_key(v):
    """A cache key that tells 1 from 1.0 from True (tuples compare them equal), or None."""
    if isinstance(v, (int, float)):
        return (type(v), v)
    if isinstance(v, tuple) and all(isinstance(x, (int, float)) for x in v):
        return tuple((type(x), x) for x in v)
    return None


_GRID_CACHE: dict = {}  # hashable (grid_min, voxel_size, grid_size) -> _check_grid's result


def _check_grid_cached(grid_min, voxel_size, grid_size):
    """_check_grid, remembered for plain numbers and tuples (the common, per-batch case)."""
    keys = (_scalar_key(grid_min), _scalar_key(voxel_size), _scalar_key(grid_size))
    if None in keys:
        return _check_grid(grid_min, voxel_size, grid_size)
    hit = _GRID_CACHE.get(keys)
    if hit is None:
        hit = _check_grid(grid_min, voxel_size, grid_size)  # raises on bad values: not stored
        if len(_GRID_CACHE) > 256:
            _GRID_CACHE.clear()
        _GRID_CACHE[keys] = hit
    return hit


def _check_grid(grid_min, voxel_size, grid_size):
    origin = _per_axis("grid_min", grid_min, "iuf", "finite numbers").astype(np.float64)
    if not np.isfinite(origin).all():
        V.fail("grid_min", "finite numbers", repr(grid_min))
    size = _per_axis("voxel_size", voxel_size, "iuf", "positive finite numbers").astype(np.float64)
    if not (np.isfinite(size).all() and (size > 0).all()):
        V.fail("voxel_size", "positive finite numbers", repr(voxel_size))
    dims = _per_axis("grid_size", grid_size, "iu", "positive integers")
    if not (dims >= 1).all():
        V.fail("grid_size", "positive integers", repr(grid_size))
    if not (dims <= INT32_MAX).all():
        V.fail("grid_size", f"at most {INT32_MAX} voxels per axis", repr(grid_size))
    return origin, size, tuple(int(d) for d in dims)


def _check_inputs(points, grid_min, voxel_size, grid_size, batch_index, batch_size,
                  check_batch_index: bool):
    points = _array.as_array("points", points)
    V.check_rank("points", points, (2,))
    V.check_dim("points", points, 1, 3, "x, y, z")
    V.check_dtype("points", points, POINT_DTYPES)
    origin, size, dims = _check_grid_cached(grid_min, voxel_size, grid_size)
    n = int(points.shape[0])
    bidx = None
    if batch_index is None:
        if batch_size is not None:
            V.fail("batch_size", "None when batch_index is None", repr(batch_size))
        batch = 1
    else:
        bidx = _array.as_array("batch_index", batch_index)
        V.check_rank("batch_index", bidx, (1,))
        V.check_dim("batch_index", bidx, 0, n, "number of points")
        V.check_dtype("batch_index", bidx, INDEX_DTYPES)
        V.check_same_device([("points", points), ("batch_index", bidx)])
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                    or batch_size < 0:
                V.fail("batch_size", "a non-negative int", repr(batch_size))
            batch = int(batch_size)
        if batch_size is None or check_batch_index:
            lo, hi = _index_range(bidx)
            if lo < 0 and check_batch_index:
                V.fail("batch_index", "indices >= 0", f"minimum {lo}")
            if batch_size is None:  # unchecked negatives are dropped like any out-of-range one
                batch = max(hi + 1, 0)
            elif hi >= batch:
                V.fail("batch_index", f"indices < batch_size ({batch})", f"maximum {hi}")
    X, Y, Z = dims
    if batch * X * Y * Z > INT32_MAX:
        V.fail("grid_size", f"batch_size * X * Y * Z <= {INT32_MAX} (voxel ids are int32)",
               f"{batch} * {X} * {Y} * {Z} = {batch * X * Y * Z}")
    return points, bidx, _Grid(origin, size, dims, batch, bidx is not None)


def _index_range(idx) -> tuple[int, int]:
    """(min, max) of a 1-D index array; (0, -1) when empty. Synchronises on a GPU."""
    if _array.numel(idx) == 0:
        return 0, -1
    return int(idx.min()), int(idx.max())


def _check_features(features, points):
    feats = _array.as_array("features", features)
    V.check_rank("features", feats, (2,))
    V.check_dim("features", feats, 0, int(points.shape[0]), "number of points")
    V.check_dtype("features", feats, _array.FLOAT_DTYPES)
    V.check_same_device([("points", points), ("features", feats)])
    if feats.shape[1] == 0:
        V.fail("features", "at least one feature column", f"shape {tuple(feats.shape)}")
    return feats


def _host(x):
    return None if x is None else _array.to_numpy(x)


# ---------------------------------------------------------------------------------------------
# NumPy backend


def _voxel_ids_numpy(points: np.ndarray, bidx, grid: _Grid) -> np.ndarray:
    """int64 [N] linear voxel id of every point, -1 where dropped (same rule as voxel.cuh).
    Axis-major [3, N] so every NumPy loop runs over N; ids are exact in float64 (< 2^31)."""
    p = np.ascontiguousarray(points.T, dtype=np.float64)  # exact widening, subnormals included
    X, Y, Z = grid.dims
    with np.errstate(invalid="ignore", over="ignore"):
        q = (p - grid.origin[:, None]) / grid.size[:, None]
        inside = (q[0] >= 0.0) & (q[0] < X) & (q[1] >= 0.0) & (q[1] < Y) \
            & (q[2] >= 0.0) & (q[2] < Z)  # NaN compares False
        np.floor(q, out=q)
        lin = (q[0] * Y + q[1]) * Z + q[2]
        if bidx is not None:
            b = np.asarray(bidx)
            inside &= (b >= 0) & (b < grid.batch)
            lin += np.where(inside, b, 0) * float(X * Y * Z)
        return np.where(inside, lin, -1.0).astype(np.int64)


def _unravel(ids: np.ndarray, grid: _Grid) -> np.ndarray:
    X, Y, Z = grid.dims
    cols = [ids // (X * Y * Z)] if grid.batched else []
    cols += [(ids // (Y * Z)) % X, (ids // Z) % Y, ids % Z]
    return np.stack(cols, axis=1).astype(np.int32).reshape(-1, len(cols))


def _segments(vid: np.ndarray):
    """Sort kept ids: (order, starts of each run, the id of each run). The order inside a run
    does not matter: every reduction over it is exact (integers) or a max."""
    order = np.argsort(vid)
    sv = vid[order]
    starts = np.flatnonzero(np.concatenate(([True], sv[1:] != sv[:-1]))) if sv.size else \
        np.zeros(0, dtype=np.int64)
    return order, starts, sv[starts]


def _mean_shift(stored_exp: np.ndarray, count: np.ndarray) -> np.ndarray:
    """s = min(62 - bit_length(count) - E, MAX_SHIFT) from biased exponents (0 = no nonzero)."""
    bit_length = np.frexp(np.asarray(count, dtype=np.float64))[1]  # exact for count >= 1
    return np.minimum(62 - bit_length - (np.asarray(stored_exp) - EXP_BIAS), MAX_SHIFT)


def _max_keys(f32: np.ndarray) -> np.ndarray:
    u = f32.view(np.uint32)
    return np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000))


def _keys_to_float(k: np.ndarray) -> np.ndarray:
    u = np.where(k & np.uint32(0x80000000), k & np.uint32(0x7FFFFFFF), ~k)
    return np.where(k == 0, np.uint32(0), u).astype(np.uint32).view(np.float32)


def _voxelize_numpy(points, bidx, feats, grid: _Grid, mode: str):
    """The grid as a NumPy array of the output dtype, and the number of dropped points."""
    n = points.shape[0]
    vid = _voxel_ids_numpy(points, bidx, grid)
    cells = grid.cells
    if mode in ("mean", "max"):
        f = feats.astype(np.float64)  # exact for every float dtype
        with np.errstate(invalid="ignore"):
            vid[~np.isfinite(f).all(axis=1)] = -1
    keep = vid >= 0
    k = vid[keep]
    dropped = int(n - k.size)
    if mode == "occupancy":
        out = np.zeros(cells, dtype=np.uint8)
        out[k] = 1
        return out.reshape(grid.shape()), dropped
    if mode == "count":
        return np.bincount(k, minlength=cells).astype(np.int32).reshape(grid.shape()), dropped
    fk = f[keep]
    F = f.shape[1]
    out = np.zeros((cells, F), dtype=np.float32)
    order, starts, ids = _segments(k)
    if mode == "max":
        with np.errstate(over="ignore"):  # float64 -> float32 rounds to nearest even
            keys = _max_keys(fk.astype(np.float32))
        if ids.size:
            out[ids] = _keys_to_float(np.maximum.reduceat(keys[order], starts, axis=0))
        return out.reshape(grid.shape(F)), dropped
    if ids.size:
        fs = fk[order]
        counts = np.diff(np.concatenate((starts, [k.size])))
        _, e = np.frexp(fs)
        emax = np.maximum.reduceat(np.where(fs != 0.0, e + EXP_BIAS, 0), starts, axis=0)
        shift = _mean_shift(emax, counts[:, None])  # [voxels, F]
        terms = np.rint(np.ldexp(fs, np.repeat(shift, counts, axis=0))).astype(np.int64)
        sums = np.add.reduceat(terms, starts, axis=0)
        mean = sums.astype(np.float64) / counts[:, None].astype(np.float64)
        with np.errstate(over="ignore"):  # beyond float32: inf, as on the GPU
            out[ids] = np.ldexp(mean, -shift).astype(np.float32)
    return out.reshape(grid.shape(F)), dropped


# ---------------------------------------------------------------------------------------------
# CUDA backend. Written against _array.empty/zeros/zero_/data_ptr/contiguous only, so the CPU
# kernel emulator of the tests can run it on NumPy arrays.


def _blocks(n: int, per_block: int = THREADS) -> int:
    return (n + per_block - 1) // per_block


def _ptr_or_null(x) -> np.uint64:
    return np.uint64(0) if x is None else _array.data_ptr(x)


def _scatter_args(head: tuple, out, dropped) -> np.void:
    """voxel_scatter_kernel's VoxelScatterArgs from a per-point kernel head (_point_args)."""
    a = np.zeros((), dtype=VOXEL_SCATTER_DTYPE)
    a["pts"], a["bidx"], a["n"], a["g"] = head
    a["out"] = _array.data_ptr(out)
    a["dropped"] = _ptr_or_null(dropped)
    return a[()]


def _offset(ptr: np.uint64, nbytes: int) -> np.uint64:
    return np.uint64(int(ptr) + nbytes)


def _point_args(points, bidx, grid: _Grid):
    """Contiguous points and batch index (the caller keeps them alive until its launches are
    made), the points' C type, and the first four arguments of every per-point kernel."""
    pts = _array.contiguous(points)
    bidx = None if bidx is None else _array.contiguous(bidx)
    desc = grid.desc(bidx is not None and _array.dtype_name(bidx) == "int64")
    head = (_array.data_ptr(pts), _ptr_or_null(bidx), np.int64(pts.shape[0]), desc)
    return pts, bidx, _array.C_TYPES[_array.dtype_name(pts)], head


# Hot path: (mode, _array.device_key(points), grid arguments' _scalar_key) -> _HotCount, for
# count / occupancy calls without batch_index or features on contiguous device points; made
# after a call with that key passed every check. Bounded.
_HOT: dict = {}


class _HotCount:
    """One count / occupancy signature on the device: per call an output (or the checked
    `out`), one memset and one launch."""

    def __init__(self, points, grid: _Grid, mode: str):
        self.shape, self.dtype = grid.shape(), OUT_DTYPES[mode]
        self.alloc = _array.allocator(points)
        self.n = int(points.shape[0])
        self.name = _scatter_name(_array.C_TYPES[_array.dtype_name(points)], mode == "occupancy")
        self.args = ArgBlock(VOXEL_SCATTER_DTYPE, ("pts", "bidx", "out", "dropped"), n=self.n,
                             g=grid.desc(False))
        self.address = _array.address_getter(points)
        self.points_nbytes = _array.nbytes(points)
        self.blocks = (_blocks(self.n),)
        self.out_key = _array.device_key_of(points, self.shape, self.dtype)
        self.out_nbytes = int(np.prod(self.shape, dtype=np.int64)) * _array.ITEMSIZE[self.dtype]

    def __call__(self, points, out, want_dropped: bool):
        if out is None:
            out = self.alloc(self.shape, self.dtype)
        else:
            if _array.device_key(out) != self.out_key:
                V.check_out(out, points, self.shape, self.dtype)  # raises: the key differs
            V.check_no_overlap(out, self.out_nbytes, [(self.address(points), self.points_nbytes)])
        dropped = _array.zeros(points, (), "int64") if want_dropped else None
        _array.zero_(out)
        if self.n:
            a = self.address
            slot = self.args.pack(a(points), 0, a(out), 0 if dropped is None else a(dropped))
            _runtime.launch_block(_kernels.VOXEL, self.name, self.blocks, (THREADS,), slot,
                                  points)
        return (out, dropped) if want_dropped else out


def _voxelize_cuda(points, bidx, feats, grid: _Grid, mode: str, out, want_dropped: bool):
    pts, bidx, P, head = _point_args(points, bidx, grid)
    n = int(pts.shape[0])
    F = int(feats.shape[1]) if feats is not None else 0
    if out is None:
        out = _array.empty(pts, grid.shape(F), OUT_DTYPES[mode])
    dropped = _array.zeros(pts, (), "int64") if want_dropped else None
    if mode in ("occupancy", "count"):
        _array.zero_(out)
        name = _scatter_name(P, mode == "occupancy")
        _runtime.launch(_kernels.VOXEL, name, (_blocks(n),), (THREADS,),
                        (_scatter_args(head, out, dropped),), like=pts)
        return out, dropped
    feats = _array.contiguous(feats)
    T = _array.C_TYPES[_array.dtype_name(feats)]
    cells = grid.cells
    if mode == "max":
        _array.zero_(out)
        _runtime.launch(_kernels.VOXEL_FEATURES, f"voxel_max_scatter_kernel<{P}, {T}>",
                        (_blocks(n),), (THREADS,),
                        (*head, _array.data_ptr(feats), np.int32(F), _array.data_ptr(out),
                         _ptr_or_null(dropped)), like=pts)
        _runtime.launch(_kernels.VOXEL_FEATURES, "voxel_max_finalize_kernel",
                        (_blocks(cells * F),), (THREADS,),
                        (_array.data_ptr(out), np.int64(cells * F)), like=pts)
        return out, dropped
    # mean: one zeroed int32 scratch = counts [cells] | next compact row [1]
    scratch = _array.zeros(pts, (cells + 1,), "int32")
    counts = _array.data_ptr(scratch)
    next_row = _offset(counts, 4 * cells)
    rows = max(min(n, cells), 1)  # occupied voxels, at most
    vid = _array.empty(pts, (n,), "int32")
    slots = _array.empty(pts, (cells,), "int32")
    sums = _array.empty(pts, (rows, F), "int64")
    exps = _array.empty(pts, (rows, F), "int32")
    fptr, vptr, sptr = _array.data_ptr(feats), _array.data_ptr(vid), _array.data_ptr(slots)
    _runtime.launch(_kernels.VOXEL_FEATURES, f"voxel_mean_prep_kernel<{P}, {T}>",
                    (_blocks(n),), (THREADS,),
                    (*head, fptr, np.int32(F), vptr, counts, _ptr_or_null(dropped)), like=pts)
    if n:
        _runtime.launch(_kernels.VOXEL_FEATURES, "voxel_slots_kernel",
                        (_blocks(cells, THREADS * CELLS_PER_THREAD),), (THREADS,),
                        (counts, np.int32(cells), sptr, next_row, _array.data_ptr(sums),
                         _array.data_ptr(exps), np.int32(F)), like=pts)
    _runtime.launch(_kernels.VOXEL_FEATURES, f"voxel_mean_exponent_kernel<{T}>",
                    (_blocks(n * F),), (THREADS,),
                    (fptr, np.int32(F), vptr, np.int64(n), sptr, _array.data_ptr(exps)),
                    like=pts)
    _runtime.launch(_kernels.VOXEL_FEATURES, f"voxel_mean_accumulate_kernel<{T}>",
                    (_blocks(n * F),), (THREADS,),
                    (fptr, np.int32(F), vptr, np.int64(n), counts, sptr, _array.data_ptr(exps),
                     _array.data_ptr(sums)), like=pts)
    _runtime.launch(_kernels.VOXEL_FEATURES, "voxel_mean_finalize_kernel",
                    (_blocks(cells * F),), (THREADS,),
                    (counts, sptr, _array.data_ptr(sums), _array.data_ptr(exps), np.int32(F),
                     np.int64(cells * F), _array.data_ptr(out)), like=pts)
    return out, dropped


@functools.lru_cache(maxsize=16)
def _scatter_name(point_c_type: str, occupancy: bool) -> str:
    return f"voxel_scatter_kernel<{point_c_type}, {'true' if occupancy else 'false'}>"


def _coords_cuda(points, bidx, grid: _Grid, want_dropped: bool):
    pts, bidx, P, head = _point_args(points, bidx, grid)
    cells = grid.cells
    counts = _array.zeros(pts, (cells,), "int32")
    dropped = _array.zeros(pts, (), "int64") if want_dropped else None
    _runtime.launch(_kernels.VOXEL, f"voxel_scatter_kernel<{P}, false>",
                    (_blocks(int(pts.shape[0])),), (THREADS,),
                    (_scatter_args(head, counts, dropped),), like=pts)
    chunks = _blocks(cells, THREADS * CELLS_PER_THREAD)
    offsets = _array.empty(pts, (chunks + 1,), "int32")  # exclusive prefix per chunk | total
    _runtime.launch(_kernels.VOXEL, "voxel_block_occupied_kernel", (chunks,), (THREADS,),
                    (_array.data_ptr(counts), np.int32(cells), _array.data_ptr(offsets)),
                    like=pts)
    _runtime.launch(_kernels.VOXEL, "voxel_scan_kernel", (1,), (SCAN_THREADS,),
                    (_array.data_ptr(offsets), np.int32(chunks),
                     _offset(_array.data_ptr(offsets), 4 * chunks)), like=pts)
    m = int(_array.to_numpy(offsets[chunks:])[0])  # one host synchronisation
    ncol = 4 if grid.batched else 3
    coords = _array.empty(pts, (m, ncol), "int32")
    vcounts = _array.empty(pts, (m,), "int32")
    if m:
        _runtime.launch(_kernels.VOXEL, "voxel_emit_kernel", (chunks,), (THREADS,),
                        (_array.data_ptr(counts), np.int32(cells), _array.data_ptr(offsets),
                         head[3], np.int32(ncol), _array.data_ptr(coords),  # head[3]: VoxelGrid
                         _array.data_ptr(vcounts)), like=pts)
    return coords, vcounts, dropped
