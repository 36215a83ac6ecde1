"""Write robocache/_build_info.py (build date and git commit) before a wheel is built.

    python tools/stamp_build_info.py [--repo DIR] [--out FILE]

The commit is `git rev-parse HEAD` of --repo (default: this checkout), with "-dirty" appended
when tracked files differ from it; the date is the UTC time of the build, or SOURCE_DATE_EPOCH
when set (reproducible builds). Outside git, or without git installed, the commit is "unknown":
this script never fails a build for lack of metadata. The file is git-ignored and removed after
the build (tools/release_check.py builds from a staging copy, so the tree is never touched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(repo: Path) -> str:
    commit = _git(repo, "rev-parse", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


def build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
    except ValueError:
        when = dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def render(date: str, commit: str) -> str:
    return ("# Written by tools/stamp_build_info.py when the wheel was built. Not in git.\n"
            f"BUILD_DATE = {date!r}\nGIT_COMMIT = {commit!r}\n")


def stamp(out: Path, repo: Path = ROOT) -> tuple[str, str]:
    date, commit = build_date(), git_commit(repo)
    out.write_text(render(date, commit))
    return date, commit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="git checkout to read the commit of")
    ap.add_argument("--out", type=Path, default=ROOT / "robocache" / "_build_info.py")
    args = ap.parse_args(argv)
    date, commit = stamp(args.out, args.repo)
    print(f"stamped {args.out}: build date {date}, commit {commit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
