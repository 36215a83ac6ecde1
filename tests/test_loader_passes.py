"""rc.DataLoader passes as torch's iterators: passes live at once draw their own orders (and the
loader's epoch never goes back), an error while an item is built consumes that item and the
pass goes on, and loader.sampler / loader.batch_sampler are objects with torch's meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _loader_data import indices_of, small_dataset
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler

import robocache as rc

_dataset = small_dataset
_ids = indices_of


def _batches(order, size) -> list[tuple]:
    order = [int(i) for i in order]
    return [tuple(order[i:i + size]) for i in range(0, len(order), size)]


# ---------------------------------------------------------------------------------------------
# passes live at once


def test_zip_of_a_loader_with_itself_pairs_two_orders():
    """torch's RandomSampler draws an order per iter(): zip(loader, loader) pairs two orders.
    rc.DataLoader gave both iterators the loader's epoch: every pair was one batch twice."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=8, shuffle=True, seed=1)
    pairs = [(_ids(a), _ids(b)) for a, b in zip(dl, dl, strict=False)]
    assert [a for a, _ in pairs] == _batches(dl.epoch_order(0), 8)
    assert [b for _, b in pairs] == _batches(dl.epoch_order(1), 8)  # a fresh epoch
    assert all(a != b for a, b in pairs)
    assert dl.epoch == 1
    assert [_ids(b) for b in dl] == _batches(dl.epoch_order(2), 8)  # neither epoch again
    assert dl.epoch == 3


def test_a_pass_inside_a_pass_takes_fresh_epochs_and_the_epoch_never_goes_back():
    """An evaluation pass over the training loader inside the training loop: each inner pass
    is an epoch no pass had (it was the same 'next epoch' each time), and loader.epoch only
    grows (it went 0, 2, 0, 2, ... as the outer pass handed out batches)."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=8, shuffle=True, seed=1)
    outer, inner_firsts, epochs = [], [], []
    for batch in dl:
        outer.append(_ids(batch))
        epochs.append(dl.epoch)
        inner_firsts.append([_ids(b) for b in dl][0])
        epochs.append(dl.epoch)
    assert outer == _batches(dl.epoch_order(0), 8)  # the outer pass keeps its order
    want = [_batches(dl.epoch_order(e), 8)[0] for e in range(1, 6)]
    assert inner_firsts == want and len(set(inner_firsts)) == 5
    assert epochs == sorted(epochs) and epochs[-1] == 6
    # the state is the newest pass's: after the last inner pass, the next epoch at its start;
    # a resumed loader goes on as this one does
    state = dl.state_dict()
    assert (state["epoch"], state["batches_done"]) == (6, 0)
    again = rc.DataLoader(ds, batch_size=8, shuffle=True)
    again.load_state_dict(state)
    assert [_ids(b) for b in again] == [_ids(b) for b in dl] == _batches(dl.epoch_order(6), 8)


def test_an_iterator_made_but_not_read_during_a_pass_changes_nothing():
    """iter(loader) made in the middle of a training pass (len(iter(loader)), an evaluation
    loop never run) and left unread: the training pass keeps the loader's epoch and position
    (its checkpoint resumes it), and the next epoch is what it would have been without it."""
    ds = _dataset()

    def run(extra: bool):
        dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=6)
        it = iter(dl)
        got = [_ids(next(it)) for _ in range(2)]
        if extra:
            assert len(iter(dl)) == len(dl)  # made, never read, dropped
            unread = iter(dl)
        state = dl.state_dict()
        got += [_ids(b) for b in it]
        if extra:
            del unread
        return dl, state, got, [_ids(b) for b in dl]

    plain_dl, plain_state, plain, plain_next = run(False)
    dl, state, got, nxt = run(True)
    assert (state["epoch"], state["batches_done"]) == (0, 2) == (plain_state["epoch"],
                                                                plain_state["batches_done"])
    assert got == plain and nxt == plain_next and dl.epoch == plain_dl.epoch == 2
    resumed = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=6)
    resumed.load_state_dict(state)
    assert plain[:2] + [_ids(b) for b in resumed] == plain
    assert [_ids(b) for b in resumed] == plain_next  # the next epoch too


def test_the_state_follows_the_pass_that_took_the_latest_epoch():
    """Passes made while another is live take their epochs in the order they start reading,
    not the order they were made: the state follows the one that took the latest, so a resume
    goes on as the uninterrupted loader does, the next epochs included."""
    ds = _dataset()

    def make():
        return rc.DataLoader(ds, batch_size=4, shuffle=True, seed=8)
    dl = make()
    a = iter(dl)
    next(a)
    b, c = iter(dl), iter(dl)
    next(c)  # epoch 1
    next(b)  # epoch 2: b was made first, but reads later
    state = dl.state_dict()
    assert (state["epoch"], state["batches_done"], dl.epoch) == (2, 1, 2)
    del a, c
    uninterrupted = [[_ids(x) for x in b]] + [[_ids(x) for x in dl] for _ in range(2)]
    again = make()
    again.load_state_dict(state)
    resumed = [[_ids(x) for x in again] for _ in range(3)]
    assert resumed == uninterrupted
    assert [dl.epoch, again.epoch] == [5, 5]


def test_a_fresh_pass_resumes_where_its_state_says():
    """A checkpoint while two passes run follows the newer one (the fresh epoch): resuming
    continues it, and the older pass no longer moves the state."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=2)
    a, b = iter(dl), iter(dl)  # both made before either hands out: b takes a fresh epoch
    next(a)
    next(b), next(b)
    next(a)
    state = dl.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 2) and dl.epoch == 1
    rest = [_ids(x) for x in b]
    again = rc.DataLoader(ds, batch_size=4, shuffle=True)
    again.load_state_dict(state)
    assert [_ids(x) for x in again] == rest == _batches(dl.epoch_order(1), 4)[2:]
    assert dl.epoch == 2 and len(list(a)) == len(dl) - 2 and dl.epoch == 2


