"""Samplers that keep the samples of a scene in time order, as streaming training and testing
need (the model carries a memory from one frame of a batch position to the next)."""
import math

import numpy as np
from mmengine.dist import get_rank, get_world_size
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler


def sequence_order(dataset):
    """Indices grouped into sequences, in dataset order (the info files are sorted by scene then
    timestamp): a sequence starts where the scene changes or ``prev_exists`` is False, the rule
    by which the model resets its memory (a scene, or a part of it with ``seq_split_num``)."""
    sequences, last_scene = [], None
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        if info['scene_token'] != last_scene or not info['prev_exists']:
            sequences.append([])
        sequences[-1].append(idx)
        last_scene = info['scene_token']
    return sequences


def _resolve_rank(rank, world_size):
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f'rank must be in [0, world_size={world_size}), got {rank}')
    return rank, world_size


@DATA_SAMPLERS.register_module()
class StreamBatchSampler(Sampler):
    """Training batches of ``batch_size`` streams: batch t is ``[stream_0[t], ...]``.

    Every epoch the sequences (``sequence_order``: scenes, or their parts when the dataset splits
    them) are shuffled (seed + epoch, the same on every rank) and concatenated;
    that sequence is cut into ``world_size * batch_size`` windows of the same length
    ``ceil(len(dataset) / streams)``, consecutive and covering it (neighbouring windows overlap by
    at most one sample, only when the division is not exact). Rank r takes the windows
    ``[r * batch_size, (r + 1) * batch_size)``, so all ranks run the same number of steps with
    full batches, each batch position walks its sequences in time order and moves on to the next
    when one ends, and every sample is seen once per epoch (plus those overlaps). A window may
    start or end inside a sequence: the model resets a memory slot whenever the scene changes,
    ``prev_exists`` is False or the time step is not plausible.

    Built by mmengine's Runner as ``batch_sampler=dict(type='StreamBatchSampler')`` next to
    ``sampler=dict(type='DefaultSampler')``, whose dataset, seed and epoch it uses (mmengine's
    loops and ``DistSamplerSeedHook`` call ``batch_sampler.sampler.set_epoch``).
    """

    def __init__(self, sampler, batch_size, shuffle=True, rank=None, world_size=None):
        for attr in ('dataset', 'seed', 'epoch', 'set_epoch'):
            if not hasattr(sampler, attr):
                raise TypeError(f"StreamBatchSampler needs a sampler with '{attr}' such as "
                                f"dict(type='DefaultSampler'), got {type(sampler).__name__}")
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.sampler = sampler
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.sequences = sequence_order(sampler.dataset)
        self.num_samples = sum(len(s) for s in self.sequences)
        self.num_streams = self.world_size * batch_size
        if self.num_samples < self.num_streams:
            raise ValueError(f'{self.num_samples} samples cannot fill {self.num_streams} streams '
                             f'(world_size {self.world_size} x batch_size {batch_size})')
        self.stream_len = math.ceil(self.num_samples / self.num_streams)

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def streams(self):
        """This rank's ``batch_size`` streams of this epoch, each a list of dataset indices."""
        order = range(len(self.sequences))
        if self.shuffle:
            order = np.random.default_rng(self.sampler.seed + self.sampler.epoch).permutation(
                len(self.sequences))
        sequence = [idx for i in order for idx in self.sequences[i]]
        # Windows of stream_len whose starts are spread evenly from 0 to the last possible one.
        last_start = self.num_samples - self.stream_len
        spread = max(self.num_streams - 1, 1)
        first = self.rank * self.batch_size
        return [sequence[k * last_start // spread:][:self.stream_len]
                for k in range(first, first + self.batch_size)]

    def __iter__(self):
        streams = self.streams()
        for t in range(self.stream_len):
            yield [stream[t] for stream in streams]

    def __len__(self):
        return self.stream_len


@DATA_SAMPLERS.register_module()
class StreamContiguousSampler(Sampler):
    """Test sampler: rank r gets the indices ``[r * n // w, (r + 1) * n // w)`` in order, with
    neither padding nor duplicates (mmengine's DefaultSampler interleaves ranks, which would cut
    every scene into strided pieces). ``seed`` is accepted because the Runner passes one."""

    def __init__(self, dataset, seed=None, rank=None, world_size=None):
        self.dataset = dataset
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        n = len(dataset)
        self.indices = range(self.rank * n // self.world_size,
                             (self.rank + 1) * n // self.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
