"""The shipped demo dataset (examples/data/arm2d_reach) and the simulation that makes it."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from robocache.formats import read_lerobot

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "make_demo_dataset.py"


@pytest.fixture(scope="module")
def sim():
    pytest.importorskip("av", reason="the demo's videos are written and read with PyAV")
    spec = importlib.util.spec_from_file_location("make_demo_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo(sim):
    return read_lerobot(sim.ROOT, progress=False)


def test_shipped_dataset_is_small_and_loads(sim, demo):
    size = sum(f.stat().st_size for f in sim.ROOT.rglob("*") if f.is_file())
    assert size < 3_000_000
    lengths = np.diff(np.concatenate([[0], demo.episode_ends]))
    assert len(lengths) == 48 and lengths.min() < 15 and lengths.max() > 100
    n = int(demo.episode_ends[-1])
    assert demo.arrays["observation.state"].shape == (n, 6)
    assert demo.arrays["action"].shape == (n, 2)
    assert demo.arrays["observation.images.top"].shape == (n, 64, 64, 3)
    assert demo.fps == 25.0
    assert demo.meta["tasks"] == [sim.TASK]
    assert set(demo.stats) == {"observation.state", "action", "observation.images.top"}


def test_states_obey_the_arm_kinematics(sim, demo):
    s = demo.arrays["observation.state"].astype(np.float64)
    q, dq, tip = s[:, :2], s[:, 2:4], s[:, 4:]
    fk = np.array([sim.fingertip(qi)[1] for qi in q])
    np.testing.assert_allclose(tip, fk, atol=1e-5)
    # recorded velocities match the motion between frames (midpoint rule, same episode)
    ends = demo.episode_ends
    same = np.ones(len(s) - 1, bool)
    same[ends[:-1] - 1] = False
    fd = (q[1:] - q[:-1]) * demo.fps
    mid = (dq[1:] + dq[:-1]) / 2
    assert np.abs(fd - mid)[same].max() < 0.05 * max(1.0, np.abs(mid).max())
    # the controller tracks its targets, imperfectly
    err = np.abs(q - demo.arrays["action"])
    assert 1e-4 < err.mean() < 0.05


def test_frames_show_the_arm(demo):
    f = demo.arrays["observation.images.top"]
    assert (f.reshape(len(f), -1).std(1) > 10).all()
    assert np.abs(np.diff(f.astype(np.int16), axis=0)).mean() > 0.5  # frames change


def test_unforced_arm_conserves_energy(sim):
    # with no torque and no damping, 0.5 q'^T M(q) q' stays put: checks M and C agree
    p = {"m1": 1.3, "m2": 0.9, "b": 0.0}
    q, dq = np.array([0.3, 1.1]), np.array([2.0, -3.0])
    dt = 1.0 / sim.SIM_HZ

    def energy(q, dq):
        _, M, _ = sim.dynamics(q, dq, np.zeros(2), p)
        return 0.5 * dq @ M @ dq

    e0 = energy(q, dq)
    for _ in range(sim.SIM_HZ):
        ddq, _, _ = sim.dynamics(q, dq, np.zeros(2), p)
        dq = dq + dt * ddq
        q = q + dt * dq
    assert abs(energy(q, dq) - e0) / e0 < 0.02


def test_generator_is_deterministic(sim, tmp_path):
    def digest(root):
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file()}

    a = sim.make(tmp_path / "a", episodes=3, seed=7)
    b = sim.make(tmp_path / "b", episodes=3, seed=7)
    assert digest(a) == digest(b)
    src = read_lerobot(a, progress=False)
    assert len(src.episode_ends) == 3
