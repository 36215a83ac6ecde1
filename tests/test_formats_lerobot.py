"""read_lerobot on datasets written the way LeRobot writes them (tests/_lerobot_writer.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import robocache as rc
from robocache._errors import DatasetFormatError
from robocache.formats import TrajectorySource, read_lerobot

pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from _lerobot_writer import LOSSY, encode_video, make_episodes, write_lerobot  # noqa: E402

TOP, WRIST, SIDE = "observation.images.top", "observation.images.wrist", "observation.images.side"
CAMS = {TOP: (16, 24), WRIST: (8, 10)}
LENGTHS = [5, 1, 7, 3, 1, 4, 2]


def expected(eps, key):
    return np.concatenate([e[key] for e in eps])


def check_source(src: TrajectorySource, eps, fps=10):
    lengths = [len(e["action"]) for e in eps]
    np.testing.assert_array_equal(src.episode_ends, np.cumsum(lengths))
    assert src.episode_ends.dtype == np.int64
    assert src.fps == fps
    ts = np.concatenate([(np.arange(L) / fps).astype(np.float32) for L in lengths])
    np.testing.assert_array_equal(src.timestamps, ts.astype(np.float64))
    for k, arr in src.arrays.items():
        if k == "task_index":
            continue
        want = expected(eps, k)
        if k not in src.image_keys and want.dtype.kind in "iu" and want.dtype.itemsize < 8:
            # integer features: LeRobot's int64, as LeRobot reads them
            want = want.astype(np.int64)
        assert arr.shape == want.shape, k
        assert arr.dtype == want.dtype, k
        assert arr.flags.c_contiguous, k
        np.testing.assert_array_equal(arr, want, err_msg=k)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    eps = make_episodes(LENGTHS, seed=1, cameras=CAMS, images={SIDE: (6, 10)})
    write_lerobot(root, eps, version="v3.0", video_keys=tuple(CAMS), image_keys=(SIDE,),
                  chunks_size=2, episodes_per_file=2, episodes_per_video_file=3,
                  episodes_meta_files=3)
    return root, eps


@pytest.mark.parametrize("text_type", ["large_string", "dictionary", "string_view"])
def test_v3_task_strings_of_any_arrow_string_type(tmp_path, text_type):
    """pandas 3 (what a fresh LeRobot 0.4 install gets) writes the tasks' index as large_string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if text_type == "string_view" and not hasattr(pa, "string_view"):
        pytest.skip("pyarrow without string_view")
    root = tmp_path / "ds"
    write_lerobot(root, make_episodes([3, 2], seed=3), version="v3.0")
    path = root / "meta/tasks.parquet"
    t = pq.read_table(path)
    tasks = pa.array(["reach", "push"])
    col = {"large_string": lambda: tasks.cast(pa.large_string()),
           "dictionary": lambda: tasks.dictionary_encode(),
           "string_view": lambda: tasks.cast(pa.string_view())}[text_type]()
    pq.write_table(pa.table({"task_index": pa.array([1, 0], pa.int64()),
                             "__index_level_0__": col}), path)
    assert t.num_rows >= 1
    src = read_lerobot(root, progress=False)
    assert src.meta["tasks"] == ["push", "reach"]


@pytest.mark.parametrize("index, match", [([0, 0], "a task_index appears twice"),
                                          ([0, 10**9], "task_index 1000000000 for 2 tasks")])
