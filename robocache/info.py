"""What a bug report needs: versions, build, CUDA stack, GPUs, kernel cache, usable backends.

`installation_info()` returns a dict of plain values (str, or a list of dicts for the GPUs and
a dict for the backends); `print_installation_info()` prints it. Neither raises on a broken
install: a field that cannot be found holds the error text instead. CuPy and torch are imported
here (not by `import robocache`), so the first call may take a second or two.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

_ENV_VARS = ("ROBOCACHE_DISABLE_CUDA", "ROBOCACHE_LAUNCHER", "CUPY_CACHE_DIR",
             "CUPY_CACHE_IN_MEMORY", "CUDA_PATH", "CUDA_VISIBLE_DEVICES")


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}".strip()


def _guard(fn, *args):
    """fn(*args), or the error text when it raises anything."""
    try:
        return fn(*args)
    except Exception as exc:  # a broken install must still give a report
        return _error(exc)


def _import(name: str):
    """(module, None) or (None, why it is not there)."""
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        if getattr(exc, "name", None) == name.split(".")[0] and "halted" not in str(exc):
            return None, "not installed"
        return None, _error(exc)
    except Exception as exc:  # e.g. a CUDA library that fails to load
        return None, _error(exc)


def _cuda_version(v: int) -> str:
    """12090 -> "12.9"; 0 means no driver."""
    v = int(v)
    if v == 0:
        return "none (no CUDA driver found)"
    return f"{v // 1000}.{(v % 1000) // 10}"


def _source_commit() -> str:
    """The git commit of the tree robocache was imported from, for source checkouts."""
    pkg = Path(__file__).resolve().parent
    if not (pkg.parent / "pyproject.toml").is_file():  # installed, not a checkout
        return ""
    try:
        out = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _robocache_fields() -> dict:
    from . import _version

    commit = _version.__git_commit__
    if commit == "unknown":
        src = _guard(_source_commit)
        if src and not src.startswith("error"):
            commit = f"unknown (not a built wheel; source tree at git {src})"
    return {
        "robocache": _version.__version__,
        "api_version": _version.__api_version__,
        "build_date": _version.__build_date__,
        "git_commit": commit,
        "location": str(Path(__file__).resolve().parent),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }


def _numpy_version() -> str:
    import numpy

    return numpy.__version__


def _torch_fields() -> dict:
    torch, why = _import("torch")
    if torch is None:
        return {"torch": why, "torch_cuda": "n/a"}
    fields = {"torch": _guard(lambda: torch.__version__)}

    def torch_cuda():
        built = torch.version.cuda
        if built is None:
            return "CPU-only build"
        return f"built for CUDA {built}, available: {torch.cuda.is_available()}"

    fields["torch_cuda"] = _guard(torch_cuda)
    return fields


def _gpus(cupy) -> list[dict]:
    rt = cupy.cuda.runtime
    gpus = []
    for i in range(rt.getDeviceCount()):
        p = rt.getDeviceProperties(i)
        name = p["name"]
        gpus.append({
            "index": i,
            "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "compute_capability": f"{p['major']}.{p['minor']}",
            "memory_gib": round(p["totalGlobalMem"] / 2**30, 1),
        })
    return gpus


def _cuda_fields(cuda_usable: bool) -> dict:
    from . import _runtime

    fields = {}
    cupy, why = _import("cupy")
    if cupy is None:
        fields.update(cupy=why, cuda_driver="n/a (needs CuPy)", cuda_runtime="n/a (needs CuPy)",
                      nvrtc="n/a (needs CuPy)")
    else:
        fields["cupy"] = _guard(lambda: cupy.__version__)
        fields["cuda_driver"] = _guard(lambda: _cuda_version(cupy.cuda.runtime.driverGetVersion()))
        fields["cuda_runtime"] = _guard(
            lambda: _cuda_version(cupy.cuda.runtime.runtimeGetVersion()))
        fields["nvrtc"] = _guard(lambda: "{}.{}".format(*cupy.cuda.nvrtc.getVersion()))
    fields["nvrtc_bindings"] = _guard(_runtime.nvrtc_version)
    fields["kernel_launcher"] = _guard(_runtime.launcher_name)
    if cupy is not None and cuda_usable:
        fields["gpus"] = _guard(_gpus, cupy)
    else:
        fields["gpus"] = []
    return fields


def _kernel_cache() -> dict:
    path = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "") not in ("", "0"):
        state = "disk cache disabled by CUPY_CACHE_IN_MEMORY"
    elif os.path.isdir(path):
        state = f"{len(os.listdir(path))} entries"
    else:
        state = "not created yet"
    return {"kernel_cache_dir": path, "kernel_cache": state}


def _backends() -> dict:
    from . import _runtime

    ok, why = _runtime.cuda_status()
    return {"numpy": "usable", "cuda": f"usable ({why})" if ok else f"not usable: {why}"}


def installation_info() -> dict:
    """Everything a bug report needs, as a dict of plain values. Never raises."""
    info: dict = {}
    robo = _guard(_robocache_fields)
    info.update(robo if isinstance(robo, dict) else {"robocache": robo})
    info["numpy"] = _guard(_numpy_version)
    backends = _guard(_backends)
    if not isinstance(backends, dict):
        backends = {"numpy": "usable", "cuda": f"not usable: {backends}"}
    cuda_usable = backends["cuda"].startswith("usable")
    for key, fn, args in (("cupy", _cuda_fields, (cuda_usable,)), ("torch", _torch_fields, ()),
                          ("kernel_cache_dir", _kernel_cache, ())):
        part = _guard(fn, *args)
        info.update(part if isinstance(part, dict) else {key: part})
    info["backends"] = backends
    info["environment"] = {k: os.environ[k] for k in _ENV_VARS if k in os.environ}
    return info


def format_installation_info(info: dict | None = None) -> str:
    info = installation_info() if info is None else info
    width = max(len(k) for k in info) + 1
    lines = []
    for key, value in info.items():
        if key == "gpus" and isinstance(value, list):
            rows = [f"[{g['index']}] {g['name']}, compute capability {g['compute_capability']}, "
                    f"{g['memory_gib']} GiB" for g in value] or ["none visible"]
        elif isinstance(value, dict):
            rows = [f"{k}: {v}" for k, v in value.items()] or ["(none set)"]
        else:
            rows = [str(value)]
        for i, row in enumerate(rows):
            lines.append(f"{(key + ':') if i == 0 else '':<{width}} {row}")
    return "\n".join(lines)


def print_installation_info(file=None) -> None:
    """Print `installation_info()` for a bug report (to stdout, or `file`)."""
    print(format_installation_info(), file=file if file is not None else sys.stdout)
