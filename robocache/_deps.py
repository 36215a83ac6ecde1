"""Optional dependencies: which extra installs each, and errors that say so.

A ModuleNotFoundError for one of them, raised anywhere under a public entry point, is re-raised
naming what needed it and the `pip install 'robocache[extra]'` that provides it (the original
chained), instead of a bare "No module named 'pyarrow'".
"""

from __future__ import annotations

import functools

_FORMATS = "'robocache[formats]'"
# module -> what `pip install` takes to get it
EXTRAS = {
    "torch": "'robocache[torch]'",
    "pyarrow": _FORMATS, "zarr": _FORMATS, "numcodecs": _FORMATS, "h5py": _FORMATS,
    "av": _FORMATS, "tqdm": _FORMATS, "imagecodecs": _FORMATS,
    "cupy": "'robocache[cuda12]' (or 'robocache[cuda13]')",
}


def reworded(exc: ModuleNotFoundError, what: str) -> ModuleNotFoundError:
    """`exc` said again with what needed the module and the extra that installs it; `exc`
    itself when the module is not one of the optional dependencies."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return exc
    return ModuleNotFoundError(f"{what} needs {top}, which is not installed: "
                               f"pip install {extra}", name=exc.name)


def reraise(exc: ModuleNotFoundError, what: str):
    """Raise `exc` reworded (the original chained), or `exc` itself when it is not about an
    optional dependency. Call it in the `except` clause that caught `exc`."""
    err = reworded(exc, what)
    if err is exc:
        raise exc
    raise err from exc


def hints(what: str):
    """Decorator: a missing optional dependency under the function is reworded (see module)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ModuleNotFoundError as exc:
                reraise(exc, what)
        return call
    return wrap


def compile_extra() -> str:
    """The extra whose NVRTC matches this install: compile13 beside CUDA 13's CuPy or
    cuda-bindings (the compile extra pins CUDA 12's, which cannot be installed with them),
    compile otherwise."""
    from importlib import metadata

    try:
        metadata.version("cupy-cuda13x")
        return "compile13"
    except metadata.PackageNotFoundError:
        pass
    try:
        return "compile13" if metadata.version("cuda-bindings").startswith("13.") else "compile"
    except metadata.PackageNotFoundError:
        return "compile"
