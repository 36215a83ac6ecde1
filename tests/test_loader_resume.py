"""rc.DataLoader state across samplers: the epoch reaches a DistributedSampler inside a
BatchSampler, a state says what its position counts (and a loader of another configuration
refuses it), a sampler drawing from a torch.Generator (or with a state_dict of its own) replays
its order on resume, and one rank's state loads on every rank."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _loader_data import indices_of, small_dataset
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

import robocache as rc

_dataset = small_dataset
_id = indices_of


def _ids(loader_or_it) -> list:
    return [_id(b) for b in loader_or_it]


def _take(loader, k):
    """An iterator of `loader` after k items, and those items' indices."""
    it = iter(loader)
    return it, [_id(next(it)) for _ in range(k)]


# ---------------------------------------------------------------------------------------------
# the epoch reaches the sampler inside a BatchSampler


def test_the_epoch_reaches_a_distributed_sampler_inside_a_batch_sampler():
    """set_epoch, a completed pass and load_state_dict told the BatchSampler (which has no
    set_epoch), never its DistributedSampler: every epoch had epoch 0's order."""
    ds = _dataset()

    def make():
        s = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
        return rc.DataLoader(ds, batch_sampler=BatchSampler(s, 5, False)), s

    def ref(epoch):
        s = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
        s.set_epoch(epoch)
        return [tuple(b) for b in BatchSampler(s, 5, False)]
    dl, s = make()
    assert _ids(dl) == ref(0) and s.epoch == dl.epoch == 1  # a completed pass: forwarded
    assert _ids(dl) == ref(1) and s.epoch == 2
    dl.set_epoch(3)
    assert s.epoch == 3 and _ids(dl) == ref(3)
    it, seen = _take(dl, 2)  # epoch 4, two batches in
    state = dl.state_dict()
    rest = _ids(it)
    assert seen + rest == ref(4)
    again, s2 = make()
    again.load_state_dict(state)
    assert s2.epoch == 4 and _ids(again) == rest


# ---------------------------------------------------------------------------------------------
# what a state's position means


def _state_after(loader, k):
    _take(loader, k)
    return loader.state_dict()


def test_a_state_of_another_sampler_configuration_is_refused():
    """batches_done counts the writing loader's items: a state was taken by a loader with
    another sampler / batch_sampler configuration and resumed at the wrong place."""
    ds = _dataset()
    n = len(ds)

    def dist(replicas, rank=0):
        return DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=False)

    def bsampler(size):
        return BatchSampler(SequentialSampler(ds), size, False)
    g = torch.Generator().manual_seed(0)
    cases = [  # (writer, reader, the key that differs)
        (dict(batch_size=4, sampler=dist(2)), dict(batch_size=4, sampler=dist(4)),
         "num_replicas"),
        (dict(batch_size=4, sampler=dist(2)), dict(batch_size=4), "index_source"),
        (dict(batch_size=4), dict(batch_size=4, sampler=range(n)), "index_source"),
        (dict(batch_size=4, sampler=range(30)), dict(batch_size=4, sampler=range(n)),
         "source_len"),
        (dict(batch_sampler=bsampler(6)), dict(batch_sampler=bsampler(2)), "source_batch_size"),
        (dict(batch_sampler=bsampler(6)), dict(batch_size=None), "index_source"),
        (dict(batch_size=None), dict(batch_sampler=bsampler(6)), "index_source"),
        (dict(batch_size=6, sampler=range(n)), dict(batch_sampler=bsampler(6)), "index_source"),
        (dict(batch_sampler=[[0, 1], [2]]), dict(batch_sampler=[[0, 1], [2], [3]]),
         "source_len"),
        (dict(batch_size=4, sampler=RandomSampler(ds, generator=g)),
         dict(batch_size=4, sampler=RandomSampler(ds)), "sampler_states"),
        (dict(batch_size=4, sampler=RandomSampler(ds)),
         dict(batch_size=4, sampler=RandomSampler(ds, generator=g)), "sampler_states"),
    ]
    for writer, reader, key in cases:
        state = _state_after(rc.DataLoader(ds, **writer), 1)
        with pytest.raises(ValueError, match=rf"state\['{key}'\].*another configuration"):
            rc.DataLoader(ds, **reader).load_state_dict(state)
        rc.DataLoader(ds, **writer).load_state_dict(state)  # its own configuration: taken
    # a generator's state of another size (another kind of generator) is refused up front
    dl = rc.DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=g))
    state = dl.state_dict()
    state["sampler_states"]["sampler"]["generator"] = "AAAA"
    with pytest.raises(ValueError, match="expected a torch.Generator state of"):
        dl.load_state_dict(state)
    state["sampler_states"]["sampler"]["generator"] = "not base64!"
    with pytest.raises(ValueError, match="expected the base64 text"):
        dl.load_state_dict(state)


