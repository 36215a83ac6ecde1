"""rc.crop_resize_normalize: camera frames gathered, cropped, resized and normalised in one pass.

Semantics (both backends). frames: uint8 [N,H,W,C] (C = 1, 3 or 4); indices: int [B,K] rows of
frames (-1, or True in `zero_mask`, writes an all-zero image). For output image (b, k), in order:

1. gather  frame = frames[indices[b, k]]
2. crop    a (ch, cw) window at (oy, ox): the centre (torchvision's CenterCrop rule,
           oy = round((H - ch) / 2) with Python's round) or a random origin in [0, H-ch] x [0, W-cw];
           `shift` s adds a random offset in [-s, s] per axis and rows/columns outside the frame
           repeat the edge (DrQ: pad by s with edge replication, then random-crop back to size).
           One origin per sample (all K frames alike) unless per_frame_crop.
3. resize  to (h, w) by bilinear interpolation with torch.nn.functional.interpolate's taps and
           weights (mode="bilinear", align_corners=False, antialias=False) on the float values
           0..255 in float32: torch's source indices and weights bit for bit (each index
           rounded once, as torch's CUDA and AVX2 / AVX-512 CPU kernels compute ATen's
           area_pixel_compute_source_index with a fused multiply-add), each product and sum
           then rounded on its own (torch's CPU kernel groups the four products otherwise;
           all terms are >= 0, so nothing cancels: within 4 float32 ulps of it over 3,000
           random shapes, C = 1, 3, 4, either memory format); no resize when (h, w) == (ch, cw).
4. scale   v * scale (1/255 by default for float outputs, 1 for uint8 outputs); for float
           outputs with no mean/std and no jitter, v / (1 / scale) rounded once instead, so the
           default gives frames / 255 bit for bit as torch and NumPy compute it (the [0, 1]
           frames of LeRobot, diffusion_policy and robomimic)
5. jitter  brightness: v = clamp(v * fb, 0, vmax), fb uniform in [max(0, 1-brightness),
           1+brightness]; contrast: v = clamp((v - vmax/2) * fc + vmax/2, 0, vmax), fc likewise
           (vmax = 255 * scale; unlike torchvision's ColorJitter the contrast pivot is mid-grey,
           not the image's mean grey, so the whole op stays one pass). One draw per sample unless
           per_frame_jitter.
6. normalise (v - mean[c]) / std[c], computed as (v - mean[c]) * (1 / std[c]) in float32
7. cast    to float32 / float16 / bfloat16 (round to nearest even) or uint8 (clamp to 0..255,
           round half to even). Zero images are exactly 0 in every channel, whatever mean/std.

Output [B,K,C,h,w] ("BKCHW", default) or [B,K,h,w,C] ("BKHWC"); 1-D indices [B] give [B,C,h,w].

Randomness is counter-based (cuda_src/random.cuh, ops/_random.py): draw = hash(seed, epoch, batch,
[stream name,] sample b, frame k or "all", purpose), so the NumPy and CUDA backends draw identical
crops, shifts and factors, and a (seed, epoch, batch) triple always reproduces its batch.

Host-resident frames: pass frames that live in pinned host memory (torch: tensor.pin_memory(),
CuPy: cupyx.empty_pinned) together with device="cuda[:i]": the kernel reads them over the bus
through their mapped device address (unified addressing), nothing is copied up front, and the
output is allocated on `device` (torch frames -> torch tensor, NumPy frames -> CuPy array).
The call returns before the kernel has read the frames: robocache keeps a reference to them
until it has (so a temporary pinned buffer is not recycled under the kernel), but writing into
them before the output is ready (synchronise, or order by stream) changes what is read.

Design note - how TrajectoryDataset uses this op (no separate pass, no extra copy):
  once per image key, at dataset construction:
      plan = images.make_plan(store_frames.shape[1:], crop=..., resize=..., mean=..., ...)
  per batch, with the frame rows [B,K] and is_pad [B,K] its window tables already produced
  (edge pad: rows clamped into the episode; zero pad: zero_mask = is_pad):
      key = _random.rand_key(seed, epoch, batch_index, stream=image_key)
      out = _array.empty(like, plan.out_shape(B, K), plan.out_dtype)   # the batch's tensor
      images.apply_cuda(plan, store_frames, rows, zero_mask, out, key)  # one launch, on device
  or on the NumPy backend:
      out = images.apply_numpy(plan, store_frames_np, rows_np, zero_mask_np, key)
  apply_cuda works on NumPy arrays too (through _array.empty/data_ptr), so the CPU kernel
  emulator in tests/ can run it. Index validation is the caller's job there (the dataset's rows
  are valid by construction); crop_resize_normalize checks them before any launch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .. import _array, _kernels, _runtime
from .. import _validate as V
from .._argblock import ArgBlock
from . import _random

OUT_DTYPES = ("float32", "float16", "bfloat16", "uint8")
INDEX_DTYPES = ("int32", "int64")
LAYOUTS = ("BKCHW", "BKHWC")
CROP_MODES = ("center", "random")
CHANNELS = (1, 3, 4)
THREADS = 256
# Pixels per thread (a thread's pixels share its image's setup: index, draws, row division).
# Measured (RESULTS.md, benchmarks' ppt sweep): resizes are best at 8; crops without resize at
# 16 (H200 run 5, crop 84 bf16: 17.7 us b2b vs 19.3 at 8, float32 within 2%; H100: 5% better
# for bf16), all the more since the crop loop became cheaper than the per-thread setup.
PIXELS_PER_THREAD = 8
CROP_PIXELS_PER_THREAD = 16
RUN_WIDTH = 4  # pixels per work item of the wide-store kernels (images.cu, V = 4)
_I32_MAX = 2**31 - 1
# output pixels the kernel's int32 pixel counter covers: its last step (65535 tiles of THREADS)
# past the end must not wrap
_MAX_PIXELS = _I32_MAX - 65535 * THREADS
_EXACT_INDEX = 2**23  # images.cu's rc_small_to_float: integers below it as exact floats

# Purposes of the random draws (RC_IMG_* in images.cu).
CROP_Y, CROP_X, SHIFT_Y, SHIFT_X, BRIGHTNESS, CONTRAST = 1, 2, 3, 4, 5, 6

IMAGE_PARAMS_DTYPE = np.dtype({
    "names": ["frames", "indices", "zero_mask", "out", "key", "N", "B", "K", "idx64",
              "bright_lo", "bright_hi", "contrast_lo", "contrast_hi",
              "mean", "inv_std", "sy", "sx", "scale", "divisor", "vmax",
              "H", "W", "ch", "cw", "oh", "ow", "cy0", "cx0", "crop_random", "shift",
              "per_frame_crop", "jitter", "per_frame_jitter", "c_stride", "p_stride"],
    "formats": [np.uint64] * 5 + [np.int64] + [np.int32] * 3 + [np.float64] * 4
               + [(np.float32, 4)] * 2 + [np.float32] * 5 + [np.int32] * 15,
}, align=True)  # the layout of struct ImageParams in images.cu
# the fields apply_cuda packs per call (the struct's first ones); the rest come from the plan
IMAGE_PER_CALL = ("frames", "indices", "zero_mask", "out", "key", "N", "B", "K", "idx64")


@dataclass(frozen=True)
class ImagePlan:
    """Validated transform of one camera: everything but the arrays and the random key."""

    frame_shape: tuple[int, int, int]   # (H, W, C)
    crop: tuple[int, int]               # (ch, cw)
    crop_random: bool
    center: tuple[int, int]             # centre-crop origin (oy, ox)
    shift: int
    per_frame_crop: bool
    size: tuple[int, int]               # output (h, w)
    scale: float                        # float32 values stored as Python floats
    divisor: float                      # exact plans: v / divisor (float32), else 0
    mean: tuple[float, ...]
    inv_std: tuple[float, ...]
    brightness: tuple[float, float] | None   # factor range (lo, hi), float32 values
    contrast: tuple[float, float] | None
    per_frame_jitter: bool
    out_dtype: str
    layout: str
    # derived once (the launch path reads them per batch)
    kernel: str = field(init=False, repr=False, compare=False)         # V = run_width
    kernel_scalar: str = field(init=False, repr=False, compare=False)  # V = 1 (misaligned out)
    run_width: int = field(init=False, repr=False, compare=False)
    template: bytes = field(init=False, repr=False, compare=False)
    args: ArgBlock = field(init=False, repr=False, compare=False)  # per-thread ImageParams

    def __post_init__(self):
        # 4 adjacent pixels per work item, one wide store per channel: planar output only, rows
        # of a multiple of 4 pixels (so every run starts 4-element aligned)
        v = RUN_WIDTH if self.layout == "BKCHW" and self.size[1] % RUN_WIDTH == 0 else 1
        object.__setattr__(self, "run_width", v)
        object.__setattr__(self, "kernel", self.kernel_name(v))
        object.__setattr__(self, "kernel_scalar", self.kernel_name(1))
        object.__setattr__(self, "template", _static_params(self))
        object.__setattr__(self, "args", ArgBlock(IMAGE_PARAMS_DTYPE, IMAGE_PER_CALL,
                                                  template=self.template))

    @property
    def resize(self) -> bool:
        return self.size != self.crop

    @property
    def exact(self) -> bool:
        """Divide by `divisor` (rounded once, as torch and NumPy) and do nothing else."""
        return self.divisor != 0.0

    def out_shape(self, B: int, K: int) -> tuple[int, ...]:
        h, w = self.size
        C = self.frame_shape[2]
        return (B, K, C, h, w) if self.layout == "BKCHW" else (B, K, h, w, C)

    def kernel_name(self, run_width: int) -> str:
        flag = {True: "true", False: "false"}
        return (f"crop_resize_kernel<{_array.C_TYPES[self.out_dtype]}, {self.frame_shape[2]}, "
                f"{flag[self.resize]}, {run_width}, {flag[self.exact]}>")


def _pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in value)):
        V.fail(name, "an int or a pair of ints (height, width)", repr(value), TypeError)
    h, w = int(value[0]), int(value[1])
    if h < minimum or w < minimum:
        V.fail(name, f"sizes >= {minimum}", repr(value))
    return h, w


def _per_channel(name: str, value, C: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(C, default, dtype=np.float32)
    try:
        raw = np.asarray(value if isinstance(value, (int, float, list, tuple))
                         else _array.to_numpy(value))
    except (TypeError, ValueError):  # a string, a ragged list, an object of another kind
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":  # bool, None (object), str: not numbers
        V.fail(name, f"a number or {C} numbers (one per channel)", repr(value)[:80], TypeError)
    arr = raw.astype(np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, C)
    if arr.size != C:
        V.fail(name, f"a scalar or {C} values (one per channel)", f"{arr.size} values")
    if not np.isfinite(arr).all():
        V.fail(name, "finite values", "NaN or inf")
    with np.errstate(over="ignore"):
        arr32 = arr.astype(np.float32)
    if not np.isfinite(arr32).all():
        V.fail(name, "values float32 holds (|x| < 3.4e38)", repr(arr.tolist()))
    return arr32


def _jitter_range(name: str, value) -> tuple[float, float] | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        V.fail(name, "a number >= 0 (the factor range is [max(0, 1-x), 1+x])", repr(value),
               TypeError)
    value = float(value)
    if not np.isfinite(value) or value < 0:
        V.fail(name, "a finite number >= 0", repr(value))
    if value == 0:
        return None
    return float(np.float32(max(0.0, 1.0 - value))), float(np.float32(1.0 + value))


def make_plan(frame_shape, *, crop=None, crop_mode: str = "center", per_frame_crop: bool = False,
              shift=None, resize=None, scale="auto", mean=None, std=None, brightness=0.0,
              contrast=0.0, per_frame_jitter: bool = False, out_dtype: str = "float32",
              layout: str = "BKCHW") -> ImagePlan:
    """Validate a transform for frames of shape (H, W, C); see the module docstring."""
    if len(frame_shape) != 3:
        V.fail("frames", "uint8 frames [N, H, W, C]", f"frame shape {tuple(frame_shape)}")
    H, W, C = (int(s) for s in frame_shape)
    if C not in CHANNELS:
        V.fail("frames", f"C in {list(CHANNELS)} channels (last axis)", f"C = {C}")
    if H < 1 or W < 1:
        V.fail("frames", "frames of at least 1x1 pixels", f"H, W = {H}, {W}")
    if H * W * C > _I32_MAX:
        V.fail("frames", f"at most {_I32_MAX} bytes per frame", f"{H}x{W}x{C}")
    V.check_choice("crop_mode", crop_mode, CROP_MODES)
    out_dtype = _array.dtype_name_of(out_dtype)
    V.check_choice("out_dtype", out_dtype, OUT_DTYPES)
    V.check_choice("layout", layout, LAYOUTS)
    for name, flag in (("per_frame_crop", per_frame_crop), ("per_frame_jitter", per_frame_jitter)):
        if not isinstance(flag, (bool, np.bool_)):
            V.fail(name, "a bool", repr(flag), TypeError)
    ch, cw = (H, W) if crop is None else _pair("crop", crop, minimum=1)
    if ch > H or cw > W:
        V.fail("crop", f"a window within the frame (H, W) = ({H}, {W})", f"({ch}, {cw})")
    if shift is None:
        shift = 0
    if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift < 2**30:
        V.fail("shift", "None or an int in [0, 2**30) (pixels of edge padding)", repr(shift))
    if max(H, W) + 2 * int(shift) > _I32_MAX:  # the kernel's int32 window origins
        V.fail("shift", f"frame sides plus twice the shift within {_I32_MAX}",
               f"shift {shift} on a {H}x{W} frame")
    h, w = (ch, cw) if resize is None else _pair("resize", resize, minimum=1)
    if C * h * w > _I32_MAX or h * w > _MAX_PIXELS:
        V.fail("resize", f"at most {_I32_MAX} output elements and {_MAX_PIXELS} pixels per "
               f"image", f"{C}x{h}x{w}")
    if resize is not None and max(h, w, ch, cw) >= _EXACT_INDEX:
        V.fail("resize", "output and crop sides below 2**23 (the kernel's exact float pixel "
               "indices)", f"resize {(h, w)} of a {(ch, cw)} crop")
    if isinstance(scale, str):
        if scale != "auto":
            V.fail("scale", "'auto', None or a positive number", repr(scale))
        scale = 1.0 if out_dtype == "uint8" else 1.0 / 255.0
    elif scale is None:
        scale = 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        V.fail("scale", "'auto', None or a positive number", repr(scale), TypeError)
    if not (np.isfinite(scale) and scale > 0):
        V.fail("scale", "a finite number > 0", repr(scale))
    if not 1e-30 <= scale <= 1e30:  # its float32, its inverse and 255 times it stay normal
        V.fail("scale", "a number in [1e-30, 1e30]", repr(scale))
    mean_a = _per_channel("mean", mean, C, 0.0)
    std_a = _per_channel("std", std, C, 1.0)
    if (std_a <= 0).any():
        V.fail("std", "values > 0", repr(std_a.tolist()))
    with np.errstate(over="ignore", divide="ignore"):
        inv_std = np.float32(1.0) / std_a
    if not np.isfinite(inv_std).all():
        V.fail("std", "values whose float32 inverse is finite (>= 3e-39)", repr(std_a.tolist()))
    brightness = _jitter_range("brightness", brightness)
    contrast = _jitter_range("contrast", contrast)
    plain = (out_dtype != "uint8" and brightness is None and contrast is None
             and not mean_a.any() and (std_a == 1).all())
    return ImagePlan(
        frame_shape=(H, W, C), crop=(ch, cw), crop_random=crop_mode == "random",
        center=(int(round((H - ch) / 2.0)), int(round((W - cw) / 2.0))), shift=int(shift),
        per_frame_crop=bool(per_frame_crop), size=(h, w), scale=float(np.float32(scale)),
        divisor=float(np.float32(1.0 / float(scale))) if plain else 0.0,
        mean=tuple(float(m) for m in mean_a), inv_std=tuple(float(s) for s in inv_std),
        brightness=brightness, contrast=contrast, per_frame_jitter=bool(per_frame_jitter),
        out_dtype=out_dtype, layout=layout)


class ImageTransform:
    """A camera key's transform for TrajectoryDataset(image_transforms={key: ImageTransform(...)}):
    the keyword arguments of crop_resize_normalize's transform (crop, crop_mode, per_frame_crop,
    shift, resize, scale, mean, std, brightness, contrast, per_frame_jitter, out_dtype, layout).

    The dataset validates it once against the key's frame shape (`plan`) and, per batch, runs
    one launch that reads the store's uint8 frames at the window's rows and writes the batch's
    tensor; random draws are keyed by (loader seed, epoch, batch number) and the camera key
    (crop_resize_normalize(..., stream=key) reproduces them).
    """

    _FIELDS = ("crop", "crop_mode", "per_frame_crop", "shift", "resize", "scale", "mean", "std",
               "brightness", "contrast", "per_frame_jitter", "out_dtype", "layout")

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self._FIELDS))
        if unknown:
            V.fail("ImageTransform", f"keyword arguments among {list(self._FIELDS)}",
                   repr(unknown), TypeError)
        if "out_dtype" in options:  # torch / NumPy dtypes as well as names
            options["out_dtype"] = _array.dtype_name_of(options["out_dtype"])
        # what can be checked without the frames' shape is checked now
        for name, choices in (("crop_mode", CROP_MODES), ("out_dtype", OUT_DTYPES),
                              ("layout", LAYOUTS)):
            if name in options:
                V.check_choice(name, options[name], choices)
        self.options = options

    def plan(self, frame_shape) -> ImagePlan:
        return make_plan(frame_shape, **self.options)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"ImageTransform({args})"


# ---------------------------------------------------------------------------------------------
# Public op


def crop_resize_normalize(frames, indices, *, zero_mask=None, crop=None, crop_mode="center",
                          per_frame_crop=False, shift=None, resize=None, scale="auto", mean=None,
                          std=None, brightness=0.0, contrast=0.0, per_frame_jitter=False,
                          out_dtype="float32", layout="BKCHW", seed=0, epoch=0, batch=0,
                          stream=None, device=None, check_indices=True):
    """Gather frames[indices] ([N,H,W,C] uint8, [B,K] int) and crop / shift / resize / scale /
    jitter / normalise / cast them in one pass: [B,K,C,h,w] (see the module docstring for the
    exact order and rules).

    Runs where the frames are: CuPy arrays and torch CUDA tensors on the GPU (one kernel launch;
    indices and zero_mask on the same device), NumPy arrays and torch CPU tensors on the NumPy
    backend, unless `device="cuda[:i]"` asks for host-resident frames (pinned host memory read
    by the kernel over the bus; output on that device). `check_indices` verifies
    -1 <= indices < N before any launch (one reduction and synchronisation on a GPU); with False,
    rows >= N are clamped to N-1 and every negative row gives a zero image (as -1 does), and
    nothing is read past the frames. `stream`: a name whose random draws are independent of
    other names' under the same (seed, epoch, batch); TrajectoryDataset passes the camera key, so
    stream="cam" reproduces a dataset's crops of camera "cam".
    """
    V.check_flag("check_indices", check_indices)
    frames = _array.as_array("frames", frames)
    indices = _array.as_array("indices", indices)
    V.check_rank("frames", frames, (4,))
    V.check_dtype("frames", frames, ("uint8",))
    plan = _plan_for(tuple(int(s) for s in frames.shape[1:]), crop=crop, crop_mode=crop_mode,
                     per_frame_crop=per_frame_crop, shift=shift, resize=resize, scale=scale,
                     mean=mean, std=std, brightness=brightness, contrast=contrast,
                     per_frame_jitter=per_frame_jitter, out_dtype=out_dtype, layout=layout)
    V.check_rank("indices", indices, (1, 2))
    squeeze = indices.ndim == 1
    V.check_dtype("indices", indices, INDEX_DTYPES)
    if zero_mask is not None:
        zero_mask = _array.as_array("zero_mask", zero_mask)
        V.check_dtype("zero_mask", zero_mask, ("bool",))
        if tuple(zero_mask.shape) != tuple(indices.shape):
            V.fail("zero_mask", f"shape {tuple(indices.shape)} (that of indices)",
                   f"shape {tuple(zero_mask.shape)}")
    if stream is not None and not isinstance(stream, str):
        V.fail("stream", "a str (a name for independent draws) or None", repr(stream)[:80],
               TypeError)
    key = _random.rand_key(*(_seed_part(n, v) for n, v in
                             (("seed", seed), ("epoch", epoch), ("batch", batch))), stream=stream)
    if squeeze:
        indices = indices[:, None]
        zero_mask = None if zero_mask is None else zero_mask[:, None]
    B, K = (int(s) for s in indices.shape)
    if B * K > _I32_MAX:
        V.fail("indices", f"at most {_I32_MAX} images", f"shape {tuple(indices.shape)}")
    N = int(frames.shape[0])
    target = _target_device(frames, device)
    if target == "host":
        for name, x in (("indices", indices), ("zero_mask", zero_mask)):
            if x is not None and _array.is_device(x):
                V.fail(name, "a host array like frames", _array.placement(x))
        idx = np.ascontiguousarray(_array.to_numpy(indices))
        mask = None if zero_mask is None else np.ascontiguousarray(_array.to_numpy(zero_mask))
        if check_indices:
            _check_rows(idx, N)
        out_np = apply_numpy(plan, _array.to_numpy(frames), idx, mask, key)
        out = out_np if _array.library(frames) == "numpy" else _array.from_numpy(
            out_np, frames, plan.out_dtype)
    elif target == "device":
        pairs = [("frames", frames), ("indices", indices)]
        if zero_mask is not None:
            pairs.append(("zero_mask", zero_mask))
        V.check_same_device(pairs)
        if check_indices:
            _check_rows(indices, N)
        out = _array.empty(frames, plan.out_shape(B, K), plan.out_dtype)
        apply_cuda(plan, frames, indices, zero_mask, out, key)
    else:  # host-resident frames read by the kernel of device `target`
        like = _device_like(frames, target)
        if check_indices:
            _check_rows(indices, N)
        indices = _upload("indices", indices, like)
        zero_mask = None if zero_mask is None else _upload("zero_mask", zero_mask, like)
        ptr = _mapped_pointer(frames, like)
        out = _array.empty(like, plan.out_shape(B, K), plan.out_dtype)
        apply_cuda(plan, frames, indices, zero_mask, out, key, frames_ptr=ptr)
        _hold_until_done(frames, _record_event(out))
    return out[:, 0] if squeeze else out


def _deep_type(value):
    """type(value), with the element types of a tuple or list (equal values of other types
    must not share a memoised plan: make_plan refuses some of them)."""
    if isinstance(value, (tuple, list)):
        return (type(value), *map(_deep_type, value))
    return type(value)


def _hashable(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (tuple, str, int, float, bool, type(None), np.generic)):
        return value
    raise TypeError  # arrays: validate without the cache


@functools.lru_cache(maxsize=128)
def _cached_plan(frame_shape, items):
    return make_plan(frame_shape, **{k: v for k, _, v in items})


_PLAIN_TYPES = frozenset({tuple, str, int, float, bool, type(None)}
                         | {t for t in np.sctypeDict.values() if issubclass(t, np.generic)})
_PLANS: dict = {}  # (frame_shape, names, values, types) -> plan, for plain values


def _plan_for(frame_shape, **kw) -> ImagePlan:
    """make_plan, memoised on hashable arguments (a hot loop calls with the same ones).

    Plain values (numbers, strings, None, tuples) are looked up directly; lists and the rest go
    through _hashable's conversion (arrays are validated every time)."""
    values = tuple(kw.values())
    types = tuple(map(type, values))
    if _PLAIN_TYPES.issuperset(types):
        # a tuple's element types too: crop=(4.0, 4.0) must not hit the entry of (4, 4)
        types = tuple(_deep_type(v) if t is tuple else t for v, t in zip(values, types,
                                                                          strict=True))
        key = (frame_shape, tuple(kw), values, types)
        try:
            plan = _PLANS.get(key)
        except TypeError:  # a tuple holding a list
            plan = key = None
        if plan is None:
            plan = _plan_for_items(frame_shape, kw)
            if key is not None:
                if len(_PLANS) >= 128:
                    _PLANS.clear()
                _PLANS[key] = plan
        return plan
    return _plan_for_items(frame_shape, kw)


