"""read_robomimic on HDF5 files written with h5py in robomimic's layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from robocache._errors import DatasetFormatError
from robocache.formats import read_robomimic

# demo number -> length; written out of numeric order on purpose
LENGTHS = {10: 3, 2: 1, 0: 4, 1: 6, 11: 2}


def make_demo(rng, L):
    return {
        "obs/agentview_image": rng.integers(0, 256, (L, 8, 6, 3), dtype=np.uint8),
        "obs/robot0_eef_pos": rng.standard_normal((L, 3)),
        "obs/object": rng.standard_normal((L, 10)).astype(np.float32),
        "actions": rng.standard_normal((L, 7)),
        "rewards": rng.standard_normal(L),
        "dones": (np.arange(L) == L - 1).astype(np.int64),
    }


def write_robomimic(path, lengths=LENGTHS, seed=0, masks=None, drop=None):
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths.values())
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1,
                                             "env_kwargs": {"control_freq": 20}})
        for i, L in lengths.items():
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = L
            demos[i] = make_demo(rng, L)
            for k, v in demos[i].items():
                if drop and (i, k) in drop:
                    continue
                g.create_dataset(k, data=v, compression="gzip" if "image" in k else None,
                                 chunks=True if "image" in k else None)
            g.create_dataset("states", data=rng.standard_normal((L, 4)))
            nxt = g.create_group("next_obs")  # obs one step later, the last one repeated
            for k in [k for k in demos[i] if k.startswith("obs/")]:
                v = demos[i][k]
                demos[i]["next_" + k] = np.concatenate([v[1:], v[-1:]])
                if not (drop and (i, "next_" + k) in drop):
                    nxt.create_dataset(k[4:], data=demos[i]["next_" + k])
        for name, names in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array([n.encode() for n in names]))
    return demos


def concat(demos, order, key):
    return np.concatenate([demos[i][key] for i in order])


def test_round_trip_numeric_order(tmp_path):
    demos = write_robomimic(tmp_path / "d.hdf5")
    src = read_robomimic(tmp_path / "d.hdf5", progress=False)
    order = sorted(LENGTHS)
    assert src.meta["demos"] == [f"demo_{i}" for i in order]  # demo_2 before demo_10
    np.testing.assert_array_equal(src.episode_ends, np.cumsum([LENGTHS[i] for i in order]))
    assert set(src.arrays) == {"obs/agentview_image", "obs/robot0_eef_pos", "obs/object",
                               "actions", "rewards", "dones"}
    for k, a in src.arrays.items():
        want = concat(demos, order, k)
        assert a.dtype == want.dtype and a.flags.c_contiguous
        np.testing.assert_array_equal(a, want, err_msg=k)
    assert src.image_keys == ("obs/agentview_image",)
    assert src.fps == 20.0
    assert src.meta["env_args"]["env_name"] == "Lift"


def test_filter_key_and_obs_keys(tmp_path):
    demos = write_robomimic(tmp_path / "d.hdf5",
                            masks={"train": ["demo_11", "demo_0", "demo_2"], "valid": ["demo_1"]})
    src = read_robomimic(tmp_path / "d.hdf5", obs_keys=["object"], filter_key="train")
    assert src.meta["demos"] == ["demo_0", "demo_2", "demo_11"]
    assert list(src.arrays)[:2] == ["obs/object", "actions"]
    for k, a in src.arrays.items():
        np.testing.assert_array_equal(a, concat(demos, [0, 2, 11], k))
    src = read_robomimic(tmp_path / "d.hdf5", obs_keys="robot0_eef_pos", filter_key="valid")
    np.testing.assert_array_equal(src.episode_ends, [6])
    with pytest.raises(ValueError, match="'test' is not in mask/"):
        read_robomimic(tmp_path / "d.hdf5", filter_key="test")
    with pytest.raises(ValueError, match="'nope' is not an observation"):
        read_robomimic(tmp_path / "d.hdf5", obs_keys=["nope"])
    # the store's own key names ("obs/<name>") select the same observations
    src = read_robomimic(tmp_path / "d.hdf5", obs_keys=["obs/object"], filter_key="train")
    assert list(src.arrays)[:2] == ["obs/object", "actions"]


def test_mask_naming_a_missing_demo(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", masks={"train": ["demo_0", "demo_99"]})
    with pytest.raises(DatasetFormatError, match="demo_99"):
        read_robomimic(tmp_path / "d.hdf5", filter_key="train")


def test_rewards_in_some_demos_only(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", drop={(2, "rewards")})
    with pytest.raises(DatasetFormatError, match="data/demo_2 has no 'rewards'"):
        read_robomimic(tmp_path / "d.hdf5")


def test_missing_actions(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", drop={(1, "actions")})
    with pytest.raises(DatasetFormatError, match="missing data/demo_1/actions"):
        read_robomimic(tmp_path / "d.hdf5")


def test_num_samples_and_shape_mismatches(tmp_path):
    write_robomimic(tmp_path / "d.hdf5")
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["data/demo_1"].attrs["num_samples"] = 5
    with pytest.raises(DatasetFormatError, match="num_samples=5 but 6 actions"):
        read_robomimic(tmp_path / "d.hdf5")
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["data/demo_1"].attrs["num_samples"] = 6
        del f["data/demo_10/obs/object"]
        f["data/demo_10/obs"].create_dataset("object", data=np.zeros((3, 11), np.float32))
    with pytest.raises(DatasetFormatError, match=r"data/demo_10/obs/object has shape \(3, 11\)"):
        read_robomimic(tmp_path / "d.hdf5")


def test_truncated_file(tmp_path):
    write_robomimic(tmp_path / "d.hdf5")
    raw = (tmp_path / "d.hdf5").read_bytes()
    (tmp_path / "t.hdf5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match="t.hdf5"):
        read_robomimic(tmp_path / "t.hdf5")
    (tmp_path / "j.hdf5").write_bytes(b"junk" * 100)
    with pytest.raises(DatasetFormatError, match="not a readable HDF5 file"):
        read_robomimic(tmp_path / "j.hdf5")


def test_external_link_refused(tmp_path):
    write_robomimic(tmp_path / "d.hdf5")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["a"] = np.zeros((4, 7))
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = h5py.ExternalLink("other.hdf5", "/a")
    with pytest.raises(DatasetFormatError, match="external link"):
        read_robomimic(tmp_path / "d.hdf5")


def test_linked_demos_and_masks_are_checked_not_followed(tmp_path):
    """A demo that is a dangling soft link or an external link, and a mask/ group kept in
    another file, are errors naming them (a raw KeyError, or another file opened)."""
    for how, match in (("soft", r"data/demo_2 is a dangling link"),
                       ("external", r"data/demo_2 is an external link to other.hdf5")):
        path = tmp_path / f"{how}.hdf5"
        write_robomimic(path)
        with h5py.File(path, "a") as f:
            del f["data/demo_2"]
            f["data/demo_2"] = (h5py.SoftLink("/nowhere") if how == "soft"
                                else h5py.ExternalLink("other.hdf5", "/data/demo_0"))
        with pytest.raises(DatasetFormatError, match=match):
            read_robomimic(path)
    path = tmp_path / "mask.hdf5"
    write_robomimic(path)
    with h5py.File(tmp_path / "masks.hdf5", "w") as f:
        f.create_dataset("mask/train", data=np.array([b"demo_0"]))
    with h5py.File(path, "a") as f:
        f["mask"] = h5py.ExternalLink("masks.hdf5", "/mask")
    with pytest.raises(DatasetFormatError, match="mask is an external link"):
        read_robomimic(path, filter_key="train")


def test_soft_links_must_resolve_inside_the_file(tmp_path):
    """A soft link whose path passes through an external link reads another file: refused,
    naming the link and its path; a soft link that stays in the file is followed."""
    path = tmp_path / "d.hdf5"
    demos = write_robomimic(path, lengths={0: 4, 1: 2})
    with h5py.File(tmp_path / "secret.hdf5", "w") as f:
        f["a"] = np.full((4, 7), 1234.5)
        f.create_group("g")
    with h5py.File(path, "a") as f:
        f.move("data/demo_0/actions", "stash")
        f["data/demo_0/actions"] = h5py.SoftLink("/stash")
    np.testing.assert_array_equal(read_robomimic(path).arrays["actions"][:4], demos[0]["actions"])
    with h5py.File(path, "a") as f:
        f["ext"] = h5py.ExternalLink("secret.hdf5", "/")
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = h5py.SoftLink("/ext/a")
    with pytest.raises(DatasetFormatError, match=r"d.hdf5: data/demo_0/actions is a link to "
                                                 r"'/ext/a', which resolves through an external "
                                                 r"link to .*secret.hdf5"):
        read_robomimic(path)
    with h5py.File(path, "a") as f:  # a group: the demo itself
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = h5py.SoftLink("/stash")
        del f["data/demo_1"]
        f["data/demo_1"] = h5py.SoftLink("/ext/g")
    with pytest.raises(DatasetFormatError, match=r"data/demo_1 is a link to '/ext/g'"):
        read_robomimic(path)


@pytest.mark.parametrize("shape, error, match", [
    ((4, 2**62, 4), DatasetFormatError, r"more than any array can hold"),
    ((4, 2**58), MemoryError, r"cannot allocate shape \[4, 288230376151711744\] of uint8: "
                              r"1,152,921,504,606,846,976 bytes \(1.0 EiB\)"),
], ids=["past-intp", "past-address-space"])
def test_huge_declared_shape_names_file_and_dataset(tmp_path, shape, error, match):
    """A dataset declaring a shape no array can have (chunked, nothing written: a small file)
    is an error naming the file, the dataset, the shape and the bytes, not NumPy's bare one."""
    path = tmp_path / "d.hdf5"
    write_robomimic(path, lengths={0: 4})
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/object"]
        f["data/demo_0/obs"].create_dataset("object", shape=shape, dtype="f4" if len(shape) == 3
                                            else "u1", chunks=(1, 1024, 4)[:len(shape)])
    with pytest.raises(error, match=r"d.hdf5: data/demo_0/obs/object \(4 samples in all "
                                    r"demos\).*" + match):
        read_robomimic(path, obs_keys=["object"])


