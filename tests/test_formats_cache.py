"""write_cache / read_cache: round trips, atomic replacement, corrupt and hostile caches."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import robocache as rc
from robocache._errors import DatasetFormatError
from robocache.formats import TrajectorySource, read_cache, write_cache
from robocache.formats import cache as cache_mod


def make_source(lengths=(3, 1, 5), seed=0) -> TrajectorySource:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return TrajectorySource(
        arrays={"observation.state": rng.standard_normal((n, 6)).astype(np.float32),
                "action": rng.standard_normal((n, 2)),
                "observation.images.top": rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8),
                "obs/flag": rng.random(n) > 0.5,
                "bf": rng.standard_normal((n, 3)).astype(ml_dtypes.bfloat16),
                "empty_feature": np.zeros((n, 0), np.float32)},
        episode_ends=np.cumsum(lengths).astype(np.int64), fps=15.0,
        timestamps=np.concatenate([np.arange(L) / 15.0 for L in lengths]),
        stats={"action": {"mean": np.array([0.5, -1.0]), "std": np.array([1.0, np.nan]),
                          "count": np.array([n])},
               "observation.state": {"min": np.full(6, -2.0, np.float32)}},
        image_keys=("observation.images.top",),
        meta={"format": "lerobot", "tasks": ["push"], "episode_index": [0, 1, 2],
              "np": np.int64(3)})


def assert_same(a: TrajectorySource, b: TrajectorySource):
    assert list(a.arrays) == list(b.arrays)
    for k in a.arrays:
        assert a.arrays[k].dtype == b.arrays[k].dtype, k
        assert a.arrays[k].shape == b.arrays[k].shape, k
        np.testing.assert_array_equal(a.arrays[k].view(np.uint8), b.arrays[k].view(np.uint8))
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert a.fps == b.fps
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.image_keys == b.image_keys
    for k, per in (a.stats or {}).items():
        for s, v in per.items():
            assert b.stats[k][s].dtype == np.asarray(v).dtype
            np.testing.assert_array_equal(b.stats[k][s], v)


def test_round_trip_memory_maps(tmp_path):
    src = make_source()
    out = write_cache(tmp_path / "c", src, progress=False)
    got = read_cache(out, progress=False)
    assert_same(src, got)
    big = got.arrays["observation.state"]
    assert isinstance(big, np.memmap) and not big.flags.writeable
    assert got.meta["tasks"] == ["push"] and got.meta["np"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == cache_mod.FORMAT_VERSION
    assert manifest["keys"] == list(src.arrays)
    assert manifest["episode_ends"] == [3, 4, 9]
    assert manifest["arrays"]["action"]["shape"] == [9, 2]
    assert manifest["arrays"]["action"]["dtype"] == "float64"
    assert len(manifest["arrays"]["action"]["sha256"]) == 64
    assert manifest["timestamps"]["file"] == "timestamps.npy"
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary directories left


@pytest.mark.parametrize("lookup", ["map_files", "maps"])
def test_a_transform_writing_into_loaded_frames_gets_private_pages(tmp_path, monkeypatch,
                                                                   lookup):
    """A custom image transform that writes into the frames of a loaded cache (a read-only map:
    a write killed the process) gets private copy-on-write pages of the file: no crash, no
    torch warning, the cache as written, the store's own arrays still the read-only map. The
    mapped file is found through /proc/self/map_files or, where its stat is refused (EPERM
    without CAP_SYS_ADMIN), through /proc/self/maps."""
    import os
    import warnings

    from robocache import _mapped

    if lookup == "maps":
        real_stat = os.stat
        monkeypatch.setattr(os, "stat", lambda p, *a, **k: (_ for _ in ()).throw(
            PermissionError(1, "denied", p)) if str(p).startswith("/proc/self/map_files/")
            else real_stat(p, *a, **k))
    src = make_source()
    out = write_cache(tmp_path / "c", src, progress=False)
    store = rc.TrajectoryStore.load(out, device="cpu", progress=False)
    key = "observation.images.top"
    assert not store[key].flags.writeable
    view = _mapped.private_view(store[key])
    assert view is not None and view.flags.writeable
    np.testing.assert_array_equal(view, src.arrays[key])

    def scribble(frames, rows, is_pad):
        frames[:] = 7
        return frames.index_select(0, rows.reshape(-1))

    ds = rc.TrajectoryDataset(store, image_transforms={key: scribble})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (ds[0][key] == 7).all()
    np.testing.assert_array_equal(store[key], src.arrays[key])  # the store's map: unchanged
    again = rc.TrajectoryStore.load(out, device="cpu", verify=True, progress=False)
    np.testing.assert_array_equal(again[key], src.arrays[key])


@pytest.mark.parametrize("after_load", ["removed", "saved over"])
def test_a_transform_writing_into_frames_of_a_cache_gone_since_gets_a_copy(tmp_path,
                                                                          after_load):
    """The cache removed or saved over after the load (another job): no private view of the
    old file can be made, and the read-only map went to the transform (SIGSEGV on a write)."""
    import shutil

    src = make_source()
    out = write_cache(tmp_path / "c", src, progress=False)
    store = rc.TrajectoryStore.load(out, device="cpu", progress=False)
    key = "observation.images.top"
    if after_load == "removed":
        shutil.rmtree(out)
    else:
        store.save(out, overwrite=True, progress=False)

    def scribble(frames, rows, is_pad):
        frames[:] = 7
        return frames.index_select(0, rows.reshape(-1))

    ds = rc.TrajectoryDataset(store, image_transforms={key: scribble})
    assert (ds[0][key] == 7).all()
    np.testing.assert_array_equal(store[key], src.arrays[key])


def test_no_private_view_where_the_file_is_gone_or_not_mapped(tmp_path):
    from robocache import _mapped

    a = np.arange(5000, dtype=np.int32)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert _mapped.private_view(m[10:]) is not None
    assert _mapped.private_view(a) is None and _mapped.private_view(m[::2]) is None
    (tmp_path / "a.npy").unlink()  # the read-only map still shows the file
    assert _mapped.private_view(m) is None and m[4999] == 4999


def test_from_a_mapping(tmp_path):
    arrays = {"x": np.arange(10, dtype=np.int32).reshape(5, 2)}
    write_cache(tmp_path / "c", arrays, episode_ends=[2, 5], fps=None)
    got = read_cache(tmp_path / "c", verify=False)
    np.testing.assert_array_equal(got.arrays["x"], arrays["x"])
    assert got.timestamps is None and got.stats is None and got.fps is None
    with pytest.raises(TypeError, match="episode_ends is required"):
        write_cache(tmp_path / "d", arrays)
    with pytest.raises(TypeError, match="come from the TrajectorySource"):
        write_cache(tmp_path / "d", make_source(), fps=3.0)
    with pytest.raises(ValueError, match=r"last end to equal the number of frames \(5\), got 6"):
        write_cache(tmp_path / "d", arrays, episode_ends=[2, 6])
    with pytest.raises(ValueError, match="strictly increasing"):
        write_cache(tmp_path / "d", arrays, episode_ends=[3, 2, 5])
    with pytest.raises(TypeError, match="numeric or bool"):
        write_cache(tmp_path / "d", {"o": np.array([None] * 5, dtype=object)}, episode_ends=[5])
    with pytest.raises(ValueError, match="meta"):
        write_cache(tmp_path / "d", arrays, episode_ends=[5], meta={"f": object()})
    assert not (tmp_path / "d").exists()


def test_write_refuses_what_the_store_refuses_and_takes_what_it_takes(tmp_path):
    """A cache that load would refuse is refused at write time, with the store's own errors,
    and the fps values the store takes (NumPy scalars) are taken."""
    arrays = {"x": np.arange(5, dtype=np.float32)}
    bad = [({"timestamps": np.ones(5, bool)}, TypeError, "timestamps: expected a float array"),
           ({"timestamps": np.array([0, 1, np.nan, 3, 4.0])}, ValueError, "NaN or inf"),
           ({"fps": True}, ValueError, "fps: expected a positive finite number"),
           ({"fps": np.float32("inf")}, ValueError, "fps: expected a positive finite number")]
    for extra, kind, message in bad:
        with pytest.raises(kind, match=message):
            write_cache(tmp_path / "d", arrays, episode_ends=[5], **extra)
    with pytest.raises(ValueError, match="at least one frame"):
        write_cache(tmp_path / "d", {"x": np.zeros((0, 2))}, episode_ends=[])
    assert not (tmp_path / "d").exists()
    for i, fps in enumerate([np.float32(30), np.int64(15), 10]):
        write_cache(tmp_path / f"f{i}", arrays, episode_ends=[2, 5], fps=fps,
                    timestamps=np.arange(5, dtype=np.float32))
        got = read_cache(tmp_path / f"f{i}")
        assert got.fps == float(fps) and type(got.fps) is float
        assert got.timestamps.dtype == np.float64
        np.testing.assert_array_equal(got.timestamps, np.arange(5))


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       dtype=st.sampled_from(["float32", "float64", "int8", "uint16", "int64", "bool",
                              "float16"]),
       tail=st.lists(st.integers(0, 3), max_size=3))
def test_round_trip_property(tmp_path_factory, lengths, dtype, tail):
    rng = np.random.default_rng(len(lengths))
    n = sum(lengths)
    x = (rng.standard_normal((n, *tail)) * 50).astype(dtype)
    d = tmp_path_factory.mktemp("p")
    write_cache(d / "c", {"x": x}, episode_ends=np.cumsum(lengths))
    got = read_cache(d / "c")
    assert got.arrays["x"].dtype == x.dtype and got.arrays["x"].shape == x.shape
    np.testing.assert_array_equal(got.arrays["x"], x)


def test_overwrite_rules(tmp_path):
    write_cache(tmp_path / "c", make_source(seed=1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_cache(tmp_path / "c", make_source(seed=2))
    src2 = make_source(lengths=(2, 2), seed=2)
    write_cache(tmp_path / "c", src2, overwrite=True)
    assert_same(src2, read_cache(tmp_path / "c"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a cache"):
        write_cache(tmp_path / "mine", src2, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    write_cache(tmp_path / "empty", src2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "empty", "mine"]
    # a directory with any manifest.json, or a cache beside files of the user's: not replaced
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "precious.txt").write_text("x")
    (tmp_path / "p" / "manifest.json").write_text("{}")
    with pytest.raises(FileExistsError, match="which are not a RoboCache cache's"):
        write_cache(tmp_path / "p", src2, overwrite=True)
    assert (tmp_path / "p" / "precious.txt").exists()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"\['notes.txt'\]"):
        write_cache(tmp_path / "c", src2, overwrite=True)
    (tmp_path / "c" / "notes.txt").unlink()
    # through a symbolic link: written where it points, the link kept
    (tmp_path / "link").symlink_to(tmp_path / "c")
    write_cache(tmp_path / "link", make_source(seed=5), overwrite=True)
    assert (tmp_path / "link").is_symlink()
    assert_same(make_source(seed=5), read_cache(tmp_path / "c"))
    (tmp_path / "dangling").symlink_to(tmp_path / "new")
    write_cache(tmp_path / "dangling", src2)
    assert_same(src2, read_cache(tmp_path / "new"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left over
    with pytest.raises(TypeError, match="overwrite: expected True or False, got 'no'"):
        write_cache(tmp_path / "c", src2, overwrite="no")  # a truthy string replaced it
    assert_same(make_source(seed=5), read_cache(tmp_path / "c"))
    with pytest.raises(TypeError, match="verify: expected True or False"):
        read_cache(tmp_path / "c", verify="yes")


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    good = make_source(seed=3)
    write_cache(tmp_path / "c", good)
    calls = []

    def boom(path, arr, bar):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, arr, bar)

    real = cache_mod._write_npy
    monkeypatch.setattr(cache_mod, "_write_npy", boom)
    with pytest.raises(OSError, match="disk full"):
        write_cache(tmp_path / "c", make_source(seed=4), overwrite=True)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        write_cache(tmp_path / "new", make_source(seed=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert_same(good, read_cache(tmp_path / "c"))  # the old cache is intact


class _Hook:
    """A progress= bar that runs `action` at its first update: another process's save, made
    to land at a chosen moment of a read or a write."""

    def __init__(self, action):
        self.action, self.fired = action, False

    def update(self, n):
        if not self.fired:
            self.fired = True
            self.action()


def test_a_save_during_a_read_never_mixes_two_caches(tmp_path):
    """The manifest and the files are opened in one directory: a cache replaced after they were
    opened is still read whole (the files hashed are the files mapped), never the old manifest
    with the new arrays."""
    old = make_source(lengths=(3, 1, 5), seed=1)
    new = make_source(lengths=(2, 2, 2, 3), seed=2)
    write_cache(tmp_path / "c", old)
    hook = _Hook(lambda: write_cache(tmp_path / "c", new, overwrite=True))
    got = read_cache(tmp_path / "c", verify=True, progress=hook)
    assert hook.fired
    assert_same(old, got)
    assert_same(new, read_cache(tmp_path / "c"))


def test_a_cache_replaced_before_its_files_are_opened_is_read_again(tmp_path, monkeypatch):
    """Replaced between the manifest and the files: the files are gone from the directory the
    read holds, so it starts again and reads the new cache whole."""
    old, new = make_source(seed=1), make_source(lengths=(4, 5), seed=2)
    write_cache(tmp_path / "c", old)
    real, calls = cache_mod._entry_path, []

    def entry_path(*a):
        calls.append(1)
        if len(calls) == 1:
            write_cache(tmp_path / "c", new, overwrite=True)
        return real(*a)

    monkeypatch.setattr(cache_mod, "_entry_path", entry_path)
    assert_same(new, read_cache(tmp_path / "c"))
    calls.clear()
    monkeypatch.setattr(cache_mod, "_READ_ATTEMPTS", 1)
    with pytest.raises(DatasetFormatError, match="replaced by another save 1 times"):
        read_cache(tmp_path / "c")


@pytest.mark.parametrize("overwrite", [False, True])
def test_files_that_appear_during_a_save_are_never_replaced(tmp_path, overwrite):
    """The target is checked again when the cache is moved there: a directory of the user's
    files that appeared while the cache was written is refused, and nothing of it is removed."""
    def users_files():
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "thesis.tex").write_text("keep me")

    with pytest.raises(FileExistsError, match="not a cache"):
        write_cache(tmp_path / "c", make_source(), overwrite=overwrite,
                    progress=_Hook(users_files))
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_cache_saved_meanwhile_is_kept_without_overwrite(tmp_path):
    """Two saves to one directory: with overwrite=False only the first to finish lands; the
    other raises and leaves it whole."""
    first = make_source(seed=1)
    hook = _Hook(lambda: write_cache(tmp_path / "c", first))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_cache(tmp_path / "c", make_source(seed=2), progress=hook)
    assert_same(first, read_cache(tmp_path / "c"))
    second = make_source(lengths=(1, 1), seed=3)  # with overwrite=True the later one lands
    hook = _Hook(lambda: write_cache(tmp_path / "c", make_source(seed=4), overwrite=True))
    write_cache(tmp_path / "c", second, overwrite=True, progress=hook)
    assert_same(second, read_cache(tmp_path / "c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_failed_swap_back_never_removes_what_was_at_the_target(tmp_path, monkeypatch):
    """If putting the user's directory back fails after the exchange, the save's scratch
    directory (now holding the user's files) is left where it is, not removed."""
    write_cache(tmp_path / "c", make_source(seed=1))
    real, calls = cache_mod._exchange, []

    def exchange(a, b):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("swap back failed")
        return real(a, b)

    def users_files():  # the target's cache replaced by the user's files while writing
        shutil.rmtree(tmp_path / "c")
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "thesis.tex").write_text("keep me")
        (tmp_path / "c" / "manifest.json").write_text("{}")
        (tmp_path / "c" / "000-a.npy").write_bytes(b"mine")

    monkeypatch.setattr(cache_mod, "_exchange", exchange)
    monkeypatch.setattr(cache_mod, "_check_target", lambda target, overwrite: "cache")  # raced
    with pytest.raises(OSError, match="swap back failed"):
        write_cache(tmp_path / "c", make_source(seed=2), overwrite=True,
                    progress=_Hook(users_files))
    kept = [p for p in tmp_path.iterdir() if (p / "thesis.tex").exists()]
    assert len(kept) == 1 and (kept[0] / "thesis.tex").read_text() == "keep me"