def test_a_fresh_pass_over_a_distributed_sampler_draws_its_epoch():
    """A sampler with set_epoch gets a fresh pass's epoch when that pass draws (its owner did
    not set one since): the pair draws two orders and the state's epoch is the order drawn."""
    ds = _dataset()

    def ref(epoch):
        s = DistributedSampler(ds, num_replicas=2, rank=0, seed=3)
        s.set_epoch(epoch)
        return _batches(list(s), 4)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, seed=3)
    dl = rc.DataLoader(ds, batch_size=4, sampler=sampler)
    pairs = [(_ids(a), _ids(b)) for a, b in zip(dl, dl, strict=False)]
    assert [a for a, _ in pairs] == ref(0) and [b for _, b in pairs] == ref(1)
    a, b = iter(dl), iter(dl)  # epochs 2 (the one after the pair) and 3
    next(a)
    next(b)
    state = dl.state_dict()
    assert state["epoch"] == 3
    again = rc.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 2, 0, seed=3))
    again.load_state_dict(state)
    assert [_ids(x) for x in again] == [_ids(x) for x in b] == ref(3)[1:]


# ---------------------------------------------------------------------------------------------
# errors


def _flaky_collate(fail_at, exc):
    calls = {"n": 0}

    def collate(samples):
        calls["n"] += 1
        if calls["n"] in fail_at:
            raise exc
        return torch.utils.data.default_collate(samples)
    return collate


def _run(it) -> list:
    """Each item's ids, or the name of the error next() raised, until StopIteration."""
    got = []
    while True:
        try:
            got.append(_ids(next(it)))
        except StopIteration:
            return got
        except (Exception, KeyboardInterrupt) as e:
            got.append(type(e).__name__)


@pytest.mark.parametrize("exc", [ValueError("bad sample"), KeyboardInterrupt()])
def test_an_error_in_collate_consumes_its_batch_and_the_pass_goes_on_like_torch(exc):
    """The next next(it) after an error raised StopIteration (the pass was dead)."""
    ds = _dataset()
    for shuffle in (False, True):
        dl = rc.DataLoader(ds, batch_size=8, shuffle=shuffle, seed=4,
                           collate_fn=_flaky_collate({2, 4}, exc))
        ref = torch.utils.data.DataLoader(ds, batch_sampler=_batches(dl.epoch_order(0), 8),
                                          collate_fn=_flaky_collate({2, 4}, exc))
        it = iter(dl)
        got = _run(it)
        assert got == _run(iter(ref))
        assert got[1] == got[3] == type(exc).__name__ and len(got) == len(dl) == 5
        assert dl.epoch == 1  # the pass ran to its end
    # batches_done counts the consumed batch: a checkpoint after it resumes after it
    dl = rc.DataLoader(ds, batch_size=8, shuffle=True, seed=4,
                       collate_fn=_flaky_collate({2}, exc))
    it = iter(dl)
    next(it)
    with pytest.raises(type(exc)):
        next(it)
    assert len(it) == 3 and dl.state_dict()["batches_done"] == 2
    again = rc.DataLoader(ds, batch_size=8, shuffle=True)
    again.load_state_dict(dl.state_dict())
    assert [_ids(b) for b in again] == [_ids(b) for b in it] == _batches(dl.epoch_order(0),
                                                                          8)[2:]


