"""The order and augmentation of training samples, as pure functions of (seed, epoch, index).

Why: a resumed run must see exactly the batches an uninterrupted run would, and the result must not
depend on the number of DataLoader workers or on how torchrun splits the batch. So:
- each epoch is a permutation seeded by (seed, epoch), cut into global batches; under torchrun every
  rank takes its own slice of each global batch (together the ranks see what one process would);
- every sample's augmentation is drawn from a generator seeded by (seed, epoch, index), whichever
  worker or rank loads it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from seg.data.transforms import SegmentationTransform


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


class TrainBatchSampler:
    """Endless batches of `(index, sample_seed)` pairs for one rank; can start mid-epoch.

    Epoch `e` is a permutation of the dataset seeded by `(seed, e)`, cut into `batch_size` (global)
    batches, the incomplete last one dropped; rank `r` of `world_size` gets the `r`-th slice of each.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} must divide evenly between {world_size} processes")
        if num_samples < batch_size:
            raise ValueError(f"the training split has {num_samples} images, fewer than train.batch_size={batch_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start_epoch, self.start_batch = start_epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of the batch that iteration `iteration` trains on."""
        return divmod(iteration, self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch_size // self.world_size
        epoch, first = self.start_epoch, self.start_batch
        while True:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
            for b in range(first, self.batches_per_epoch):
                start = b * self.batch_size + self.rank * per_rank
                yield [(i, _seed(self.seed, epoch, i)) for i in order[start : start + per_rank]]
            epoch, first = epoch + 1, 0


class SeededTransform:
    """A training transform whose random draws come from the seed of the sample being loaded."""

    def __init__(self, transform: SegmentationTransform) -> None:
        self.compose = transform.compose
        self.seed = 0

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.compose.set_random_seed(self.seed)
        out = self.compose(image=image, mask=mask)
        return out["image"].contiguous(), out["mask"].long()


class SeededSamples(Dataset):
    """`samples[(index, seed)]` is `dataset[index]` augmented with that seed.

    `dataset` must have been built with `transform` (a SeededTransform); each DataLoader worker holds
    its own copy of both, so setting the seed before loading is safe.
    """

    def __init__(self, dataset: Dataset, transform: SeededTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        self.transform.seed = seed
        return self.dataset[index]