_SAVER = r"""
import sys, numpy as np
import robocache.formats.cache as cache_mod
from robocache.formats import write_cache
value, target, saves, exchange = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
if exchange == "no":
    cache_mod._exchange = lambda a, b: False
for i in range(saves):
    arrays = {"x": np.full((40, 50), value, np.float32), f"only{value}": np.zeros(40)}
    try:
        write_cache(target, arrays, episode_ends=[40], fps=float(value), overwrite=True,
                    progress=False)
    except Exception as exc:
        print(f"saver {value}, save {i}: {type(exc).__name__}: {exc}", flush=True)
"""


@pytest.mark.parametrize("exchange", ["yes", "no"])
def test_concurrent_saves_with_overwrite_all_land(tmp_path, exchange):
    """Processes saving to one directory at once with overwrite=True each land whole (no false
    "not a cache" refusal, no raw ENOTEMPTY / ENOENT), with or without the atomic exchange; what
    stays is one of their caches, whole, and no scratch directory is left."""
    import subprocess
    import sys

    target = tmp_path / "c"
    savers = [subprocess.Popen([sys.executable, "-c", _SAVER, str(v), str(target), "40",
                                exchange], stdout=subprocess.PIPE, text=True) for v in (1, 2, 3)]
    errors = [line for p in savers for line in p.communicate()[0].splitlines()]
    assert errors == []
    got = read_cache(target)
    value = int(got.fps)
    assert set(got.arrays) == {"x", f"only{value}"}
    np.testing.assert_array_equal(got.arrays["x"], np.full((40, 50), value, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def _a_group_not_ours() -> int | None:
    """A group this process may give its files other than its own (any, as root)."""
    if os.geteuid() == 0:
        return 4321
    other = [g for g in os.getgroups() if g != os.getegid()]
    return other[0] if other else None


def test_the_cache_directory_takes_the_mode_and_group_it_replaces(tmp_path):
    """A cache saved into an empty directory, or over a cache, takes that directory's mode and
    group: a group-shared setgid directory stays one, and the cache's files get its group."""
    group = _a_group_not_ours()
    d = tmp_path / "shared"
    d.mkdir()
    if group is not None:
        os.chown(d, -1, group)
    os.chmod(d, 0o2770)
    want_gid = os.stat(d).st_gid
    for overwrite, seed in ((False, 3), (True, 4)):
        write_cache(d, make_source(seed=seed), overwrite=overwrite)
        st = os.stat(d)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2770, want_gid)
        assert {os.stat(f).st_gid for f in d.iterdir()} == {want_gid}
        assert_same(make_source(seed=seed), read_cache(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


_READ_ONLY_OVERWRITES = r"""
import os, sys, numpy as np
from robocache.formats import write_cache
base = sys.argv[1]
if os.geteuid() == 0:  # root removes anything: as a user, a read-only directory stays
    import shutil
    write_cache(os.path.join(base, "warm"), {"x": np.zeros(3)}, episode_ends=[3])  # imports
    shutil.rmtree(os.path.join(base, "warm"))  # (the user may not read root's Python)
    os.setgid(65534); os.setuid(65534)
target = os.path.join(base, "c")
write_cache(target, {"x": np.arange(1000.0)}, episode_ends=[1000])
os.chmod(target, 0o555)
for _ in range(3):
    write_cache(target, {"x": np.arange(1000.0)}, episode_ends=[1000], overwrite=True)
print(sorted(os.listdir(base)), oct(os.stat(target).st_mode & 0o777))
"""


def test_overwriting_a_read_only_cache_leaves_no_copy():
    """A cache made read-only (chmod a-w) and overwritten by its owner: the new one is read-only
    too, and the old one, swapped out with that mode, is still removed."""
    import tempfile

    base = tempfile.mkdtemp()  # not under pytest's root-only directory: a user runs it
    try:
        if os.geteuid() == 0:
            os.chown(base, 65534, 65534)
        run = subprocess.run([sys.executable, "-c", _READ_ONLY_OVERWRITES, base],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split() == ["['c']", "0o555"]
    finally:
        for d, _, _ in os.walk(base):
            os.chmod(d, 0o700)
        shutil.rmtree(base)


def test_saving_to_the_working_directory_is_refused(tmp_path, monkeypatch):
    """A save renames a new directory into the target's place: into the working directory it
    would leave the process in a removed directory (every later relative path failing)."""
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    with pytest.raises(ValueError, match="is the working directory; a save renames"):
        write_cache(".", make_source())
    write_cache("sub", make_source())  # inside it, or from its parent: fine
    monkeypatch.chdir(tmp_path)
    write_cache("out", make_source(seed=2), overwrite=False) if False else None
    assert_same(make_source(), read_cache(tmp_path / "out" / "sub"))


def test_write_errors_name_what_is_wrong(tmp_path, monkeypatch):
    """Stats, values, a target under a file, a non-path, an unwritable parent and a mount point
    are refused naming the argument (they raised AttributeError, NumPy's or the system's
    unnamed errors)."""
    x = {"x": np.zeros((3, 2))}
    for stats, kind, match in (
            ({"x": [1.0]}, TypeError, r"stats\['x'\]: expected a dict of stat"),
            ({"x": {"mean": [[1], [1, 2]]}}, ValueError, r"stats\['x'\]\['mean'\]"),
            ({"x": {"mean": np.ones(2, np.longdouble)}}, ValueError, "at most 64 bits")):
        if kind is ValueError and np.dtype(np.longdouble).itemsize == 8 and "64" in match:
            continue  # a platform whose long double is a double
        with pytest.raises(kind, match=match):
            write_cache(tmp_path / "c", x, episode_ends=[3], stats=stats)
    with pytest.raises(TypeError, match=r"arrays\['x'\]: expected a NumPy array"):
        write_cache(tmp_path / "c", {"x": None}, episode_ends=[3])
    write_cache(tmp_path / "nested", {"x": [[1, 2], [3, 4], [5, 6]]}, episode_ends=[3])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a parent of it is not a directory"):
        write_cache(tmp_path / "file" / "sub", x, episode_ends=[3])
    with pytest.raises(TypeError, match="directory: expected a path, got NoneType"):
        write_cache(None, x, episode_ends=[3])
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if ".tmp-" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", refuse)
        with pytest.raises(PermissionError, match=r"written beside .* its parent .* is not "
                                                  r"writable"):
            write_cache(tmp_path / "c", x, episode_ends=[3])
    write_cache(tmp_path / "m", x, episode_ends=[3])

    def busy(a, b):
        raise OSError(16, "Device or resource busy", str(a), None, str(b))
    monkeypatch.setattr(cache_mod, "_exchange", busy)
    with pytest.raises(OSError, match="is a mount point"):
        write_cache(tmp_path / "m", x, episode_ends=[3], overwrite=True)


def test_a_manifest_number_past_pythons_digit_limit(cache):
    m = (cache / "manifest.json").read_text()
    (cache / "manifest.json").write_text(m.replace('"num_frames": 9', '"num_frames": ' + "9" * 5000))
    with pytest.raises(DatasetFormatError, match="manifest.json: not a cache manifest"):
        read_cache(cache)


def test_a_read_between_a_saves_two_renames_waits_for_the_cache(tmp_path, monkeypatch):
    """Without an atomic exchange (NFS) a save renames the old cache away and the new one in; a
    read in between finds nothing for a moment and looks again instead of failing, also through
    a link that dangles meanwhile. A file is not waited for."""
    import threading

    write_cache(tmp_path / "c", make_source(seed=1))
    (tmp_path / "link").symlink_to(tmp_path / "c")
    for path in (tmp_path / "c", tmp_path / "link"):
        os.rename(tmp_path / "c", tmp_path / "away")
        back = threading.Timer(0.03, os.rename, (tmp_path / "away", tmp_path / "c"))
        back.start()
        try:
            assert_same(make_source(seed=1), read_cache(path))
        finally:
            back.join()
    (tmp_path / "f").write_text("x")
    waits = []
    monkeypatch.setattr(cache_mod.time, "sleep", waits.append)
    with pytest.raises(FileNotFoundError, match="a file"):
        read_cache(tmp_path / "f")
    assert waits == []
    with pytest.raises(FileNotFoundError, match="nothing there"):
        read_cache(tmp_path / "none")
    assert waits == list(cache_mod._GAP_WAITS_S)


def test_camera_keys_of_an_earlier_rule_load_as_ordinary_keys(tmp_path):
    """A cache written when any uint8 array of rank >= 3 was a camera key (channel-first, a
    stereo pair, 7 channels), or when a named key was not checked at all (a float key), loads:
    those keys are ordinary keys, with a warning."""
    arrays = {"chw": np.zeros((4, 3, 8, 8), np.uint8), "pair": np.zeros((4, 2, 8, 8, 3), np.uint8),
              "cam": np.zeros((4, 8, 8, 3), np.uint8), "state": np.zeros((4, 2), np.float32)}
    write_cache(tmp_path / "c", arrays, episode_ends=[4], image_keys=["cam"])
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    m["image_keys"] = ["chw", "pair", "cam", "state"]  # what earlier versions wrote
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match=r"\['chw', 'pair', 'state'\] are named camera keys"):
        got = read_cache(tmp_path / "c")
    assert got.image_keys == ("cam",)
    with pytest.warns(UserWarning):
        store = rc.TrajectoryStore.load(tmp_path / "c", device="cpu")
    assert rc.TrajectoryDataset(store)[0]["chw"].shape == (3, 8, 8)


def test_a_long_target_name(tmp_path):
    """A target name near the 255-byte limit leaves no room for the scratch directory's suffix:
    its scratch name is shortened (and still found as abandoned by the next save)."""
    for name in ("c" * 240, "é" * 120):  # 240 bytes each
        write_cache(tmp_path / name, make_source(seed=1))
        write_cache(tmp_path / name, make_source(seed=2), overwrite=True)
        assert_same(make_source(seed=2), read_cache(tmp_path / name))
        stem = cache_mod._scratch_stem(tmp_path / name)
        assert len(os.fsencode(stem)) <= 100 and stem != cache_mod._scratch_stem(
            tmp_path / (name[:-1] + "x"))
    assert len(list(tmp_path.iterdir())) == 2


def test_replacement_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where renameat2 is missing the old cache is renamed away, the new one in."""
    monkeypatch.setattr(cache_mod, "_exchange", lambda a, b: False)
    write_cache(tmp_path / "c", make_source(seed=1))
    src2 = make_source(lengths=(2, 2), seed=2)
    write_cache(tmp_path / "c", src2, overwrite=True)
    assert_same(src2, read_cache(tmp_path / "c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_an_abandoned_save_is_cleaned_up_by_the_next(tmp_path):
    """A save killed midway leaves its scratch directory; the next save to the same target
    removes it when its process (this host, this PID namespace) is gone, nothing wrote to it for
    ABANDONED_AFTER_S and it holds only a cache's files - not one of a live process, a recent
    one, one of another PID namespace, one holding anything else, nor another target's."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = cache_mod._host_tag()

    def scratch(name, pid, files, age=3600.0, tag=host):
        d = tmp_path / f".{name}.tmp-{tag}-{pid}-{len(files)}{len(list(tmp_path.iterdir()))}" \
                       f"0123456789"
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
        old = time.time() - age
        for p in (*d.iterdir(), d):
            os.utime(p, (old, old))
        return d

    abandoned = scratch("c", dead, ["000-a.npy", "manifest.json"])
    live = scratch("c", os.getpid(), ["000-a.npy"])
    recent = scratch("c", dead, ["000-a.npy"], age=60.0)  # maybe a save in another container
    other_ns = scratch("c", dead, ["000-a.npy"], tag=host.rsplit(".", 1)[0] + ".1")
    foreign = scratch("c", dead, ["000-a.npy", "notes.txt"])
    other_target = scratch("d", dead, ["000-a.npy"])
    write_cache(tmp_path / "c", make_source())
    assert not abandoned.exists()
    assert all(d.exists() for d in (live, recent, other_ns, foreign, other_target))


@pytest.fixture
def cache(tmp_path):
    return write_cache(tmp_path / "c", make_source(seed=5))


def entry_file(cache, key):
    m = json.loads((cache / "manifest.json").read_text())
    return cache / m["arrays"][key]["file"], m


def test_checksum_mismatch(cache):
    f, _ = entry_file(cache, "action")
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x40
    f.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match=r"001-action.npy: checksum mismatch"):
        read_cache(cache)
    got = read_cache(cache, verify=False)  # explicitly unverified: loads the changed bytes
    assert got.arrays["action"].shape == (9, 2)


def test_truncated_npy_even_without_verify(cache):
    f, _ = entry_file(cache, "observation.state")
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetFormatError, match="000-observation.state.npy: unreadable"):
        read_cache(cache, verify=False)


def test_header_with_nul_padding_is_a_format_error(cache):
    """A header whose padding was written as NULs (what a corrupted interpreter once wrote) is
    reported as a bad file, not as a tokenizer error from inside NumPy."""
    f, _ = entry_file(cache, "observation.state")
    raw = bytearray(f.read_bytes())
    end = raw.index(b"\n")
    raw[raw.index(b"}") + 1:end] = b"\0" * (end - raw.index(b"}") - 1)
    f.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match="000-observation.state.npy: unreadable"):
        read_cache(cache, verify=False)