def test_odd_num_samples_and_control_freq(tmp_path):
    path = tmp_path / "d.hdf5"
    write_robomimic(path)
    with h5py.File(path, "a") as f:
        f["data"].attrs["env_args"] = json.dumps({"env_kwargs": {"control_freq": 0}})
    assert read_robomimic(path).fps is None  # optional: not a rate, not an error
    with h5py.File(path, "a") as f:
        f["data/demo_0"].attrs["num_samples"] = "abc"
    with pytest.raises(DatasetFormatError, match=r"data/demo_0 has num_samples='abc', not a "):
        read_robomimic(path)


def test_external_storage_refused(tmp_path):
    write_robomimic(tmp_path / "d.hdf5")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros((4, 7)).tobytes())
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        del f["data/demo_0/actions"]
        f["data/demo_0"].create_dataset("actions", shape=(4, 7), dtype="f8",
                                        external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(DatasetFormatError, match="external files"):
        read_robomimic(tmp_path / "d.hdf5")


def test_no_demos_and_odd_names(tmp_path):
    with h5py.File(tmp_path / "e.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(DatasetFormatError, match="no demos"):
        read_robomimic(tmp_path / "e.hdf5")
    write_robomimic(tmp_path / "d.hdf5", masks={"odd": ["trajectory_3"]})
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["data"].copy("demo_0", "trajectory_3")
    with pytest.raises(DatasetFormatError, match="not of the form demo_<n>"):
        read_robomimic(tmp_path / "d.hdf5", filter_key="odd")


def test_non_numeric_dataset_refused(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", lengths={0: 2})
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["data/demo_0/obs"].create_dataset("label", data=np.array([b"a", b"b"]))
    with pytest.raises(DatasetFormatError, match="obs/label has dtype"):
        read_robomimic(tmp_path / "d.hdf5")
    src = read_robomimic(tmp_path / "d.hdf5", obs_keys=["object"])
    assert src.arrays["obs/object"].shape == (2, 10)


def test_next_obs(tmp_path):
    """robomimic's SequenceDataset returns next_obs (load_next_obs=True) with the obs windows."""
    demos = write_robomimic(tmp_path / "d.hdf5")
    order = sorted(LENGTHS)
    src = read_robomimic(tmp_path / "d.hdf5", obs_keys=["object", "agentview_image"],
                         next_obs=True, progress=False)
    assert set(src.arrays) == {"obs/object", "obs/agentview_image", "next_obs/object",
                               "next_obs/agentview_image", "actions", "rewards", "dones"}
    for k in ("next_obs/object", "next_obs/agentview_image"):
        np.testing.assert_array_equal(src.arrays[k], concat(demos, order, k))
    assert set(src.image_keys) == {"obs/agentview_image", "next_obs/agentview_image"}
    assert "next_obs/object" not in read_robomimic(tmp_path / "d.hdf5", progress=False).arrays
    write_robomimic(tmp_path / "e.hdf5", drop={(2, "next_obs/object")})
    with pytest.raises(DatasetFormatError, match="data/demo_2/next_obs/object"):
        read_robomimic(tmp_path / "e.hdf5", obs_keys=["object"], next_obs=True)
