"""Make RoboCache's demo dataset: a simulated planar two-link arm reaching through waypoints,
written as a LeRobot v3.0 dataset (parquet + mp4 + meta/).

    python examples/make_demo_dataset.py                      # -> examples/data/arm2d_reach
    python examples/make_demo_dataset.py --out /tmp/x --episodes 8 --seed 1

Physics (plain NumPy, deterministic for a seed). Two uniform rods in the horizontal plane
(lengths l1, l2, masses m1, m2, joint viscous damping b), rigid-body dynamics

    M(q) q'' + C(q, q') q' + b q' = tau,      |tau_i| <= tau_max

    M11 = I1 + I2 + m1 c1^2 + m2 (l1^2 + c2^2 + 2 l1 c2 cos q2)
    M12 = M21 = I2 + m2 (c2^2 + l1 c2 cos q2),      M22 = I2 + m2 c2^2
    C q' = [-h (2 q1' q2' + q2'^2),  h q1'^2],       h = m2 l1 c2 sin q2
    (c_i = l_i / 2, I_i = m_i l_i^2 / 12)

integrated with semi-implicit Euler at 500 Hz. A scripted controller picks 1-3 random
fingertip waypoints per episode (some episodes a single nearby one, so they are short), solves
the arm's inverse kinematics (elbow up or down at random), follows a minimum-jerk joint
trajectory to each with computed-torque PD control built on a nominal model of the arm (gains
randomised per episode; the simulated arm's masses and damping differ from the nominal ones
by up to 30% / a factor 2 per episode, so tracking is imperfect), and ends
the episode once the last waypoint is held or after a timeout.

Recorded at 25 Hz: observation.state = [q1, q2, q1', q2', x_tip, y_tip] (float32),
action = the joint position targets the controller tracks at that instant (float32, like a
position-controlled arm's goal positions), and observation.images.top: a 64x64 RGB top view
(links, joints and the current waypoint) rasterised with NumPy (2x supersampled), encoded
as H.264 in mp4 by PyAV (one file holding every episode, as LeRobot v3 does).
"""

from __future__ import annotations

import argparse
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 25
SIM_HZ = 500
IMG = 64
CAMERA = "observation.images.top"
TASK = "move the fingertip through the red waypoints"
ROOT = Path(__file__).resolve().parent / "data" / "arm2d_reach"
L1, L2 = 0.5, 0.4           # link lengths, m
TAU_MAX = 6.0               # N m
MAX_SECONDS = 8.0
NOMINAL = {"m1": 1.5, "m2": 1.0, "b": 0.1}  # what the controller believes; each episode differs


# --------------------------------------------------------------------------------------------
# physics

def dynamics(q, dq, tau, p):
    """q'' of the two-link arm."""
    m1, m2, b = p["m1"], p["m2"], p["b"]
    c1, c2 = L1 / 2, L2 / 2
    i1, i2 = m1 * L1 ** 2 / 12, m2 * L2 ** 2 / 12
    cos2, sin2 = np.cos(q[1]), np.sin(q[1])
    m11 = i1 + i2 + m1 * c1 ** 2 + m2 * (L1 ** 2 + c2 ** 2 + 2 * L1 * c2 * cos2)
    m12 = i2 + m2 * (c2 ** 2 + L1 * c2 * cos2)
    m22 = i2 + m2 * c2 ** 2
    h = m2 * L1 * c2 * sin2
    cor = np.array([-h * (2 * dq[0] * dq[1] + dq[1] ** 2), h * dq[0] ** 2])
    M = np.array([[m11, m12], [m12, m22]])
    return np.linalg.solve(M, tau - cor - b * dq), M, cor


def fingertip(q):
    elbow = np.array([L1 * np.cos(q[0]), L1 * np.sin(q[0])])
    tip = elbow + np.array([L2 * np.cos(q[0] + q[1]), L2 * np.sin(q[0] + q[1])])
    return elbow, tip


def inverse_kinematics(xy, elbow_up: bool):
    r2 = float(xy @ xy)
    c = np.clip((r2 - L1 ** 2 - L2 ** 2) / (2 * L1 * L2), -1.0, 1.0)
    q2 = np.arccos(c) * (1 if elbow_up else -1)
    q1 = np.arctan2(xy[1], xy[0]) - np.arctan2(L2 * np.sin(q2), L1 + L2 * np.cos(q2))
    return np.array([q1, q2])


def min_jerk(q0, q1, T, t):
    """Position, velocity and acceleration of a minimum-jerk move q0 -> q1 over T at time t."""
    s = np.clip(t / T, 0.0, 1.0)
    d = q1 - q0
    pos = q0 + d * (10 * s ** 3 - 15 * s ** 4 + 6 * s ** 5)
    vel = d * (30 * s ** 2 - 60 * s ** 3 + 30 * s ** 4) / T if t < T else 0 * d
    acc = d * (60 * s - 180 * s ** 2 + 120 * s ** 3) / T ** 2 if t < T else 0 * d
    return pos, vel, acc


