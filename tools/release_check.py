"""Everything a release must pass, in one command (`make release-check`); stops at the first problem.

    python tools/release_check.py                  # every step
    python tools/release_check.py --only build     # just the stamped sdist + wheel in dist/
    python tools/release_check.py --fast           # build, twine check, contents, fresh venv
    python tools/release_check.py --allow-dirty    # accept uncommitted changes (not for a release)

Steps, in order: clean git tree, version consistency (robocache/_version.py, CHANGELOG.md, no
tag v<version> yet), API listing, lint, tests, compile of every kernel for every arch, build of
sdist + wheel (stamped with commit and date, from a staging copy so the tree is never touched),
`twine check`, wheel and sdist contents, install of the wheel into a fresh virtual environment
with NumPy only (run from a temporary directory, no source tree on sys.path, binary wheels only:
no compiler) followed by `python -m robocache selftest` and `info` there, and a CycloneDX SBOM of
the runtime dependencies in dist/.

The checks are importable functions that return a list of problems (empty: fine), so the tests
run them on deliberately broken fixtures (tests/test_release_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import stamp_build_info  # noqa: E402

PACKAGE = "robocache"
LINT_DIRS = ("robocache", "tests", "benchmarks", "examples", "tools")
SDIST_MUST_HAVE = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "RELEASING.md",
                   "api/public_api.txt")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
_HEADING_RE = re.compile(
    r"^## \[(?P<label>[^\]]+)\](?:\s*-\s*(?P<date>[^\s\[]+))?(?:\s*\[YANKED\])?\s*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STAGE_SKIP_TOP = {".git", ".venv", "venv", "dist", "build", ".pytest_cache", ".ruff_cache",
                   ".hypothesis", ".whl"}
_STAGE_SKIP_ANY = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _stage_ignore(root: Path):
    """What the staging copy leaves out: caches, environments, outputs, a stale stamp."""
    def ignore(folder, names):
        rel = Path(folder).resolve().relative_to(root)
        skip = set(_STAGE_SKIP_ANY(folder, names))
        if rel == Path("."):
            skip |= _STAGE_SKIP_TOP & set(names)
        elif rel == Path("benchmarks"):
            skip |= {"out"} & set(names)
        elif rel == Path(PACKAGE):
            skip |= {"_build_info.py"} & set(names)
        return skip
    return ignore


class CheckFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Small helpers


def run(cmd, *, cwd=None, env=None, check=True, timeout=None) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; raise CheckFailed with the output when it fails."""
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise CheckFailed(f"`{' '.join(str(c) for c in cmd)}` exited with {res.returncode}:\n"
                          f"{res.stdout[-6000:]}{res.stderr[-6000:]}")
    return res


def read_version(root: Path = ROOT) -> tuple[str, str]:
    """(__version__, __api_version__) as written in robocache/_version.py (not imported)."""
    text = (root / PACKAGE / "_version.py").read_text()
    found = {}
    for key in ("__version__", "__api_version__"):
        m = re.search(rf'^{key}\s*=\s*["\']([^"\']+)["\']', text, re.M)
        if m is None:
            raise CheckFailed(f"{PACKAGE}/_version.py: no {key} = \"...\" line")
        found[key] = m.group(1)
    return found["__version__"], found["__api_version__"]