def test_newer_format_version_refused(cache):
    m = json.loads((cache / "manifest.json").read_text())
    m["format_version"] = cache_mod.FORMAT_VERSION + 1
    m["created_by"] = "robocache 9.0.0"
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match=rf"format version {cache_mod.FORMAT_VERSION + 1} "
                                                 r"by robocache 9.0.0.*upgrade"):
        read_cache(cache)


def test_camera_keys_of_a_version_1_manifest_are_detected(tmp_path):
    """Version 1 wrote image_keys=[] for "detect them" (write_cache's old default); version 2
    names exactly the camera keys, [] for none. write_cache refuses camera keys that are not
    uint8 frames, which the store would refuse to load."""
    src = make_source()
    for version, image_keys, want in ((1, [], ("observation.images.top",)), (2, [], ()),
                                      (2, ["observation.images.top"],
                                       ("observation.images.top",))):
        out = write_cache(tmp_path / f"c{version}{len(image_keys)}", src, progress=False)
        m = json.loads((out / "manifest.json").read_text())
        m.update(format_version=version, image_keys=image_keys)
        (out / "manifest.json").write_text(json.dumps(m))
        assert rc.TrajectoryStore.load(out, device="cpu").image_keys == want
    with pytest.raises(TypeError, match=r"image_keys: expected camera frames, uint8 .*'depth'"):
        write_cache(tmp_path / "d", {"depth": np.zeros((4, 2, 2), np.float32)},
                    episode_ends=[4], image_keys=["depth"])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format="other"), "not a RoboCache cache"),
    (lambda m: m.update(format_version="1"), "not a version number"),
    (lambda m: m["arrays"]["action"].update(file="../../etc/passwd.npy"), "not a plain .npy"),
    (lambda m: m["arrays"]["action"].update(file="nope.npy"), "nope.npy: missing"),
    (lambda m: m["arrays"]["action"].update(shape=[9, 3]), "header says"),
    (lambda m: m["arrays"]["action"].update(dtype="float32"), "header says"),
    (lambda m: m.update(episode_ends=[3, 4, 8]), "episode_ends"),
    (lambda m: m.pop("num_frames"), "malformed manifest"),
    (lambda m: m["stats"]["action"]["mean"].update(shape=[5]),
     r"stats\['action'\]\['mean'\]: data must be a list of 5 values \(shape \[5\]\)"),
    (lambda m: m["stats"]["action"]["mean"].update(data=[None, 1.0]), r"holds \[None\]"),
    (lambda m: m["stats"]["action"]["mean"].update(data=["1e3", "nan"]), r"holds \['1e3'"),
    (lambda m: m["stats"]["action"]["count"].update(data=[9.7]), r"holds \[9.7\], not int64"),
    (lambda m: m["stats"]["action"]["count"].update(data=[True]), r"holds \[True\]"),
    (lambda m: m["stats"]["action"]["mean"].update(shape=[-1, -2]), "not a list of sizes"),
    (lambda m: m["stats"]["action"]["count"].update(dtype="uint8", data=[300]),
     "do not fit uint8"),
    (lambda m: m["stats"]["action"]["mean"].update(dtype="nope"), "not a dtype name"),
    (lambda m: m["stats"]["action"]["mean"].pop("data"), "expected an object with dtype"),
    (lambda m: m.update(episode_ends=[], num_frames=0), "malformed manifest .*at least one "
     "episode"),
    (lambda m: m["arrays"]["action"].update(dtype="str96"), "dtype 'str96' is not one a store"),
    (lambda m: m.update(fps="abc"), r"malformed manifest .*fps is 'abc'"),
    (lambda m: m.update(fps=True), "malformed manifest"),
    (lambda m: m.update(episode_ends=[3.5, 4, 9]), "malformed manifest .*non-integers"),
    (lambda m: m.update(stats={"a": 5}), "malformed manifest .*stats"),
    (lambda m: m.update(meta=[1, 2]), "malformed manifest .*meta is a list"),
    (lambda m: m["arrays"]["action"].update(shape=None), "expected a dtype name and a list"),
    (lambda m: m["stats"]["action"]["mean"].update(dtype="object"), "not numbers"),
    (lambda m: m.update(format_version=True), "not a version number"),
    (lambda m: m.update(num_frames="9"), "malformed manifest .*num_frames"),
    (lambda m: m.update(num_frames=9.5), "malformed manifest .*num_frames"),
    (lambda m: m.update(image_keys="img"), "malformed manifest .*image_keys"),
    (lambda m: m.update(image_keys=["nope"]), r"image_keys names \['nope'\], which are not"),
    (lambda m: m["stats"]["action"]["mean"].update(data=[1e39, 0.0], dtype="float32"),
     "do not fit float32"),
    (lambda m: m["stats"]["action"]["mean"].update(shape=[2**62, 2**62, 0], data=[]),
     "do not fit float64 and shape"),
    (lambda m: m.update(keys=[]), "malformed manifest .*at least one key"),
    (lambda m: m.update(episode_ends=[3, 4, 2**70]), "malformed manifest .*not frame counts"),
])
def test_malformed_manifest(cache, edit, match):
    m = json.loads((cache / "manifest.json").read_text())
    edit(m)
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match=match):
        read_cache(cache, verify=False)


