"""Windowed batch builder: the gather behind TrajectoryDataset / DataLoader, NumPy and CUDA paths.

A `WindowOp` is built once per dataset from an anchor table (windows.anchor_table: per dataset
index the anchor frame a, the bounds [s, e) of the segment it lives in, and a segment id) and a
list of `WindowKey`s (source array [N, *feature], frame offsets, output dtype, normalization).
For a batch of dataset indices it returns, per key (rules in windows.py and windows.cu):

  key                values [B, K, *feature] ([B, *feature] without offsets), or for "rows" keys
                     the clamped source rows int64 [B, K] that another op (camera frames) reads
  key + "_is_pad"    bool [B, K], one array per key
  index, episode_index, frame_index   int64 [B]: a, the segment id, a - s

The NumPy path is vectorized over samples (one fancy-index gather per key). The CUDA path is ONE
kernel launch for every key of the batch (windows.cu) reading the batch's indices from a device
array at an offset, so a loader that uploads its epoch order once does no per-batch copy.
bfloat16 values on the NumPy path are ml_dtypes arrays (NumPy has no bfloat16 of its own).

Normalization, in float32 arithmetic (float64 when the output is float64 or the key asks for
it with `norm_f64`, then rounded once to the output dtype), per feature f:
norm "affine" (LeRobot's mean_std, robomimic's): (x - a) / b; "range" (LeRobot's min_max,
quantiles): 2 * (x - a) / b - 1 with b = hi - lo (eps where hi == lo); "scale_offset"
(diffusion_policy's LinearNormalizer): x * a + b, multiply and add rounded apart. Zero-padded
values are 0 after normalization too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import _array, _kernels, _runtime
from ..windows import ANCHOR, END, EPISODE, START, anchor_rows

DTYPE_CODES = {
    "float32": 0, "float64": 1, "float16": 2, "bfloat16": 3, "uint8": 4, "int8": 5, "int16": 6,
    "int32": 7, "int64": 8, "uint16": 9, "uint32": 10, "bool": 11, "uint64": 12,
}
OUT_FLOAT = ("float32", "float64", "float16", "bfloat16")
NORM_CODES = {None: 0, "affine": 1, "range": 2, "scale_offset": 3}
NORM_F64 = 4  # flag or-ed into a norm code: float64 arithmetic (RC_NORM_F64 in windows.cu)
MAX_KEYS = 32  # RC_WIN_MAX_KEYS in windows.cu
MAX_SEGS = 1 + 2 * MAX_KEYS
SEG_META, SEG_VALUES, SEG_MASK, SEG_ROWS = 0, 1, 2, 3
THREADS = 128
MAX_GRID_Y = 65535
# per-sample work the kernel's int32 loop counter covers: its last step (MAX_GRID_Y * THREADS)
# past the end must not wrap
MAX_WORK = 2**31 - 1 - MAX_GRID_Y * THREADS
META_KEYS = ("index", "episode_index", "frame_index")

WIN_KEYS_DTYPE = np.dtype({
    "names": ["src", "out", "mask", "norm_a", "norm_b", "F", "K", "delta_off", "in_code",
              "out_code", "norm", "seg_kind", "seg_key", "seg_begin", "nseg", "zero_pad"],
    "formats": [(np.uint64, MAX_KEYS)] * 5 + [(np.int32, MAX_KEYS)] * 6
               + [(np.int32, MAX_SEGS), (np.int32, MAX_SEGS), (np.int32, MAX_SEGS + 1),
                  np.int32, np.int32],
}, align=True)  # the layout of struct WinKeys in windows.cu


@dataclass
class WindowKey:
    """One output key. `src` is the store's array [N, *feature] (NumPy or device)."""

    name: str
    src: object
    deltas: np.ndarray | None = None       # int64 [K]; None: the anchor frame only
    kind: str = "values"                   # "values" or "rows"
    out_dtype: str | None = None           # None: the source dtype, bytes copied unchanged
    norm: str | None = None                # None, "affine", "range" or "scale_offset"
    norm_a: np.ndarray | None = None       # float32 [F]
    norm_b: np.ndarray | None = None       # float32 [F]
    norm_f64: bool = False                 # normalize in float64 arithmetic, rounded once
    feature_shape: tuple[int, ...] = field(init=False)
    in_dtype: str = field(init=False)

    def __post_init__(self):
        self.feature_shape = tuple(int(s) for s in self.src.shape[1:])
        self.in_dtype = _array.dtype_name(self.src)

    @property
    def F(self) -> int:
        return int(np.prod(self.feature_shape, dtype=np.int64))

    @property
    def K(self) -> int:
        return 0 if self.deltas is None else int(self.deltas.size)

    @property
    def result_dtype(self) -> str:
        if self.kind == "rows":
            return "int64"
        return self.in_dtype if self.out_dtype is None else self.out_dtype