def git_tags(root: Path = ROOT) -> set[str]:
    try:
        res = subprocess.run(["git", "-C", str(root), "tag", "--list"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(res.stdout.split()) if res.returncode == 0 else set()


def _vkey(v: str):
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - packaging comes with twine
        return None
    return Version(v)


# ---------------------------------------------------------------------------------------------
# Checks on text and files (the tests call these on broken fixtures)


def changelog_sections(text: str) -> list[dict]:
    """The `## [label] - date` sections of a Keep a Changelog file, top first."""
    sections: list[dict] = []
    for line in text.splitlines():
        m = _HEADING_RE.match(line)
        if m:
            sections.append({"label": m.group("label"), "date": m.group("date"), "lines": []})
        elif line.startswith("## "):
            sections.append({"label": None, "date": None, "lines": [], "raw": line})
        elif sections:
            sections[-1]["lines"].append(line)
    return sections


def version_problems(version: str, api_version: str, changelog: str, tags: set[str]) -> list[str]:
    """_version.py against CHANGELOG.md and the git tags."""
    problems = []
    if not _VERSION_RE.match(version):
        problems.append(f"__version__ {version!r} is not a version like 0.2.1 or 0.2.2.dev0")
    if not re.match(r"^\d+\.\d+$", api_version):
        problems.append(f"__api_version__ {api_version!r} is not major.minor, e.g. 0.2")
    if f"v{version}" in tags:
        problems.append(f"git tag v{version} already exists: bump __version__ in "
                        f"{PACKAGE}/_version.py (a released version is never rebuilt)")
    sections = changelog_sections(changelog)
    for s in sections:
        if s["label"] is None:
            problems.append(f"CHANGELOG.md: heading {s['raw']!r} is not `## [version] - "
                            f"YYYY-MM-DD` or `## [Unreleased]`")
    sections = [s for s in sections if s["label"] is not None]
    if not sections:
        return problems + ["CHANGELOG.md has no `## [...]` sections"]
    labels = [s["label"] for s in sections]
    for label in sorted({lb for lb in labels if labels.count(lb) > 1}):
        problems.append(f"CHANGELOG.md: section [{label}] appears more than once")
    if "Unreleased" in labels and labels[0] != "Unreleased":
        problems.append("CHANGELOG.md: [Unreleased] must be the top section")
    released = [s for s in sections if s["label"] != "Unreleased"]
    for s in released:
        if not s["date"] or not _DATE_RE.match(s["date"]):
            problems.append(f"CHANGELOG.md: section [{s['label']}] needs a date: "
                            f"`## [{s['label']}] - YYYY-MM-DD`")
    keys = [_vkey(s["label"]) if _VERSION_RE.match(s["label"]) else None for s in released]
    if None not in keys and keys != sorted(keys, reverse=True):
        problems.append("CHANGELOG.md: released sections are not newest first")
    if ".dev" in version:
        if labels[0] != "Unreleased":
            problems.append(f"CHANGELOG.md: a .dev version ({version}) needs `## [Unreleased]` "
                            f"as the top section")
        base = version.split(".dev")[0]
        if released and _VERSION_RE.match(released[0]["label"]) and _VERSION_RE.match(base):
            newest = released[0]["label"]
            if _vkey(base) is not None and _vkey(base) <= _vkey(newest):
                problems.append(f"__version__ {version} is not after the newest release in "
                                f"CHANGELOG.md ({newest}): the post-release bump is "
                                f"<next>.dev0")
    else:
        if not released:
            problems.append(f"CHANGELOG.md has no released section; releasing {version} needs "
                            f"`## [{version}] - YYYY-MM-DD` under [Unreleased]")
        elif released[0]["label"] != version:
            problems.append(f"__version__ is {version} but the top released section of "
                            f"CHANGELOG.md is [{released[0]['label']}]")
        unreleased = [s for s in sections if s["label"] == "Unreleased"]
        if unreleased and any(ln.strip() and not ln.startswith("#")
                              for ln in unreleased[0]["lines"]):
            problems.append(f"CHANGELOG.md: [Unreleased] still has entries while releasing "
                            f"{version}: move them under [{version}]")
    return problems


def _wheel_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def _package_files(root: Path) -> dict[str, bytes]:
    """robocache/** of the source tree as it would be packaged (no caches, no stamp)."""
    out = {}
    for p in sorted((root / PACKAGE).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and \
                rel != f"{PACKAGE}/_build_info.py":
            out[rel] = p.read_bytes()
    return out


def wheel_problems(wheel: Path, root: Path = ROOT, expected_commit: str | None = None
                   ) -> list[str]:
    """The wheel is pure (py3-none-any), stamped, and holds every file of robocache/ - every
    kernel source and header of robocache/cuda_src/ in particular - byte for byte."""
    wheel = Path(wheel)
    problems = []
    parts = wheel.name[:-len(".whl")].split("-") if wheel.name.endswith(".whl") else []
    if parts[-3:] != ["py3", "none", "any"]:
        problems.append(f"{wheel.name}: expected a pure py3-none-any wheel")
    version, _ = read_version(root)
    if len(parts) >= 2 and parts[1] != version:
        problems.append(f"{wheel.name}: version {parts[1]}, _version.py says {version}")
    try:
        members = _wheel_members(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        return problems + [f"{wheel.name}: not a readable zip ({exc})"]
    dist_info = f"{PACKAGE}-{version}.dist-info"
    wheel_meta = members.get(f"{dist_info}/WHEEL", b"").decode()
    tags = re.findall(r"^Tag: (\S+)", wheel_meta, re.M)
    if tags != ["py3-none-any"] or "Root-Is-Purelib: true" not in wheel_meta:
        problems.append(f"{wheel.name}: {dist_info}/WHEEL says tags {tags}, expected only "
                        f"py3-none-any and Root-Is-Purelib: true")
    for name in members:
        if name.endswith((".so", ".pyd", ".dylib", ".dll", ".pyc")) or "__pycache__" in name:
            problems.append(f"{wheel.name}: unexpected compiled file {name}")
    source = _package_files(root)
    for rel, data in source.items():
        where = " (a kernel source)" if "/cuda_src/" in rel else ""
        if rel not in members:
            problems.append(f"{wheel.name}: missing {rel}{where}")
        elif members[rel] != data:
            problems.append(f"{wheel.name}: {rel}{where} differs from the source tree")
    for rel in members:
        if rel.startswith(f"{PACKAGE}/") and rel not in source and \
                rel != f"{PACKAGE}/_build_info.py":
            problems.append(f"{wheel.name}: {rel} is not in the source tree")
    stamp = members.get(f"{PACKAGE}/_build_info.py")
    if stamp is None:
        problems.append(f"{wheel.name}: {PACKAGE}/_build_info.py (build date and commit) is "
                        f"missing: build with `make build`")
    elif expected_commit is not None:
        m = re.search(r"GIT_COMMIT = '([^']*)'", stamp.decode())
        if not m or m.group(1) != expected_commit:
            problems.append(f"{wheel.name}: stamped commit {m.group(1) if m else None!r}, "
                            f"expected {expected_commit!r}")
    return problems


def sdist_problems(sdist: Path, root: Path = ROOT) -> list[str]:
    """The sdist holds the package (kernels included), the docs, the tests and the tools."""
    import tarfile

    version, _ = read_version(root)
    top = f"{PACKAGE}-{version}"
    try:
        with tarfile.open(sdist) as tf:
            names = set(tf.getnames())
    except (OSError, tarfile.TarError) as exc:
        return [f"{Path(sdist).name}: not a readable tar.gz ({exc})"]
    want = list(SDIST_MUST_HAVE) + list(_package_files(root))
    for sub in ("tests", "tools"):
        want += [p.relative_to(root).as_posix() for p in sorted((root / sub).rglob("*.py"))
                 if "__pycache__" not in p.parts]
    return [f"{Path(sdist).name}: missing {rel}" for rel in want if f"{top}/{rel}" not in names]


# ---------------------------------------------------------------------------------------------
# Steps that run tools


def build_dists(root: Path, out_dir: Path) -> tuple[Path, Path, str]:
    """Stamped sdist + wheel of `root` into out_dir, built from a staging copy of the tree.
    Returns (sdist, wheel, stamped commit)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rc-stage-") as tmp:
        stage = Path(tmp) / "src"
        shutil.copytree(root, stage, ignore=_stage_ignore(Path(root).resolve()), symlinks=True)
        _, commit = stamp_build_info.stamp(stage / PACKAGE / "_build_info.py", root)
        env = dict(os.environ, FLIT_NO_NETWORK="1")  # no classifier download from PyPI
        run([sys.executable, "-m", "flit", "build", "--no-use-vcs"], cwd=stage, env=env)
        built = sorted((stage / "dist").iterdir())
        for p in built:
            shutil.copy2(p, out_dir / p.name)
    sdists = [out_dir / p.name for p in built if p.name.endswith(".tar.gz")]
    wheels = [out_dir / p.name for p in built if p.name.endswith(".whl")]
    if len(sdists) != 1 or len(wheels) != 1:
        raise CheckFailed(f"flit built {[p.name for p in built]}, expected one sdist and one "
                          f"wheel")
    return sdists[0], wheels[0], commit


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "PYTHONSAFEPATH")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def make_fresh_venv(wheel: Path, where: Path) -> Path:
    """A new virtual environment in `where` with the wheel and its base dependencies (NumPy)
    installed from binary wheels only. Returns its python."""
    venv = Path(where) / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], env=_clean_env())
    python = venv / "bin" / "python"
    # the outer pip installs into the venv (pip >= 22.3): no ensurepip, nothing but our deps
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
         "--disable-pip-version-check", "--only-binary=:all:", wheel], env=_clean_env(),
        cwd=where, timeout=600)
    return python


def installed_problems(python: Path, where: Path, version: str, commit: str | None
                       ) -> tuple[list[str], str]:
    """In the fresh venv, from a directory outside the source tree: robocache comes from the
    venv, `selftest` passes, `info` reports the version and the stamped commit."""
    env, problems, log = _clean_env(), [], []
    loc = run([python, "-c", "import robocache, sys; print(robocache.__file__); "
               "print('torch' in sys.modules, 'cupy' in sys.modules)"], cwd=where, env=env)
    path, heavy = loc.stdout.split("\n")[:2]
    if not Path(path).resolve().is_relative_to(python.parent.parent.resolve()):
        problems.append(f"robocache was imported from {path}, not from the fresh venv")
    if heavy != "False False":
        problems.append("`import robocache` imported torch or cupy")
    for cmd in (["selftest"], ["info"]):
        res = run([python, "-m", PACKAGE, *cmd], cwd=where, env=env, check=False, timeout=600)
        log.append(f"$ python -m {PACKAGE} {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            problems.append(f"`python -m {PACKAGE} {' '.join(cmd)}` in the fresh venv exited "
                            f"with {res.returncode}:\n{res.stdout[-4000:]}{res.stderr[-4000:]}")
        elif cmd == ["info"]:
            for key, want in (("robocache", version), ("git_commit", commit)):
                if want is not None and not re.search(
                        rf"^{key}:\s+{re.escape(want)}\s*$", res.stdout, re.M):
                    problems.append(f"`python -m {PACKAGE} info` in the fresh venv does not "
                                    f"report {key} {want}:\n{res.stdout}")
    return problems, "\n".join(log)


def write_sbom(python: Path, out: Path, version: str, root: Path = ROOT) -> list[str]:
    """CycloneDX JSON of what the wheel pulls in at run time (the fresh venv's packages)."""
    run([sys.executable, "-m", "cyclonedx_py", "environment", python, "--pyproject",
         root / "pyproject.toml", "--mc-type", "library", "--of", "JSON", "-o", out])
    bom = json.loads(Path(out).read_text())
    comp = bom.setdefault("metadata", {}).setdefault("component", {})
    comp["version"] = version  # the version is dynamic in pyproject.toml
    comp["purl"] = f"pkg:pypi/{PACKAGE}@{version}"
    Path(out).write_text(json.dumps(bom, indent=2) + "\n")
    names = {c.get("name", "").lower() for c in bom.get("components", [])}
    deps = re.findall(r'^dependencies\s*=\s*\[(.*?)\]', (root / "pyproject.toml").read_text(),
                      re.M | re.S)
    wanted = re.findall(r'"([A-Za-z0-9_.\-]+)', deps[0]) if deps else []
    return [f"SBOM {Path(out).name}: runtime dependency {w} is missing"
            for w in wanted if w.lower() not in names]


# ---------------------------------------------------------------------------------------------
# The steps of `make release-check`


class Release:
    def __init__(self, root: Path, dist: Path, allow_dirty: bool):
        self.root, self.dist, self.allow_dirty = root, dist, allow_dirty
        self.version, self.api_version = read_version(root)
        self.sdist = self.wheel = self.commit = self.python = None
        self.tmp = Path(tempfile.mkdtemp(prefix="rc-release-"))

    def git_clean(self):
        res = run(["git", "-C", self.root, "status", "--porcelain"], check=False)
        if res.returncode != 0:
            return ["not a git checkout: a release is built from a tagged commit"]
        if res.stdout.strip() and not self.allow_dirty:
            return ["uncommitted changes (commit them, or pass --allow-dirty / "
                    "ALLOW_DIRTY=1 for a trial run):\n" + res.stdout]
        return []

    def versions(self):
        return version_problems(self.version, self.api_version,
                                (self.root / "CHANGELOG.md").read_text(), git_tags(self.root))

    def api(self):
        res = run([sys.executable, TOOLS / "update_api_listing.py", "--check"], cwd=self.root,
                  check=False)
        return [] if res.returncode == 0 else [res.stderr or res.stdout]

    def lint(self):
        dirs = [d for d in LINT_DIRS if (self.root / d).is_dir()]
        run([sys.executable, "-m", "ruff", "check", *dirs], cwd=self.root)
        return []

    def tests(self):
        # the `release` tests repeat the build / fresh-venv steps below
        run([sys.executable, "-m", "pytest", "-q", "-m", "not release", "-p", "no:cacheprovider"],
            cwd=self.root)
        return []

    def compile(self):
        env = dict(os.environ, PYTHONPATH=str(self.root))
        res = run([sys.executable, "-m", PACKAGE, "compile", "--check"], cwd=self.root, env=env)
        print(res.stdout.rstrip())
        return []

    def build(self):
        if self.dist.exists():
            shutil.rmtree(self.dist)
        self.sdist, self.wheel, self.commit = build_dists(self.root, self.dist)
        print(f"built {self.sdist.name}, {self.wheel.name} (commit {self.commit})")
        return []

    def twine(self):
        run([sys.executable, "-m", "twine", "check", "--strict", self.sdist, self.wheel])
        return []

    def contents(self):
        return (wheel_problems(self.wheel, self.root, self.commit)
                + sdist_problems(self.sdist, self.root))

    def fresh_venv(self):
        self.python = make_fresh_venv(self.wheel, self.tmp)
        problems, log = installed_problems(self.python, self.tmp, self.version, self.commit)
        print(log.rstrip())
        return problems

    def sbom(self):
        out = self.dist / f"{PACKAGE}-{self.version}.cdx.json"
        problems = write_sbom(self.python, out, self.version, self.root)
        print(f"wrote {out.relative_to(self.root) if out.is_relative_to(self.root) else out}")
        return problems

    STEPS = ("git_clean", "versions", "api", "lint", "tests", "compile", "build", "twine",
             "contents", "fresh_venv", "sbom")
    FAST = ("build", "twine", "contents", "fresh_venv")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--dist", type=Path, default=None, help="output folder (default: dist/)")
    ap.add_argument("--allow-dirty", action="store_true")
    ap.add_argument("--fast", action="store_true", help=f"only {', '.join(Release.FAST)}")
    ap.add_argument("--only", nargs="+", choices=Release.STEPS)
    ap.add_argument("--skip", nargs="+", choices=Release.STEPS, default=[])
    args = ap.parse_args(argv)
    root = args.root.resolve()
    rel = Release(root, (args.dist or root / "dist").resolve(), args.allow_dirty)
    steps = list(args.only or (Release.FAST if args.fast else Release.STEPS))
    needs = {"twine": "build", "contents": "build", "fresh_venv": "build", "sbom": "fresh_venv"}
    for step in list(steps):
        dep = needs.get(step)
        while dep and dep not in steps:  # e.g. --only sbom builds and installs first
            steps.insert(steps.index(step), dep)
            dep = needs.get(dep)
    steps = [s for s in Release.STEPS if s in steps and s not in args.skip]
    print(f"release check of {PACKAGE} {rel.version} (API {rel.api_version}): "
          f"{', '.join(steps)}")
    try:
        for step in steps:
            t0 = time.perf_counter()
            print(f"==> {step}", flush=True)
            try:
                problems = getattr(rel, step)()
            except CheckFailed as exc:
                problems = [str(exc)]
            if problems:
                print(f"FAILED at step {step}:")
                for p in problems:
                    print("  - " + p.replace("\n", "\n    "))
                return 1
            print(f"    ok ({time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        shutil.rmtree(rel.tmp, ignore_errors=True)
    print(f"release check passed: {', '.join(steps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