def test_task_tables_with_repeated_or_huge_indices_are_refused(tmp_path, index, match):
    """A repeated task_index would keep one task silently; a huge one would make a list of
    10**9 entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    write_lerobot(root, make_episodes([3, 2], seed=3), version="v3.0")
    pq.write_table(pa.table({"task_index": pa.array(index, pa.int64()),
                             "task": pa.array(["reach", "push"])}), root / "meta/tasks.parquet")
    with pytest.raises(DatasetFormatError, match=match):
        read_lerobot(root, progress=False)


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
    root = tmp_path_factory.mktemp("v21")
    eps = make_episodes(LENGTHS, seed=2, cameras=CAMS)
    write_lerobot(root, eps, version="v2.1", video_keys=tuple(CAMS), chunks_size=3)
    return root, eps


def test_v3_round_trip(v3):
    root, eps = v3
    src = read_lerobot(root, progress=False)
    assert set(src.arrays) == set(eps[0]) | {"task_index"}
    check_source(src, eps)
    assert src.arrays["next.reward"].shape == (sum(LENGTHS),)  # shape [1] -> a scalar column
    assert src.arrays["observation.environment_state"].shape == (sum(LENGTHS), 2, 3)
    assert set(src.image_keys) == {TOP, WRIST, SIDE}
    np.testing.assert_array_equal(src.arrays["task_index"], np.repeat(
        np.arange(len(LENGTHS)) % 1, LENGTHS))
    assert src.meta["tasks"] == ["push the block"]
    assert src.meta["episode_index"] == list(range(len(LENGTHS)))
    assert src.meta["codebase_version"] == "v3.0"
    stats = json.loads((root / "meta/stats.json").read_text())
    for k in src.arrays:
        if k in stats:
            for s, v in stats[k].items():
                np.testing.assert_array_equal(src.stats[k][s], np.asarray(v, np.float64))
                assert src.stats[k][s].dtype == np.float64
    assert src.stats[TOP]["mean"].shape == (3, 1, 1)
    # several data files, chunks and video files really were exercised
    assert len(list((root / "data").glob("chunk-*/file-*.parquet"))) == 4
    assert len(list((root / "data").glob("chunk-*"))) == 2
    assert len(list((root / "videos" / TOP).glob("chunk-*/*.mp4"))) == 3


def test_v21_round_trip_and_aggregated_stats(v21):
    root, eps = v21
    src = read_lerobot(root, progress=False)
    check_source(src, eps)
    assert src.meta["codebase_version"] == "v2.1"
    for k in ("observation.state", "action", "observation.environment_state"):
        x = expected(eps, k).astype(np.float64)
        np.testing.assert_allclose(src.stats[k]["mean"], x.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(src.stats[k]["std"], x.std(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(src.stats[k]["min"], x.min(0))
        np.testing.assert_array_equal(src.stats[k]["max"], x.max(0))
        assert src.stats[k]["count"].tolist() == [sum(LENGTHS)]


def test_v21_stats_come_from_the_episodes_as_lerobot_loads_them(v21, tmp_path):
    """LeRobot 0.3 aggregates v2.1's episodes_stats.jsonl (aggregate_feature_stats, step for
    step here) and ignores a meta/stats.json beside it; a null statistic is an error."""
    import shutil

    root = tmp_path / "v21"
    shutil.copytree(v21[0], root)  # the fixture is shared: edit a copy
    lines = (root / "meta/episodes_stats.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    k = "action"
    means = np.stack([np.asarray(r["stats"][k]["mean"], np.float64) for r in rows])
    variances = np.stack([np.asarray(r["stats"][k]["std"], np.float64) ** 2 for r in rows])
    counts = np.stack([np.asarray(r["stats"][k]["count"]) for r in rows])
    total = counts.sum(axis=0)
    mean = (means * counts).sum(axis=0) / total
    std = np.sqrt(((variances + (means - mean) ** 2) * counts).sum(axis=0) / total)
    (root / "meta/stats.json").write_text(json.dumps({k: {"mean": [100.0] * means.shape[1]}}))
    src = read_lerobot(root, progress=False)
    np.testing.assert_array_equal(src.stats[k]["mean"], mean)  # the same bits
    np.testing.assert_array_equal(src.stats[k]["std"], std)
    (root / "meta/stats.json").unlink()
    rows[0]["stats"][k]["mean"][0] = None
    (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetFormatError, match=r"episodes_stats.jsonl: entry 0 action/mean: "
                                                 r"expected numbers, got null"):
        read_lerobot(root, progress=False)


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_many_row_groups_read_in_parallel_tasks(tmp_path, monkeypatch, version):
    from robocache.formats import lerobot

    monkeypatch.setattr(lerobot, "TASK_BYTES", 300)  # a few row groups per task
    lengths = [17, 1, 30, 9, 2, 25]
    eps = make_episodes(lengths, seed=12)
    write_lerobot(tmp_path, eps, version=version, episodes_per_file=3, row_group_size=4)
    md = pq.read_metadata(next((tmp_path / "data").rglob("*.parquet")))
    assert md.num_row_groups > 3
    check_source(read_lerobot(tmp_path, progress=False), eps)


def test_keys_filter_never_decodes_unused_cameras(tmp_path):
    eps = make_episodes([3, 1, 2], seed=3, cameras=CAMS)
    write_lerobot(tmp_path, eps, video_keys=tuple(CAMS))
    for f in (tmp_path / "videos" / WRIST).rglob("*.mp4"):
        f.write_bytes(b"not a video")  # would fail if it were opened
    src = read_lerobot(tmp_path, keys=["action", TOP], progress=False)
    assert list(src.arrays) == ["action", TOP]
    np.testing.assert_array_equal(src.arrays[TOP], expected(eps, TOP))
    assert src.image_keys == (TOP,)
    assert set(src.stats) == {"action", TOP}
    with pytest.raises(DatasetFormatError, match=WRIST):
        read_lerobot(tmp_path, keys=[WRIST], progress=False)
    # bookkeeping columns only when asked for
    src = read_lerobot(tmp_path, keys=["index", "frame_index"], progress=False)
    np.testing.assert_array_equal(src.arrays["index"], np.arange(6))
    np.testing.assert_array_equal(src.arrays["frame_index"], [0, 1, 2, 0, 0, 1])


def test_keys_errors(v3):
    root, _ = v3
    with pytest.raises(ValueError, match="nope"):
        read_lerobot(root, keys=["nope"])
    with pytest.raises(ValueError, match="distinct"):
        read_lerobot(root, keys=["action", "action"])
    with pytest.raises(ValueError, match="video_backend"):
        read_lerobot(root, video_backend="opencv")
    with pytest.raises(ValueError, match="tolerance_s"):
        read_lerobot(root, tolerance_s=-1)


def test_string_feature_is_not_loadable(tmp_path):
    eps = make_episodes([2, 2], seed=4, extra=False)
    write_lerobot(tmp_path, eps)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    info["features"]["language"] = {"dtype": "string", "shape": [1], "names": None}
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    assert "language" not in read_lerobot(tmp_path, progress=False).arrays
    with pytest.raises(ValueError, match="language"):
        read_lerobot(tmp_path, keys=["language"])


def test_torchcodec_backend_missing_is_a_clear_error(v3):
    root, _ = v3
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchcodec"):
            read_lerobot(root, keys=[TOP], video_backend="torchcodec")
    else:  # pragma: no cover - only where torchcodec is installed
        src = read_lerobot(root, keys=[TOP], video_backend="torchcodec", progress=False)
        np.testing.assert_array_equal(src.arrays[TOP], expected(v3[1], TOP))


def smooth_frames(n, h, w, seed):
    """Frames a lossy codec keeps close, each clearly different from its neighbours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        c = rng.uniform(40, 215, 3)
        out[i] = np.clip(c + 30 * np.sin(xx / 5 + i)[..., None] + 20 * np.cos(yy / 7)[..., None],
                         0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_lossy_yuv420_mp4_matches_nearest_frames(tmp_path, version):
    lengths = [6, 1, 9]
    eps = make_episodes(lengths, seed=5, extra=False)
    frames = smooth_frames(sum(lengths), 32, 48, 5)
    for e, s in zip(eps, np.cumsum([0, *lengths[:-1]]), strict=True):
        e[TOP] = frames[s:s + len(e["action"])]
    write_lerobot(tmp_path, eps, version=version, video_keys=(TOP,), codec=LOSSY,
                  episodes_per_video_file=2)
    got = read_lerobot(tmp_path, keys=[TOP], progress=False).arrays[TOP].astype(np.int16)
    err = np.abs(got - frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert err.max() < 6, err
    # every row got its own frame, not a neighbour
    d = np.abs(got[:, None].astype(np.float32) - frames[None].astype(np.float32)).mean((2, 3, 4))
    np.testing.assert_array_equal(d.argmin(1), np.arange(len(frames)))


def shift_from_timestamp(root, key, episode, by):
    path = next((root / "meta/episodes").rglob("*.parquet"))
    t = pq.read_table(path)
    col = f"videos/{key}/from_timestamp"
    vals = t.column(col).to_numpy().copy()
    vals[episode] += by
    t = t.set_column(t.schema.get_field_index(col), col, pa.array(vals))
    pq.write_table(t, path)


def test_timestamp_outside_tolerance_names_key_episode_and_time(tmp_path):
    eps = make_episodes([4, 3, 5], seed=6, cameras={TOP: (8, 8)}, extra=False)
    write_lerobot(tmp_path, eps, video_keys=(TOP,), episodes_per_video_file=3)
    shift_from_timestamp(tmp_path, TOP, 2, 0.03)  # a third of a frame at 10 fps
    with pytest.raises(DatasetFormatError, match=rf"{TOP}: episode 2: .*timestamp 0\.000000"):
        read_lerobot(tmp_path, keys=[TOP], progress=False)
    src = read_lerobot(tmp_path, keys=[TOP], tolerance_s=0.04, progress=False)
    np.testing.assert_array_equal(src.arrays[TOP], expected(eps, TOP))
    # past the last frame of the file
    shift_from_timestamp(tmp_path, TOP, 2, 0.5 - 0.03)
    with pytest.raises(DatasetFormatError, match=f"{TOP}: episode 2"):
        read_lerobot(tmp_path, keys=[TOP], tolerance_s=0.04, progress=False)


def test_tie_goes_to_the_earlier_frame(tmp_path):
    eps = make_episodes([4], seed=7, cameras={TOP: (8, 8)}, extra=False)
    write_lerobot(tmp_path, eps, fps=8, video_keys=(TOP,))
    shift_from_timestamp(tmp_path, TOP, 0, 1 / 16)  # exactly between frames (binary fractions)
    src = read_lerobot(tmp_path, keys=[TOP], tolerance_s=0.07, progress=False)
    np.testing.assert_array_equal(src.arrays[TOP], eps[0][TOP])
    shift_from_timestamp(tmp_path, TOP, 0, 1 / 64)  # 5/64 s: closer to the later frame
    src = read_lerobot(tmp_path, keys=[TOP], tolerance_s=0.08, progress=False)
    np.testing.assert_array_equal(src.arrays[TOP], eps[0][TOP][[1, 2, 3, 3]])


def test_progress_true_shows_a_bar(v3, capsys):
    root, eps = v3
    src = read_lerobot(root, keys=["action", TOP], progress=True)
    np.testing.assert_array_equal(src.arrays["action"], expected(eps, "action"))
    assert "decoding video" in capsys.readouterr().err


def test_single_episode_single_frame(tmp_path):
    eps = make_episodes([1], seed=8, cameras={TOP: (4, 6)})
    write_lerobot(tmp_path, eps, video_keys=(TOP,))
    check_source(read_lerobot(tmp_path, progress=False), eps)


# --- corrupt and unsafe datasets ------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    eps = make_episodes([3, 1, 4, 2], seed=9, cameras={TOP: (8, 8)})
    write_lerobot(tmp_path, eps, video_keys=(TOP,), episodes_per_file=2)
    return tmp_path


def edit_info(root, **changes):
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


def test_truncated_parquet_names_the_file(small):
    f = small / "data/chunk-000/file-001.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match="file-001.parquet"):
        read_lerobot(small)


def test_missing_column_names_file_and_column(small):
    f = small / "data/chunk-000/file-001.parquet"
    t = pq.read_table(f)
    pq.write_table(t.drop_columns(["action"]), f)
    with pytest.raises(DatasetFormatError, match=r"file-001.parquet: missing column 'action'"):
        read_lerobot(small)


def test_episodes_in_one_video_file_need_their_start_times(small):
    """Several episodes in one mp4 are found by videos/<key>/from_timestamp (LeRobot reads it
    too): without the column every episode would decode the file's first frames."""
    f = next((small / "meta/episodes").glob("chunk-*/file-*.parquet"))
    t = pq.read_table(f)
    pq.write_table(t.drop_columns([f"videos/{TOP}/from_timestamp"]), f)
    with pytest.raises(DatasetFormatError, match=rf"missing column 'videos/{TOP}/from_timestamp'"):
        read_lerobot(small)


def test_wrong_width_and_nulls(small):
    f = small / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("action")
    wide = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 4, np.float32)), 4)
    pq.write_table(t.set_column(i, "action", wide), f)
    with pytest.raises(DatasetFormatError, match="4 values per row, expected 3"):
        read_lerobot(small, keys=["action"])
    nulls = pa.array([1.0, None, 2.0, 3.0], pa.float32())
    j = t.schema.get_field_index("next.reward")
    pq.write_table(t.set_column(j, "next.reward", nulls), f)
    with pytest.raises(DatasetFormatError, match="null"):
        read_lerobot(small, keys=["next.reward"])