def _plan_for_items(frame_shape, kw: dict) -> ImagePlan:
    try:
        # the type is part of the key: shift=True must not hit the entry of shift=1
        items = tuple((k, _deep_type(v), _hashable(v)) for k, v in kw.items())
        hash(items)
    except TypeError:
        return make_plan(frame_shape, **kw)
    return _cached_plan(frame_shape, items)


def _seed_part(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) < 2**64:
        V.fail(name, "an int in [0, 2**64)", repr(value))
    return int(value)


def _check_rows(indices, N: int) -> None:
    """-1 <= indices < N (one reduction each; a synchronisation for device arrays)."""
    if _array.numel(indices) == 0:
        return
    if _array.is_device(indices):  # one transfer (and synchronisation) for both bounds
        lo, hi = _array.namespace(indices).stack([indices.min(), indices.max()]).tolist()
    else:
        lo, hi = int(indices.min()), int(indices.max())
    if lo < -1 or hi >= N:
        bad = lo if lo < -1 else hi
        V.fail("indices", f"frame rows in [-1, {N}) (-1 writes zeros)", f"{bad}")


# ---------------------------------------------------------------------------------------------
# Where the work runs


def _target_device(frames, device):
    """"host" (NumPy backend), "device" (frames on a GPU) or a torch/CuPy device spec for
    host-resident frames."""
    where = None if device is None else str(device)
    if _array.is_device(frames):
        if where is not None and where != "cuda" and not _same_device(frames, where):
            V.fail("device", f"None or the device of frames ({_array.placement(frames)})", where)
        return "device"
    if where is None or where == "cpu":
        return "host"
    if not (where == "cuda" or where.startswith("cuda:")):
        V.fail("device", "None, 'cpu', 'cuda' or 'cuda:<i>'", repr(device))
    return where