def _deltas_key(d: np.ndarray | None):
    return None if d is None else tuple(int(x) for x in d)


class WindowOp:
    """Index tables and key descriptors of one dataset; builds batches on the host or device.

    `like` = None keeps everything on the host (NumPy path); a device array (torch CUDA tensor,
    CuPy array) puts the tables next to it and enables `run_cuda` and `batch_builder`. A NumPy
    array or torch CPU tensor as `like` runs the CUDA path on host memory (the CPU kernel
    emulator of the tests; the host-overhead benchmark with a no-op launcher).
    """

    def __init__(self, keys: list[WindowKey], anchors: np.ndarray, *, zero_pad: bool,
                 like=None):
        if len(keys) > MAX_KEYS:
            raise ValueError(f"keys: expected at most {MAX_KEYS} keys per dataset, got "
                             f"{len(keys)}")
        self.keys = list(keys)
        self.anchors = np.ascontiguousarray(anchors, dtype=np.int64)
        self.zero_pad = bool(zero_pad)
        # every key with offsets writes an is_pad mask of its own (keys with equal offsets once
        # shared one array, which an in-place edit of one key's mask changed for the others)
        self._dkeys = [_deltas_key(k.deltas) for k in self.keys]
        self._masked = {k.name for k in self.keys if k.deltas is not None}
        self._host_src = None
        self._like = like
        self._desc = None
        if like is not None:
            self._setup_device(like)

    # -----------------------------------------------------------------------------------------
    # output layout

    def output_spec(self, B: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of every array a batch of B samples returns."""
        spec = {m: ((B,), "int64") for m in META_KEYS}
        for k in self.keys:
            lead = (B,) if k.deltas is None else (B, k.K)
            spec[k.name] = ((*lead, *k.feature_shape) if k.kind == "values" else lead,
                            k.result_dtype)
            if k.deltas is not None:
                spec[f"{k.name}_is_pad"] = ((B, k.K), "bool")
        return spec

    def resolve_name(self, name: str) -> str:
        """The output array behind a batch entry: the entry itself (a KeyError for a name this
        op does not write)."""
        if name.endswith("_is_pad") and name[: -len("_is_pad")] in self._masked:
            return name
        if name in META_KEYS or any(k.name == name for k in self.keys):
            return name
        raise KeyError(f"{name!r} is not an output of this WindowOp")

    # -----------------------------------------------------------------------------------------
    # NumPy path

    def _host_arrays(self):
        if self._host_src is None:
            self._host_src = [np.asarray(k.src) if _array.library(k.src) == "numpy"
                              else _array.to_numpy(k.src) for k in self.keys]
        return self._host_src

    def run_numpy(self, idx) -> dict[str, np.ndarray]:
        """The batch for dataset indices `idx` (int array [B]), built with NumPy on the host."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        tab = self.anchors[idx]
        a, s = tab[:, ANCHOR], tab[:, START]
        out = {"index": a.copy(), "episode_index": tab[:, EPISODE].copy(), "frame_index": a - s}
        cache: dict[tuple, tuple] = {}
        for k, src, dk in zip(self.keys, self._host_arrays(), self._dkeys, strict=True):
            if dk not in cache:
                cache[dk] = _rows(tab, k.deltas)
            rows, pad = cache[dk]
            if pad is not None:  # a mask of its own per key, also where the offsets are equal
                out[f"{k.name}_is_pad"] = pad.copy()
            if k.kind == "rows":
                out[k.name] = rows.copy()
                continue
            # np.take is ~4x faster than fancy indexing for row gathers
            out[k.name] = _convert(k, np.take(src, rows, axis=0), pad if self.zero_pad else None)
        return out

    # -----------------------------------------------------------------------------------------
    # CUDA path

    def _setup_device(self, like) -> None:
        """Device copies of the index tables, offsets and normalization parameters; the static
        part of the kernel's key descriptor."""
        up = _uploader(like)
        self.d_anchors = up(self.anchors.reshape(-1), "int64")
        deltas = [k.deltas for k in self.keys if k.deltas is not None]
        flat = np.concatenate(deltas) if deltas else np.zeros(1, np.int64)
        if np.abs(flat).max(initial=0) >= 2**31:
            raise ValueError("delta_indices: expected offsets below 2**31 in magnitude, got "
                             f"{int(np.abs(flat).max())}")
        self.d_deltas = up(flat.astype(np.int32), "int32")
        desc = np.zeros((), dtype=WIN_KEYS_DTYPE)
        self._keep = []  # device arrays the descriptor points at
        off = 0
        seg_kind, seg_key, widths = [SEG_META], [0], [1]
        for i, k in enumerate(self.keys):
            src = _array.contiguous(k.src)
            self._keep.append(src)
            desc["src"][i] = _array.data_ptr(src)
            desc["F"][i] = k.F
            desc["K"][i] = k.K
            desc["delta_off"][i] = off
            off += k.K
            desc["in_code"][i] = DTYPE_CODES[k.in_dtype]
            desc["out_code"][i] = -1 if k.out_dtype is None else DTYPE_CODES[k.out_dtype]
            desc["norm"][i] = NORM_CODES[k.norm] | (NORM_F64 if k.norm and k.norm_f64 else 0)
            if k.norm is not None:
                na = up(np.ascontiguousarray(k.norm_a, np.float32).reshape(-1), "float32")
                nb = up(np.ascontiguousarray(k.norm_b, np.float32).reshape(-1), "float32")
                self._keep += [na, nb]
                desc["norm_a"][i] = _array.data_ptr(na)
                desc["norm_b"][i] = _array.data_ptr(nb)
            rows = 1 if k.deltas is None else k.K  # an empty offset list: [B, 0, ...], no work
            if k.kind == "values" and k.F > 0:
                seg_kind.append(SEG_VALUES)
                seg_key.append(i)
                widths.append(rows * k.F)
            elif k.kind == "rows":
                seg_kind.append(SEG_ROWS)
                seg_key.append(i)
                widths.append(rows)
            if k.deltas is not None:
                seg_kind.append(SEG_MASK)
                seg_key.append(i)
                widths.append(k.K)
        begin = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])
        if begin[-1] > MAX_WORK:
            raise ValueError(f"keys: expected at most {MAX_WORK} output elements per sample, got "
                             f"{int(begin[-1])}")
        n = len(widths)
        desc["seg_kind"][:n] = seg_kind
        desc["seg_key"][:n] = seg_key
        desc["seg_begin"][: n + 1] = begin
        desc["seg_begin"][n + 1:] = begin[-1]
        desc["nseg"] = n
        desc["zero_pad"] = int(self.zero_pad)
        self._desc = desc
        self._desc_bytes = np.frombuffer(desc.tobytes(), dtype=np.uint8)
        self._work = int(begin[-1])
        # output order of the descriptor's pointer slots
        self._out_slots = [(i, k.name) for i, k in enumerate(self.keys)
                           if not (k.kind == "values" and k.F == 0)]
        self._mask_slots = [(i, f"{k.name}_is_pad") for i, k in enumerate(self.keys)
                            if k.deltas is not None]
        self._alloc = _array.allocator(like)
        self._ptr = _array.address_getter(like)
        # everything per-batch launches need that does not change between batches
        self._desc_out, self._desc_mask = desc["out"], desc["mask"]  # views into desc
        self._chunks = min(MAX_GRID_Y, max(1, -(-self._work // THREADS)))
        self._static_ptrs = (_array.data_ptr(self.d_anchors), _array.data_ptr(self.d_deltas))
        self._specs: dict[int, list] = {}
        self._layouts: dict[int, PoolLayout] = {}

    @property
    def on_device(self) -> bool:
        """Whether the tables were built for the CUDA path (`like` given)."""
        return self._desc is not None

    def upload_indices(self, idx: np.ndarray):
        """Host int64 dataset indices -> an array next to the tables (what run_cuda reads)."""
        return _uploader(self._like)(np.asarray(idx, dtype=np.int64).reshape(-1), "int64")

    def batch_builder(self, names, reuse: int = 0, batch_size: int | None = None
                      ) -> BatchBuilder:
        """The loader's per-batch path: see BatchBuilder."""
        if self._desc is None:
            raise RuntimeError("WindowOp.batch_builder: built without device tables (like=None)")
        return BatchBuilder(self, names, reuse, batch_size)

    def pool_layout(self, B: int) -> PoolLayout:
        """How an OutputPool for batches of B samples lays out its outputs (cached per B)."""
        lay = self._layouts.get(B)
        if lay is None:
            spec = self.output_spec(B)
            names = list(spec)
            col = {n: c for c, n in enumerate(names)}
            lay = self._layouts[B] = PoolLayout(
                names=names, shapes=[shape for shape, _ in spec.values()],
                dtypes=[dt for _, dt in spec.values()],
                steps=np.array([math.prod(shape) * _array.ITEMSIZE[dt]
                                for shape, dt in spec.values()], dtype=np.uint64),
                out_slot=[i for i, _ in self._out_slots],
                out_col=[col[n] for _, n in self._out_slots],
                mask_slot=[i for i, _ in self._mask_slots],
                mask_col=[col[n] for _, n in self._mask_slots],
                meta_col=[col[n] for n in META_KEYS])
        return lay

    def alloc(self, B: int) -> dict:
        """Uninitialised outputs for a batch of B samples, on the tables' device."""
        spec = self._specs.get(B)
        if spec is None:
            spec = self._specs[B] = list(self.output_spec(B).items())
        alloc = self._alloc
        return {name: alloc(shape, dt) for name, (shape, dt) in spec}

    def run_cuda(self, idx, offset: int = 0, count: int | None = None, out: dict | None = None
                 ) -> dict:
        """The batch for dataset indices idx[offset : offset + count] (int64 device array), built
        by one launch of window_batch_kernel. `out` (from `alloc`) is written in place.

        Host work per call, all without synchronising: one caching-allocator call per output
        (~2 us each on torch; none when `out` is given), one data_ptr per output (<1 us), the
        launch (~7 us through CuPy on torch's stream). A loop over batches should use
        batch_builder instead (no per-call allocation or descriptor packing)."""
        if self._desc is None:
            raise RuntimeError("WindowOp.run_cuda: built without device tables (like=None)")
        B = (int(idx.shape[0]) - offset) if count is None else int(count)
        if out is None:
            out = self.alloc(B)
        ptr = self._ptr
        outs, masks = self._desc_out, self._desc_mask
        for i, name in self._out_slots:
            outs[i] = ptr(out[name])
        for i, name in self._mask_slots:
            masks[i] = ptr(out[name])
        anchors, deltas = self._static_ptrs
        _runtime.launch(
            _kernels.WINDOWS, "window_batch_kernel", (B, self._chunks), (THREADS,),
            (self._desc[()], np.uint64(ptr(idx) + 8 * offset), anchors, deltas,
             np.uint64(ptr(out["index"])), np.uint64(ptr(out["episode_index"])),
             np.uint64(ptr(out["frame_index"])), np.int64(B)),
            like=self.d_anchors)
        return out


# ---------------------------------------------------------------------------------------------
# The loader's hot path: output sets allocated in bulk, launch arguments built once per set

SLAB_BYTES = 16 << 20  # fresh outputs: one allocation per output serves this many bytes of sets
SLAB_SETS = 64         # ... and at most this many batches


@dataclass
class PoolLayout:
    """Output arrays of a batch of B samples in output_spec order, and where the kernel
    descriptor's pointer slots and the meta pointers find their addresses among them."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    steps: np.ndarray     # uint64 bytes per set of each output
    out_slot: list[int]   # descriptor out[] slots ...
    out_col: list[int]    # ... and the output each takes its address from
    mask_slot: list[int]
    mask_col: list[int]
    meta_col: list[int]   # index, episode_index, frame_index


class OutputPool:
    """`count` output sets for batches of B samples: each output allocated ONCE for all sets
    ([count, *shape]) and split into per-set views in one call (torch's unbind), and every set's
    launch arguments (the kernel descriptor with its output pointers, the pointers of index /
    episode_index / frame_index) built at once with NumPy. A set is one batch's arrays, in the
    order of `names`; views of different sets never overlap.

    Sets j, j + 1, ... are consecutive in every output ([count, B, ...] is [count * B, ...]), so
    one launch with set j's arguments and n * B samples fills n sets: the batches of n
    consecutive B-index slices of the epoch's order (BatchBuilder fills ahead this way).

    `stream` is the stream (runtime.stream_key) the pool was allocated for: torch's caching
    allocator gives freed memory back to the stream it was allocated on, so a pool is only
    written by launches on that stream (BatchBuilder starts a new pool when it changes).
    """

    def __init__(self, op: WindowOp, B: int, count: int, sources: tuple[str, ...], stream: int,
                 ring: bool, max_fill: int):
        """`sources`: the output array behind each entry of a set (op.resolve_name);
        `max_fill`: the most sets one launch may fill."""
        self.count, self.stream, self.ring = count, stream, ring
        self.max_fill = max(1, int(max_fill))
        lay = op.pool_layout(B)
        views, bases = {}, np.zeros(len(lay.names), dtype=np.uint64)
        for c, (name, shape, dt) in enumerate(zip(lay.names, lay.shapes, lay.dtypes,
                                                  strict=True)):
            arr = op._alloc((count, *shape), dt)
            views[name] = _split(arr, count)
            if lay.steps[c]:
                bases[c] = op._ptr(arr)
        self.sets = list(zip(*(views[n] for n in sources), strict=True))
        # every set's output addresses [count, outputs], then the launch arguments of each set
        addr = bases[None, :] + np.arange(count, dtype=np.uint64)[:, None] * lay.steps[None, :]
        descs = np.empty(count, dtype=WIN_KEYS_DTYPE)
        descs.view(np.uint8).reshape(count, -1)[:] = op._desc_bytes
        descs["out"][:, lay.out_slot] = addr[:, lay.out_col]
        descs["mask"][:, lay.mask_slot] = addr[:, lay.mask_col]
        self.descs = descs              # set j's kernel descriptor: descs[j]
        self.meta = addr[:, lay.meta_col]  # set j's index / episode_index / frame_index
        self.next = 0
        self.chunks = op._chunks
        # a ring's sets are handed out again and again: what a caller keeps with a set (the
        # image kernel's frames) is recycled with it (BatchBuilder.kept_with_last_set)
        self.kept: list[dict] | None = [{} for _ in range(count)] if ring else None
        # sets [filled_first, filled_end) hold the batches of idx offsets filled_base + B * (j -
        # filled_first), read from the index array of bind generation filled_gen
        self.filled_first = self.filled_end = 0
        self.filled_base = self.filled_gen = -1


class BatchBuilder:
    """Builds batch after batch of one WindowOp on the device, as the loader needs them: no
    allocation, validation or descriptor packing per batch (all done per pool), and one launch
    for up to a pool's worth of consecutive batches.

    Filling ahead: a call may say that the next `ahead` batches will be the next slices of the
    index array with the same size (the loader's full batches are). The launch for this batch
    then also fills the sets of those batches (up to the pool's max_fill), and their calls
    launch nothing. Everything they read is fixed until the next `bind` (the epoch's indices,
    the store), and they run on the same stream, in the same order, as their own launches would.

    reuse = 0 (fresh outputs): every batch gets its own memory, never written again. Outputs come
    from pools of up to SLAB_SETS sets (SLAB_BYTES in all) allocated together, so a batch costs
    no allocator call of its own; a pool's memory returns to the allocator once every batch
    carved from it has been dropped.
    reuse = R >= 2: batches of `batch_size` samples cycle through ONE pool of 2R sets, filled
    up to R at a time, so a batch's arrays are overwritten no sooner than R batches later (the
    last R batches handed out stay valid; stream order keeps launches behind earlier work on
    the same stream). Other sizes (a last partial batch) get fresh outputs. A caller's own
    outputs of a batch can be recycled the same way: kept_with_last_set().
    """

    def __init__(self, op: WindowOp, names, reuse: int, batch_size: int | None):
        self.op = op
        self.names = tuple(names)
        self._sources = tuple(op.resolve_name(n) for n in self.names)  # unknown names fail here
        self.reuse = int(reuse)
        self.batch_size = batch_size
        self._pools: dict[int, OutputPool] = {}
        self._like = op.d_anchors
        self._stream = _runtime.stream_query(op.d_anchors)
        self._static = op._static_ptrs
        self._idx_ptr = self._idx_len = 0
        self._idx = None
        self._gen = 0
        self._streams_used: set = set()
        self._last: tuple[OutputPool, int] | None = None  # the set the last call handed out
        self.launches = 0  # kernel launches made (tests and benchmarks read it)

    def bind(self, idx) -> None:
        """Read batch indices from the int64 array `idx` (next to the tables) from now on."""
        self._idx = idx  # kept alive while batches are built from it
        self._idx_ptr = int(self.op._ptr(idx))
        self._idx_len = int(idx.shape[0])
        self._gen += 1  # sets filled ahead from the previous array are not handed out
        self._streams_used = set()

    def _mark_stream_use(self, stream) -> None:
        """The first batch on a stream other than the one the index array and the tables were
        made on: tell torch's allocator they are read there too, so their memory is not handed
        out again (when the epoch's indices or the dataset are dropped) before those kernels end.
        """
        self._streams_used.add(stream)
        if _array.library(self._like) != "torch" or not self._like.is_cuda:
            return  # CuPy arrays: the pool frees per stream; host stand-ins: no streams
        import torch

        current = torch.cuda.current_stream(self._like.device)
        for t in (self._idx, self.op.d_anchors, self.op.d_deltas):
            if t is not None and t.is_cuda:
                t.record_stream(current)

    def _new_pool(self, B: int, stream: int) -> OutputPool:
        ring = bool(self.reuse) and B == self.batch_size
        if ring:  # 2R sets filled R at a time: R batches handed out stay valid
            count, max_fill = 2 * self.reuse, self.reuse
        elif B == self.batch_size or self.batch_size is None:  # None: a batch_sampler's sizes
            per_set = int(self.op.pool_layout(B).steps.sum())
            count = max_fill = max(1, min(SLAB_SETS, SLAB_BYTES // max(per_set, 1)))
        else:  # a last partial batch: once per epoch
            count = max_fill = 1
        pool = self._pools[B] = OutputPool(self.op, B, count, self._sources, stream, ring,
                                           max_fill)
        return pool

    def __call__(self, offset: int, count: int, ahead: int = 0) -> tuple:
        """The arrays (in `names` order) of the batch of indices idx[offset : offset + count].
        `ahead`: how many batches after this one read idx[offset + count * i : ... + count],
        i = 1..ahead, and may be filled by this call's launch."""
        stream = self._stream()
        if stream not in self._streams_used:  # first batch of this index array on this stream
            self._mark_stream_use(stream)
        pool = self._pools.get(count)
        if pool is None or pool.next == pool.count or pool.stream != stream:
            pool = self._new_pool(count, stream)
        j = pool.next
        pool.next = 0 if (pool.ring and j + 1 == pool.count) else j + 1  # a ring never ends
        if count and not (pool.filled_first <= j < pool.filled_end and pool.filled_gen == self._gen
                          and offset == pool.filled_base + count * (j - pool.filled_first)):
            n = 1 + max(0, min(int(ahead), pool.max_fill - 1, pool.count - j - 1,
                               (self._idx_len - offset) // count - 1))  # never past idx
            anchors, deltas = self._static
            p_index, p_episode, p_frame = pool.meta[j]
            _runtime.launch_prepared(
                _kernels.WINDOWS, "window_batch_kernel", (n * count, pool.chunks), (THREADS,),
                (pool.descs[j], np.uint64(self._idx_ptr + 8 * offset), anchors, deltas, p_index,
                 p_episode, p_frame, np.int64(n * count)), self._like)
            self.launches += 1
            pool.filled_first, pool.filled_end = j, j + n
            pool.filled_base, pool.filled_gen = offset, self._gen
        self._last = (pool, j)
        return pool.sets[j]

    def kept_with_last_set(self) -> dict | None:
        """A dict that stays with the output set the last call handed out, where that set is
        recycled (reuse = R, a full batch); None where it is fresh. Outputs a caller keeps there
        for its batch (the image kernel's frames) are reused with the set: written again no
        sooner than R batches later, and afresh after a change of stream (a new pool)."""
        if self._last is None:
            return None
        pool, j = self._last
        return None if pool.kept is None else pool.kept[j]


# ---------------------------------------------------------------------------------------------
# helpers


def _split(arr, count: int) -> list:
    """[count, ...] -> count views arr[0], arr[1], ... (one C++ call for torch)."""
    if _array.library(arr) == "torch":
        return list(arr.unbind(0))
    return [arr[j] for j in range(count)]



def _rows(tab: np.ndarray, deltas):
    """(rows clamped into each sample's episode, is_pad) for deltas [K], or for the anchor
    frame alone (deltas None: rows [B] and no mask - such a key is never padded; its anchor
    lies outside the episode only in a dataset with negative drops, and reads the clamped one)."""
    if deltas is None:
        return anchor_rows(tab), None
    a = tab[:, ANCHOR]
    s, e = tab[:, START, None], tab[:, END, None]
    q = a[:, None] + deltas[None, :]
    return np.minimum(np.maximum(q, s), e - 1), (q < s) | (q >= e)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaN kept quiet with its sign: rc_float_to_bf16 in common.cuh."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    q = (u >> np.uint32(16)) | np.uint32(0x40)
    return np.where(nan, q, r).astype(np.uint16)


def _load(src_rows: np.ndarray, in_dtype: str, math: type) -> np.ndarray:
    if in_dtype == "bfloat16":
        x = bf16_bits_to_f32(src_rows.view(np.uint16))
        return x if math is np.float32 else x.astype(np.float64)
    return src_rows.astype(math, copy=False)  # the gather made a fresh array already


def _convert(k: WindowKey, vals: np.ndarray, pad) -> np.ndarray:
    """Gathered source values [B, (K,) *feature] -> the key's output (fresh array)."""
    if k.out_dtype is None:
        if pad is not None:
            vals[pad] = 0
        return vals
    math = np.float64 if k.out_dtype == "float64" or (k.norm and k.norm_f64) else np.float32
    x = _load(vals, k.in_dtype, math)
    if k.norm is not None:
        a = np.asarray(k.norm_a, np.float32).reshape(k.feature_shape).astype(math)
        b = np.asarray(k.norm_b, np.float32).reshape(k.feature_shape).astype(math)
        if k.norm == "affine":
            x = (x - a) / b
        elif k.norm == "range":
            x = math(2) * (x - a) / b - math(1)
        else:  # scale_offset: x * scale + offset, each op rounded (NumPy never fuses)
            x = x * a + b
    if pad is not None:
        x[pad] = 0
    if k.out_dtype in ("float32", "float64"):
        return x.astype(k.out_dtype, copy=False)
    x = x.astype(np.float32, copy=False)  # a float64 result: rounded once, then to 16 bits
    if k.out_dtype == "float16":
        return x.astype(np.float16)
    return f32_to_bf16_bits(x).view(_array.numpy_dtype("bfloat16"))


def _uploader(like):
    """host NumPy array -> a device copy next to `like` (NumPy `like`: a host copy)."""
    def up(arr: np.ndarray, dtype: str):
        if _array.library(like) == "numpy":
            return np.ascontiguousarray(arr).copy()
        return _array.contiguous(_array.from_numpy(np.ascontiguousarray(arr), like, dtype))
    return up
