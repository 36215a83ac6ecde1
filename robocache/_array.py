"""What kind of array came in, and how to make outputs of the same kind.

Three array libraries are understood: NumPy, CuPy and torch. Detection looks at the type's module
name, so neither torch nor CuPy is imported unless the caller already handed us one of theirs.
Device arrays (CuPy, torch CUDA tensors) are used zero-copy; outputs are allocated by the caller's
library on the caller's device (torch's caching allocator for torch inputs).

Dtypes are named by strings ("float32", "bfloat16", "uint8", ...) so one table serves all three
libraries and the kernels' template arguments.
"""

from __future__ import annotations

import operator

import numpy as np

# dtype name -> C type used in kernel template arguments (see cuda_src/common.cuh)
C_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "rc_half",
    "bfloat16": "rc_bf16",
    "uint8": "unsigned char",
    "int8": "signed char",
    "int16": "short",
    "int32": "int",
    "int64": "long long",
    "uint16": "unsigned short",
    "uint32": "unsigned int",
    "bool": "bool",
}
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
ITEMSIZE = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "uint8": 1, "int8": 1,
    "int16": 2, "int32": 4, "int64": 8, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
}


_LIBRARY_OF_TYPE: dict[type, str] = {}


def library(x) -> str:
    """"numpy", "cupy" or "torch"; anything else is a TypeError. (Memoised per type: hot path.)"""
    lib = _LIBRARY_OF_TYPE.get(type(x))
    if lib is not None:
        return lib
    mod = type(x).__module__
    if isinstance(x, (np.ndarray, np.generic)):
        lib = "numpy"
    elif mod.startswith("cupy"):
        lib = "cupy"
    elif mod.startswith("torch"):
        lib = "torch"
    else:
        raise TypeError(
            f"expected a NumPy array, CuPy array or torch tensor, got {type(x).__name__}")
    _LIBRARY_OF_TYPE[type(x)] = lib
    return lib


def signature(x) -> tuple:
    """(type, shape, dtype, device): everything the ops' rank / shape / dtype / placement checks
    read from an array, as a hashable key (ops remember which signatures passed their checks)."""
    lib = _LIBRARY_OF_TYPE.get(type(x)) or library(x)
    if lib == "numpy":
        return (type(x), x.shape, x.dtype)
    if lib == "torch":
        return (type(x), x.shape, x.dtype, x.device)
    return (type(x), x.shape, x.dtype, x.device.id)


def device_key(x):
    """(shape, dtype, device index) of a C-contiguous device array (torch CUDA tensor, CuPy
    array), else None: the signature the ops' hot paths remember (torch and CuPy keys never
    compare equal: their dtypes are different objects)."""
    lib = _LIBRARY_OF_TYPE.get(type(x))
    if lib == "torch":
        if x.is_cuda and x.is_contiguous():
            return (x.shape, x.dtype, x.get_device())
    elif lib == "cupy" and x.flags.c_contiguous:
        return (x.shape, x.dtype, x.device.id)
    return None


def device_key_of(like, shape: tuple, dtype: str):
    """The device_key a contiguous array of `shape` and `dtype` next to `like` would have (None
    where `like` has none): what an `out=` argument is compared with, without allocating one."""
    if device_key(like) is None:
        return None
    if _LIBRARY_OF_TYPE.get(type(like)) == "torch":
        import torch

        return (torch.Size(shape), torch_dtype(dtype), like.get_device())
    return (tuple(shape), numpy_dtype(dtype), like.device.id)


_device_key = device_key  # what the stand-in below falls back to while it replaces device_key


def device_key_with_host_standins(x):
    """device_key, with contiguous torch CPU tensors counted as device arrays (the tests' kernel
    emulator and the host-overhead benchmark, which run the CUDA paths on host memory)."""
    if _LIBRARY_OF_TYPE.get(type(x)) == "torch" and x.is_contiguous():
        return (x.shape, x.dtype, x.get_device())
    return _device_key(x)


def as_array(name: str, x):
    """Accept arrays of the three libraries; turn lists/tuples/scalars into NumPy arrays."""
    if isinstance(x, (list, tuple, int, float)):
        try:
            return np.asarray(x)
        except ValueError as exc:  # ragged nesting
            raise ValueError(f"{name}: expected a rectangular nested list of numbers ({exc})") \
                from None
    try:
        library(x)
    except TypeError:
        raise TypeError(
            f"{name}: expected a NumPy array, CuPy array or torch tensor, "
            f"got {type(x).__name__}") from None
    return x


def is_device(x) -> bool:
    lib = library(x)
    if lib == "cupy":
        return True
    if lib == "torch":
        return bool(x.is_cuda)
    return False


def placement(x) -> str:
    """A printable "library:device" used to check that arrays live together."""
    lib = library(x)
    if lib == "numpy":
        return "numpy:cpu"
    if lib == "cupy":
        return f"cupy:cuda:{x.device.id}"
    if x.is_cuda:  # the common cases without formatting a torch.device (hot path)
        return _TORCH_CUDA_PLACEMENT[x.get_device()]
    if x.is_cpu:
        return "torch:cpu"
    return f"torch:{x.device}"


class _CudaPlacements(dict):
    def __missing__(self, index: int) -> str:
        self[index] = value = f"torch:cuda:{index}"
        return value


_TORCH_CUDA_PLACEMENT = _CudaPlacements()


def device_id(x) -> int:
    lib = library(x)
    if lib == "cupy":
        return int(x.device.id)
    if lib == "torch" and x.is_cuda:
        return int(x.device.index if x.device.index is not None else 0)
    raise ValueError(f"expected a device array, got a {placement(x)} array")


