"""Write small LeRobot datasets (v3.0 and v2.1) the way LeRobot lays them out, for tests.

Follows lerobot/datasets/utils.py: info.json keys (codebase_version, robot_type, total_*, chunks_size,
data_files_size_in_mb, video_files_size_in_mb, fps, splits, data_path, video_path, features),
DEFAULT_FEATURES (timestamp float32, frame_index / episode_index / index / task_index int64, shape
[1] -> scalar columns), features of shape [n] -> fixed-size lists (datasets.Sequence(length=n)),
of 2+ dimensions -> nested variable lists (the storage of datasets.Array2D..5D); v3 episode
metadata columns (episode_index, tasks, length, data/chunk_index, data/file_index,
dataset_from_index, dataset_to_index, videos/<key>/{chunk_index,file_index,from_timestamp,
to_timestamp}, meta/episodes/{chunk_index,file_index}); several episodes per data and video file.
Videos are written with PyAV (lossless libx264rgb by default, so decoded frames compare exactly).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
LOSSLESS = ("libx264rgb", "rgb24", {"qp": "0"})
LOSSY = ("libx264", "yuv420p", {"crf": "23", "g": "2"})


def encode_video(path: Path, frames: np.ndarray, fps: int, codec=LOSSLESS) -> None:
    name, pix, opts = codec
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(name, rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = pix
        s.options = dict(opts)
        s.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            fr.pts = i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def encode_png(img: np.ndarray) -> bytes:
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return b"".join(bytes(p) for p in ctx.encode(fr) + ctx.encode(None))


def column(values: np.ndarray) -> pa.Array:
    """Rows of a feature as LeRobot's parquet holds them."""
    n = len(values)
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(values.reshape(-1))
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    arr = flat
    for size in reversed(values.shape[1:]):  # nested variable lists (datasets.ArrayXD storage)
        count = len(arr) // size
        arr = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * size), arr)
    assert len(arr) == n
    return arr


def feature_of(arr: np.ndarray, kind: str, fps: int) -> dict:
    if kind == "video":
        h, w, c = arr.shape[1:]
        return {"dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": "h264",
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                         "video.fps": fps, "video.channels": c, "has_audio": False}}
    if kind == "image":
        return {"dtype": "image", "shape": list(arr.shape[1:]),
                "names": ["height", "width", "channels"]}
    shape = list(arr.shape[1:]) or [1]
    return {"dtype": arr.dtype.name, "shape": shape,
            "names": [f"d{i}" for i in range(shape[0])] if len(shape) == 1 else None}


def stats_of(arr: np.ndarray, kind: str) -> dict:
    if kind in ("video", "image"):
        x = arr.astype(np.float64).transpose(3, 0, 1, 2).reshape(arr.shape[3], -1) / 255.0
        red = lambda f: f(x, axis=1).reshape(-1, 1, 1).tolist()  # noqa: E731
        return {"mean": red(np.mean), "std": red(np.std), "min": red(np.min),
                "max": red(np.max), "count": [len(arr)]}
    x = arr.astype(np.float64).reshape(len(arr), -1) if arr.ndim > 1 else \
        arr.astype(np.float64)[:, None]
    shape = arr.shape[1:] or (1,)
    out = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = np.quantile(x, q / 100, axis=0)
    res = {k: v.reshape(shape).tolist() for k, v in out.items()}
    res["count"] = [len(arr)]
    return res


