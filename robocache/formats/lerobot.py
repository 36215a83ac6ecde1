"""Read a LeRobot dataset (codebase v3.0, and v2.1 / v2.0) from a local directory.

v3.0 layout (LeRobot >= 0.4):
  meta/info.json                     codebase_version, fps, features {name: {dtype, shape, names,
                                     info}}, data_path / video_path templates, chunks_size, ...
  meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode: episode_index, length,
                                     dataset_from_index, dataset_to_index, data/chunk_index,
                                     data/file_index, videos/<key>/{chunk_index, file_index,
                                     from_timestamp, to_timestamp}, tasks, stats/...
  data/chunk-XXX/file-XXX.parquet    one row per frame, many episodes per file
  videos/<key>/chunk-XXX/file-XXX.mp4 many episodes per file; episode e starts at its
                                     videos/<key>/from_timestamp
  meta/stats.json, meta/tasks.parquet
v2.1 layout: meta/episodes.jsonl ({episode_index, tasks, length} per line), meta/tasks.jsonl,
  meta/episodes_stats.jsonl, one parquet and one mp4 per episode:
  data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet,
  videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4.

What comes back (a TrajectorySource), keys named as LeRobot's features:
- numeric features as contiguous arrays: a column of scalars (shape [1] in info.json, what
  `datasets.Value` writes) gives [N], a column of lists gives [N, *shape]: the shapes LeRobot's
  own __getitem__ returns;
- "video" features decoded once into uint8 [N, H, W, C], each row's frame being the one nearest
  its timestamp (+ the episode's from_timestamp in v3) within tolerance_s; "image" features
  (PNG/JPEG bytes in parquet) decoded with Pillow as LeRobot's datasets.Image does, or, where
  Pillow is not installed, with PyAV (JPEGs then differ from LeRobot's, by tens of levels at
  colour edges of chroma-subsampled ones: see _video), each refused from its header when its
  size is not the declared one;
- timestamps (float64), fps, episode bounds from the episode metadata, stats.json as float64
  arrays (v2.1 without stats.json: episodes_stats.jsonl aggregated: mean, std, min, max, count).
keys=None loads every numeric, video and image feature except the per-frame bookkeeping
columns (timestamp, frame_index, episode_index, index), which can still be asked for by name.
info.json's data_path / video_path templates may use only their layout's fields, the integer
ones bare or with a zero-filled width ({chunk_index:03d}, {episode_index:06d}), {video_key}
bare: what LeRobot writes. Arrays are sized from info.json's shapes and the episode metadata's
frame count; a size no array can have is an error naming both.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import _deps, _progress
from .._cpus import usable_cpus
from .._errors import DatasetFormatError
from . import _paths
from .source import TrajectorySource

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index")
NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"}
V3_DATA_FIELDS = {"chunk_index", "file_index"}
V3_VIDEO_FIELDS = {"video_key", "chunk_index", "file_index"}
V2_DATA_FIELDS = {"episode_chunk", "episode_index"}
V2_VIDEO_FIELDS = {"episode_chunk", "episode_index", "video_key"}
TEXT_FIELDS = frozenset({"video_key"})  # the template fields that are strings, not integers
V3_DEFAULT_CHUNKS_SIZE = 1000
MAX_WORKERS = 8


@_deps.hints("read_lerobot")
def read_lerobot(root, keys=None, video_backend: str | None = None, tolerance_s: float = 1e-4,
                 progress: bool | None = None) -> TrajectorySource:
    """Read the LeRobot dataset in directory `root` (v3.0, v2.1 or v2.0).

    keys:          feature names to load (default: every numeric / video / image feature but
                   the bookkeeping columns); cameras not asked for are never decoded.
    video_backend: "pyav" (default) or "torchcodec" (must be installed).
    tolerance_s:   how far a row's timestamp may be from the frame it gets.
    progress:      None: a bar for loads over ~1 s on a terminal; True: always; False: never.
    """
    root = _paths.root_dir(root, "root")
    if video_backend not in (None, "pyav", "torchcodec"):
        raise ValueError(f"video_backend: expected None, 'pyav' or 'torchcodec', "
                         f"got {video_backend!r}")
    if video_backend == "torchcodec":
        try:
            import torchcodec  # noqa: F401
        except ImportError:
            raise ImportError("video_backend='torchcodec' needs the torchcodec package "
                              "(pip install torchcodec), or use video_backend='pyav'") from None
    if not (isinstance(tolerance_s, (int, float)) and tolerance_s >= 0):
        raise ValueError(f"tolerance_s: expected a number >= 0, got {tolerance_s!r}")
    info = _load_info(root)
    version = info["codebase_version"]
    features = info["features"]
    selected = _select(features, keys)
    video_keys = [k for k in selected if features[k]["dtype"] == "video"]
    if version.startswith("v3"):
        layout = _V3(root, info, video_keys)
    else:
        layout = _V2(root, info, video_keys)
    layout.file_first = {p: first for p, first, _ in layout.data_files}
    ends = np.cumsum(layout.lengths, dtype=np.int64)
    n = int(ends[-1]) if len(ends) else 0
    total = info.get("total_frames")
    if isinstance(total, int) and total != n:
        raise DatasetFormatError(f"{root / 'meta/info.json'}: total_frames is {total} but the "
                                 f"episode metadata ({layout.episodes_file}) sums to {n} frames")

    stats = _load_stats(root, version, selected)  # small files first: fail before the big reads
    tasks = _load_tasks(root, version)
    first = layout.data_files[0][0] if layout.data_files else None
    schema = _schema(first) if first is not None else None
    out: dict[str, np.ndarray] = {}
    # the shapes come from info.json, the frame count from the episode metadata
    frames = f"{n} frames in {root / layout.episodes_file}"
    for k in selected:
        out[k] = _allocate(k, features[k], n, schema, first,
                           f"{root / 'meta/info.json'}: feature {k!r} x {frames}")
    timestamps = _paths.empty((n,), np.float64, f"timestamps of {frames}")

    _read_tables(root, layout, features, selected, out, timestamps, n, progress)
    _decode_videos(layout, features, video_keys, out, timestamps, tolerance_s,
                   video_backend or "pyav", progress)

    return TrajectorySource(
        arrays=out, episode_ends=ends, fps=float(info["fps"]), timestamps=timestamps,
        stats=stats or None,
        image_keys=tuple(k for k in selected if features[k]["dtype"] in ("video", "image")),
        meta={"format": "lerobot", "codebase_version": version, "root": str(root),
              "robot_type": info.get("robot_type"), "tasks": tasks,
              "episode_index": layout.episode_index.tolist(),
              "features": {k: features[k] for k in selected}},
    )


# ---------------------------------------------------------------------------------------------
# metadata

def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from None


def _read_jsonl(path: Path, what: str) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetFormatError(f"{path}: line {lineno} is not valid JSON "
                                             f"({exc})") from None
                if not isinstance(row, dict):
                    raise DatasetFormatError(f"{path}: line {lineno} is not a JSON object")
                rows.append(row)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing ({what})") from None
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc})") from None
    return rows


def _load_info(root: Path) -> dict:
    path = _paths.inside(root, "meta/info.json", "meta/info.json")
    info = _read_json(path, "every LeRobot dataset has meta/info.json")
    if not isinstance(info, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    if not isinstance(version, str) or not (version.startswith("v3.") or version in
                                            ("v2.0", "v2.1")):
        raise DatasetFormatError(f"{path}: codebase_version {version!r} is not supported "
                                 f"(expected 'v3.x', 'v2.1' or 'v2.0')")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
        raise DatasetFormatError(f"{path}: fps must be a positive number, got {fps!r}")
    feats = info.get("features")
    if not isinstance(feats, dict) or not feats:
        raise DatasetFormatError(f"{path}: 'features' must be a non-empty object")
    for name, ft in feats.items():
        if not isinstance(ft, dict) or not isinstance(ft.get("dtype"), str):
            raise DatasetFormatError(f"{path}: feature {name!r} needs a 'dtype' string")
        shape = ft.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise DatasetFormatError(f"{path}: feature {name!r} has shape {shape!r}; expected "
                                     f"a list of non-negative integers")
        ft["shape"] = tuple(shape)
    return info


def _select(features: dict, keys) -> list[str]:
    usable = [k for k, ft in features.items()
              if ft["dtype"] in NUMERIC or ft["dtype"] in ("video", "image")]
    if keys is None:
        return [k for k in usable if k not in BOOKKEEPING]
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    for k in keys:
        if k not in features:
            raise ValueError(f"keys: {k!r} is not a feature of this dataset; features: "
                             f"{sorted(features)}")
        if k not in usable:
            raise ValueError(f"keys: {k!r} has dtype {features[k]['dtype']!r}, which is not "
                             f"numeric, video or image")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys: expected distinct names, got {keys}")
    if not keys:
        raise ValueError(f"keys: expected at least one feature (None for all), got an empty "
                         f"list; features: {sorted(usable)}")
    return keys


def _int_column(table, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise DatasetFormatError(f"{path}: column {name!r} must hold integers without nulls, "
                                 f"got {col.type} with {col.null_count} nulls")
    return col.to_numpy().astype(np.int64)


def _float_column(table, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)) or col.null_count:
        raise DatasetFormatError(f"{path}: column {name!r} must hold numbers without nulls, "
                                 f"got {col.type} with {col.null_count} nulls")
    return col.to_numpy().astype(np.float64)


def _read_parquet(path: Path, columns=None, what: str = "parquet file"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing ({what})") from None
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(f"{path}: unreadable {what} ({exc})") from None


def _schema(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing (data file)") from None
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(f"{path}: unreadable parquet file ({exc})") from None


def _hwc(name: str, ft: dict) -> tuple[int, int, int]:
    shape = ft["shape"]
    if len(shape) != 3:
        raise DatasetFormatError(f"meta/info.json: {ft['dtype']} feature {name!r} has shape "
                                 f"{list(shape)}; expected 3 dimensions")
    names = ft.get("names")
    if isinstance(names, (list, tuple)) and len(names) == 3:
        lowered = [str(x).lower() for x in names]
        if lowered[0] in ("channel", "channels", "c") and lowered[2] not in ("channel", "channels"):
            return shape[1], shape[2], shape[0]  # declared channel-first
    return shape[0], shape[1], shape[2]


def _allocate(name: str, ft: dict, n: int, schema, first: Path | None,
              where: str) -> np.ndarray:
    from . import _arrow

    if ft["dtype"] in ("video", "image"):
        return _paths.empty((n, *_hwc(name, ft)), np.uint8, where)
    dtype = np.dtype(ft["dtype"])
    if dtype.kind in "iu" and dtype.itemsize < 8:
        # LeRobot hands every integer feature out as int64 (torch.tensor of Python ints in
        # hf_transform_to_torch); floats it makes float32, which the dataset's default does
        dtype = np.dtype(np.int64)
    shape = tuple(ft["shape"])
    if schema is not None:
        idx = schema.get_field_index(name)
        if idx < 0:
            raise DatasetFormatError(f"{first}: missing column {name!r} (a feature in "
                                     f"meta/info.json)")
        if not _arrow.is_list_type(schema.field(idx).type):
            if math.prod(shape) != 1:  # exact: np.prod wraps around on huge shapes
                raise DatasetFormatError(f"{first}: column {name!r} holds one value per row but "
                                         f"meta/info.json declares shape {list(shape)}")
            return _paths.empty((n,), dtype, where)
    return _paths.empty((n, *shape), dtype, where)


# ---------------------------------------------------------------------------------------------
# the two layouts: which files hold which episodes

class _Layout:
    episodes_file: str
    episode_index: np.ndarray   # int64 [E], original episode ids in row order
    lengths: np.ndarray         # int64 [E]
    data_files: list            # [(path, first_row, rows or None)]
    file_first: dict            # path -> first_row
    videos: dict                # key -> [(path, [episode positions], from_timestamps)]


class _V3(_Layout):
    def __init__(self, root: Path, info: dict, video_keys: list[str]):
        data_tpl = _paths.check_template(info.get("data_path"), V3_DATA_FIELDS,
                                         f"{root / 'meta/info.json'}: data_path")
        ep_dir = _paths.inside(root, "meta/episodes", "meta/episodes")
        files = sorted(ep_dir.glob("chunk-*/file-*.parquet")) if ep_dir.is_dir() else []
        if not files:
            raise DatasetFormatError(f"{ep_dir}: no episode metadata "
                                     f"(meta/episodes/chunk-XXX/file-XXX.parquet)")
        self.episodes_file = "meta/episodes"
        wanted = ["episode_index", "length", "dataset_from_index", "dataset_to_index",
                  "data/chunk_index", "data/file_index"]
        for k in video_keys:
            wanted += [f"videos/{k}/chunk_index", f"videos/{k}/file_index",
                       f"videos/{k}/from_timestamp"]
        cols: dict[str, list] = {}
        present = None
        for f in files:
            f = _paths.inside(root, str(f.relative_to(root)), "meta/episodes")
            names = _schema(f).names
            need = ["episode_index", "dataset_from_index", "dataset_to_index"]
            for k in video_keys:  # from_timestamp: where each episode starts in its file
                need += [f"videos/{k}/chunk_index", f"videos/{k}/file_index",
                         f"videos/{k}/from_timestamp"]
            for col in need:
                if col not in names:
                    raise DatasetFormatError(f"{f}: missing column {col!r}")
            here = [c for c in wanted if c in names]
            if present is None:
                present = here
            elif here != present:
                raise DatasetFormatError(f"{f}: columns {sorted(set(present) ^ set(here))} are "
                                         f"in some episode metadata files but not in others")
            table = _read_parquet(f, here, "episode metadata")
            for c in here:
                reader = _float_column if c.endswith("timestamp") else _int_column
                cols.setdefault(c, []).append(reader(table, c, f))
        cat = {c: np.concatenate(v) for c, v in cols.items()}
        order = np.argsort(cat["episode_index"], kind="stable")
        cat = {c: v[order] for c, v in cat.items()}
        self.episode_index = cat["episode_index"]
        if len(self.episode_index) == 0:
            raise DatasetFormatError(f"{ep_dir}: no episodes")
        if len(np.unique(self.episode_index)) != len(self.episode_index):
            raise DatasetFormatError(f"{ep_dir}: an episode_index appears twice")
        frm, to = cat["dataset_from_index"], cat["dataset_to_index"]
        self.lengths = to - frm
        expect_from = np.concatenate([[0], to[:-1]])
        bad = np.flatnonzero((frm != expect_from) | (self.lengths <= 0))
        if bad.size:
            e = int(bad[0])
            raise DatasetFormatError(
                f"{ep_dir}: episode {int(self.episode_index[e])} covers rows "
                f"[{int(frm[e])}, {int(to[e])}); expected a non-empty range starting at "
                f"{int(expect_from[e])} (episodes must tile the rows in order)")
        if "length" in cat and (cat["length"] != self.lengths).any():
            e = int(np.flatnonzero(cat["length"] != self.lengths)[0])
            raise DatasetFormatError(f"{ep_dir}: episode {int(self.episode_index[e])} has length "
                                     f"{int(cat['length'][e])} but covers "
                                     f"{int(self.lengths[e])} rows")
        # data files in (chunk, file) order; their rows concatenate to the dataset's rows
        if "data/chunk_index" in cat and "data/file_index" in cat:
            pairs = sorted(set(zip(cat["data/chunk_index"].tolist(),
                                   cat["data/file_index"].tolist(), strict=True)))
            paths = [_paths.inside(root, data_tpl.format(chunk_index=c, file_index=i),
                                   "meta/info.json data_path") for c, i in pairs]
        else:
            data_dir = _paths.inside(root, "data", "data")
            paths = [_paths.inside(root, str(p.relative_to(root)), "data")
                     for p in sorted(data_dir.glob("chunk-*/file-*.parquet"))]
        self.data_files = []
        row = 0
        for p in paths:
            rows = _metadata(p).num_rows
            self.data_files.append((p, row, rows))
            row += rows
        if row != int(to[-1]):
            raise DatasetFormatError(f"{root / 'data'}: the data files hold {row} rows but the "
                                     f"episode metadata ends at row {int(to[-1])}")
        # videos: per key, the episodes of each file
        self.videos = {}
        if video_keys:
            video_tpl = _paths.check_template(info.get("video_path"), V3_VIDEO_FIELDS,
                                              f"{root / 'meta/info.json'}: video_path",
                                              text_fields=TEXT_FIELDS)
        for k in video_keys:
            chunk, fidx = cat[f"videos/{k}/chunk_index"], cat[f"videos/{k}/file_index"]
            start = cat[f"videos/{k}/from_timestamp"]
            groups: dict[tuple[int, int], list[int]] = {}
            for e, pair in enumerate(zip(chunk.tolist(), fidx.tolist(), strict=True)):
                groups.setdefault(pair, []).append(e)
            self.videos[k] = [
                (_paths.inside(root, video_tpl.format(video_key=k, chunk_index=c, file_index=i),
                               "meta/info.json video_path"), eps, start[eps])
                for (c, i), eps in sorted(groups.items())]


class _V2(_Layout):
    def __init__(self, root: Path, info: dict, video_keys: list[str]):
        data_tpl = _paths.check_template(info.get("data_path"), V2_DATA_FIELDS,
                                         f"{root / 'meta/info.json'}: data_path")
        chunks_size = info.get("chunks_size", V3_DEFAULT_CHUNKS_SIZE)
        if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or chunks_size <= 0:
            raise DatasetFormatError(f"{root / 'meta/info.json'}: chunks_size must be a positive "
                                     f"integer, got {chunks_size!r}")
        path = _paths.inside(root, "meta/episodes.jsonl", "meta/episodes.jsonl")
        self.episodes_file = "meta/episodes.jsonl"
        rows = _read_jsonl(path, "the episode list of a v2 dataset")
        ids, lengths = [], []
        for i, r in enumerate(rows):
            e, n = r.get("episode_index"), r.get("length")
            if not (isinstance(e, int) and isinstance(n, int) and e >= 0 and n > 0) \
                    or isinstance(e, bool) or isinstance(n, bool):
                raise DatasetFormatError(f"{path}: entry {i} needs integer episode_index >= 0 and "
                                         f"length > 0, got {e!r} and {n!r}")
            ids.append(e)
            lengths.append(n)
        if not ids:
            raise DatasetFormatError(f"{path}: no episodes")
        order = np.argsort(ids, kind="stable")
        self.episode_index = np.asarray(ids, dtype=np.int64)[order]
        self.lengths = np.asarray(lengths, dtype=np.int64)[order]
        if len(np.unique(self.episode_index)) != len(self.episode_index):
            raise DatasetFormatError(f"{path}: an episode_index appears twice")
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.data_files = []
        for e, s, n in zip(self.episode_index.tolist(), starts.tolist(),
                           self.lengths.tolist(), strict=True):
            rel = data_tpl.format(episode_chunk=e // chunks_size, episode_index=e)
            self.data_files.append((_paths.inside(root, rel, "meta/info.json data_path"), s, n))
        self.videos = {}
        if video_keys:
            video_tpl = _paths.check_template(info.get("video_path"), V2_VIDEO_FIELDS,
                                              f"{root / 'meta/info.json'}: video_path",
                                              text_fields=TEXT_FIELDS)
        for k in video_keys:
            self.videos[k] = [
                (_paths.inside(root, video_tpl.format(episode_chunk=e // chunks_size,
                                                      episode_index=e, video_key=k),
                               "meta/info.json video_path"), [pos], np.zeros(1))
                for pos, e in enumerate(self.episode_index.tolist())]


def _metadata(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing (data file named by the episode "
                                 f"metadata)") from None
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(f"{path}: unreadable parquet file ({exc})") from None


# ---------------------------------------------------------------------------------------------
# reading

TASK_BYTES = 32 << 20  # rows of output per read task (whole row groups)


def _read_tables(root, layout, features, selected, out, timestamps, n, progress) -> None:
    """Read every data file's columns into their rows of `out`, in parallel over files and
    groups of row groups (pyarrow releases the GIL while it decodes)."""
    from . import _arrow, _video

    table_keys = [k for k in selected if features[k]["dtype"] != "video"]
    columns = list(dict.fromkeys([*table_keys, "timestamp", "episode_index"]))
    expected_episode = np.repeat(layout.episode_index, layout.lengths)
    row_bytes = sum(out[k][:1].nbytes for k in table_keys) + 8
    total_bytes = row_bytes * n

    def plan(item):
        path, first, rows = item
        md = _metadata(path)
        names = md.schema.to_arrow_schema().names
        for c in columns:
            if c not in names and c != "episode_index":
                raise DatasetFormatError(f"{path}: missing column {c!r}")
        if rows is not None and md.num_rows != rows:
            raise DatasetFormatError(f"{path}: {md.num_rows} rows, the episode metadata "
                                     f"expects {rows}")
        if first + md.num_rows > n:
            raise DatasetFormatError(f"{path}: rows beyond the {n} the episode metadata lists")
        tasks, group, group_rows, row = [], [], 0, first
        for i in range(md.num_row_groups):
            group.append(i)
            group_rows += md.row_group(i).num_rows
            if group_rows * row_bytes >= TASK_BYTES or i == md.num_row_groups - 1:
                tasks.append((path, md, group, row, group_rows,
                              [c for c in columns if c in names]))
                row, group, group_rows = row + group_rows, [], 0
        return tasks

    tasks = [t for p in _run(plan, layout.data_files, None) for t in p]
    threads_inside = len(tasks) == 1  # one task: let pyarrow use its own threads

    def one(task):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path, md, groups, first, rows, cols = task
        try:
            table = pq.ParquetFile(path, metadata=md).read_row_groups(
                groups, columns=cols, use_threads=threads_inside)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetFormatError(f"{path}: unreadable parquet data ({exc})") from None
        if table.num_rows != rows:
            raise DatasetFormatError(f"{path}: row groups {groups[0]}..{groups[-1]} hold "
                                     f"{table.num_rows} rows, its footer says {rows}")
        sl = slice(first, first + rows)
        if "episode_index" in table.column_names:
            got = _int_column(table, "episode_index", path)
            bad = np.flatnonzero(got != expected_episode[sl])
            if bad.size:
                r = int(bad[0])
                local = first + r - (layout.file_first[path])
                raise DatasetFormatError(
                    f"{path}: row {local} belongs to episode {int(got[r])}, but the episode "
                    f"metadata puts global row {first + r} in episode "
                    f"{int(expected_episode[first + r])}")
        _arrow.column_into(timestamps[sl], table.column("timestamp"), f"{path}: 'timestamp'")
        for k in table_keys:
            if features[k]["dtype"] == "image":
                _images_into(out[k][sl], table.column(k), f"{path}: {k!r}", _video)
            else:
                _arrow.column_into(out[k][sl], table.column(k), f"{path}: {k!r}")
        return rows * row_bytes

    with _progress.bar(total_bytes, "reading parquet", progress=progress) as bar:
        _run(one, tasks, bar)
    if not np.isfinite(timestamps).all():
        r = int(np.flatnonzero(~np.isfinite(timestamps))[0])
        raise DatasetFormatError(f"{root / 'data'}: timestamp of row {r} is not finite")


def _images_into(out: np.ndarray, column, where: str, _video) -> None:
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise DatasetFormatError(f"{where}: image struct has no 'bytes' field")
        col = col.field("bytes")
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise DatasetFormatError(f"{where}: expected encoded image bytes, got {col.type}")
    for i, b in enumerate(col.to_pylist()):
        if b is None:
            raise DatasetFormatError(f"{where}: row {i} has no image bytes (images stored as "
                                     f"separate files are not supported)")
        out[i] = _video.decode_image(b, out.shape[1:], f"{where} row {i}")


def _decode_videos(layout, features, video_keys, out, timestamps, tol, backend, progress):
    from . import _video

    if not video_keys:
        return
    starts = np.concatenate([[0], np.cumsum(layout.lengths)[:-1]])
    jobs = []
    for k in video_keys:
        for path, eps, offsets in layout.videos[k]:
            eps = np.asarray(eps, dtype=np.int64)
            rows = np.concatenate([np.arange(starts[e], starts[e] + layout.lengths[e])
                                   for e in eps])
            per = layout.lengths[eps]
            offs = np.repeat(np.asarray(offsets, dtype=np.float64), per)
            q = _video.Queries(times=timestamps[rows] + offs, rows=rows,
                               episodes=np.repeat(layout.episode_index[eps], per), offsets=offs)
            jobs.append((k, path, q))
    total = sum(len(q.rows) for _, _, q in jobs)
    with _progress.bar(total, "decoding video", unit="frame", progress=progress) as bar:
        def one(job):
            k, path, q = job
            if not path.is_file():
                raise DatasetFormatError(f"{path}: missing (video of {k!r} for episodes "
                                         f"{sorted(set(q.episodes.tolist()))[:5]}...)")
            _video.decode_nearest(path, q, out[k], key=k, tolerance_s=tol, backend=backend,
                                  bar=bar)
            return 0

        _run(one, jobs, None, workers=min(4, MAX_WORKERS))


def _run(fn, items, bar, workers: int = MAX_WORKERS) -> list:
    """[fn(item) for item in items] on a thread pool (Arrow and the decoders release the GIL),
    results in order; with a bar, each result (a number) advances it. The first error is
    raised once the jobs already running have stopped; the others are cancelled."""
    workers = max(1, min(workers, usable_cpus(), len(items)))
    results = []
    if workers == 1:
        for it in items:
            results.append(fn(it))
            if bar is not None:
                bar.update(results[-1])
        return results
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, it) for it in items]
        try:
            for f in futures:
                results.append(f.result())
                if bar is not None:
                    bar.update(results[-1])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


# ---------------------------------------------------------------------------------------------
# stats and tasks

def _as_float(value, where: str) -> np.ndarray:
    if _holds_null(value):  # NumPy would turn a JSON null into NaN
        raise DatasetFormatError(f"{where}: expected numbers, got null in {str(value)[:80]}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: expected numbers (nested lists of one shape), "
                                 f"got {str(value)[:80]}") from None
    return arr


def _holds_null(value) -> bool:
    if value is None:
        return True
    return isinstance(value, list) and any(_holds_null(v) for v in value)


def _load_stats(root: Path, version: str, selected: list[str]) -> dict:
    """The dataset's statistics as LeRobot loads them: v2.1 aggregates meta/episodes_stats.jsonl
    (LeRobot 0.3 ignores a stats.json there), v2.0 and v3.0 read meta/stats.json."""
    eps_path = _paths.inside(root, "meta/episodes_stats.jsonl", "meta/episodes_stats.jsonl")
    if version.startswith("v2.1") and eps_path.is_file():
        return _aggregate(eps_path, selected)
    path = _paths.inside(root, "meta/stats.json", "meta/stats.json")
    if path.is_file():
        raw = _read_json(path, "stats")
        if not isinstance(raw, dict):
            raise DatasetFormatError(f"{path}: expected a JSON object")
        stats = {}
        for k in selected:
            per = raw.get(k)
            if per is None:
                continue
            if not isinstance(per, dict):
                raise DatasetFormatError(f"{path}: stats of {k!r} must be an object")
            stats[k] = {s: _as_float(v, f"{path}: {k}/{s}") for s, v in per.items()}
        return stats
    if version.startswith("v2") and eps_path.is_file():
        return _aggregate(eps_path, selected)
    return {}


def _aggregate(path: Path, selected: list[str]) -> dict:
    """Per-episode stats (v2.1) -> dataset stats, as LeRobot's aggregate_feature_stats computes
    them, step for step: count-weighted mean, pooled variance, min of mins, max of maxes."""
    per_key: dict[str, list[dict]] = {}
    for i, row in enumerate(_read_jsonl(path, "per-episode stats")):
        st = row.get("stats")
        if not isinstance(st, dict):
            raise DatasetFormatError(f"{path}: entry {i} has no 'stats' object")
        for k in selected:
            if k in st:
                d = st[k]
                try:
                    per_key.setdefault(k, []).append(
                        {s: _as_float(d[s], f"{path}: entry {i} {k}/{s}")
                         for s in ("mean", "std", "min", "max", "count")})
                except (KeyError, TypeError):
                    raise DatasetFormatError(f"{path}: entry {i}: stats of {k!r} need mean, std, "
                                             f"min, max and count") from None
    stats = {}
    for k, items in per_key.items():
        try:
            if any(it["count"].shape != (1,) for it in items):
                raise ValueError("a count is not one number")
            counts = np.stack([it["count"] for it in items])  # [E, 1]
            if not (counts > 0).all():
                raise ValueError("a count is not positive")
            means = np.stack([it["mean"] for it in items])
            variances = np.stack([it["std"] ** 2 for it in items])
            total = counts.sum(axis=0)
            while counts.ndim < means.ndim:
                counts = np.expand_dims(counts, axis=-1)
            mean = (means * counts).sum(axis=0) / total
            var = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
            stats[k] = {"mean": mean, "std": np.sqrt(var),
                        "min": np.min(np.stack([it["min"] for it in items]), axis=0),
                        "max": np.max(np.stack([it["max"] for it in items]), axis=0),
                        "count": total}
        except ValueError as exc:
            raise DatasetFormatError(f"{path}: stats of {k!r} are inconsistent ({exc})") from None
    return stats


def _is_text(pa, t) -> bool:
    """A string column of any Arrow flavour: pandas 3 writes its string index as large_string;
    string_view and dictionary-encoded (categorical) strings are read the same way."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t)