def test_bad_info_json(small):
    (small / "meta/info.json").write_text("{ not json")
    with pytest.raises(DatasetFormatError, match="info.json: not valid JSON"):
        read_lerobot(small)
    (small / "meta/info.json").unlink()
    with pytest.raises(DatasetFormatError, match="info.json: missing"):
        read_lerobot(small)


@pytest.mark.parametrize("change, match", [
    ({"codebase_version": "v1.6"}, "codebase_version"),
    ({"fps": 0}, "fps"),
    ({"fps": float("inf")}, "info.json: fps must be a positive number"),
    ({"features": {"action": {"dtype": "float32", "shape": [-1]}}}, "shape"),
    ({"total_frames": 999}, "total_frames"),
])
def test_inconsistent_info(small, change, match):
    edit_info(small, **change)
    with pytest.raises(DatasetFormatError, match=match):
        read_lerobot(small)


@pytest.mark.parametrize("template", [
    "../outside/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "/etc/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
    "data/{chunk_index.__class__}/file-{file_index:03d}.parquet",
    "data/chunk-{chunk_index:03d}/{secret}.parquet",
])
def test_data_path_may_not_leave_the_root(small, template):
    edit_info(small, data_path=template)
    with pytest.raises(DatasetFormatError, match="data_path"):
        read_lerobot(small)