def random_point(rng, lo=0.25, hi=0.85):
    r = rng.uniform(lo, hi)
    a = rng.uniform(-np.pi, np.pi)
    return np.array([r * np.cos(a), r * np.sin(a)])


def simulate_episode(rng, short: bool):
    p = {"m1": rng.uniform(0.7, 1.3) * NOMINAL["m1"], "m2": rng.uniform(0.7, 1.3) * NOMINAL["m2"],
         "b": rng.uniform(0.5, 2.0) * NOMINAL["b"]}
    kp, kd = rng.uniform(80, 140), rng.uniform(14, 22)
    elbow_up = bool(rng.integers(2))
    q = inverse_kinematics(random_point(rng), elbow_up) + rng.normal(0, 0.02, 2)
    dq = np.zeros(2)
    if short:  # one waypoint close by: a short episode
        goal = fingertip(q)[1] + rng.normal(0, 0.02, 2)
        waypoints = [goal]
    else:
        waypoints = [random_point(rng) for _ in range(int(rng.integers(1, 4)))]
    targets = [inverse_kinematics(w, elbow_up) for w in waypoints]
    # joint-space segments, each lasting in proportion to its size
    segments, start = [], q.copy()
    for qt in targets:
        # the shortest way round for q1
        qt = qt.copy()
        qt[0] = start[0] + (qt[0] - start[0] + np.pi) % (2 * np.pi) - np.pi
        T = 0.15 + 0.9 * float(np.max(np.abs(qt - start)))
        segments.append((start, qt, T))
        start = qt
    dt = 1.0 / SIM_HZ
    per_frame = SIM_HZ // FPS
    rows = []
    seg, t_seg, hold = 0, 0.0, 0
    for step in range(int(MAX_SECONDS * SIM_HZ)):
        q0, q1, T = segments[seg]
        ref, vref, aref = min_jerk(q0, q1, T, t_seg)
        if step % per_frame == 0:
            rows.append((q.copy(), dq.copy(), fingertip(q), ref.copy(), waypoints[seg]))
        _, M, cor = dynamics(q, dq, np.zeros(2), NOMINAL)  # the controller's (imperfect) model
        tau = M @ (aref + kp * (ref - q) + kd * (vref - dq)) + cor + NOMINAL["b"] * dq
        tau = np.clip(tau, -TAU_MAX, TAU_MAX)
        ddq, _, _ = dynamics(q, dq, tau, p)
        dq = dq + dt * ddq           # semi-implicit Euler: velocity first,
        q = q + dt * dq              # then position with the new velocity
        t_seg += dt
        if t_seg >= T:
            err = np.linalg.norm(fingertip(q)[1] - waypoints[seg])
            if err < 0.01 and np.linalg.norm(dq) < 0.2:
                hold += 1
            if hold > SIM_HZ // 10 or t_seg > T + 1.0:  # held 0.1 s, or gave up after 1 s
                seg, t_seg, hold = seg + 1, 0.0, 0
                if seg == len(segments):
                    break
    return rows


# --------------------------------------------------------------------------------------------
# rendering: 64x64 top view, 2x supersampled

_SS = 2
_px = (np.arange(IMG * _SS) + 0.5) / (IMG * _SS)
_GX, _GY = np.meshgrid(_px * 2.0 - 1.0, 1.0 - _px * 2.0)  # world metres, y up; view +-1 m


