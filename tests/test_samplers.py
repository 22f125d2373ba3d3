"""Streaming samplers: scenes walked in time order per batch position, every sample once per
epoch, shards that split scenes across ranks without gaps or duplicates."""
from collections import Counter

import pytest
from mmengine.dataset import DefaultSampler
from mmengine.registry import DATA_SAMPLERS
from mmengine.runner import Runner

import projects.streampetr  # noqa: F401  (registers the Stream* samplers)


class SceneInfos:
    """The part of a dataset samplers read: ``len`` and ``get_data_info``, in info order (scene,
    then time). ``cuts`` lists (scene, frame) pairs that start a new sequence inside a scene
    (``prev_exists`` False there, as the dataset's ``seq_split_num`` makes them)."""

    def __init__(self, scene_lengths, cuts=()):
        self.infos = [dict(scene_token=f'scene-{s}', frame=t,
                           prev_exists=t > 0 and (s, t) not in cuts,
                           pipeline_output=dict(scene=s, frame=t))
                      for s, n in enumerate(scene_lengths) for t in range(n)]

    def __len__(self):
        return len(self.infos)

    def get_data_info(self, idx):
        return dict(self.infos[idx])

    def __getitem__(self, idx):
        return self.infos[idx]['pipeline_output']


SCENES = [7, 3, 12, 5, 9, 1, 8, 4, 6, 10, 2, 11]  # 78 samples in 12 scenes


def batch_sampler(batch_size, rank=0, world_size=1, shuffle=True, seed=3, scenes=SCENES,
                  cuts=()):
    sampler = DefaultSampler(SceneInfos(scenes, cuts), shuffle=False, seed=seed)
    return DATA_SAMPLERS.build(dict(type='StreamBatchSampler', shuffle=shuffle, rank=rank,
                                    world_size=world_size),
                               default_args=dict(sampler=sampler, batch_size=batch_size))


def assert_streams_in_time_order(infos, streams):
    for stream in streams:
        for prev, cur in zip(stream, stream[1:]):
            a, b = infos.infos[prev], infos.infos[cur]
            if a['scene_token'] == b['scene_token']:
                assert b['frame'] == a['frame'] + 1, (prev, cur)
            else:  # a new scene is entered from its first frame
                assert b['frame'] == 0, (prev, cur)


@pytest.mark.parametrize('batch_size,world_size', [(1, 1), (2, 1), (3, 1), (2, 2), (2, 3),
                                                   (1, 3), (4, 2)])
def test_batches_stream_scenes_in_order_and_cover_the_epoch(batch_size, world_size):
    infos = SceneInfos(SCENES)
    samplers = [batch_sampler(batch_size, r, world_size) for r in range(world_size)]
    lengths = {len(s) for s in samplers}
    assert len(lengths) == 1  # every rank runs the same number of steps
    seen = Counter()
    rank_scenes = []
    for s in samplers:
        batches = list(s)
        assert len(batches) == len(s) and all(len(b) == batch_size for b in batches)
        streams = [[b[i] for b in batches] for i in range(batch_size)]
        assert_streams_in_time_order(infos, streams)
        seen.update(i for b in batches for i in b)
        rank_scenes.append({infos.infos[i]['scene_token'] for b in batches for i in b})
    num_streams = batch_size * world_size
    assert set(seen) == set(range(len(infos)))
    duplicates = sum(seen.values()) - len(infos)
    assert duplicates == lengths.pop() * num_streams - len(infos) < num_streams
    assert max(seen.values()) <= 2
    # Scenes only straddle the cut between two streams: ranks share at most world_size - 1.
    shared = sum(len(a & b) for i, a in enumerate(rank_scenes) for b in rank_scenes[i + 1:])
    assert shared <= world_size - 1


def test_split_scenes_are_shuffled_as_separate_sequences():
    """A sequence starts where prev_exists is False: the parts of a scene move independently,
    and every stream enters a part from its first frame (or at its window's start)."""
    cuts = {(s, (n + 1) // 2) for s, n in enumerate(SCENES) if n > 1}
    infos = SceneInfos(SCENES, cuts)
    starts = {(s, 0) for s in range(len(SCENES))} | cuts
    parts_next_to_their_scene = 0
    for seed in range(5):
        streams = batch_sampler(1, seed=seed, cuts=cuts).streams()
        stream = streams[0]
        assert sorted(stream) == list(range(len(infos)))
        for prev, cur in zip(stream, stream[1:]):
            a, b = infos.infos[prev], infos.infos[cur]
            key_b = (int(b['scene_token'].split('-')[1]), b['frame'])
            assert key_b in starts or (a['scene_token'] == b['scene_token']
                                       and b['frame'] == a['frame'] + 1), (prev, cur)
            parts_next_to_their_scene += a['scene_token'] == b['scene_token'] and key_b in cuts
    # Out of 5 x 11 second halves, only a few follow their first half by chance.
    assert parts_next_to_their_scene < 15


def test_exact_division_sees_every_sample_exactly_once():
    infos = SceneInfos([4, 4, 6, 2])
    samplers = [batch_sampler(2, r, 2, scenes=[4, 4, 6, 2]) for r in range(2)]
    seen = Counter(i for s in samplers for b in s for i in b)
    assert seen == Counter(range(len(infos)))


def test_epochs_reshuffle_scenes_deterministically():
    s = batch_sampler(2)
    first = list(s)
    assert list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert s.sampler.epoch == 1
    second = list(s)
    assert second != first
    assert Counter(i for b in second for i in b) == Counter(i for b in first for i in b)
    assert list(batch_sampler(2, seed=3)) == first  # from the seed alone
    unshuffled = [i for b in batch_sampler(1, shuffle=False) for i in b]
    assert unshuffled == list(range(len(SceneInfos(SCENES))))


def test_runner_builds_the_batch_sampler_into_a_dataloader():
    loader = Runner.build_dataloader(
        dict(batch_size=3, num_workers=0, dataset=SceneInfos(SCENES),
             sampler=dict(type='DefaultSampler', shuffle=False),
             batch_sampler=dict(type='StreamBatchSampler')), seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 26 and all(len(b['frame']) == 3 for b in batches)
    for pos in range(3):  # each batch position walks (scene, frame) in time order
        stream = [(b['scene'][pos], b['frame'][pos]) for b in batches]
        for (s0, t0), (s1, t1) in zip(stream, stream[1:]):
            assert (s1 == s0 and t1 == t0 + 1) or (s1 != s0 and t1 == 0)


def test_batch_sampler_rejects_bad_setups():
    with pytest.raises(TypeError, match='DefaultSampler'):
        DATA_SAMPLERS.build(dict(type='StreamBatchSampler'),
                            default_args=dict(sampler=range(3), batch_size=2))
    with pytest.raises(ValueError, match='cannot fill'):
        batch_sampler(4, world_size=2, scenes=[3, 4])
    with pytest.raises(ValueError, match='rank'):
        batch_sampler(1, rank=2, world_size=2)


@pytest.mark.parametrize('world_size', [1, 2, 3, 5])
def test_contiguous_shards_cover_every_index_once(world_size):
    infos = SceneInfos(SCENES)
    shards = [list(DATA_SAMPLERS.build(dict(type='StreamContiguousSampler', rank=r,
                                            world_size=world_size), default_args=dict(
                                                dataset=infos, seed=0)))
              for r in range(world_size)]
    assert [i for shard in shards for i in shard] == list(range(len(infos)))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for shard in shards:
        assert shard == list(range(shard[0], shard[-1] + 1))