def write_lerobot(root, episodes: list[dict], *, fps: int = 10, version: str = "v3.0",
                  video_keys=(), image_keys=(), episodes_per_file: int = 2,
                  episodes_per_video_file: int = 3, episodes_meta_files: int = 1,
                  chunks_size: int = 1000, codec=LOSSLESS, tasks=("push the block",),
                  write_stats: bool = True, row_group_size: int | None = None) -> dict:
    """episodes: list of {key: array [L, ...]} (camera keys uint8 [L, H, W, 3]).
    Returns info.json as written."""
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    keys = list(episodes[0])
    kinds = {k: "video" if k in video_keys else "image" if k in image_keys else "num"
             for k in keys}
    lengths = [len(ep[keys[0]]) for ep in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    features = {k: feature_of(episodes[0][k], kinds[k], fps) for k in keys}
    for name, dt in (("timestamp", "float32"), ("frame_index", "int64"),
                     ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")):
        features[name] = {"dtype": dt, "shape": [1], "names": None}
    v3 = version.startswith("v3")
    info = {
        "codebase_version": version, "robot_type": "test_arm",
        "total_episodes": len(episodes), "total_frames": int(sum(lengths)),
        "total_tasks": len(tasks), "chunks_size": chunks_size, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": V3_DATA if v3 else V2_DATA,
        "video_path": (V3_VIDEO if v3 else V2_VIDEO) if video_keys else None,
        "features": features,
    }
    if v3:
        info["data_files_size_in_mb"], info["video_files_size_in_mb"] = 100, 500
    else:
        info["total_chunks"] = (len(episodes) + chunks_size - 1) // chunks_size
        info["total_videos"] = len(episodes) * len(video_keys)

    def table(eps: list[int]) -> pa.Table:
        cols = {}
        for k in keys:
            data = np.concatenate([episodes[e][k] for e in eps])
            if kinds[k] == "video":
                continue
            if kinds[k] == "image":
                cols[k] = pa.array([{"bytes": encode_png(img), "path": None} for img in data],
                                   type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            else:
                cols[k] = column(data)
        fi = np.concatenate([np.arange(lengths[e]) for e in eps])
        cols["timestamp"] = pa.array((fi / fps).astype(np.float32))
        cols["frame_index"] = pa.array(fi.astype(np.int64))
        cols["episode_index"] = pa.array(np.repeat(eps, [lengths[e] for e in eps]).astype(np.int64))
        cols["index"] = pa.array(np.concatenate(
            [np.arange(starts[e], starts[e] + lengths[e]) for e in eps]).astype(np.int64))
        cols["task_index"] = pa.array(np.concatenate(
            [np.full(lengths[e], e % len(tasks)) for e in eps]).astype(np.int64))
        return pa.table(cols)

    def chunk_file(i: int) -> tuple[int, int]:
        return i // chunks_size, i % chunks_size

    E = len(episodes)
    if v3:
        meta = {c: [] for c in ("episode_index", "tasks", "length", "data/chunk_index",
                                "data/file_index", "dataset_from_index", "dataset_to_index")}
        for i, a in enumerate(range(0, E, episodes_per_file)):
            eps = list(range(a, min(E, a + episodes_per_file)))
            c, f = chunk_file(i)
            path = root / V3_DATA.format(chunk_index=c, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table(eps), path, row_group_size=row_group_size)
            meta["data/chunk_index"] += [c] * len(eps)
            meta["data/file_index"] += [f] * len(eps)
        meta["episode_index"] = list(range(E))
        meta["tasks"] = [[tasks[e % len(tasks)]] for e in range(E)]
        meta["length"] = list(lengths)
        meta["dataset_from_index"] = starts.tolist()
        meta["dataset_to_index"] = (starts + np.asarray(lengths)).tolist()
        for k in video_keys:
            cols = {s: [] for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")}
            for i, a in enumerate(range(0, E, episodes_per_video_file)):
                eps = list(range(a, min(E, a + episodes_per_video_file)))
                c, f = chunk_file(i)
                frames = np.concatenate([episodes[e][k] for e in eps])
                encode_video(root / V3_VIDEO.format(video_key=k, chunk_index=c, file_index=f),
                             frames, fps, codec)
                t = 0
                for e in eps:
                    cols["chunk_index"].append(c)
                    cols["file_index"].append(f)
                    cols["from_timestamp"].append(t / fps)
                    cols["to_timestamp"].append((t + lengths[e]) / fps)
                    t += lengths[e]
            for s, v in cols.items():
                meta[f"videos/{k}/{s}"] = v
        for k in keys:  # per-episode stats columns, as LeRobot writes them
            for e in range(E):
                st = stats_of(episodes[e][k], kinds[k])
                for s in ("mean", "min", "max"):
                    meta.setdefault(f"stats/{k}/{s}", []).append(
                        np.asarray(st[s]).reshape(-1).tolist())
        per = (E + episodes_meta_files - 1) // episodes_meta_files
        for i, a in enumerate(range(0, E, per)):
            c, f = chunk_file(i)
            part = {col: v[a:a + per] for col, v in meta.items()}
            part["meta/episodes/chunk_index"] = [c] * len(part["episode_index"])
            part["meta/episodes/file_index"] = [f] * len(part["episode_index"])
            path = root / V3_EPISODES.format(chunk_index=c, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(part), path)
        pq.write_table(pa.table({"task_index": pa.array(np.arange(len(tasks)), pa.int64()),
                                 "__index_level_0__": pa.array(list(tasks))}),
                       root / "meta/tasks.parquet")
    else:
        lines = []
        for e in range(E):
            ch = e // chunks_size
            path = root / V2_DATA.format(episode_chunk=ch, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table([e]), path, row_group_size=row_group_size)
            for k in video_keys:
                encode_video(root / V2_VIDEO.format(episode_chunk=ch, episode_index=e,
                                                    video_key=k), episodes[e][k], fps, codec)
            lines.append({"episode_index": e, "tasks": [tasks[e % len(tasks)]],
                          "length": lengths[e]})
        (root / "meta/episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (root / "meta/tasks.jsonl").write_text("".join(
            json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
        (root / "meta/episodes_stats.jsonl").write_text("".join(
            json.dumps({"episode_index": e,
                        "stats": {k: stats_of(episodes[e][k], kinds[k]) for k in keys}}) + "\n"
            for e in range(E)))
    if write_stats and v3:
        all_stats = {k: stats_of(np.concatenate([ep[k] for ep in episodes]), kinds[k])
                     for k in keys}
        (root / "meta/stats.json").write_text(json.dumps(all_stats, indent=4))
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return info


def make_episodes(lengths, *, seed=0, cameras=None, images=None, extra=True) -> list[dict]:
    """Random episodes: observation.state float32 [6], action float32 [3], next.reward float32
    (scalar), observation.environment_state float64 [2, 3] (a 2-D feature), next.done bool,
    observation.gripper int16 [2], plus cameras {key: (H, W)} of random uint8 frames."""
    rng = np.random.default_rng(seed)
    eps = []
    for L in lengths:
        ep = {"observation.state": rng.standard_normal((L, 6)).astype(np.float32),
              "action": rng.standard_normal((L, 3)).astype(np.float32)}
        if extra:
            ep["next.reward"] = rng.standard_normal(L).astype(np.float32)
            ep["observation.environment_state"] = rng.standard_normal((L, 2, 3))
            ep["next.done"] = np.arange(L) == L - 1
            ep["observation.gripper"] = rng.integers(-3, 4, (L, 2)).astype(np.int16)
        for k, (h, w) in (cameras or {}).items():
            ep[k] = rng.integers(0, 256, (L, h, w, 3), dtype=np.uint8)
        for k, (h, w) in (images or {}).items():
            ep[k] = rng.integers(0, 256, (L, h, w, 3), dtype=np.uint8)
        eps.append(ep)
    return eps
