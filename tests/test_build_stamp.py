"""tools/stamp_build_info.py and robocache/_version.py: the build stamp, in and outside git."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import stamp_build_info  # noqa: E402

HAS_GIT = shutil.which("git") is not None


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _load_stamp(path: Path) -> dict:
    ns: dict = {}
    exec(path.read_text(), ns)
    return ns


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_stamp_in_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("a")
    _git(repo, "add", "f.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "_build_info.py"
    assert stamp_build_info.stamp(out, repo) == ("2023-11-14T22:13:20Z", head)
    got = _load_stamp(out)
    assert (got["BUILD_DATE"], got["GIT_COMMIT"]) == ("2023-11-14T22:13:20Z", head)
    (repo / "f.txt").write_text("b")  # uncommitted change to a tracked file
    assert stamp_build_info.stamp(out, repo)[1] == f"{head}-dirty"


def test_stamp_outside_git_never_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    out = tmp_path / "_build_info.py"
    rc = stamp_build_info.main(["--repo", str(tmp_path), "--out", str(out)])
    assert rc == 0
    got = _load_stamp(out)
    assert got["GIT_COMMIT"] == "unknown"
    assert len(got["BUILD_DATE"]) == 20 and got["BUILD_DATE"].endswith("Z")


def test_stamp_without_git_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert stamp_build_info.git_commit(ROOT) == "unknown"


def test_bad_source_date_epoch_falls_back_to_now(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert stamp_build_info.build_date().endswith("Z")


def _import_version_module(pkg: Path):
    spec = importlib.util.spec_from_file_location(
        f"{pkg.name}._version", pkg / "_version.py", submodule_search_locations=None)
    init = importlib.util.spec_from_file_location(pkg.name, pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    parent = importlib.util.module_from_spec(init)
    sys.modules[pkg.name] = parent
    try:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.modules.pop(pkg.name, None)
        sys.modules.pop(f"{pkg.name}._version", None)
        sys.modules.pop(f"{pkg.name}._build_info", None)


@pytest.mark.parametrize("stamped", [False, True])
def test_version_module_reads_the_stamp(tmp_path, stamped):
    pkg = tmp_path / "rc_stamp_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(ROOT / "robocache" / "_version.py", pkg / "_version.py")
    if stamped:
        (pkg / "_build_info.py").write_text(stamp_build_info.render("2031-01-01T00:00:00Z",
                                                                    "cafe" * 10))
    mod = _import_version_module(pkg)
    assert mod.__build_date__ == ("2031-01-01T00:00:00Z" if stamped else "unknown")
    assert mod.__git_commit__ == ("cafe" * 10 if stamped else "unknown")
