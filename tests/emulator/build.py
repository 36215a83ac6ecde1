"""Build an emulated kernel module: prelude + a module's code() + wrappers, compiled by g++.

The shared library is made of two translation units:
  kernel TU   ``#include "prelude.h"``, the module's ``code()`` (headers inlined, ``#line``
              directives kept, so errors name the real .cu/.cuh line), then one wrapper per name
              expression: ``rc_emu_<i>`` launches it, ``rc_emu_sig_<i>`` describes its parameters;
  runtime TU  runtime.cpp (scheduler, fibers, barriers), compiled once per (compiler, flags) to an
              object file that every module's library links.
It is cached on disk under a hash of (compiler, flags, support files, kernel TU): written under a
unique temporary name, then renamed into place, so concurrent test processes never see a partial
file and both succeed. Loaded modules are memoized per process.

Environment:
  CXX                     the compiler (default g++)
  ROBOCACHE_EMU_CACHE     cache directory (default <tmp>/robocache-emu-<uid>)
  ROBOCACHE_EMU_ASAN=1    build with AddressSanitizer (see README.md: needs LD_PRELOAD of libasan)
  ROBOCACHE_EMU_DEBUG=1   build with -O0 -g (to step through a kernel in gdb)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from robocache import _runtime
from robocache._errors import KernelCompileError

HERE = Path(__file__).resolve().parent
SUPPORT_FILES = ("rc_emu_api.h", "prelude.h", "runtime.cpp")
BASE_FLAGS = ("-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
              "-ffp-contract=off")

# Anything that makes a block's threads wait for each other: such modules run on fibers.
_COOPERATIVE = re.compile(r"\b(__syncthreads\w*|__syncwarp|__shfl\w*|__ballot_sync|__any_sync|"
                          r"__all_sync|__activemask|__reduce_\w+_sync|__match_\w+_sync)\b")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# extern __shared__ [__align__(n) | alignas(n)] T name[];
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;\[\]{}]*?)\s*\b(\w+)\s*\[\s*\]\s*;")
_ALIGN = re.compile(r"\b(__align__|alignas)\s*\((?:[^()]|\([^()]*\))*\)\s*")


class EmulatorError(RuntimeError):
    """A kernel failed under the emulator (deadlock, __trap, assert, bad launch)."""


@dataclass(frozen=True)
class SourceModule:
    """A KernelModule-like .cu file kept outside robocache/cuda_src (test-only kernels).

    ``code()`` inlines the project's headers with robocache._runtime's own ``_inline``.
    """

    file: str
    name_expressions: tuple[str, ...]
    options: tuple[str, ...] = field(default=_runtime.BASE_OPTIONS)

    @property
    def source(self) -> str:
        return Path(self.file).name

    def path(self) -> Path:
        return Path(self.file)

    def code(self) -> str:
        return "\n".join(_runtime._inline(Path(self.file), set())) + "\n"


# ---------------------------------------------------------------------------------------------
# Compiler and flags


def compiler() -> str:
    return os.environ.get("CXX") or "g++"


@functools.cache
def compiler_version(cxx: str) -> str | None:
    try:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def compiler_available() -> bool:
    return compiler_version(compiler()) is not None


def _env_on(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def flags(module) -> tuple[str, ...]:
    """g++ flags: the module's -std and -D/-U options (others are NVRTC-only), then ours."""
    std = "-std=c++17"
    out = []
    for opt in module.options:
        if opt.startswith(("-std=", "--std=")):
            std = "-std=" + opt.split("=", 1)[1]
        elif opt.startswith(("-D", "-U")) and len(opt) > 2:
            out.append(opt)
        elif opt.startswith("--define-macro="):
            out.append("-D" + opt.split("=", 1)[1])
        elif opt.startswith("--undefine-macro="):
            out.append("-U" + opt.split("=", 1)[1])
    opt_level = ("-O0", "-g") if _env_on("ROBOCACHE_EMU_DEBUG") else ("-O1",)
    asan = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g") \
        if _env_on("ROBOCACHE_EMU_ASAN") else ()
    return (std, *opt_level, *BASE_FLAGS, *asan, *out)


# ---------------------------------------------------------------------------------------------
# Source text


def needs_fibers(code: str) -> bool:
    """True when the source (comments aside) uses barriers or warp intrinsics."""
    return _COOPERATIVE.search(_COMMENT.sub(" ", code)) is not None


def _extern_shared(m: re.Match) -> str:
    ctype = _ALIGN.sub("", m.group(1)).strip()
    name = m.group(2)
    return f"{ctype}* const& {name} = ::rc_emu::dyn_smem_as<{ctype}>();"


def translate(code: str) -> str:
    """The module's code with `extern __shared__ T x[];` aliased to the block's dynamic memory."""
    return _EXTERN_SHARED.sub(_extern_shared, code)


def wrappers(names) -> str:
    out = ['#line 1 "<emulator wrappers>"']
    for i, name in enumerate(names):
        out.append(
            f"RC_EMU_EXPORT int rc_emu_{i}(const unsigned int* grid, const unsigned int* block, "
            f"unsigned long long shmem, void** args, const long long* opts) "
            f"{{ return ::rc_emu::launch(&{name}, grid, block, shmem, args, opts); }}")
        out.append(f"RC_EMU_EXPORT const char* rc_emu_sig_{i}() "
                   f"{{ return ::rc_emu::signature(&{name}); }}")
    return "\n".join(out) + "\n"


