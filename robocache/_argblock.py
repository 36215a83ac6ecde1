"""A kernel's arguments as one struct passed by value, refilled call after call.

CuPy's launch costs about 0.2 us per kernel argument (benchmarks/RESULTS.md), so the hot paths
pass one struct. An ArgBlock holds the struct's bytes with every field that is the same from call
to call (sizes, method codes) set once; per call only the addresses are packed, by one
`struct.pack_into`, into a buffer of the calling thread, and the same `np.void` view of that
buffer is handed to the launch. The driver copies kernel arguments when the launch is made
(cuLaunchKernel), so once a launch call has returned its buffer can be refilled; buffers are
per thread, so two threads launching the same signature never share one.
"""

from __future__ import annotations

import ctypes
import struct
import threading

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


class ArgBlock:
    """`dtype`: the struct's structured NumPy dtype (the layout of the C struct, align=True);
    `addresses`: the address fields packed per call, in order, each a field name or (name, i)
    for element i of an array field (all uint64); `fields`: the fixed fields' values, set on
    `template` (the struct's bytes; zeros by default)."""

    def __init__(self, dtype: np.dtype, addresses=(), *, template: bytes | None = None,
                 **fields):
        template = (np.zeros((), dtype) if template is None
                    else np.frombuffer(bytearray(template), dtype)[0])
        for name, value in fields.items():
            template[name] = value
        offsets = []
        for a in addresses:
            name, index = (a, 0) if isinstance(a, str) else a
            base_dtype, base = dtype.fields[name][:2]
            if base_dtype.base != np.dtype(np.uint64):
                raise TypeError(f"address field {a!r}: expected uint64, got {base_dtype}")
            offsets.append(base + 8 * index)
        if offsets != sorted(set(offsets)):
            raise ValueError("address fields must be distinct and in layout order")
        # one format from the first address to the last: "Q" per address, zero pads between
        fmt, at = "<", offsets[0] if offsets else 0
        raw = template.tobytes()
        for off in offsets:
            if off > at:
                if any(raw[at:off]):
                    raise ValueError("a fixed field lies between two address fields")
                fmt += f"{off - at}x"
            fmt += "Q"
            at = off + 8
        self.dtype = dtype
        self.template = raw
        self._start = offsets[0] if offsets else 0
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
        """This thread's copy (for callers that pack more than addresses); its bytes keep what
        the previous call from this thread wrote."""
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = ArgSlot(self.template, self.dtype)
        return slot

    def pack(self, *addresses: int) -> ArgSlot:
        """This thread's copy with these addresses (in the order given at construction) filled
        in, valid until its next use from the same thread."""
        slot = self.slot()
        self._pack(slot.buf, self._start, *addresses)
        return slot
