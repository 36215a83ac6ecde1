"""The public API (robocache.__all__ + signatures) matches api/public_api.txt, and a released
API version does not change without a bump (tools/update_api_listing.py, RELEASING.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import robocache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import update_api_listing as api  # noqa: E402

HAS_GIT = shutil.which("git") is not None


def test_listing_matches_the_code():
    live = api.render_listing()
    checked_in = api.LISTING.read_text() if api.LISTING.is_file() else None
    problems = api.api_problems(live, checked_in, api.released_listings(ROOT))
    assert not problems, "\n\n".join(problems)


def test_every_public_name_resolves_and_is_listed():
    listed = {ln.split("(")[0].split(":")[0].split(".")[0]
              for ln in api.body_of(api.render_listing())}
    assert listed == set(robocache.__all__)
    assert api.api_version_of(api.render_listing()) == robocache.__api_version__


def _listing(version: str, *lines: str) -> str:
    return api.HEADER + f"\napi_version = {version}\n\n" + "\n".join(lines) + "\n"


def test_stale_listing_says_what_to_run():
    live = _listing("0.1", "f(x)", "g(y)")
    problems = api.api_problems(live, _listing("0.1", "f(x)"), {})
    assert len(problems) == 1
    assert "run `make api-listing`" in problems[0] and "+g(y)" in problems[0]
    problems = api.api_problems(_listing("0.2", "f(x)"), _listing("0.1", "f(x)"), {})
    assert "records __api_version__ 0.1, the code says 0.2" in problems[0]
    assert api.api_problems(live, None, {})[0].startswith("api/public_api.txt is missing")
    assert api.api_problems(live, live, {}) == []


def _commit(repo: Path, msg: str, tag: str | None = None):
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", msg], check=True, capture_output=True)
    if tag:
        subprocess.run([*git, "tag", tag], check=True, capture_output=True)


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_api_change_without_bump_is_caught(tmp_path):
    # a repository whose release v0.1.0 shipped API 0.1 = {f(x)}
    repo = tmp_path / "repo"
    (repo / "api").mkdir(parents=True)
    (repo / "api" / "public_api.txt").write_text(_listing("0.1", "f(x)"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _commit(repo, "release 0.1.0", tag="v0.1.0")
    (repo / "api" / "public_api.txt").write_text(_listing("0.1", "f(x)", "g(y)"))
    _commit(repo, "dev")  # a later commit: the tag's listing is what counts
    released = api.released_listings(repo)
    assert set(released) == {"v0.1.0"}

    changed = _listing("0.1", "f(x)", "g(y)")  # new name, API version not bumped
    problems = api.api_problems(changed, changed, released)
    assert len(problems) == 1
    assert "changed since release v0.1.0" in problems[0]
    assert "Bump __api_version__ in robocache/_version.py" in problems[0]
    assert "+g(y)" in problems[0]

    renamed = _listing("0.1", "f(x, y)")  # a changed signature is a change too
    assert api.bump_problems(renamed, released)

    bumped = _listing("0.2", "f(x)", "g(y)")
    assert api.api_problems(bumped, bumped, released) == []
    assert api.api_problems(_listing("0.1", "f(x)"), _listing("0.1", "f(x)"), released) == []


def test_render_describes_functions_classes_and_values(tmp_path, monkeypatch):
    pkg = tmp_path / "rc_api_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from __future__ import annotations
        __api_version__ = "3.4"
        __all__ = ["Store", "load", "LIMIT"]
        LIMIT = 4

        def load(path: str, *, device: str | None = None) -> Store:
            pass

        class Store:
            def __init__(self, arrays: dict, fps: float = 10.0):
                pass

            @classmethod
            def from_arrays(cls, arrays, episode_ends) -> Store:
                pass

            @staticmethod
            def helper(x=object()):
                pass

            @property
            def keys(self):
                return []

            def __len__(self):
                return 0

            def _private(self):
                pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    text = api.render_listing("rc_api_probe")
    assert api.api_version_of(text) == "3.4"
    assert api.body_of(text) == [
        "LIMIT: int",
        "Store: class()",
        "Store.__init__(self, arrays: dict, fps: float = 10.0)",
        "Store.__len__(self)",
        "Store.from_arrays(arrays, episode_ends) -> Store [classmethod]",
        "Store.helper(x=<object object>) [staticmethod]",
        "Store.keys: property",
        "load(path: str, *, device: str | None = None) -> Store",
    ]


def test_regenerating_refuses_a_released_api_without_bump(tmp_path, monkeypatch):
    listing = tmp_path / "public_api.txt"
    monkeypatch.setattr(api, "LISTING", listing)
    live = api.render_listing()
    shipped = _listing(api.api_version_of(live), "something_else(x)")
    monkeypatch.setattr(api, "released_listings", lambda repo=None: {"v9.9.9": shipped})
    assert api.main([]) == 1
    assert not listing.exists()
    monkeypatch.setattr(api, "released_listings", lambda repo=None: {})
    assert api.main(["--check"]) == 1  # missing
    assert api.main([]) == 0
    assert listing.read_text() == live
    assert api.main(["--check"]) == 0
    listing.write_text(live.replace("resample(", "resample_old("))
    assert api.main(["--check"]) == 1