def _v1(state):
    """The state the previous version wrote: without the fields added in version 2."""
    old = {k: v for k, v in state.items() if k not in (
        "index_source", "source_len", "source_batch_size", "num_replicas", "sampler_states")}
    return {**old, "version": 1}


def test_version_1_states_load_where_they_say_what_they_count():
    """A state of the previous version resumes a loader that shuffles or shards its own order
    (nothing else can have written it); an unshuffled, unsharded one could be a sampler's or a
    batch_sampler's and is refused, as any other version."""
    ds = _dataset()
    for kw in (dict(batch_size=4, shuffle=True, seed=5),
               dict(batch_size=None, shuffle=True, seed=5),
               dict(batch_size=4, rank=1, world_size=2),
               dict(batch_size=6, sampling="episode", seed=2)):
        dl = rc.DataLoader(ds, **kw)
        it, _ = _take(dl, 3)
        state = _v1(dl.state_dict())
        again = rc.DataLoader(ds, **kw)
        again.load_state_dict(state)
        assert _ids(again) == _ids(it), kw
    state = _v1(_state_after(rc.DataLoader(ds, batch_size=4), 2))
    with pytest.raises(ValueError, match="version-1 .* without shuffle or sharding"):
        rc.DataLoader(ds, batch_size=4).load_state_dict(state)
    state = _v1(_state_after(rc.DataLoader(ds, batch_size=4, shuffle=True), 2))
    for reader, key in ((dict(batch_size=4, sampler=range(len(ds))), "index_source"),
                        (dict(batch_size=4), "shuffle")):
        with pytest.raises(ValueError, match=rf"state\['{key}'\]"):
            rc.DataLoader(ds, **reader).load_state_dict(state)
    with pytest.raises(ValueError, match="of version 2"):
        rc.DataLoader(ds, batch_size=4).load_state_dict({**state, "version": 3})


# ---------------------------------------------------------------------------------------------
# samplers drawing a new order per pass


def _random_samplers(ds):
    """(name, loader arguments maker): samplers that draw a new order per iter() from a
    torch.Generator seeded the same way on every call."""
    n = len(ds)

    def g():
        return torch.Generator().manual_seed(7)
    return [
        ("RandomSampler", lambda: dict(batch_size=6, sampler=RandomSampler(ds, generator=g()))),
        ("RandomSampler(replacement)", lambda: dict(batch_size=6, sampler=RandomSampler(
            ds, replacement=True, num_samples=30, generator=g()))),
        ("WeightedRandomSampler", lambda: dict(batch_size=5, sampler=WeightedRandomSampler(
            torch.linspace(0.1, 1, n), 25, generator=g()))),
        ("SubsetRandomSampler", lambda: dict(batch_size=4, sampler=SubsetRandomSampler(
            range(3, n), generator=g()))),
        ("BatchSampler(RandomSampler)", lambda: dict(batch_sampler=BatchSampler(
            RandomSampler(ds, generator=g()), 7, False))),
        ("batch_size=None", lambda: dict(batch_size=None, sampler=RandomSampler(
            ds, generator=g()))),
    ]


@pytest.mark.parametrize("k", [0, 2])
def test_resume_replays_the_order_of_a_sampler_with_a_generator(k):
    """A RandomSampler(generator=...) draws another order per pass: the resumed pass drew a
    fresh one and skipped batches_done of it (samples of the epoch repeated, others missed).
    Now the generator's state at the pass's start travels in the state: before the checkpoint
    and after resume is one uninterrupted epoch, and the epochs after it are the same too."""
    ds = _dataset()
    for name, kw in _random_samplers(ds):
        ref = rc.DataLoader(ds, **kw())
        epochs = [_ids(ref) for _ in range(3)]  # the uninterrupted run
        dl = rc.DataLoader(ds, **kw())
        assert _ids(dl) == epochs[0], name
        it, seen = _take(dl, k)  # epoch 1, k items in: the checkpoint
        state = json.loads(json.dumps(dl.state_dict()))  # a generator's state is text
        assert seen + _ids(it) == epochs[1], name  # the run goes on, uninterrupted
        again = rc.DataLoader(ds, **kw())
        again.load_state_dict(state)
        assert seen + _ids(again) == epochs[1], name
        assert _ids(again) == epochs[2], name  # and the generator goes on as it did
        if name in ("RandomSampler", "BatchSampler(RandomSampler)"):
            assert sorted(i for b in epochs[1] for i in b) == list(range(len(ds)))