def _segment_distance(a, b):
    ab = b - a
    t = np.clip(((_GX - a[0]) * ab[0] + (_GY - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.hypot(_GX - (a[0] + t * ab[0]), _GY - (a[1] + t * ab[1]))


def render(q, waypoint):
    img = np.empty(_GX.shape + (3,))
    img[:] = (0.93, 0.93, 0.90)
    reach = np.hypot(_GX, _GY)
    img[(reach > L1 + L2 - 0.01) & (reach < L1 + L2 + 0.01)] = (0.75, 0.75, 0.75)
    img[np.hypot(_GX - waypoint[0], _GY - waypoint[1]) < 0.06] = (0.85, 0.15, 0.15)
    elbow, tip = fingertip(q)
    base = np.zeros(2)
    img[_segment_distance(base, elbow) < 0.045] = (0.15, 0.30, 0.70)
    img[_segment_distance(elbow, tip) < 0.035] = (0.20, 0.55, 0.85)
    for c, r in ((base, 0.06), (elbow, 0.045)):
        img[np.hypot(_GX - c[0], _GY - c[1]) < r] = (0.10, 0.10, 0.15)
    img = img.reshape(IMG, _SS, IMG, _SS, 3).mean(axis=(1, 3))
    return np.round(img * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# LeRobot v3.0 writer (pyarrow + PyAV)

def stats_of(x):
    x = x.astype(np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
           "count": np.array([len(x)])}
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = np.quantile(x, q / 100, axis=0)
    return {k: v.tolist() for k, v in out.items()}


def image_stats(frames):
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = np.quantile(x, q / 100, axis=0)
    res = {k: v.reshape(3, 1, 1).tolist() for k, v in out.items()}
    res["count"] = [len(frames)]
    return res


def write_lerobot_v3(root: Path, episodes, seed: int):
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        shutil.rmtree(root)
    lengths = np.array([len(e["state"]) for e in episodes])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n, E = int(lengths.sum()), len(episodes)
    state = np.concatenate([e["state"] for e in episodes])
    action = np.concatenate([e["action"] for e in episodes])
    frames = np.concatenate([e["frames"] for e in episodes])
    frame_index = np.concatenate([np.arange(L) for L in lengths])
    episode_index = np.repeat(np.arange(E), lengths)

    data = root / "data/chunk-000/file-000.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(pa.table({
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 6),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 2),
        "timestamp": pa.array((frame_index / FPS).astype(np.float32)),
        "frame_index": pa.array(frame_index.astype(np.int64)),
        "episode_index": pa.array(episode_index.astype(np.int64)),
        "index": pa.array(np.arange(n, dtype=np.int64)),
        "task_index": pa.array(np.zeros(n, dtype=np.int64)),
    }), data)

    video = root / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    video.parent.mkdir(parents=True)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = IMG
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "g": "2", "threads": "1"}
        stream.time_base = Fraction(1, FPS)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

    episodes_meta = {
        "episode_index": pa.array(np.arange(E, dtype=np.int64)),
        "tasks": pa.array([[TASK]] * E, pa.list_(pa.string())),
        "length": pa.array(lengths.astype(np.int64)),
        "data/chunk_index": pa.array(np.zeros(E, np.int64)),
        "data/file_index": pa.array(np.zeros(E, np.int64)),
        "dataset_from_index": pa.array(starts.astype(np.int64)),
        "dataset_to_index": pa.array((starts + lengths).astype(np.int64)),
        f"videos/{CAMERA}/chunk_index": pa.array(np.zeros(E, np.int64)),
        f"videos/{CAMERA}/file_index": pa.array(np.zeros(E, np.int64)),
        f"videos/{CAMERA}/from_timestamp": pa.array(starts / FPS),
        f"videos/{CAMERA}/to_timestamp": pa.array((starts + lengths) / FPS),
        "meta/episodes/chunk_index": pa.array(np.zeros(E, np.int64)),
        "meta/episodes/file_index": pa.array(np.zeros(E, np.int64)),
    }
    ep_path = root / "meta/episodes/chunk-000/file-000.parquet"
    ep_path.parent.mkdir(parents=True)
    pq.write_table(pa.table(episodes_meta), ep_path)
    pq.write_table(pa.table({"task_index": pa.array([0], pa.int64()),
                             "__index_level_0__": pa.array([TASK])}), root / "meta/tasks.parquet")
    stats = {"observation.state": stats_of(state), "action": stats_of(action),
             CAMERA: image_stats(frames)}
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    names6 = ["q1", "q2", "q1_vel", "q2_vel", "tip_x", "tip_y"]
    info = {
        "codebase_version": "v3.0", "robot_type": "sim_planar_2link",
        "total_episodes": E, "total_frames": n, "total_tasks": 1, "chunks_size": 1000,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": FPS,
        "splits": {"train": f"0:{E}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [6], "names": names6},
            "action": {"dtype": "float32", "shape": [2], "names": ["q1_target", "q2_target"]},
            CAMERA: {"dtype": "video", "shape": [IMG, IMG, 3],
                     "names": ["height", "width", "channels"],
                     "info": {"video.height": IMG, "video.width": IMG, "video.codec": "h264",
                              "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                              "video.fps": FPS, "video.channels": 3, "has_audio": False}},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
        "generator": {"script": "examples/make_demo_dataset.py", "seed": seed},
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def make(out: Path, episodes: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(episodes):
        rows = simulate_episode(rng, short=(e % 6 == 5))
        q, dq, tips, refs, wps = zip(*rows, strict=True)
        eps.append({
            "state": np.concatenate([np.array(q), np.array(dq),
                                     np.array([t[1] for t in tips])], axis=1).astype(np.float32),
            "action": np.array(refs).astype(np.float32),
            "frames": np.stack([render(qi, w) for qi, w in zip(q, wps, strict=True)]),
        })
    write_lerobot_v3(out, eps, seed)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT)
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = make(args.out, args.episodes, args.seed)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
