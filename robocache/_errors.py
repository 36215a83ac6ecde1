"""Typed errors raised by RoboCache (besides ValueError / TypeError for bad arguments)."""


class RoboCacheError(RuntimeError):
    """Base class of RoboCache's own runtime errors."""


class KernelCompileError(RoboCacheError):
    """NVRTC rejected a kernel source; the message carries the file and line of each error."""


class BackendUnavailableError(RoboCacheError):
    """The CUDA backend was asked for but CuPy or a GPU is not usable here."""


class DeviceMemoryError(RoboCacheError, MemoryError):
    """A request would need more device memory than is free.

    ``needed`` and ``free`` are in bytes.
    """

    def __init__(self, what: str, needed: int, free: int):
        self.needed = int(needed)
        self.free = int(free)
        super().__init__(
            f"{what} needs {needed / 2**30:.2f} GiB ({needed} bytes) of device memory "
            f"but only {free / 2**30:.2f} GiB ({free} bytes) is free"
        )


class DatasetFormatError(RoboCacheError, ValueError):
    """A dataset on disk is malformed, truncated, inconsistent or unsafe to read.

    The message names the file (or array) and what is wrong with it. Readers raise it before
    returning anything, so a failed read never leaves a half-built result.
    """