def test_an_error_in_the_dataset_consumes_its_batch(monkeypatch):
    """An error while the batch is built (the dataset's gather; here a KeyboardInterrupt in
    the third batch) is that batch's; the next batch is built as before."""
    ds = _dataset()
    want = [_ids(b) for b in rc.DataLoader(ds, batch_size=5, shuffle=True, seed=6)]
    build, calls = ds._batch_from_host, {"n": 0}

    def flaky(idx, draw=(0, 0, 0)):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return build(idx, draw)
    monkeypatch.setattr(ds, "_batch_from_host", flaky)
    got = _run(iter(rc.DataLoader(ds, batch_size=5, shuffle=True, seed=6)))
    assert got == want[:2] + ["KeyboardInterrupt"] + want[3:]


def test_indices_the_dataset_refuses_fail_their_own_item_like_torch():
    """A sampler / batch_sampler value out of range (or not an integer) fails the batch (or,
    with batching off, the sample) that holds it, as torch's fetch of it does; the others are
    built. The whole epoch's indices are checked at once, so rc failed the pass at its first
    batch and then stopped."""
    ds = _dataset()
    n = len(ds)
    order = list(range(n))
    order[9], order[30] = n + 3, -n - 1  # batches 2 and 7 of 4; order[37] = 2.5 below
    for kw, sampler in ((dict(batch_size=4), order),
                        (dict(batch_size=4), order[:37] + [2.5] + order[38:]),
                        (dict(batch_size=4, drop_last=True), [*range(36), n + 9]),  # dropped
                        (dict(batch_size=None), order)):
        dl = rc.DataLoader(ds, sampler=sampler, **kw)
        ref = torch.utils.data.DataLoader(ds, sampler=sampler, **kw)
        got = _run(iter(dl))
        assert got == _run(iter(ref)), kw
        assert got.count("IndexError") == (0 if kw.get("drop_last") else 2), kw
    batches = [[0, 1], [2, n], [3], [1.5, 4], [5]]
    got = _run(iter(rc.DataLoader(ds, batch_sampler=batches)))
    assert got == _run(iter(torch.utils.data.DataLoader(ds, batch_sampler=batches)))
    assert got == [(0, 1), "IndexError", (3,), "TypeError", (5,)]
    with pytest.raises(IndexError):  # the order itself still says what is wrong
        rc.DataLoader(ds, sampler=order).epoch_order()


def test_refused_indices_of_a_sampler_without_length_fail_their_batch(monkeypatch):
    from robocache import loader as L

    monkeypatch.setattr(L, "STREAM_BATCHES", 2, raising=False)
    ds = _dataset()
    n = len(ds)

    class Unsized(torch.utils.data.Sampler):
        def __iter__(self):
            yield from [0, 1, 2, n, 4, 5, 6, 7, 8, 9, n + 1]

    dl = rc.DataLoader(ds, batch_size=2, sampler=Unsized())
    got = _run(iter(dl))
    assert got == _run(iter(torch.utils.data.DataLoader(ds, batch_size=2, sampler=Unsized())))
    assert got == [(0, 1), "IndexError", (4, 5), (6, 7), (8, 9), "IndexError"]
    assert dl.epoch == 1


# ---------------------------------------------------------------------------------------------
# loader.sampler / loader.batch_sampler