def _same_device(frames, where: str) -> bool:
    idx = int(where.split(":", 1)[1]) if ":" in where else None
    return idx is None or idx == _array.device_id(frames)


def _device_like(frames, where: str):
    """An empty array of frames' library (CuPy for NumPy frames) on device `where`."""
    if _array.library(frames) == "cupy":  # pragma: no cover - CuPy arrays are device arrays
        raise AssertionError("host-resident frames from CuPy")
    _runtime.require_cuda()
    dev = int(where.split(":", 1)[1]) if ":" in where else None
    if _array.library(frames) == "torch":
        import torch

        return torch.empty(0, dtype=torch.uint8, device=torch.device(where))
    import cupy

    with cupy.cuda.Device(dev if dev is not None else cupy.cuda.runtime.getDevice()):
        return cupy.empty(0, dtype=np.uint8)


def _upload(name: str, x, like):
    """x on like's device and library (indices are small: B*K*8 bytes at most)."""
    if _array.is_device(x):
        V.check_same_device([("frames' output device", like), (name, x)])
        return x
    host = np.ascontiguousarray(_array.to_numpy(x))
    return _array.from_numpy(host, like, host.dtype.name)


def _mapped_pointer(frames, like) -> np.uint64:
    """The device address of pinned host frames (unified addressing), or a ValueError."""
    import cupy

    if _array.library(frames) == "torch":
        contiguous = frames.is_contiguous()
    else:
        contiguous = frames.flags.c_contiguous
    if not contiguous:
        V.fail("frames", "C-contiguous host-resident frames (a copy would not be pinned)",
               "a strided array")
    host = int(_array.data_ptr(frames))
    with cupy.cuda.Device(_array.device_id(like)):
        attrs = cupy.cuda.runtime.pointerGetAttributes(host)
    if int(attrs.type) != int(cupy.cuda.runtime.cudaMemoryTypeHost):  # page-locked, mapped
        V.fail("frames", "pinned host memory for device=... (torch: tensor.pin_memory(); "
               "CuPy: cupyx.empty_pinned)", "pageable host memory")
    return np.uint64(attrs.devicePointer)