@pytest.mark.parametrize("field, template, bad", [
    # a field nested in the spec: str.format evaluates its attribute access
    ("data_path", "data/chunk-{chunk_index:{file_index.__class__.__mro__}}/"
                  "file-{file_index:03d}.parquet", "{chunk_index}"),
    # a width that builds a path of 200 MB
    ("data_path", "data/chunk-{chunk_index:0200000000d}/file-{file_index:03d}.parquet",
     "{chunk_index}"),
    # specs str.format refuses for the field's type, a conversion
    ("data_path", "data/chunk-{chunk_index:s}/file-{file_index:03d}.parquet", "{chunk_index}"),
    ("data_path", "data/chunk-{chunk_index!r}/file-{file_index:03d}.parquet", "{chunk_index}"),
    ("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:>9}.parquet", "{file_index}"),
    ("video_path", "videos/{video_key:d}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
     "{video_key}"),
    ("video_path", "videos/{video_key:>300}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
     "{video_key}"),
])
def test_path_template_format_specs_are_plain_integer_widths(small, field, template, bad):
    """Only what LeRobot writes: {x:03d}-like widths on the integer fields, {video_key} bare;
    anything else is refused when info.json is read, naming it and the template, never
    evaluated nor turned into a path."""
    edit_info(small, **{field: template})
    with pytest.raises(DatasetFormatError, match=rf"meta/info.json: {field}: path template .*"
                                                 rf"{re.escape(bad)}") as err:
        read_lerobot(small, keys=[TOP])
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize("version, field, template", [
    ("v2.1", "data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:q}.parquet"),
    ("v2.1", "video_path", "videos/chunk-{episode_chunk:03d}/{video_key!s}/"
                           "episode_{episode_index:06d}.mp4"),
])
def test_v2_path_template_format_specs(tmp_path, version, field, template):
    eps = make_episodes([2, 3], seed=12, cameras={TOP: (4, 6)}, extra=False)
    write_lerobot(tmp_path, eps, version=version, video_keys=(TOP,))
    edit_info(tmp_path, **{field: template})
    with pytest.raises(DatasetFormatError, match=rf"meta/info.json: {field}: path template"):
        read_lerobot(tmp_path)