def test_sampler_and_batch_sampler_attributes_have_torchs_meaning():
    """They were None unless given: len(loader.sampler), torch's per-rank sample count, failed."""
    ds = _dataset()
    n = len(ds)
    for kw, samples in ((dict(batch_size=8, shuffle=True, seed=1), n),
                        (dict(batch_size=8, shuffle=True, rank=1, world_size=2), 20),
                        (dict(batch_size=8, rank=2, world_size=4, drop_last=True), 9),
                        (dict(batch_size=8, sampling="episode", seed=2), n),
                        (dict(batch_size=None, shuffle=True, seed=3), n)):
        dl = rc.DataLoader(ds, **kw)
        assert isinstance(dl.sampler, torch.utils.data.Sampler), kw
        assert len(dl.sampler) == samples, kw
        dl.set_epoch(3)
        assert list(dl.sampler) == dl.epoch_order().tolist() == dl.epoch_order(3).tolist()
        if kw["batch_size"] is None:
            assert dl.batch_sampler is None  # as torch's with batching off
            continue
        bs = dl.batch_sampler
        assert type(bs) is BatchSampler and len(bs) == len(dl), kw
        assert [tuple(b) for b in bs] == [_ids(b) for b in dl], kw
    # the ones given are handed back
    sampler = DistributedSampler(ds, num_replicas=2, rank=0)
    dl = rc.DataLoader(ds, batch_size=4, sampler=sampler)
    assert dl.sampler is sampler and len(dl.batch_sampler) == len(dl) == 5
    bs = BatchSampler(SequentialSampler(ds), 6, False)
    dl = rc.DataLoader(ds, batch_sampler=bs)
    assert dl.batch_sampler is bs and len(dl.sampler) == n
    assert list(dl.sampler) == list(range(n))
    # with a batch_sampler, torch's .sampler is an unused SequentialSampler: asking its length
    # draws nothing from the batch_sampler's generator
    g = torch.Generator().manual_seed(5)
    dl = rc.DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds, generator=g), 6, False))
    before = g.get_state()
    assert len(dl.sampler) == n and type(dl.sampler) is SequentialSampler
    assert torch.equal(g.get_state(), before)
    with pytest.raises(AttributeError):  # set once, as torch's
        dl.sampler = sampler


def test_a_batch_sampler_without_length_has_a_sampler_without_length():
    ds = _dataset()

    class Unsized:
        def __iter__(self):
            yield from ([0, 1], [5])
    dl = rc.DataLoader(ds, batch_sampler=Unsized())
    assert len(list(dl)) == 2
    with pytest.raises(TypeError, match="no length"):
        len(dl)


def test_a_loader_pickled_by_the_previous_version_works():
    """A pickle of the previous version's loader (attributes sampler / batch_sampler, no
    _loaded_states / _fresh / _made) unpickles into a working loader."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=2)
    want = [_ids(b) for b in dl]
    state = dl.__getstate__()
    for new, old in (("_sampler", "sampler"), ("_batch_sampler", "batch_sampler")):
        state[old] = state.pop(new)
    for gone in ("_loaded_states", "_fresh", "_made"):
        del state[gone]
    state["_epoch"] = 0
    old = rc.DataLoader.__new__(rc.DataLoader)
    old.__setstate__(state)
    assert old.sampler is not None and [_ids(b) for b in old] == want


@pytest.mark.parametrize("reuse", [0, 2])
def test_errors_on_the_device_path_consume_their_item(emulated_cuda, monkeypatch, reuse):
    """The device path (one launch fills several batches ahead) after an error: the pass goes
    on from its own index array, with the batches the NumPy backend builds."""
    from test_loader_device_path import _assert_batch_equal, _datasets, _snapshot

    from robocache.ops import windows as OW

    monkeypatch.setattr(OW, "SLAB_BYTES", 1 << 20)  # one launch fills many batches
    dev, host = _datasets()
    n = len(dev)
    order = np.random.default_rng(0).permutation(n).tolist()
    order[7] = n + 1  # batch 2 of 3: refused
    for collate_fail in (set(), {4}):
        got, want = [], []
        for ds, out, kw in ((dev, got, dict(reuse_outputs=reuse)), (host, want, {})):
            calls = {"n": 0}

            def collate(samples, calls=calls, fail=collate_fail):
                calls["n"] += 1
                if calls["n"] in fail:
                    raise KeyboardInterrupt
                return samples.batch
            it = iter(rc.DataLoader(ds, batch_size=3, sampler=order, collate_fn=collate, **kw))
            while True:
                try:
                    out.append(_snapshot(next(it)))
                except StopIteration:
                    break
                except (IndexError, KeyboardInterrupt) as e:
                    out.append(type(e).__name__)
        assert len(got) == len(want) == -(-n // 3)
        assert got[2] == "IndexError" and (not collate_fail or got[4] == "KeyboardInterrupt")
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            if isinstance(w, str):
                assert g == w, k
            else:
                _assert_batch_equal(g, w, f"batch {k}")