# Pinned frames that a queued kernel still reads, with the event that says it has finished. The
# kernel runs after the call returns; if the caller drops the frames at once (a temporary
# `x.pin_memory()`), torch's / CuPy's pinned-memory pool would hand the block out again (neither
# knows about our kernel) and the next pinned allocation could overwrite it mid-read.
_PINNED_IN_USE: list[tuple[object, object]] = []


def _record_event(out):
    """An event recorded on the stream the kernel writing `out` was launched on."""
    if _array.library(out) == "torch":
        import torch

        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(out.device))
        return ev
    import cupy

    with cupy.cuda.Device(out.device.id):
        ev = cupy.cuda.Event(disable_timing=True)
        ev.record()  # CuPy's current stream of that device: where _runtime launched
    return ev


def _event_done(ev) -> bool:
    return bool(ev.query()) if hasattr(ev, "query") else bool(ev.done)


def _hold_until_done(frames, event) -> None:
    """Keep `frames` referenced until `event` has completed (checked at the next call)."""
    _PINNED_IN_USE[:] = [(e, f) for e, f in _PINNED_IN_USE if not _event_done(e)]
    _PINNED_IN_USE.append((event, frames))


# ---------------------------------------------------------------------------------------------
# Random draws (the same numbers images.cu computes per image)


