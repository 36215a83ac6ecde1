"""tools/release_check.py's checks catch deliberately broken releases (fast: no build)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import release_check as rc  # noqa: E402

HAS_GIT = shutil.which("git") is not None

DEV_LOG = """# Changelog

## [Unreleased]

### Added
- something new

## [0.2.1] - 2025-11-05

### Fixed
- a bug

## [0.2.0] - 2025-10-01 [YANKED]

### Added
- the first thing
"""

RELEASE_LOG = DEV_LOG.replace("## [Unreleased]\n\n### Added\n- something new\n",
                              "## [Unreleased]\n\n## [0.2.2] - 2025-12-01\n\n### Added\n"
                              "- something new\n")


# --- version consistency -----------------------------------------------------------------------

def test_the_repository_itself_is_consistent():
    version, api_version = rc.read_version(ROOT)
    assert rc.version_problems(version, api_version, (ROOT / "CHANGELOG.md").read_text(),
                               rc.git_tags(ROOT)) == []


@pytest.mark.parametrize("version, log", [("0.2.2.dev0", DEV_LOG), ("0.3.0.dev3", DEV_LOG),
                                          ("0.2.2", RELEASE_LOG)])
def test_consistent_versions_pass(version, log):
    assert rc.version_problems(version, "0.2", log, {"v0.2.0", "v0.2.1"}) == []


@pytest.mark.parametrize("version, api, log, tags, expect", [
    ("0.2.3", "0.2", RELEASE_LOG, set(), "top released section of CHANGELOG.md is [0.2.2]"),
    ("0.2.2", "0.2", DEV_LOG, set(), "top released section of CHANGELOG.md is [0.2.1]"),
    ("0.2.2", "0.2", RELEASE_LOG.replace("## [Unreleased]\n", "## [Unreleased]\n- leftover\n"),
     set(), "[Unreleased] still has entries while releasing 0.2.2"),
    ("0.2.3.dev0", "0.2", RELEASE_LOG.replace("## [Unreleased]\n\n", ""), set(),
     "needs `## [Unreleased]` as the top section"),
    ("0.2.1.dev0", "0.2", DEV_LOG, set(), "not after the newest release in CHANGELOG.md (0.2.1)"),
    ("0.2.2", "0.2", RELEASE_LOG, {"v0.2.2"}, "git tag v0.2.2 already exists"),
    ("0.2.2", "0.2", RELEASE_LOG.replace("[0.2.2] - 2025-12-01", "[0.2.2]"), set(),
     "section [0.2.2] needs a date"),
    ("0.2.2", "0.2", RELEASE_LOG.replace("## [0.2.0] - 2025-10-01", "## [0.2.9] - 2025-10-01"),
     set(), "not newest first"),
    ("0.2.2", "0.2", RELEASE_LOG + "## [0.2.1] - 2025-11-05\n", set(),
     "[0.2.1] appears more than once"),
    ("0.2.2", "0.2", RELEASE_LOG.replace("## [0.2.1] - 2025-11-05", "## 0.2.1"), set(),
     "heading '## 0.2.1' is not"),
    ("v0.2.2", "0.2", RELEASE_LOG, set(), "is not a version like"),
    ("0.2.2", "0.2.0", RELEASE_LOG, set(), "is not major.minor"),
    ("0.2.2", "0.2", "# Changelog\n", set(), "no `## [...]` sections"),
])
def test_version_mismatches_are_caught(version, api, log, tags, expect):
    problems = rc.version_problems(version, api, log, tags)
    assert any(expect in p for p in problems), problems


def test_version_mismatch_in_a_tree(tmp_path):
    # the broken release as files: _version.py says 0.3.0, CHANGELOG's top release is 0.2.2
    (tmp_path / "robocache").mkdir()
    (tmp_path / "robocache" / "_version.py").write_text(
        '__version__ = "0.3.0"\n__api_version__ = "0.3"\n')
    (tmp_path / "CHANGELOG.md").write_text(RELEASE_LOG)
    version, api = rc.read_version(tmp_path)
    assert (version, api) == ("0.3.0", "0.3")
    problems = rc.version_problems(version, api, (tmp_path / "CHANGELOG.md").read_text(),
                                   rc.git_tags(tmp_path))
    assert problems == ["__version__ is 0.3.0 but the top released section of CHANGELOG.md is "
                        "[0.2.2]"]


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_existing_tag_is_found(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "x").write_text("x")
    subprocess.run([*git, "add", "x"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    subprocess.run([*git, "tag", "v0.2.2"], check=True)
    assert "v0.2.2" in rc.git_tags(tmp_path)
    assert any("already exists" in p
               for p in rc.version_problems("0.2.2", "0.2", RELEASE_LOG, rc.git_tags(tmp_path)))


# --- wheel contents ----------------------------------------------------------------------------

def _fake_wheel(out_dir: Path, *, drop=(), change=(), extra=(), tag="py3-none-any",
                stamp=True) -> Path:
    """A wheel as flit would build it from this tree, with deliberate defects."""
    version, _ = rc.read_version(ROOT)
    path = out_dir / f"robocache-{version}-{tag}.whl"
    dist_info = f"robocache-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in rc._package_files(ROOT).items():
            if rel in drop:
                continue
            zf.writestr(rel, data + (b"// edited\n" if rel in change else b""))
        for rel in extra:
            zf.writestr(rel, b"\0")
        if stamp:
            zf.writestr("robocache/_build_info.py",
                        "BUILD_DATE = '2030-01-01T00:00:00Z'\nGIT_COMMIT = 'abc'\n")
        zf.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                          f"Tag: {tag}\n")
    return path


def _cu_files():
    files = sorted(p.relative_to(ROOT).as_posix()
                   for p in (ROOT / "robocache" / "cuda_src").iterdir() if p.suffix == ".cu")
    assert files, "robocache/cuda_src holds no .cu file"
    return files


def test_complete_wheel_passes(tmp_path):
    assert rc.wheel_problems(_fake_wheel(tmp_path), ROOT, expected_commit="abc") == []


def test_missing_cu_in_the_wheel_is_caught(tmp_path):
    cu = _cu_files()[0]
    problems = rc.wheel_problems(_fake_wheel(tmp_path, drop=[cu]), ROOT)
    assert problems == [f"robocache-{rc.read_version(ROOT)[0]}-py3-none-any.whl: missing {cu} "
                        f"(a kernel source)"]


def test_missing_header_and_stale_kernel_are_caught(tmp_path):
    cu = _cu_files()[0]
    problems = rc.wheel_problems(_fake_wheel(tmp_path, drop=["robocache/cuda_src/common.cuh"],
                                             change=[cu]), ROOT)
    assert any("missing robocache/cuda_src/common.cuh" in p for p in problems)
    assert any(f"{cu} (a kernel source) differs from the source tree" in p for p in problems)


def test_impure_or_unstamped_wheels_are_caught(tmp_path):
    problems = rc.wheel_problems(_fake_wheel(tmp_path, tag="cp311-cp311-linux_x86_64",
                                             extra=["robocache/_fast.so"], stamp=False), ROOT,
                                 expected_commit="abc")
    text = "\n".join(problems)
    assert "expected a pure py3-none-any wheel" in text
    assert "Root-Is-Purelib" in text
    assert "unexpected compiled file robocache/_fast.so" in text
    assert "_build_info.py (build date and commit) is missing" in text
    wrong_commit = rc.wheel_problems(_fake_wheel(tmp_path), ROOT, expected_commit="def")
    assert any("stamped commit 'abc', expected 'def'" in p for p in wrong_commit)


def test_not_a_zip(tmp_path):
    bad = tmp_path / f"robocache-{rc.read_version(ROOT)[0]}-py3-none-any.whl"
    bad.write_text("not a zip")
    assert any("not a readable zip" in p for p in rc.wheel_problems(bad, ROOT))


def test_stage_copy_leaves_out_caches_and_stamps(tmp_path):
    src = tmp_path / "src"
    for rel in ("robocache/__init__.py", "robocache/_build_info.py", "robocache/x/__pycache__/a",
                ".venv/bin/python", "dist/a.whl", "benchmarks/out/r.json", "benchmarks/b.py",
                "robocache/out.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    shutil.copytree(src, tmp_path / "dst", ignore=rc._stage_ignore(src.resolve()))
    got = sorted(p.relative_to(tmp_path / "dst").as_posix()
                 for p in (tmp_path / "dst").rglob("*") if p.is_file())
    assert got == ["benchmarks/b.py", "robocache/__init__.py", "robocache/out.py"]