def test_a_sampler_whose_state_dict_is_a_position_resumes_exactly():
    """torchdata's StatefulDistributedSampler: its state_dict() is how far its pass got
    ('yielded'), and load_state_dict makes its next iter() skip that many. The loader keeps the
    position itself and never calls them (calling them emptied the resumed epochs)."""
    ds = _dataset()

    class PositionSampler(DistributedSampler):  # torchdata 0.11's semantics
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.yielded = self.skip = 0

        def __iter__(self):
            self.yielded = self.skip
            order = list(super().__iter__())[self.skip:]
            self.skip = 0
            for i in order:
                self.yielded += 1
                yield i

        def state_dict(self):
            return {"yielded": self.yielded}

        def load_state_dict(self, state):
            self.skip = state["yielded"]

    def make():
        return rc.DataLoader(ds, batch_size=4, sampler=PositionSampler(ds, 1, 0, seed=4))
    ref = make()
    epochs = [_ids(ref) for _ in range(3)]
    assert epochs[0] != epochs[1]
    dl = make()
    _ids(dl)
    it, seen = _take(dl, 3)
    state = dl.state_dict()
    assert state["sampler_states"] is None
    json.dumps(state)
    again = make()
    again.load_state_dict(state)
    assert seen + _ids(again) == epochs[1] and _ids(again) == epochs[2]
    between = make()  # a checkpoint between epochs
    _ids(between)
    after = make()
    after.load_state_dict(between.state_dict())
    assert _ids(after) == epochs[1]


def test_a_copy_and_a_checkpoint_between_passes_replay_a_random_samplers_order():
    ds = _dataset()

    def make():
        return rc.DataLoader(ds, batch_size=6, sampler=RandomSampler(
            ds, generator=torch.Generator().manual_seed(1)))
    ref = make()
    epochs = [_ids(ref) for _ in range(3)]
    dl = make()
    it, seen = _take(dl, 2)
    twin = copy.deepcopy(dl)  # a copy is a checkpoint of the pass under way
    assert seen + _ids(twin) == epochs[0] and _ids(twin) == epochs[1]
    assert seen + _ids(it) == epochs[0]
    state = dl.state_dict()  # after the pass: the next one draws from the generator as it is
    assert state["batches_done"] == 0
    again = make()
    again.load_state_dict(state)
    assert _ids(again) == epochs[1] == _ids(dl)
    # set_epoch of the saved epoch keeps the resume point and its generator state (the usual
    # load_state_dict, then the training loop's set_epoch)
    dl = make()
    _ids(dl)
    it, seen = _take(dl, 3)
    again = make()
    again.load_state_dict(dl.state_dict())
    again.set_epoch(1)
    assert seen + _ids(again) == epochs[1]


# ---------------------------------------------------------------------------------------------
# one rank's state on every rank


def test_rank_1_resumes_from_rank_0s_state():
    """The usual DDP resume loads rank 0's checkpoint on every rank: with the loader's own
    sharding, the states differ only in 'rank', which refused it."""
    ds = _dataset()
    loaders = [rc.DataLoader(ds, batch_size=4, shuffle=True, rank=r, world_size=2)
               for r in range(2)]
    its = [_take(dl, 3)[0] for dl in loaders]
    s0, s1 = (dl.state_dict() for dl in loaders)
    assert {k for k in s0 if s0[k] != s1[k]} == {"rank"}
    rest = _ids(its[1])
    fresh = rc.DataLoader(ds, batch_size=4, shuffle=True, rank=1, world_size=2)
    fresh.load_state_dict(s0)
    assert _ids(fresh) == rest
    with pytest.raises(ValueError, match="world_size"):  # another world is still refused
        rc.DataLoader(ds, batch_size=4, shuffle=True, rank=1, world_size=3).load_state_dict(s0)
    # with DistributedSamplers: their num_replicas is checked, not their rank
    dls = [rc.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 2, r, seed=1))
           for r in range(2)]
    its = [_take(dl, 2)[0] for dl in dls]
    fresh = rc.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 2, 1, seed=1))
    fresh.load_state_dict(dls[0].state_dict())
    assert _ids(fresh) == _ids(its[1])


def test_a_ranks_sampler_generator_state_loads_on_that_rank_only():
    """Each rank's sampler with a generator of its own draws that rank's order: rank 0's state
    (its generator's) on rank 1 would replay rank 0's draw silently, so it is refused. The rank
    is the sampler's (rank / num_replicas, as DistributedSampler has them) or the process
    group's: a loader with a sampler takes no rank= of its own."""
    ds = _dataset()
    h = len(ds) // 2

    class RankSubset(torch.utils.data.SubsetRandomSampler):
        def __init__(self, rank):
            super().__init__(list(range(rank * h, (rank + 1) * h)),
                             torch.Generator().manual_seed(100 + rank))
            self.rank, self.num_replicas = rank, 2

    def make(rank):
        return rc.DataLoader(ds, batch_size=4, sampler=RankSubset(rank))
    dls = [make(r) for r in range(2)]
    for dl in dls:
        _take(dl, 2)
    states = [dl.state_dict() for dl in dls]
    assert [st["rank"] for st in states] == [0, 1]
    with pytest.raises(ValueError, match=r"state\['rank'\]: expected 1 .*load each rank's own"):
        make(1).load_state_dict(states[0])
    again = make(1)
    again.load_state_dict(json.loads(json.dumps(states[1])))
    want = _ids(make(1))
    _, seen = _take(make(1), 2)
    assert seen + _ids(again) == want
