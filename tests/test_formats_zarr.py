"""read_zarr on ReplayBuffers written with zarr the way diffusion_policy writes them.

Runs under zarr-python 3 (the dev environment) and zarr-python 2 (diffusion_policy's own
environment; `make test` runs this file there too, tools/zarr2_check.sh): the writer below uses
whichever API is installed, and zarr format 3 cases skip under zarr-python 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robocache._errors import DatasetFormatError
from robocache.formats import read_zarr

zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")

ZARR2 = int(zarr.__version__.split(".")[0]) < 3
DP_DEFAULT = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
DP_DISK = numcodecs.Blosc("zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
needs_zarr3 = pytest.mark.skipif(ZARR2, reason="zarr format 3 needs zarr-python 3")


def open_group(store, zarr_format=2):
    if ZARR2:
        assert zarr_format == 2
        return zarr.open_group(store, mode="w")
    return zarr.open_group(store, mode="w", zarr_format=zarr_format)


def create_array(group, name, *, shape, chunks, dtype, compressor, shards=None,
                 overwrite=False):
    """group.create_dataset (zarr-python 2, what diffusion_policy calls) or create_array (3)."""
    if ZARR2:
        return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype,
                                    compressor=compressor, overwrite=overwrite)
    kw = {} if shards is None else {"shards": shards}
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                              compressors=compressor, overwrite=overwrite, **kw)


def make_data(lengths, seed=0, extra_rows=0):
    rng = np.random.default_rng(seed)
    n = sum(lengths) + extra_rows
    return {
        "img": rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8),
        "state": rng.standard_normal((n, 5)).astype(np.float32),
        "action": rng.standard_normal((n, 2)),
        "n_contacts": rng.integers(0, 4, (n, 1)).astype(np.int64),
        "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
    }


def write_replay_buffer(store, data, lengths, *, zarr_format=2, compressor=DP_DEFAULT,
                        chunk_rows=4, shards=None):
    g = open_group(store, zarr_format)
    d, m = g.create_group("data"), g.create_group("meta")
    for k, v in data.items():
        a = create_array(d, k, shape=v.shape, chunks=(chunk_rows, *v.shape[1:]), dtype=v.dtype,
                         compressor=compressor,
                         shards=None if shards is None else (shards, *v.shape[1:]))
        a[:] = v
    e = create_array(m, "episode_ends", shape=(len(lengths),), chunks=(len(lengths),),
                     dtype="int64", compressor=None)
    e[:] = np.cumsum(lengths)
    return g


LENGTHS = [5, 1, 9, 2, 1]


@pytest.mark.parametrize("zarr_format, compressor, shards", [
    (2, DP_DEFAULT, None),
    (2, DP_DISK, None),
    (2, numcodecs.Zstd(level=3), None),
    pytest.param(3, None if ZARR2 else zarr.codecs.BloscCodec(cname="zstd", clevel=3), None,
                 marks=needs_zarr3),
    pytest.param(3, None if ZARR2 else zarr.codecs.ZstdCodec(), 8, marks=needs_zarr3),
])
def test_round_trip(tmp_path, zarr_format, compressor, shards):
    data = make_data(LENGTHS, seed=zarr_format)
    write_replay_buffer(tmp_path / "rb.zarr", data, LENGTHS, zarr_format=zarr_format,
                        compressor=compressor, shards=shards)
    src = read_zarr(tmp_path / "rb.zarr", progress=False)
    np.testing.assert_array_equal(src.episode_ends, np.cumsum(LENGTHS))
    assert src.episode_ends.dtype == np.int64
    assert list(src.arrays) == sorted(data)
    for k, v in data.items():
        assert src.arrays[k].dtype == v.dtype and src.arrays[k].flags.c_contiguous
        np.testing.assert_array_equal(src.arrays[k], v, err_msg=k)
    assert src.image_keys == ("img",)
    assert src.fps is None and src.timestamps is None


def test_arrays_longer_than_episode_ends_are_cut(tmp_path):
    data = make_data(LENGTHS, seed=1, extra_rows=6)
    write_replay_buffer(tmp_path / "rb.zarr", data, LENGTHS)
    src = read_zarr(tmp_path / "rb.zarr", keys=["state"])
    assert list(src.arrays) == ["state"]
    np.testing.assert_array_equal(src.arrays["state"], data["state"][: sum(LENGTHS)])


def test_blocks_of_many_chunks(tmp_path, monkeypatch):
    from robocache.formats import zarr as zr

    monkeypatch.setattr(zr, "BLOCK_BYTES", 200)  # several chunks per block, uneven last block
    data = make_data([13, 1, 20], seed=2)
    write_replay_buffer(tmp_path / "rb.zarr", data, [13, 1, 20], chunk_rows=3)
    src = read_zarr(tmp_path / "rb.zarr", progress=False)
    for k, v in data.items():
        np.testing.assert_array_equal(src.arrays[k], v)


def test_zip_store(tmp_path):
    data = make_data(LENGTHS, seed=3)
    store = zarr.storage.ZipStore(tmp_path / "rb.zarr.zip", mode="w")
    write_replay_buffer(store, data, LENGTHS)
    store.close()
    src = read_zarr(tmp_path / "rb.zarr.zip")
    for k, v in data.items():
        np.testing.assert_array_equal(src.arrays[k], v)


def test_keys_errors(tmp_path):
    write_replay_buffer(tmp_path / "rb.zarr", make_data(LENGTHS), LENGTHS)
    with pytest.raises(ValueError, match="'nope' is not an array"):
        read_zarr(tmp_path / "rb.zarr", keys=["nope"])
    with pytest.raises(ValueError, match="array names"):
        read_zarr(tmp_path / "rb.zarr", keys=["../meta/episode_ends"])
    with pytest.raises(FileNotFoundError):
        read_zarr(tmp_path / "missing.zarr")


@pytest.mark.parametrize("ends, match", [
    ([5, 3, 18], "strictly increasing"),
    ([5, 5, 18], "strictly increasing"),
    ([0, 5, 18], "episode 0 ends at 0"),
    ([-1, 18], "episode 0 ends at -1"),
    ([5, 40], "at least 40 rows"),
    ([], "non-empty"),
    ([[5, 18]], "1-D"),
    ([5.0, 18.0], "integers"),
])
def test_bad_episode_ends(tmp_path, ends, match):
    data = make_data([18], seed=4)
    g = write_replay_buffer(tmp_path / "rb.zarr", data, [18])
    arr = np.asarray(ends, dtype=np.float64 if isinstance(ends[0] if ends else 0, float)
                     else np.int64)
    create_array(g["meta"], "episode_ends", shape=arr.shape, dtype=arr.dtype,
                 chunks=tuple(max(1, n) for n in arr.shape), overwrite=True, compressor=None)
    if arr.size:
        g["meta"]["episode_ends"][...] = arr
    with pytest.raises(DatasetFormatError, match=match):
        read_zarr(tmp_path / "rb.zarr")


def test_missing_groups(tmp_path):
    g = open_group(tmp_path / "a.zarr")
    g.create_group("data")
    with pytest.raises(DatasetFormatError, match="missing meta"):
        read_zarr(tmp_path / "a.zarr")
    (tmp_path / "b.zarr").mkdir()
    with pytest.raises(DatasetFormatError, match="no zarr group"):
        read_zarr(tmp_path / "b.zarr")
    (tmp_path / "c.zip").write_bytes(b"junk")
    with pytest.raises(DatasetFormatError, match="not a zarr"):
        read_zarr(tmp_path / "c.zip")


def test_corrupt_chunk_names_the_array(tmp_path):
    data = make_data(LENGTHS, seed=5)
    write_replay_buffer(tmp_path / "rb.zarr", data, LENGTHS)
    chunk = tmp_path / "rb.zarr/data/state/1.0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(DatasetFormatError, match=r"data/state rows \[0, 18\)"):
        read_zarr(tmp_path / "rb.zarr", progress=False)
    read_zarr(tmp_path / "rb.zarr", keys=["img"])  # other arrays still read


def test_unknown_codec_says_which(tmp_path):
    write_replay_buffer(tmp_path / "rb.zarr", make_data(LENGTHS), LENGTHS)
    meta = tmp_path / "rb.zarr/data/img/.zarray"
    m = json.loads(meta.read_text())
    m["compressor"] = {"id": "imagecodecs_jpeg2k", "level": 50}
    meta.write_text(json.dumps(m))
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetFormatError, match="imagecodecs_jpeg2k.*pip install imagecodecs"):
            read_zarr(tmp_path / "rb.zarr")
    read_zarr(tmp_path / "rb.zarr", keys=["state"])  # not asked for: never opened
    m["compressor"] = {"id": "robocache_test_no_such_codec"}  # unknown with every install
    meta.write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match=r"uses a codec that is not installed: codec "
                                                 r"not available: .*robocache_test_no_such_codec"):
        read_zarr(tmp_path / "rb.zarr")


def test_unknown_codec_is_recognised_from_every_numcodecs():
    """numcodecs.errors (UnknownCodecError) exists from numcodecs 0.15, which needs Python 3.11;
    before, get_codec raised a plain ValueError with the same words. Importing numcodecs.errors
    broke every read on Python 3.10."""
    from robocache.formats.zarr import _codec_missing

    class UnknownCodecError(ValueError):
        pass
    assert _codec_missing(ValueError("codec not available: 'blosc2'"))
    assert _codec_missing(UnknownCodecError("codec not available: 'x'"))
    assert not _codec_missing(ValueError("shape mismatch"))
    assert not _codec_missing(KeyError("codec not available"))


def test_jpeg2k_images_as_diffusion_policy_writes_them(tmp_path):
    """Real-robot ReplayBuffers keep camera frames Jpeg2k-compressed, one frame per chunk
    (diffusion_policy/codecs/imagecodecs_numcodecs.py, real_pusht_image_dataset.py)."""
    codecs = pytest.importorskip("imagecodecs.numcodecs")
    codecs.register_codecs(verbose=False)
    data = make_data(LENGTHS, seed=6)
    g = write_replay_buffer(tmp_path / "rb.zarr", {k: v for k, v in data.items() if k != "img"},
                            LENGTHS)
    img = create_array(g["data"], "img", shape=data["img"].shape, chunks=(1, 12, 10, 3),
                       dtype=np.uint8, compressor=codecs.Jpeg2k(level=50))
    img[:] = data["img"]
    decoded = np.asarray(img[:])  # what diffusion_policy's own reader gets back
    src = read_zarr(tmp_path / "rb.zarr", progress=False)
    np.testing.assert_array_equal(src.arrays["img"], decoded)
    assert src.image_keys == ("img",)
    np.testing.assert_array_equal(src.arrays["state"], data["state"])


def test_symlink_out_of_the_store(tmp_path, link_from_outside):
    write_replay_buffer(tmp_path / "rb.zarr", make_data(LENGTHS), LENGTHS)
    link_from_outside(tmp_path / "rb.zarr/data/state/0.0")
    with pytest.raises(DatasetFormatError, match="outside the dataset root"):
        read_zarr(tmp_path / "rb.zarr")


def test_non_numeric_array_refused(tmp_path):
    g = write_replay_buffer(tmp_path / "rb.zarr", make_data([3]), [3])
    s = create_array(g["data"], "names", shape=(3,), dtype="<U1" if ZARR2 else str, chunks=(3,),
                     compressor=None)
    s[:] = np.array(["a", "b", "c"])
    with pytest.raises(DatasetFormatError, match="data/names has dtype"):
        read_zarr(tmp_path / "rb.zarr")


@pytest.mark.parametrize("shape, error, match", [
    ([7, 2**61], DatasetFormatError, r"shape \[7, 2305843009213693952\] of float64: "
                                     r"[0-9,]+ bytes \(112.0 EiB\), more than any array can hold"),
    # over 2**60 bytes: more than any address space, whatever the overcommit policy
    ([7, 2**57], MemoryError, r"cannot allocate shape \[7, 144115188075855872\] of float64"),
], ids=["past-intp", "past-address-space"])
def test_huge_declared_shape_names_the_array(tmp_path, shape, error, match):
    """A shape in .zarray that no array can have (nothing written: a small store) is an error
    naming the store and the array, not NumPy's bare 'array is too big'."""
    write_replay_buffer(tmp_path / "rb.zarr", make_data([3, 4]), [3, 4], zarr_format=2)
    meta = tmp_path / "rb.zarr/data/action/.zarray"
    za = json.loads(meta.read_text())
    za["shape"], za["chunks"] = shape, [4, 2**20]
    meta.write_text(json.dumps(za))
    with pytest.raises(error, match=r"rb.zarr: data/action \(7 rows to read\): .*" + match):
        read_zarr(tmp_path / "rb.zarr", keys=["action"], progress=False)
