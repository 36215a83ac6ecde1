"""robocache.info: every field is there, nothing raises on a broken install, and the CUDA
backend is reported with the reason when it is not usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import robocache
from robocache import _runtime, _version, info

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("robocache", "api_version", "build_date", "git_commit", "location", "python",
          "platform", "numpy", "cupy", "cuda_driver", "cuda_runtime", "nvrtc", "nvrtc_bindings",
          "kernel_launcher",
          "gpus", "torch", "torch_cuda", "kernel_cache_dir", "kernel_cache", "backends",
          "environment")


@pytest.fixture
def fresh_cuda_status():
    _runtime.cuda_status.cache_clear()
    yield
    _runtime.cuda_status.cache_clear()


def test_has_every_field_with_plain_values():
    got = robocache.installation_info()
    assert set(FIELDS) <= set(got), set(FIELDS) - set(got)
    assert got["robocache"] == robocache.__version__
    assert got["api_version"] == robocache.__api_version__
    assert got["build_date"] == robocache.__build_date__
    assert got["git_commit"].startswith(robocache.__git_commit__)
    assert got["backends"]["numpy"] == "usable"
    assert isinstance(got["gpus"], list)
    json.dumps(got)  # plain values only


def test_cuda_backend_reported_with_reason():
    got = info.installation_info()
    ok, why = _runtime.cuda_status()
    if ok:
        assert got["backends"]["cuda"].startswith("usable")
        assert got["gpus"] and all("." in g["compute_capability"] for g in got["gpus"])
    else:
        assert got["backends"]["cuda"] == f"not usable: {why}"
        assert why  # a reason, not an empty string
        assert got["gpus"] == []


def test_disabled_cuda_in_a_subprocess():
    env = dict(os.environ, ROBOCACHE_DISABLE_CUDA="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "robocache", "info", "--json"], env=env,
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["backends"]["cuda"] == "not usable: disabled by ROBOCACHE_DISABLE_CUDA"
    assert got["environment"]["ROBOCACHE_DISABLE_CUDA"] == "1"
    assert got["gpus"] == []


def test_never_raises_on_a_broken_install(monkeypatch, fresh_cuda_status):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import fails
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # no attributes

    def boom():
        raise RuntimeError("NVRTC exploded")

    monkeypatch.setattr(_runtime, "nvrtc_version", boom)
    got = info.installation_info()
    assert got["cupy"].startswith("error: ModuleNotFoundError: import of cupy halted")
    assert got["cuda_driver"].startswith("n/a")
    assert got["nvrtc_bindings"] == "error: RuntimeError: NVRTC exploded"
    assert got["torch"].startswith("error: AttributeError")
    assert got["torch_cuda"].startswith("error: AttributeError")
    assert got["backends"]["cuda"].startswith("not usable: CuPy is not importable")
    text = info.format_installation_info(got)
    assert "NVRTC exploded" in text


def test_never_raises_when_a_whole_section_breaks(monkeypatch, fresh_cuda_status):
    def boom(*args):
        raise OSError("disk on fire")

    for name in ("_robocache_fields", "_cuda_fields", "_torch_fields", "_kernel_cache",
                 "_backends"):
        monkeypatch.setattr(info, name, boom)
    got = info.installation_info()
    for key in ("robocache", "cupy", "torch", "kernel_cache_dir"):
        assert got[key] == "error: OSError: disk on fire"
    assert got["backends"]["cuda"] == "not usable: error: OSError: disk on fire"
    info.format_installation_info(got)


def test_missing_package_says_not_installed(monkeypatch):
    monkeypatch.setattr(info, "_import", lambda name: (None, "not installed"))
    got = info.installation_info()
    assert got["cupy"] == "not installed"
    assert got["torch"] == "not installed"


def test_build_stamp_is_reported(monkeypatch):
    monkeypatch.setattr(_version, "__git_commit__", "0123abcd")
    monkeypatch.setattr(_version, "__build_date__", "2030-01-02T03:04:05Z")
    got = info.installation_info()
    assert got["git_commit"] == "0123abcd"
    assert got["build_date"] == "2030-01-02T03:04:05Z"


def test_kernel_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    (tmp_path / "a.cubin").write_bytes(b"x")
    got = info.installation_info()
    assert got["kernel_cache_dir"] == str(tmp_path)
    assert got["kernel_cache"] == "1 entries"
    monkeypatch.delenv("CUPY_CACHE_DIR")
    assert info.installation_info()["kernel_cache_dir"] == \
        os.path.expanduser("~/.cupy/kernel_cache")


def test_cuda_version_text():
    assert info._cuda_version(12090) == "12.9"
    assert info._cuda_version(13000) == "13.0"
    assert info._cuda_version(0).startswith("none")


def test_print_installation_info(capsys):
    robocache.print_installation_info()
    out = capsys.readouterr().out
    for key in FIELDS:
        assert f"{key}:" in out
    assert "robocache:" in out and robocache.__version__ in out