def test_bad_json_and_missing_manifest(cache, tmp_path):
    (cache / "manifest.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="manifest.json: not valid JSON"):
        read_cache(cache)
    (cache / "manifest.json").unlink()
    with pytest.raises(DatasetFormatError, match="missing"):
        read_cache(cache)
    with pytest.raises(FileNotFoundError):
        read_cache(tmp_path / "nothing")


def test_files_the_store_would_refuse_are_refused_naming_the_file(cache):
    """A deeply nested manifest, a directory where a file should be, timestamps with NaN and
    a file of strings (each with a checksum that matches) are refused, naming the file."""
    text = (cache / "manifest.json").read_text()
    (cache / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetFormatError, match="manifest.json: nested too deeply"):
        read_cache(cache)
    (cache / "manifest.json").write_text(text)
    ts = cache / "timestamps.npy"
    good = ts.read_bytes()
    times = np.load(ts)
    times[4] = np.nan
    np.save(ts, times)
    with pytest.raises(DatasetFormatError, match=r"timestamps.npy: timestamps hold NaN or inf"):
        read_cache(cache, verify=False)
    ts.write_bytes(good)
    f, m = entry_file(cache, "action")
    f.unlink()
    f.mkdir()
    with pytest.raises(DatasetFormatError, match=f"{f.name}: a directory, not a regular file"):
        read_cache(cache, verify=False)
    f.rmdir()
    words = np.array(["ab"] * 9)
    np.save(f, words)
    m["arrays"]["action"].update(dtype=words.dtype.name, shape=[9])
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match=f"{f.name}: the manifest's dtype 'str64'"):
        read_cache(cache, verify=False)


