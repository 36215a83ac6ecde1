"""A kernel's arguments as one struct passed by value, refilled call after call.

CuPy's launch costs about 0.2 us per kernel argument (benchmarks/RESULTS.md), so the hot paths
pass one struct. An ArgBlock holds the struct's bytes with every field that is the same from call
to call (sizes, method codes) set once; per call only the fields that change (addresses, batch
sizes) are packed, by one `struct.pack_into`, into a buffer of the calling thread, and the same
`np.void` view of that buffer is handed to the launch. The driver copies kernel arguments when
the launch is made (cuLaunchKernel), so once a launch call has returned its buffer can be
refilled; buffers are per thread, so two threads launching the same signature never share
one.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from itertools import pairwise

import numpy as np


class ArgSlot:
    """One thread's copy of an ArgBlock: `buf` (the struct's bytes), `view` (an np.void over
    them: what CuPy's launch and the CPU emulator take) and `params` (the address of a one-entry
    void* array pointing at `buf`: what cuLaunchKernel takes as kernelParams)."""

    __slots__ = ("buf", "view", "params", "_keep")

    def __init__(self, template: bytes, dtype: np.dtype):
        self.buf = bytearray(template)
        self.view = np.frombuffer(self.buf, dtype)[0]
        at = ctypes.addressof((ctypes.c_char * len(self.buf)).from_buffer(self.buf))
        array = (ctypes.c_void_p * 1)(at)
        self.params = ctypes.addressof(array)
        self._keep = array  # the void* array lives as long as the slot


# the field types a per-call value may have, as struct format characters
_FORMATS = {np.dtype(t): c for t, c in ((np.uint64, "Q"), (np.int64, "q"), (np.uint32, "I"),
                                        (np.int32, "i"), (np.float64, "d"), (np.float32, "f"))}


class ArgBlock:
    """`dtype`: the struct's structured NumPy dtype (the layout of the C struct, align=True);
    `per_call`: the fields packed per call, in layout order, each a field name or (name, i) for
    element i of an array field (64- or 32-bit ints or floats: addresses, sizes); `fields`: the
    fixed fields' values, set on `template` (the struct's bytes; zeros by default). No fixed
    field may lie between two per-call fields (the pack writes the bytes between them)."""

    def __init__(self, dtype: np.dtype, per_call=(), *, template: bytes | None = None,
                 **fields):
        template = (np.zeros((), dtype) if template is None
                    else np.frombuffer(bytearray(template), dtype)[0])
        for name, value in fields.items():
            template[name] = value
        spans = []  # (offset, format character, size) per per-call field
        for a in per_call:
            name, index = (a, 0) if isinstance(a, str) else a
            field_dtype, base = dtype.fields[name][:2]
            fmt = _FORMATS.get(field_dtype.base)
            if fmt is None:
                raise TypeError(f"per-call field {a!r}: expected one of "
                                f"{[str(t) for t in _FORMATS]}, got {field_dtype.base}")
            count = int(np.prod(field_dtype.shape))  # 1 for a scalar field
            if not 0 <= index < count:
                raise IndexError(f"per-call field {a!r}: expected an index in [0, {count}), "
                                 f"got {index}")
            size = field_dtype.base.itemsize
            spans.append((base + size * index, fmt, size))
        if any(b[0] < a[0] + a[2] for a, b in pairwise(spans)):
            raise ValueError("per-call fields must be distinct and in layout order")
        # one format from the first per-call field to the last, zero pads between them
        fmt, at = "<", spans[0][0] if spans else 0
        raw = template.tobytes()
        for off, c, size in spans:
            if off > at:
                if any(raw[at:off]):
                    raise ValueError("a fixed field lies between two per-call fields")
                fmt += f"{off - at}x"
            fmt += c
            at = off + size
        self.dtype = dtype
        self.template = raw
        self._start = spans[0][0] if spans else 0
        self._format = fmt
        self._pack = struct.Struct(fmt).pack_into
        self._local = threading.local()

    def __getstate__(self) -> dict:  # pickle / deepcopy (a dataset sent to worker processes)
        return {"dtype": self.dtype, "template": self.template, "_start": self._start,
                "_format": self._format}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pack = struct.Struct(self._format).pack_into
        self._local = threading.local()

    def slot(self) -> ArgSlot:
        """This thread's copy; its bytes keep what the previous call from this thread wrote."""
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = ArgSlot(self.template, self.dtype)
        return slot

    def pack(self, *values) -> ArgSlot:
        """This thread's copy with these per-call values (in the order given at construction)
        filled in, valid until its next use from the same thread."""
        slot = self.slot()
        self._pack(slot.buf, self._start, *values)
        return slot
