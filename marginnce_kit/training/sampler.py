"""The trainer's batch sampler: one seeded permutation per epoch, cut into global batches shared by the ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .._checks import check_bool, check_int
from ..data.seeds import derive_seed

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler(Sampler[list[int]]):
    """The trainer's ``DistributedSampler``: one seeded permutation per epoch, cut into global batches,
    each rank taking its contiguous share of every global batch (a batch sampler: it yields index lists).

    Epoch ``e``: ``perm = randperm(size, generator=Generator().manual_seed(derive_seed(seed, "sampler", e)))``
    (``arange(size)`` with ``shuffle=False``); global batch ``k = perm[k B : (k + 1) B]`` for
    ``k < size // B`` (the incomplete tail is dropped, as ``drop_last=True``); rank ``r`` of ``W`` yields
    ``global_batch_k[r B / W : (r + 1) B / W]``. The ranks' batches of step ``k``, concatenated in rank
    order, are the single-process (``W = 1``) batch ``k``: the same clips in the same order. The
    permutation depends on ``(seed, epoch)`` only, so a resumed run sees the same batches.

    Args:
        size: number of items of the dataset.
        batch_size: global batch ``B``, a multiple of ``world_size``.
        world_size, rank: ``W`` and ``r``.
        seed: run seed.
        shuffle: permute every epoch (else the natural order).

    Raises:
        TypeError: a non-int count or a non-bool ``shuffle``.
        ValueError: a count below its minimum, ``rank >= world_size``, ``batch_size`` not a multiple
            of ``world_size``.
    """

    def __init__(self, size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__()
        for name, v, low in (("size", size, 0), ("batch_size", batch_size, 1), ("world_size", world_size, 1),
                             ("rank", rank, 0), ("seed", seed, 0)):
            check_int(name, v, low)
        if rank >= world_size:
            raise ValueError(f"rank: expected an int < world_size = {world_size}, got {rank}")
        if batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of world_size = {world_size}, got {batch_size}")
        check_bool("shuffle", shuffle)
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose permutation :meth:`__iter__` yields (``ValueError`` / ``TypeError`` unless an int >= 0)."""
        self.epoch = check_int("epoch", epoch, 0)

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (every rank's items), ``len(self)`` lists of ``batch_size`` indices."""
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        b = self.batch_size
        return [perm[k * b:(k + 1) * b] for k in range(len(self))]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        for batch in self.global_batches():
            yield batch[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return self.size // self.batch_size
