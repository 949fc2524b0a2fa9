"""Which samples each batch holds, on which process.

Training: a shuffled order and each sample's augmentation seed are functions of ``(seed, epoch)``
and ``(seed, epoch, index)`` alone. Nothing depends on the state of a random generator, in the
main process or in a DataLoader worker, so a run resumed at epoch e sees exactly the batches and
augmentations an uninterrupted run sees, whatever the number of workers and whether they persist;
resumed inside an epoch (a SLURM requeue), it sees the rest of that epoch's batches
(:meth:`TrainingSampler.skip`).

Evaluation: every image of a split is scored exactly once over all processes (Lightning's
DistributedSampler would repeat images to even out the processes' shares), and each batch holds
images of one size, so no image is padded for another's sake: the global pooling of ASPP and
PSPNet then sees the same input whatever the batch size or the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from segfw.errors import ConfigError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: a 32-bit mix of the three."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainingSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` for one process's share of a shuffled epoch.

    Lightning calls ``set_epoch`` before each epoch. With several processes the order is cut into
    ``num_replicas`` strided shares, the last ones completed with the order's first samples (as
    torch's DistributedSampler does: every process must step the same number of times).

    Args:
        size: samples in the split.
        seed: the run's seed.
        num_replicas: processes sharing the split.
        rank: this process's place among them.
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if seed < 0:
            raise ConfigError(f"seed={seed} must be >= 0.")
        self.size, self.seed = size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._skip = (-1, 0)  # (epoch, samples): where the next pass starts, if over that epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, samples: int) -> None:
        """Starts the next pass after the first ``samples`` of this process's share, if that pass
        is over ``epoch``: the rest of an epoch that a checkpoint interrupted."""
        self._skip = (epoch, samples)

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(self.size, generator=generator).tolist()
        total = len(self) * self.num_replicas
        order += order[: total - len(order)]
        skip_epoch, skip = self._skip
        self._skip = (-1, 0)  # one pass only
        start = skip if skip_epoch == self.epoch else 0
        for index in order[self.rank : total : self.num_replicas][start:]:
            yield index, sample_seed(self.seed, self.epoch, index)


def group_batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Positions ``0 .. len(keys) - 1`` in batches of at most ``batch_size`` that share a key,
    each group in order of its first position, positions in order within a group."""
    groups: dict[Hashable, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


class EvaluationBatches(Sampler[list[int]]):
    """Batches of one process's share of an evaluation split: images ``rank, rank + n, ...`` for
    ``n`` processes, no image repeated, grouped by size.

    Processes may get different numbers of batches; evaluation needs no step in lockstep (the
    metrics are summed over processes once, at the end of the epoch).

    Args:
        sizes: ``(height, width)`` of each image as the evaluation transform gives it.
        batch_size: most images per batch.
        num_replicas: processes sharing the split.
        rank: this process's place among them.

    Raises:
        ConfigError: fewer images than processes (a process without images would leave the
            others waiting for it at the end of the epoch).
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if len(sizes) < num_replicas:
            raise ConfigError(
                f"The split has {len(sizes)} image(s) for {num_replicas} processes; evaluate it "
                f"with at most {len(sizes)} (trainer.devices) or add images."
            )
        self.batch_size = batch_size
        mine = list(range(rank, len(sizes), num_replicas))
        keys = [tuple(sizes[i]) for i in mine]
        self.batches = [[mine[p] for p in batch] for batch in group_batches(keys, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def like_sized_batches(
    items: Sequence[dict[str, torch.Tensor]],
    batch_size: int,
    collate: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]],
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Collates ``items`` (dataset samples) into batches of at most ``batch_size`` images of one
    size, as :class:`EvaluationBatches` forms them; yields each batch with the positions of its
    items."""
    keys = [tuple(item["image"].shape) for item in items]
    for positions in group_batches(keys, batch_size):
        yield positions, collate([items[p] for p in positions])