def kernel_tu(module) -> str:
    return '#include "prelude.h"\n' + translate(module.code()) + wrappers(module.name_expressions)


# ---------------------------------------------------------------------------------------------
# Build with a disk cache


def cache_dir() -> Path:
    d = os.environ.get("ROBOCACHE_EMU_CACHE")
    if not d:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        d = os.path.join(tempfile.gettempdir(), f"robocache-emu-{uid}")
    return Path(d)


def _key(cxx: str, version: str, fl: tuple[str, ...], files: tuple[str, ...], text: str) -> str:
    h = hashlib.sha256()
    for part in (cxx, version, "\0".join(fl)):
        h.update(part.encode() + b"\0")
    for name in files:
        h.update((HERE / name).read_bytes() + b"\0")
    h.update(text.encode())
    return h.hexdigest()[:40]


def _compile(cmd: list[str], what: str, out: Path, keep: tuple[tuple[Path, Path], ...] = ()
             ) -> None:
    """Run cmd (which writes cmd's -o target), then rename it and `keep`'s files into place."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log = "\n".join(proc.stderr.splitlines()[:80])
        raise KernelCompileError(f"the emulator could not compile {what} ({' '.join(cmd)}):\n{log}")
    for tmp, final in keep:
        os.replace(tmp, final)
    os.replace(cmd[cmd.index("-o") + 1], out)


def _runtime_object(cxx: str, version: str, fl: tuple[str, ...], d: Path) -> Path:
    """runtime.cpp compiled once per (compiler, flags), shared by every module's library."""
    obj = d / f"runtime-{_key(cxx, version, fl, ('rc_emu_api.h', 'runtime.cpp'), '')}.o"
    if not obj.is_file():
        tmp = d / f"{obj.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _compile([cxx, *fl, "-c", f"-I{HERE}", str(HERE / "runtime.cpp"), "-o", str(tmp)],
                     "runtime.cpp", obj)
        finally:
            tmp.unlink(missing_ok=True)
    return obj


def build(module) -> Path:
    """The path of the module's shared library, compiled now unless the cache has it."""
    cxx = compiler()
    version = compiler_version(cxx)
    if version is None:
        raise KernelCompileError(f"the CUDA emulator needs a C++ compiler: {cxx!r} not found "
                                 f"(set CXX)")
    fl = flags(module)
    tu = kernel_tu(module)
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    key = _key(cxx, version, fl, SUPPORT_FILES, tu)
    lib = d / f"{key}.so"
    if lib.is_file():
        return lib
    runtime = _runtime_object(cxx, version, fl, d)
    tag = f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    src, tmp = d / f"{tag}.cpp", d / f"{tag}.so.tmp"
    src.write_text(tu)
    try:   # the source is kept beside the library, for debuggers
        _compile([cxx, *fl, f"-I{HERE}", str(src), str(runtime), "-o", str(tmp)],
                 module.source, lib, keep=((src, d / f"{key}.cpp"),))
    finally:
        for p in (src, tmp):
            p.unlink(missing_ok=True)
    return lib


# ---------------------------------------------------------------------------------------------
# Loaded modules

_ARGTYPES = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong,
             ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_longlong)]


class EmulatedModule:
    """One module's shared library: a launcher and a parameter signature per name expression."""

    def __init__(self, module, path: Path):
        preload = os.environ.get("LD_PRELOAD", "")
        if _env_on("ROBOCACHE_EMU_ASAN") and not ("asan" in preload and "stdc++" in preload):
            # loading it would abort the process ("ASan runtime does not come first")
            raise EmulatorError(
                "ROBOCACHE_EMU_ASAN=1 needs the ASan runtime and libstdc++ preloaded: "
                'LD_PRELOAD="$(g++ -print-file-name=libasan.so) '
                '$(g++ -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0')
        try:
            self.lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise EmulatorError(f"cannot load {path}: {exc}") from None
        self.source = module.source
        self.index = {name: i for i, name in enumerate(module.name_expressions)}
        self.cooperative = needs_fibers(module.code())
        self.lib.rc_emu_last_error.restype = ctypes.c_char_p
        self._launchers: dict[str, object] = {}
        self._signatures: dict[str, list[tuple[str, int]]] = {}

    def launcher(self, name: str):
        fn = self._launchers.get(name)
        if fn is None:
            fn = getattr(self.lib, f"rc_emu_{self.index[name]}")
            fn.argtypes = _ARGTYPES
            fn.restype = ctypes.c_int
            self._launchers[name] = fn
        return fn

    def signature(self, name: str) -> list[tuple[str, int]]:
        """Per kernel parameter: (kind, size); kind is p/b/i/u/f/V (see prelude.h)."""
        sig = self._signatures.get(name)
        if sig is None:
            fn = getattr(self.lib, f"rc_emu_sig_{self.index[name]}")
            fn.restype = ctypes.c_char_p
            sig = [(t[0], int(t[1:])) for t in fn().decode().split()]
            self._signatures[name] = sig
        return sig

    def last_error(self) -> str:
        return self.lib.rc_emu_last_error().decode(errors="replace")


_loaded: dict[tuple, EmulatedModule] = {}
_load_lock = threading.Lock()


def load(module) -> EmulatedModule:
    key = (module, compiler(), flags(module))
    emu = _loaded.get(key)
    if emu is None:
        with _load_lock:
            emu = _loaded.get(key)
            if emu is None:
                emu = EmulatedModule(module, build(module))
                _loaded[key] = emu
    return emu
