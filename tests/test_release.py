"""The fast part of the release check, on every CI run: build the stamped sdist + wheel once,
`twine check` them, check their contents, install the wheel into a fresh venv with NumPy only
and run `python -m robocache selftest` and `info` there (tools/release_check.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import release_check as rc  # noqa: E402

pytestmark = pytest.mark.release

if importlib.util.find_spec("flit") is None and not os.environ.get("ROBOCACHE_REQUIRE_RELEASE"):
    # `make test` (CI) sets ROBOCACHE_REQUIRE_RELEASE=1: there a missing flit fails loudly
    pytest.skip("the release check needs flit (pip install robocache[dev])",
                allow_module_level=True)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    sdist, wheel, commit = rc.build_dists(ROOT, out)
    return {"sdist": sdist, "wheel": wheel, "commit": commit, "dir": out}


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory):
    where = tmp_path_factory.mktemp("venv")
    return rc.make_fresh_venv(dists["wheel"], where), where


def test_built_from_a_staging_copy(dists):
    assert not (ROOT / "robocache" / "_build_info.py").exists()
    assert dists["wheel"].name == f"robocache-{rc.read_version(ROOT)[0]}-py3-none-any.whl"


def test_twine_check(dists):
    rc.run([sys.executable, "-m", "twine", "check", "--strict", dists["sdist"], dists["wheel"]])


def test_wheel_and_sdist_contents(dists):
    assert rc.wheel_problems(dists["wheel"], ROOT, dists["commit"]) == []
    assert rc.sdist_problems(dists["sdist"], ROOT) == []


def test_wheel_without_a_kernel_is_caught(dists, tmp_path):
    broken = tmp_path / dists["wheel"].name
    with zipfile.ZipFile(dists["wheel"]) as src, zipfile.ZipFile(broken, "w") as dst:
        names = [n for n in src.namelist() if n.endswith(".cu")]
        assert names
        for n in src.namelist():
            if n != names[0]:
                dst.writestr(n, src.read(n))
    problems = rc.wheel_problems(broken, ROOT, dists["commit"])
    assert problems == [f"{broken.name}: missing {names[0]} (a kernel source)"]


def test_fresh_venv_selftest_and_info(dists, venv):
    python, where = venv
    version, _ = rc.read_version(ROOT)
    problems, log = rc.installed_problems(python, where, version, dists["commit"])
    assert problems == [], log
    assert "PASS  numpy      resample linear" in log
    assert "not usable: CuPy is not importable" in log  # NumPy only in there
    assert "FAIL" not in log


def test_sbom(dists, venv):
    python, _ = venv
    version, _ = rc.read_version(ROOT)
    out = dists["dir"] / f"robocache-{version}.cdx.json"
    assert rc.write_sbom(python, out, version, ROOT) == []
    bom = json.loads(out.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["version"] == version
    assert "numpy" in {c["name"] for c in bom["components"]}
    assert "robocache" not in {c["name"] for c in bom["components"]}
