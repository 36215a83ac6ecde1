"""ArgBlock: the hot paths' by-value kernel argument structs, refilled per call."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

from robocache._argblock import ArgBlock

DT = np.dtype({"names": ["p", "q", "arr", "r", "n", "m"],
               "formats": [np.uint64, np.uint64, (np.uint64, 4), np.uint64, np.int32, np.int32]},
              align=True)


def test_addresses_land_in_their_fields_and_fixed_fields_stay():
    blk = ArgBlock(DT, ("p", ("arr", 1), ("arr", 2), "r"), n=7, m=-3)
    v = blk.with_addresses(11, 22, 33, 2**64 - 1)
    assert isinstance(v, np.void) and v.dtype == DT
    assert (int(v["p"]), int(v["q"]), list(map(int, v["arr"])), int(v["r"])) == \
        (11, 0, [0, 22, 33, 0], 2**64 - 1)
    assert (int(v["n"]), int(v["m"])) == (7, -3)
    w = blk.with_addresses(1, 2, 3, 4)  # refilled in place: the same view, new bytes
    assert w is v and int(v["p"]) == 1 and list(map(int, v["arr"])) == [0, 2, 3, 0]
    assert int(v["n"]) == 7


def test_each_thread_gets_its_own_buffer():
    blk = ArgBlock(DT, ("p",))
    mine = blk.with_addresses(5)
    seen = {}

    def other():
        v = blk.with_addresses(9)
        seen["v"], seen["p"] = v, int(v["p"])

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["p"] == 9 and seen["v"] is not mine and int(mine["p"]) == 5


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="fixed field"):
        ArgBlock(DT, ("p", "r"), q=1)  # q lies between p and r: the pack would zero it
    with pytest.raises(ValueError, match="order"):
        ArgBlock(DT, ("q", "p"))
    with pytest.raises(ValueError, match="order"):
        ArgBlock(DT, ("p", "p"))
    with pytest.raises(TypeError, match="uint64"):
        ArgBlock(DT, ("n",))


def test_pickles_and_copies_without_its_buffers():
    """A plan holding an ArgBlock travels with a dataset to worker processes (pickle) or is
    deep-copied: the copy packs the same bytes from buffers of its own."""
    blk = ArgBlock(DT, ("p", "r"), n=4)
    before = blk.with_addresses(1, 2).tobytes()
    for twin in (pickle.loads(pickle.dumps(blk)), copy.deepcopy(blk)):
        v = twin.with_addresses(1, 2)
        assert v.tobytes() == before and v is not blk.with_addresses(1, 2)