def _draws(plan: ImagePlan, B: int, K: int, key) -> tuple[np.ndarray, ...]:
    """(oy, ox, fb, fc), each [B,K]: window origins (int64, may lie outside the frame by up to
    `shift`) and brightness / contrast factors (float32)."""
    H, W, _ = plan.frame_shape
    ch, cw = plan.crop
    b = np.arange(B, dtype=np.uint64)[:, None]
    k = np.arange(K, dtype=np.uint64)[None, :]
    fcrop = k if plan.per_frame_crop else _random.FRAME_ALL
    fjit = k if plan.per_frame_jitter else _random.FRAME_ALL
    shape = (B, K)

    def below(purpose, n):
        return np.broadcast_to(
            _random.rand_below(_random.rand_bits(key, b, fcrop, purpose), n), shape)

    def factor(rng, purpose):
        if rng is None:
            return np.ones(shape, dtype=np.float32)
        u = _random.rand_unit(_random.rand_bits(key, b, fjit, purpose))
        lo, hi = rng
        return np.broadcast_to((lo + (hi - lo) * u).astype(np.float32), shape)

    if plan.crop_random:
        oy, ox = below(CROP_Y, H - ch + 1), below(CROP_X, W - cw + 1)
    else:
        oy = np.full(shape, plan.center[0], dtype=np.int64)
        ox = np.full(shape, plan.center[1], dtype=np.int64)
    if plan.shift:
        n = 2 * plan.shift + 1
        oy = oy + below(SHIFT_Y, n) - plan.shift
        ox = ox + below(SHIFT_X, n) - plan.shift
    return (np.ascontiguousarray(oy), np.ascontiguousarray(ox),
            factor(plan.brightness, BRIGHTNESS), factor(plan.contrast, CONTRAST))