def test_symlinked_file_out_of_the_cache(cache, link_from_outside):
    link_from_outside(entry_file(cache, "action")[0])
    with pytest.raises(DatasetFormatError, match="outside the dataset root"):
        read_cache(cache)


def test_pickled_npy_refused(cache):
    f, m = entry_file(cache, "action")
    obj = np.empty((9, 2), dtype=object)
    with open(f, "wb") as fh:
        np.lib.format.write_array(fh, obj, allow_pickle=True)
    with pytest.raises(DatasetFormatError, match="no pickle"):
        read_cache(cache, verify=False)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int8", "uint16", "int64",
                                   "bool", "bfloat16"])
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (2, 0, 5), (4, 1, 2, 3)])
def test_files_are_what_np_save_writes(tmp_path, dtype, shape):
    """Each file is byte for byte what np.save writes, its manifest entry hashes those bytes."""
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 50).astype(ml_dtypes.bfloat16 if dtype == "bfloat16"
                                                 else dtype)
    entry = cache_mod._write_npy(tmp_path / "a.npy", x, _NoBar())
    stored = x.view(np.uint16) if dtype == "bfloat16" else x
    np.save(tmp_path / "b.npy", stored, allow_pickle=False)
    raw = (tmp_path / "a.npy").read_bytes()
    assert raw == (tmp_path / "b.npy").read_bytes()
    assert entry["nbytes"] == x.nbytes and entry["shape"] == list(shape)
    import hashlib

    assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    with open(tmp_path / "a.npy", "rb", buffering=0) as f:
        got = cache_mod._load(tmp_path / "a.npy", entry, "k", f)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint8), x.view(np.uint8))