MAX_TASK_INDEX = 1 << 24  # task tables are lists by index: no 10**9 entries for a typo


def _load_tasks(root: Path, version: str) -> list:
    """Task strings by task_index (None where an index is unused)."""
    import pyarrow as pa

    found: dict[int, str] = {}
    if version.startswith("v3"):
        path = _paths.inside(root, "meta/tasks.parquet", "meta/tasks.parquet")
        if not path.is_file():
            return []
        table = _read_parquet(path, None, "task table")
        if "task_index" not in table.column_names:
            raise DatasetFormatError(f"{path}: missing column 'task_index'")
        idx = _int_column(table, "task_index", path)
        # LeRobot writes the task strings as the pandas index ("__index_level_0__") or "task"
        names = [c for c in table.column_names if c != "task_index"
                 and _is_text(pa, table.schema.field(c).type)]
        names.sort(key=lambda c: c != "task")
        if not names:
            raise DatasetFormatError(f"{path}: no column of task strings")
        found = dict(zip(idx.tolist(), table.column(names[0]).to_pylist(), strict=True))
        if len(found) != len(idx):
            raise DatasetFormatError(f"{path}: a task_index appears twice")
    else:
        path = _paths.inside(root, "meta/tasks.jsonl", "meta/tasks.jsonl")
        if not path.is_file():
            return []
        for i, row in enumerate(_read_jsonl(path, "task table")):
            t, s = row.get("task_index"), row.get("task")
            if isinstance(t, bool) or not isinstance(t, int) or not isinstance(s, str):
                raise DatasetFormatError(f"{path}: entry {i} needs an integer task_index and a "
                                         f"task string")
            if t in found:
                raise DatasetFormatError(f"{path}: entry {i} repeats task_index {t}")
            found[t] = s
    if not found:
        return []
    if min(found) < 0:
        raise DatasetFormatError(f"{path}: negative task_index")
    if max(found) >= MAX_TASK_INDEX:  # the table is a list by task_index
        raise DatasetFormatError(f"{path}: task_index {max(found)} for {len(found)} tasks "
                                 f"(expected indices below {MAX_TASK_INDEX})")
    return [found.get(i) for i in range(max(found) + 1)]
