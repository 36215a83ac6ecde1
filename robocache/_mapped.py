"""Memory maps of files (a loaded cache's .npy files): which file an array maps and where, and
a private writable view of the same pages.

np.load(mmap_mode="r") maps a file read-only and shared: nothing is copied, and a write through
it (e.g. by a torch tensor made from it) kills the process. `private_view` maps the same pages
MAP_PRIVATE | MAP_NORESERVE: writes go to private copies of the pages they touch, the file never
changes, and no memory is reserved for the pages never written (under strict overcommit,
vm.overcommit_memory=2, the whole view is charged and a large one may be refused). Linux (the
/proc file system); elsewhere the look-ups say None.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

PAGE = mmap.PAGESIZE
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if os.name == "posix" else 0)


def memmap_root(array: np.ndarray) -> tuple[np.memmap, int] | None:
    """(the np.memmap of a file whose memory the C-contiguous `array` is, the byte offset of
    array's first byte in it); None for anything else (a strided view, a plain array)."""
    root = array
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or not root.filename or not array.flags.c_contiguous:
        return None
    delta = int(array.ctypes.data) - int(root.ctypes.data)
    if delta < 0 or delta + array.nbytes > root.nbytes:
        return None
    return root, delta


def mapped_file_id(mm: mmap.mmap) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file that `mm` maps (Linux): the stat of the mapping's own
    /proc/self/map_files link (~10 us, but only for processes with CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE), else the device and inode columns of the /proc/self/maps line that
    holds the mapping (any process; ~1 ms); None where neither says (another system, a file
    system whose maps device is not its stat device)."""
    try:
        start = int(np.frombuffer(mm, np.uint8).ctypes.data)
    except (ValueError, TypeError, BufferError):  # closed or empty
        return None
    end = start + -(-len(mm) // PAGE) * PAGE
    try:
        st = os.stat(f"/proc/self/map_files/{start:x}-{end:x}")
        return st.st_dev, st.st_ino
    except OSError:  # EPERM without the capabilities; no link where the kernel merged maps
        return maps_file_id(start, end)


def maps_file_id(start: int, end: int) -> tuple[int, int] | None:
    """(device, inode) of the /proc/self/maps line whose range holds [start, end)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            for line in f:  # "lo-hi perms offset major:minor inode [path]"
                fields = line.split()
                lo, _, hi = fields[0].partition(b"-")
                if int(lo, 16) <= start and end <= int(hi, 16):
                    major, _, minor = fields[3].partition(b":")
                    return os.makedev(int(major, 16), int(minor, 16)), int(fields[4])
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_mapped_file(root: np.memmap) -> int | None:
    """A read-only descriptor of the file `root` maps, or None where there is none to open: the
    path gone or unreadable, or another file there now (replaced since it was mapped: not the
    device and inode of the mapping, mapped_file_id)."""
    mapped = mapped_file_id(root.base)
    if mapped is None:
        return None
    try:
        fd = os.open(root.filename, os.O_RDONLY)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != mapped:
        os.close(fd)
        return None
    return fd


def private_view(x: np.ndarray) -> np.ndarray | None:
    """A writable copy-on-write view of the file pages a read-only memmap `x` (or a C-contiguous
    view of one) shows, or None where there is none to make (not a memmap of a file, the file
    replaced or removed since it was mapped, or the system refuses the mapping)."""
    found = memmap_root(x)
    if found is None or x.nbytes == 0:
        return None
    root, delta = found
    fd = open_mapped_file(root)
    if fd is None:
        return None
    start = int(root.offset) + delta
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        mm = mmap.mmap(fd, start - aligned + x.nbytes, offset=aligned,
                       flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, AttributeError):  # AttributeError: no MAP_PRIVATE (Windows)
        return None
    finally:
        os.close(fd)  # the mapping keeps the file
    out = np.frombuffer(mm, dtype=np.uint8, count=x.nbytes, offset=start - aligned)
    return out.view(x.dtype).reshape(x.shape)