def test_many_files_written_in_parallel_read_back(tmp_path):
    """write_cache writes its files from worker threads: every one must read back intact."""
    rng = np.random.default_rng(3)
    arrays = {f"k{i}": rng.standard_normal((40, i + 1)).astype("float32") for i in range(12)}
    write_cache(tmp_path / "c", arrays, episode_ends=[10, 40], progress=False)
    got = read_cache(tmp_path / "c", verify=True)
    for k, x in arrays.items():
        np.testing.assert_array_equal(got.arrays[k], x)


class _NoBar:
    def update(self, n):
        pass


def test_the_write_bar_counts_the_arrays_bytes_to_its_total(tmp_path):
    """The bar's total is the arrays' bytes; the .npy headers written before them are not
    counted (it overshot its total)."""
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    arrays = {"x": np.arange(1000.0), "y": np.zeros((1000, 3), np.float32),
              "e": np.zeros((1000, 0))}
    write_cache(tmp_path / "c", arrays, episode_ends=[1000], timestamps=np.arange(1000) / 10,
                progress=bar)
    assert bar.n == sum(a.nbytes for a in arrays.values()) + 8000


def test_timestamps_of_another_shape_refused(cache):
    m = json.loads((cache / "manifest.json").read_text())
    np.save(cache / m["timestamps"]["file"], np.zeros((9, 1)))
    m["timestamps"]["shape"] = [9, 1]
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match=r"timestamps.npy: timestamps of shape \(9, 1\)"):
        read_cache(cache, verify=False)