def test_path_templates_lerobot_writes_are_accepted():
    from _lerobot_writer import V2_DATA, V2_VIDEO, V3_DATA, V3_VIDEO

    from robocache.formats import _paths
    from robocache.formats import lerobot as lr


    for tpl, allowed in [(V3_DATA, lr.V3_DATA_FIELDS), (V3_VIDEO, lr.V3_VIDEO_FIELDS),
                         (V2_DATA, lr.V2_DATA_FIELDS), (V2_VIDEO, lr.V2_VIDEO_FIELDS),
                         ("data/{chunk_index}/{file_index:6d}-{file_index:010d}.parquet",
                          lr.V3_DATA_FIELDS)]:
        assert _paths.check_template(tpl, allowed, "t", text_fields=lr.TEXT_FIELDS) == tpl


@pytest.mark.parametrize("shape, error, match", [
    ([2**62, 4], DatasetFormatError, "more than any array can hold"),
    # over 2**60 bytes: more than any address space, whatever the overcommit policy
    ([2**55], MemoryError, r"cannot allocate shape \[10, 36028797018963968\] of float32: "
                           r"1,441,151,880,758,558,720 bytes \(1.2 EiB\)"),
], ids=["past-intp", "past-address-space"])
def test_huge_declared_shape_names_info_json_and_feature(small, shape, error, match):
    info = json.loads((small / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = shape
    (small / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(error, match=r"meta/info.json: feature 'observation.state' x 10 frames "
                                    r"in .*meta/episodes: .*" + match):
        read_lerobot(small, keys=["observation.state"])


def test_video_path_may_not_leave_the_root(small):
    edit_info(small, video_path="../{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    with pytest.raises(DatasetFormatError, match="video_path"):
        read_lerobot(small, keys=[TOP])
    read_lerobot(small, keys=["action"])  # no camera asked for: the template is never used


def test_symlink_out_of_the_root(small, link_from_outside):
    link_from_outside(small / "data/chunk-000/file-001.parquet")
    with pytest.raises(DatasetFormatError, match="outside the dataset root"):
        read_lerobot(small)


def _as_hub_snapshot(src, repo):
    """src laid out as huggingface_hub's cache keeps a download without local_dir: every file a
    relative symlink from snapshots/<revision>/... to blobs/<sha256>."""
    import hashlib
    import os
    import shutil

    snap, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    blobs.mkdir(parents=True)
    for f in sorted(src.rglob("*")):
        if f.is_file():
            blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copy(f, blob)
            link = snap / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_a_huggingface_hub_cache_snapshot_reads_like_the_dataset(small, tmp_path_factory,
                                                                 link_from_outside):
    """snapshot_download() without local_dir returns snapshots/<rev>, whose files are symlinks
    into the repository's blobs/: they were refused as leaving the dataset root. Symlinks
    anywhere else still are."""
    snap = _as_hub_snapshot(small, tmp_path_factory.mktemp("hub") / "datasets--lerobot--x")
    want, got = read_lerobot(small, progress=False), read_lerobot(snap, progress=False)
    assert set(got.arrays) == set(want.arrays)
    for k in want.arrays:
        np.testing.assert_array_equal(got.arrays[k], want.arrays[k])
    np.testing.assert_array_equal(got.episode_ends, want.episode_ends)
    link_from_outside(snap / "meta/info.json")
    with pytest.raises(DatasetFormatError, match="outside the dataset root"):
        read_lerobot(snap)


def test_episode_metadata_gaps_and_order(small):
    path = next((small / "meta/episodes").rglob("*.parquet"))
    t = pq.read_table(path)
    i = t.schema.get_field_index("dataset_from_index")
    frm = t.column(i).to_numpy().copy()
    frm[2] += 1
    pq.write_table(t.set_column(i, "dataset_from_index", pa.array(frm)), path)
    with pytest.raises(DatasetFormatError, match="episode 2 covers rows"):
        read_lerobot(small)


def test_rows_of_the_wrong_episode(small):
    f = small / "data/chunk-000/file-001.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("episode_index")
    ep = t.column(i).to_numpy().copy()
    ep[0] = 0
    pq.write_table(t.set_column(i, "episode_index", pa.array(ep)), f)
    with pytest.raises(DatasetFormatError, match="row 0 belongs to episode 0"):
        read_lerobot(small)


def test_missing_and_truncated_video(small):
    video = small / f"videos/{TOP}/chunk-000/file-001.mp4"
    data = video.read_bytes()
    video.unlink()
    with pytest.raises(DatasetFormatError, match="file-001.mp4: missing"):
        read_lerobot(small, keys=[TOP])
    video.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetFormatError, match=TOP):
        read_lerobot(small, keys=[TOP])


def test_video_size_disagrees_with_info(small):
    info = json.loads((small / "meta/info.json").read_text())
    info["features"][TOP]["shape"] = [8, 12, 3]
    (small / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="8x8 frames"):
        read_lerobot(small, keys=[TOP])


def test_v21_bad_episodes_jsonl(tmp_path):
    eps = make_episodes([2, 3], seed=10, extra=False)
    write_lerobot(tmp_path, eps, version="v2.1")
    p = tmp_path / "meta/episodes.jsonl"
    good = p.read_text()
    p.write_text(good + "{broken\n")
    with pytest.raises(DatasetFormatError, match="episodes.jsonl: line 3"):
        read_lerobot(tmp_path)
    p.write_text(good.replace('"length": 3', '"length": 4'))
    with pytest.raises(DatasetFormatError, match="total_frames is 5"):
        read_lerobot(tmp_path)
    edit_info(tmp_path, total_frames=6)
    with pytest.raises(DatasetFormatError, match="episode_000001.parquet: 3 rows"):
        read_lerobot(tmp_path)


def test_a_truncated_video_of_a_different_codec_still_decodes_what_it_has(tmp_path):
    # a file with fewer frames than rows: the missing rows are reported, not zero-filled
    eps = make_episodes([5], seed=11, cameras={TOP: (8, 8)}, extra=False)
    write_lerobot(tmp_path, eps, video_keys=(TOP,))
    video = next((tmp_path / "videos").rglob("*.mp4"))
    encode_video(video, eps[0][TOP][:3], 10)
    with pytest.raises(DatasetFormatError, match=r"episode 0: .*timestamp 0\.300000"):
        read_lerobot(tmp_path, keys=[TOP])


def test_ragged_list_column(small):
    f = small / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("action")
    ragged = pa.array([[1.0, 2.0, 3.0], [1.0, 2.0], [0.0, 0.0, 0.0], [4.0, 5.0, 6.0]],
                      pa.list_(pa.float32()))
    pq.write_table(t.set_column(i, "action", ragged), f)
    with pytest.raises(DatasetFormatError, match="different lengths"):
        read_lerobot(small, keys=["action"])


def test_float_column_into_an_int_feature_is_refused(small):
    f = small / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("task_index")
    pq.write_table(t.set_column(i, "task_index", pa.array(np.zeros(4), pa.float64())), f)
    with pytest.raises(DatasetFormatError, match="does not cast"):
        read_lerobot(small, keys=["task_index"])


def test_an_empty_keys_list_is_said_plainly(small):
    with pytest.raises(ValueError, match="keys: expected at least one feature .*empty list"):
        read_lerobot(small, keys=[])


def test_integers_outside_the_declared_dtype_are_refused_not_wrapped():
    from robocache.formats import _arrow

    out = np.zeros((2, 2), np.int64)
    big = pa.array([[2**63 + 5, 1], [0, 1]], pa.list_(pa.uint64(), 2))
    with pytest.raises(DatasetFormatError, match=r"stored as uint64 with values in \[0, "
                                                 r"9223372036854775813\], outside the declared"):
        _arrow.column_into(out, big, "x")
    _arrow.column_into(out, pa.array([[7, 1], [0, 2]], pa.list_(pa.uint64(), 2)), "x")
    assert out.tolist() == [[7, 1], [0, 2]]  # in range: read as before
    neg = pa.array([-1, 3], pa.int16())
    with pytest.raises(DatasetFormatError, match="outside the declared uint8"):
        _arrow.column_into(np.zeros(2, np.uint8), neg, "y")


# --- image features: PNG / JPEG bytes in parquet ---------------------------------------------

def png_header(w: int, h: int) -> bytes:
    """A PNG of signature, IHDR and IEND only: a size, no pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def jpeg_header(w: int, h: int) -> bytes:
    """SOI, a comment, a baseline frame header of 3 components, EOI: a size, no scan."""
    comment = b"\xff\xfe" + (2 + 5).to_bytes(2, "big") + b"hello"
    sof = (b"\xff\xc0" + (8 + 3 * 3).to_bytes(2, "big") + bytes([8]) + h.to_bytes(2, "big")
           + w.to_bytes(2, "big") + bytes([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]))
    return b"\xff\xd8" + comment + sof + b"\xff\xd9"


def encode_jpeg_pyav(img: np.ndarray) -> bytes:
    import av

    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = img.shape[1], img.shape[0], "yuvj420p"
    ctx.time_base = 1
    fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
        format="yuvj420p")
    return b"".join(bytes(p) for p in ctx.encode(fr) + ctx.encode(None))


def smooth_image(h, w, seed=0):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 4 + seed * 9) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], -1)
    img[2:5, 3 + seed:9 + seed] = [255, 0, 0]  # a saturated block: sharp colour edges
    return img.astype(np.uint8)


def test_image_size_comes_from_the_header_before_anything_is_decoded():
    """A small file whose header declares a huge picture is refused from its header: no
    decoder runs (a PNG of 0.7 MB can say 16000x16000, 750 MB of RGB)."""
    from _lerobot_writer import encode_png

    from robocache.formats import _video

    img = smooth_image(6, 10)
    assert _video.image_size(encode_png(img)) == (10, 6)
    assert _video.image_size(encode_jpeg_pyav(img)) == (10, 6)
    assert _video.image_size(png_header(7, 3)) == (7, 3)
    assert _video.image_size(jpeg_header(7, 3)) == (7, 3)
    for unknown in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", jpeg_header(7, 0),
                    b"\xff\xd8\xff\xda\x00\x02", b"GIF89a"):
        assert _video.image_size(unknown) is None  # the decoder finds out
    for bomb in (png_header(16000, 16000), jpeg_header(16000, 16000)):
        with pytest.raises(DatasetFormatError, match=r"k row 0: image is 16000x16000, "
                                                     r"meta/info.json declares 10x6"):
            _video.decode_image(bomb, (6, 10, 3), "k row 0")


def jpeg_dataset(root, *, exif_turn=False):
    """A v3 dataset whose image feature holds JPEGs as `datasets.Image` stores a PIL image read
    from a JPEG file (PIL's defaults: quality 75, 4:2:0 chroma); with exif_turn, each stored a
    quarter turn back with EXIF orientation 6. Returns the JPEG bytes of every row."""
    import io

    from PIL import Image

    eps = make_episodes([3, 2], seed=13, images={SIDE: (12, 16)}, extra=False)
    for e in eps:
        for t in range(len(e[SIDE])):
            e[SIDE][t] = smooth_image(12, 16, seed=t)
    write_lerobot(root, eps, image_keys=(SIDE,))
    stored = []
    for p in sorted((root / "data").glob("*/*.parquet")):
        t = pq.read_table(p)
        i = t.schema.get_field_index(SIDE)
        new = []
        for cell in t.column(i).to_pylist():
            im = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
            b, kw = io.BytesIO(), {}
            if exif_turn:
                im = im.transpose(Image.Transpose.ROTATE_90)
                exif = Image.Exif()
                exif[0x0112] = 6
                kw["exif"] = exif.tobytes()
            im.save(b, format="JPEG", **kw)
            new.append({"bytes": b.getvalue(), "path": None})
            stored.append(b.getvalue())
        pq.write_table(t.set_column(i, t.schema.field(i),
                                    pa.array(new, type=t.schema.field(i).type)), p)
    return stored


@pytest.mark.parametrize("exif_turn", [False, True])
def test_jpeg_image_features_decode_as_lerobot_decodes_them(tmp_path, exif_turn):
    """LeRobot decodes image features with PIL (datasets.Image: open, load, exif_transpose);
    FFmpeg upsamples 4:2:0 chroma differently (tens of levels at colour edges)."""
    pytest.importorskip("PIL", reason="Pillow decodes image features as LeRobot does")
    import io

    from PIL import Image, ImageOps

    stored = jpeg_dataset(tmp_path, exif_turn=exif_turn)
    src = read_lerobot(tmp_path, keys=[SIDE], progress=False)
    want = np.stack([np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(b))))
                     for b in stored])
    assert src.arrays[SIDE].shape == want.shape == (5, 12, 16, 3)
    np.testing.assert_array_equal(src.arrays[SIDE], want)


def test_without_pillow_images_decode_with_pyav(v3, monkeypatch):
    """Pillow is optional: without it PNGs decode exactly through PyAV, JPEGs closely."""
    from robocache.formats import _video

    monkeypatch.setattr(_video, "_pil", lambda: None)
    root, eps = v3
    src = read_lerobot(root, keys=[SIDE], progress=False)  # PNGs
    np.testing.assert_array_equal(src.arrays[SIDE], expected(eps, SIDE))
    img = smooth_image(12, 16)
    got = _video.decode_image(encode_jpeg_pyav(img), (12, 16, 3), "k")
    assert got.shape == (12, 16, 3)
    assert np.abs(got.astype(int) - img).mean() < 12
    grey = _video.decode_image(encode_jpeg_pyav(img), (12, 16, 1), "k")
    assert grey.shape == (12, 16, 1)


def test_a_video_key_at_one_offset_has_no_time_axis_as_lerobot_returns_it(v3, tmp_path):
    """LeRobotDataset squeezes the time axis of a video key read at one offset (frames
    .squeeze(0)); its parquet image keys and every other key keep it, and so does RoboCache -
    also through a saved cache, and with an image transform ([B, C, h, w])."""
    pytest.importorskip("av")
    root, _ = v3
    store = rc.TrajectoryStore.from_lerobot(root, device="cpu", progress=False)
    deltas = {TOP: [0], SIDE: [0], WRIST: [-1, 0], "action": [0]}
    plain = rc.TrajectoryDataset(store, delta_indices={k: [0, 1] if k == TOP else v
                                                       for k, v in deltas.items()})
    idx = list(range(len(plain)))
    want = plain.get_batch(idx)
    for st in (store, rc.TrajectoryStore.load(store.save(tmp_path / "c"), device="cpu")):
        got = rc.TrajectoryDataset(st, delta_indices=deltas).get_batch(idx)
        B = len(idx)
        assert tuple(got[TOP].shape) == (B, *CAMS[TOP], 3)  # video, one offset: squeezed
        assert tuple(got[f"{TOP}_is_pad"].shape) == (B, 1)
        assert tuple(got[SIDE].shape) == (B, 1, 6, 10, 3)  # a parquet image key keeps it
        assert tuple(got[WRIST].shape) == (B, 2, *CAMS[WRIST], 3)
        assert tuple(got["action"].shape)[:2] == (B, 1)
        assert torch.equal(got[TOP], want[TOP][:, 0])
    tf = rc.TrajectoryDataset(store, delta_indices=deltas,
                              image_transforms={TOP: rc.ImageTransform()}).get_batch(idx)
    assert tuple(tf[TOP].shape) == (len(idx), 3, *CAMS[TOP])
    assert torch.equal(tf[TOP], want[TOP][:, 0].permute(0, 3, 1, 2).float() / 255)
    # a store that is not LeRobot's keeps the axis for every camera key
    other = rc.TrajectoryStore.from_arrays({TOP: np.asarray(store[TOP])}, store.episode_ends,
                                           device="cpu")
    assert rc.TrajectoryDataset(other, delta_indices={TOP: [0]})[0][TOP].shape[0] == 1
