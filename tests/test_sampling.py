"""Training data order and augmentation (seg/engine/sampling.py): the same batches and crops for a
seed, however many processes split them and wherever a resumed run starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg.data.transforms import build_train_transform
from seg.engine.sampling import SeededTransform, TrainBatchSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ranks_split_each_global_batch_like_one_process():
    one = iter(TrainBatchSampler(50, 8, seed=3))
    ranks = [iter(TrainBatchSampler(50, 8, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(20):  # crosses epoch boundaries (6 batches per epoch)
        batch = next(one)
        assert len(batch) == 8
        assert next(ranks[0]) + next(ranks[1]) == batch


def test_sampler_starts_mid_epoch_where_an_uninterrupted_one_would_be():
    full = iter(TrainBatchSampler(50, 8, seed=3))
    batches = [next(full) for _ in range(15)]
    sampler = TrainBatchSampler(50, 8, seed=3)
    resumed = iter(TrainBatchSampler(50, 8, seed=3, start_epoch=1, start_batch=3))
    assert sampler.position(9) == (1, 3)
    assert [next(resumed) for _ in range(6)] == batches[9:]
    # every epoch is a permutation: no sample twice within an epoch
    first_epoch = [i for b in batches[:6] for i, _ in b]
    assert len(set(first_epoch)) == 48


def test_augmentation_depends_only_on_the_sample_seed():
    transform = SeededTransform(build_train_transform(24, 0.5, 2.0, 0.25, True, 255))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, (40, 30), dtype=np.uint8)
    outs = []
    for seed in (7, 8, 7):
        transform.seed = seed
        outs.append(transform(image, mask))
    assert torch.equal(outs[0][0], outs[2][0]) and torch.equal(outs[0][1], outs[2][1])
    assert not torch.equal(outs[0][0], outs[1][0])
    assert outs[0][0].shape == (3, 24, 24) and outs[0][1].dtype == torch.int64


def test_sampler_rejects_a_split_smaller_than_the_batch():
    with pytest.raises(ValueError, match="fewer than train.batch_size=8"):
        TrainBatchSampler(5, 8, seed=0)