def test_bfloat16_stats_round_trip(tmp_path):
    """Statistics a store holds in bfloat16 (e.g. shipped as torch bf16 tensors) are saved and
    read back as bfloat16, bit for bit."""
    src = make_source()
    mean = np.array([1.5, -2.25, 3e-3], dtype=ml_dtypes.bfloat16)
    src.stats["bf"] = {"mean": mean, "max": mean.reshape(1, 3)}
    got = read_cache(write_cache(tmp_path / "c", src), verify=True)
    for name, want in src.stats["bf"].items():
        back = got.stats["bf"][name]
        assert back.dtype == want.dtype and back.shape == want.shape
        np.testing.assert_array_equal(back.view(np.uint16), want.view(np.uint16))


def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(cache):
    """A named pipe where the manifest names a file: refused at once (opening it for reading
    would wait for a writer for ever)."""
    f, _ = entry_file(cache, "action")
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(DatasetFormatError, match=r"001-action.npy: not a regular file"):
        read_cache(cache, verify=False)


def test_a_cache_of_more_keys_than_open_files_allowed_loads(tmp_path):
    """Each map holds a descriptor of its file: 300 keys under a soft limit of 256 open files
    saved but did not load (EMFILE). The soft limit is raised up to the hard one; past that, a
    clear error."""
    import os
    import resource

    arrays = {f"k{i:03d}": np.full((6, 2), i, np.int16) for i in range(150)}
    store = rc.TrajectoryStore.from_arrays(arrays, [2, 6], device="cpu")
    out = store.save(tmp_path / "many", progress=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    try:
        for verify in (True, False):
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 100, hard))  # < 150 files
            back = rc.TrajectoryStore.load(out, device="cpu", verify=verify, progress=False)
            assert back["k149"][0, 0] == 149 and len(back.keys) == 150
            del back
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # past the hard limit (lowered for good: in a process of its own), a clear error
    def load_under_hard_limit(extra: int) -> str:
        code = ("import os, resource, sys\n"
                "import robocache as rc\n"
                f"n = len(os.listdir('/proc/self/fd')) + {extra}\n"
                "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
                "try:\n"
                f"    s = rc.TrajectoryStore.load({str(out)!r}, device='cpu', progress=False)\n"
                "    print('loaded', len(s.keys))\n"
                "except Exception as e:\n"
                "    print(type(e).__name__, e)\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent).stdout
    got = load_under_hard_limit(100)
    assert "DatasetFormatError" in got and "150 files to map" in got and "ulimit -Hn" in got
    assert load_under_hard_limit(2 * 150 + 12).strip() == "loaded 150"  # fits: no refusal


def test_dataset_format_error_is_public():
    """What the readers raise can be caught without a private import."""
    import robocache.formats

    assert rc.DatasetFormatError is DatasetFormatError is robocache.formats.DatasetFormatError
    assert "DatasetFormatError" in rc.__all__ and issubclass(DatasetFormatError, ValueError)