_DTYPE_NAMES: dict = {}  # dtype object (NumPy / torch) -> name: hot path


def dtype_name(x) -> str:
    dt = x.dtype
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        if library(x) == "torch":
            name = str(dt).removeprefix("torch.")
        else:
            name = np.dtype(dt).name
        _DTYPE_NAMES[dt] = name
    return name


def dtype_name_of(spec):
    """A dtype given as a name ("float16"), a NumPy dtype or type (np.float16, ml_dtypes'
    bfloat16) or a torch dtype (torch.float16) -> its name; anything else is returned as is
    (for the caller's own check to report)."""
    if isinstance(spec, str):
        return spec
    if type(spec).__module__.startswith("torch"):
        return str(spec).removeprefix("torch.")
    try:
        return np.dtype(spec).name
    except TypeError:
        return spec


def namespace(x):
    """The module whose functions operate on x (numpy, cupy or torch)."""
    lib = library(x)
    if lib == "numpy":
        return np
    if lib == "cupy":
        import cupy

        return cupy
    import torch

    return torch


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise TypeError("bfloat16 NumPy arrays need the ml_dtypes package") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_TORCH_DTYPES: dict = {}


def torch_dtype(name: str):
    dt = _TORCH_DTYPES.get(name)
    if dt is None:
        import torch

        dt = _TORCH_DTYPES[name] = getattr(torch, name)
    return dt


def to_numpy(x) -> np.ndarray:
    """A NumPy view of a host array (torch CPU tensors share memory; bf16 is viewed via ml_dtypes
    when installed and upcast to float32 otherwise). Device arrays are copied to the host."""
    lib = library(x)
    if lib == "numpy":
        return np.asarray(x)
    if lib == "cupy":
        return x.get()
    t = x.detach()
    if t.is_cuda:
        t = t.cpu()
    if t.dtype.is_floating_point and str(t.dtype) == "torch.bfloat16":
        try:
            return t.contiguous().view(_torch_int16()).numpy().view(numpy_dtype("bfloat16"))
        except TypeError:
            import torch

            return t.to(torch.float32).numpy()
    return t.numpy()


def _torch_int16():
    import torch

    return torch.int16


def from_numpy(result: np.ndarray, like, dtype: str):
    """Return a NumPy result in the library (and on the device) of `like`, cast to `dtype`."""
    lib = library(like)
    if lib == "numpy":
        return result.astype(numpy_dtype(dtype), copy=False)
    if lib == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.asarray(result.astype(numpy_dtype(dtype), copy=False))
    import torch

    if dtype == "bfloat16":
        out = torch.from_numpy(_c_order(result.astype(np.float32, copy=False)))
        return out.to(device=like.device, dtype=torch.bfloat16)
    out = torch.from_numpy(_c_order(result.astype(np.dtype(dtype), copy=False)))
    return out.to(like.device)


def _c_order(a: np.ndarray) -> np.ndarray:
    """`a` in C order, its shape kept (np.ascontiguousarray makes a 0-d array 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def empty(like, shape: tuple[int, ...], dtype: str):
    """Uninitialised output in like's library, on like's device."""
    lib = library(like)
    if lib == "numpy":
        return np.empty(shape, dtype=numpy_dtype(dtype))
    if lib == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=numpy_dtype(dtype))
    import torch

    return torch.empty(shape, dtype=torch_dtype(dtype), device=like.device)


def allocator(like):
    """(shape, dtype name) -> `empty(like, shape, dtype)`, bound once (hot paths: torch's
    caching allocator called directly); keeps no reference to `like`."""
    if library(like) == "torch":
        import torch

        dev = like.device

        def alloc(shape, dtype):
            return torch.empty(shape, dtype=torch_dtype(dtype), device=dev)
        return alloc
    stand_in = empty(like, (0,), "uint8")  # like's library and device, without like itself
    return lambda shape, dtype: empty(stand_in, shape, dtype)


def zeros(like, shape: tuple[int, ...], dtype: str):
    return zero_(empty(like, shape, dtype))


def zero_(x):
    """Set every element of contiguous x to 0, in place, on x's device and the current stream
    (one cudaMemsetAsync for device arrays: runtime.zero_device); returns x."""
    if is_device(x):
        from . import _runtime

        _runtime.zero_device(x)
    elif library(x) == "torch":
        x.zero_()
    else:
        x.fill(0)
    return x


def contiguous(x):
    lib = library(x)
    if lib == "numpy":
        return np.ascontiguousarray(x)
    if lib == "cupy":
        import cupy

        if x.flags.c_contiguous:
            return x
        with cupy.cuda.Device(x.device.id):  # the copy runs on x's device, not the current one
            return cupy.ascontiguousarray(x)
    return x.contiguous()


_ADDRESS = {  # library -> array -> its address as a Python int
    "torch": operator.methodcaller("data_ptr"),
    "cupy": operator.attrgetter("data.ptr"),
    "numpy": operator.attrgetter("ctypes.data"),  # host memory: the CPU kernel emulator of tests
}


def address(x) -> int:
    """data_ptr(x) as a Python int (for struct packing)."""
    return _ADDRESS[library(x)](x)


def data_ptr(x) -> np.uint64:
    """The address of x's first element, as the exact type a kernel pointer argument takes."""
    return np.uint64(address(x))


def address_getter(like):
    """`address` bound once for arrays of like's library (hot paths)."""
    return _ADDRESS[library(like)]


def numel(x) -> int:
    return int(x.numel()) if library(x) == "torch" else int(x.size)


def nbytes(x) -> int:
    lib = library(x)
    if lib == "torch":
        return int(x.numel() * x.element_size())
    return int(x.nbytes)
