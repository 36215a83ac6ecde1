"""Without an optional dependency, RoboCache says which extra installs it (a subprocess in which
the package is "not installed": None in sys.modules, as importlib reads it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(blocked: list[str], code: str) -> str:
    prelude = f"import sys\nsys.modules.update({{m: None for m in {blocked!r}}})\n"
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_without_torch_star_import_works_and_the_torch_names_say_which_extra():
    out = _run(["torch"], """
        import robocache
        ns = {}
        exec("from robocache import *", ns)
        print("star", "DataLoader" in ns, "TrajectoryStore" in ns, "resample" in ns)
        print("dir", "DataLoader" in dir(robocache))
        for stmt in ("robocache.DataLoader", "from robocache import TrajectoryDataset"):
            try:
                exec(stmt)
            except ModuleNotFoundError as e:
                print("err", e.name, e)
    """)
    assert "star False True True" in out and "dir False" in out
    assert "err torch robocache.DataLoader needs torch, which is not installed: pip install " \
           "'robocache[torch]'" in out
    assert "err torch robocache.TrajectoryDataset needs torch" in out


@pytest.mark.parametrize("reader, module", [("read_lerobot", "pyarrow"), ("read_zarr", "zarr"),
                                            ("read_robomimic", "h5py")])
def test_a_reader_without_its_library_says_which_extra(tmp_path, reader, module):
    where = ROOT / "examples/data/arm2d_reach" if reader == "read_lerobot" else tmp_path
    out = _run([module], f"""
        from robocache.formats import {reader}
        try:
            {reader}({str(where)!r})
        except ModuleNotFoundError as e:
            print("err", e.name, e)
    """)
    assert f"err {module} {reader} needs {module}, which is not installed: pip install " \
           f"'robocache[formats]'" in out


@pytest.mark.parametrize("installed, extra", [({}, "compile"),
                                              ({"cuda-bindings": "12.9.1"}, "compile"),
                                              ({"cuda-bindings": "13.0.3"}, "compile13"),
                                              ({"cupy-cuda13x": "14.2.0"}, "compile13")])
def test_the_nvrtc_advice_names_the_extra_that_installs_beside_cuda13(monkeypatch, installed,
                                                                       extra):
    """compile (CUDA 12's NVRTC and cuda-bindings<13) cannot be installed beside cuda13."""
    from importlib import metadata

    from robocache import _deps

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]
    monkeypatch.setattr(metadata, "version", version)
    assert _deps.compile_extra() == extra