# ---------------------------------------------------------------------------------------------
# NumPy backend


def _taps(scale: float, out_size: int, in_size: int):
    """torch's bilinear source indices and weights (align_corners=False), in float32. torch's
    area_pixel_compute_source_index computes scale * (dst + 0.5) - 0.5 in float, which its
    CUDA kernels and its AVX2 / AVX-512 CPU kernels (what x86 machines run) contract into one
    fused multiply-add: rounded once, as the kernel's __fmaf_rn and, here, float64 arithmetic
    (the float32 scale times dst + 0.5 is exact in double, so is the subtraction) rounded once
    to float32. torch's CPU build without FMA (ATEN_CPU_CAPABILITY=default) rounds twice and
    differs by up to ~1e-3."""
    f32 = np.float32
    exact = np.float64(f32(scale)) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    src = np.maximum(exact.astype(f32), f32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, l1


def apply_numpy(plan: ImagePlan, frames: np.ndarray, indices: np.ndarray,
                zero_mask: np.ndarray | None, key) -> np.ndarray:
    """The NumPy backend: frames uint8 [N,H,W,C], indices int [B,K], zero_mask bool [B,K] or
    None, key = _random.rand_key(seed, epoch, batch). Returns plan.out_shape(B, K) in
    plan.out_dtype; vectorised over the whole batch, computed in the output layout (one gather
    of bytes per bilinear tap, then in-place float32 passes)."""
    H, W, C = plan.frame_shape
    B, K = indices.shape
    N = frames.shape[0]
    h, w = plan.size
    f32 = np.float32
    zero = indices < 0
    if zero_mask is not None:
        zero = zero | zero_mask
    if N == 0 or B * K == 0 or zero.all():
        return np.zeros(plan.out_shape(B, K), dtype=_array.numpy_dtype(plan.out_dtype))
    itype = np.int32 if N * H * W * C <= _I32_MAX else np.int64
    rows = np.clip(indices, 0, N - 1).astype(itype)
    oy, ox, fb, fc = _draws(plan, B, K, key)
    pixels = np.ascontiguousarray(frames).reshape(N * H * W, C)
    chw = plan.layout == "BKCHW"
    # axes of the 5-D output that y, x and c run along
    y_ax, x_ax, c_ax = (3, 4, 2) if chw else (2, 3, 4)

    def along(a, ax):  # [n] -> 5-D with n on axis ax
        shape = [1, 1, 1, 1, 1]
        shape[ax] = a.shape[-1]
        return a.reshape(shape)

    base = rows.reshape(B, K, 1, 1) * itype(H)

    def gather(ys, xs):  # window coordinates ys [h], xs [w] -> float32 in the output layout
        ys = np.clip(oy[:, :, None] + ys, 0, H - 1).astype(itype)
        xs = np.clip(ox[:, :, None] + xs, 0, W - 1).astype(itype)
        pix = (base + ys[:, :, :, None]) * itype(W) + xs[:, :, None, :]     # [B,K,h,w]
        g = np.take(pixels, pix, axis=0)                                 # uint8 [B,K,h,w,C]
        if chw:
            g = np.ascontiguousarray(g.transpose(0, 1, 4, 2, 3))         # bytes, not floats
        return g.astype(f32)

    if plan.resize:
        y0, y1, ly = _taps(f32(plan.crop[0]) / f32(h), h, plan.crop[0])
        x0, x1, lx = _taps(f32(plan.crop[1]) / f32(w), w, plan.crop[1])
        ly, lx = along(ly, y_ax), along(lx, x_ax)
        hy, hx = f32(1) - ly, f32(1) - lx
        v = hx * gather(y0, x0)
        v += lx * gather(y0, x1)
        v *= hy
        bottom = hx * gather(y1, x0)
        bottom += lx * gather(y1, x1)
        bottom *= ly
        v += bottom
        del bottom
    else:
        v = gather(np.arange(h), np.arange(w))
    if plan.exact:  # v / divisor rounded once, and nothing else (no jitter, no mean / std)
        v /= f32(plan.divisor)
    else:
        v *= f32(plan.scale)
        vmax = f32(255) * f32(plan.scale)
        if plan.brightness is not None:
            v *= fb.reshape(B, K, 1, 1, 1)
            np.clip(v, f32(0), vmax, out=v)
        if plan.contrast is not None:
            pivot = f32(0.5) * vmax
            v -= pivot
            v *= fc.reshape(B, K, 1, 1, 1)
            v += pivot
            np.clip(v, f32(0), vmax, out=v)
        v -= along(np.asarray(plan.mean, dtype=f32), c_ax)
        v *= along(np.asarray(plan.inv_std, dtype=f32), c_ax)
    v[zero] = 0
    if plan.out_dtype == "uint8":
        np.clip(v, 0, 255, out=v)
        return np.rint(v, out=v).astype(np.uint8)
    if plan.out_dtype == "float32":
        return v
    return v.astype(_array.numpy_dtype(plan.out_dtype))


# ---------------------------------------------------------------------------------------------
# CUDA backend


@functools.lru_cache(maxsize=256)
def _launch_config(size: tuple[int, int], B: int, K: int, run_width: int = 1,
                   resize: bool = True):
    """grid (images, tiles per image) and block: ~PIXELS_PER_THREAD pixels per thread
    (CROP_PIXELS_PER_THREAD without resize), in work items of run_width pixels."""
    items = size[0] * size[1] // run_width
    ppt = PIXELS_PER_THREAD if resize else CROP_PIXELS_PER_THREAD
    per_thread = max(1, ppt // run_width)
    threads = min(THREADS, max(32, -(-items // 32) * 32))
    tiles = max(1, min(65535, -(-items // (threads * per_thread))))
    return (B * K, tiles), (threads,)


def apply_cuda(plan: ImagePlan, frames, indices, zero_mask, out, key, *,
               frames_ptr: np.uint64 | None = None) -> None:
    """The CUDA backend, one launch writing `out` (contiguous, plan.out_shape(B, K),
    plan.out_dtype) on out's device and stream. frames uint8 [N,H,W,C] contiguous (device
    memory, or pinned host memory whose device address is `frames_ptr`), indices int32/int64
    [B,K] and zero_mask bool [B,K] (or None) on out's device. Rows must be valid (rows >= N are
    clamped). Works on NumPy arrays too, for the CPU kernel emulator."""
    B, K = (int(s) for s in indices.shape)
    out_shape = plan.out_shape(B, K)
    if tuple(out.shape) != out_shape or _array.dtype_name(out) != plan.out_dtype:
        V.fail("out", f"{plan.out_dtype} {out_shape}",
               f"{_array.dtype_name(out)} {tuple(out.shape)}")
    if tuple(frames.shape[1:]) != plan.frame_shape:
        V.fail("frames", f"frames [N, {', '.join(map(str, plan.frame_shape))}]",
               f"shape {tuple(frames.shape)}")
    if B * K == 0:
        return
    indices = _array.contiguous(indices)
    if zero_mask is not None:
        zero_mask = _array.contiguous(zero_mask)
    if frames_ptr is None:
        frames = _array.contiguous(frames)
        frames_ptr = _array.address(frames)
    out_ptr = _array.address(out)
    slot = plan.args.pack(  # this thread's ImageParams: the plan's fields, then IMAGE_PER_CALL
        int(frames_ptr), _array.address(indices),
        0 if zero_mask is None else _array.address(zero_mask), out_ptr, int(key),
        int(frames.shape[0]), B, K, int(_array.dtype_name(indices) == "int64"))
    v, kernel = plan.run_width, plan.kernel
    if v > 1 and out_ptr % (v * _array.ITEMSIZE[plan.out_dtype]):
        v, kernel = 1, plan.kernel_scalar  # an `out` view not aligned for the wide stores
    grid, block = _launch_config(plan.size, B, K, v, plan.resize)  # B * K >= 1: all >= 1
    _runtime.launch_block(_kernels.IMAGES, kernel, grid, block, slot, out)


def _static_params(plan: ImagePlan) -> bytes:
    """ImageParams with every field that depends on the plan only (the rest zero)."""
    H, W, C = plan.frame_shape
    h, w = plan.size
    p = np.zeros((), dtype=IMAGE_PARAMS_DTYPE)
    p["bright_lo"], p["bright_hi"] = plan.brightness or (1.0, 1.0)
    p["contrast_lo"], p["contrast_hi"] = plan.contrast or (1.0, 1.0)
    p["mean"][:C] = plan.mean
    p["inv_std"][:C] = plan.inv_std
    p["sy"] = np.float32(plan.crop[0]) / np.float32(h)
    p["sx"] = np.float32(plan.crop[1]) / np.float32(w)
    # exact plans: the kernel's 1/divisor, float32-rounded (the first step of its division)
    p["scale"] = np.float32(1) / np.float32(plan.divisor) if plan.exact else plan.scale
    p["divisor"] = plan.divisor
    p["vmax"] = np.float32(255) * np.float32(plan.scale)
    for name, value in (("H", H), ("W", W), ("ch", plan.crop[0]), ("cw", plan.crop[1]),
                        ("oh", h), ("ow", w), ("cy0", plan.center[0]), ("cx0", plan.center[1]),
                        ("crop_random", plan.crop_random), ("shift", plan.shift),
                        ("per_frame_crop", plan.per_frame_crop),
                        ("jitter", (plan.brightness is not None)
                         | ((plan.contrast is not None) << 1)),
                        ("per_frame_jitter", plan.per_frame_jitter)):
        p[name] = int(value)
    p["c_stride"], p["p_stride"] = (h * w, 1) if plan.layout == "BKCHW" else (1, C)
    return p.tobytes()
