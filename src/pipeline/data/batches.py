"""Mini-batches sliced from in-memory tensors: no per-sample Python, no collate, no worker processes."""
import math

import torch

from pipeline.data.placement import to_device


class TensorBatches:
    """An iterable of (x, y) batches; with a generator, reshuffled every epoch from it (the datamodule owns the
    generator, so its state travels in checkpoints and a resumed run draws the same orders).

    Lightning accepts any sized iterable as a dataloader; this one costs one index_select per batch,
    which is what a plain PyTorch loop over pre-shuffled tensors pays.

    Under data-parallel training (`world` processes) each process takes its `rank`'s share of every epoch's order,
    as torch's DistributedSampler does: every `world`-th example from `rank` on (all draw the same order from the
    same seed). With `pad` (training) the order is first extended by its own start to a multiple of `world`, so
    every process takes the same number of steps (each step's gradient exchange needs all of them); without it
    (validation, test) every example is seen exactly once and the metrics, summed over processes, are exact.

    The tensors may live on a GPU (data/placement.py): the order is drawn on the host from the generator, then
    indexes there. With `pin`, host batches come in pinned memory, so their copies to a GPU run asynchronously.

    `each_epoch(x, order)`, where given, is called once per pass with the pass's inputs (a fresh copy, in order)
    and the indices they came from, and returns the inputs to batch: what per-example augmentation that must
    remember an example from one epoch to the next needs (image data's alternating flips).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1, pad: bool = False, pin: bool = False, each_epoch=None):
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = generator
        self.rank, self.world, self.pad = rank, world, pad
        self.pin = pin
        self.each_epoch = each_epoch

    def examples(self) -> int:
        """How many examples this process sees per epoch."""
        n = len(self.x)
        if self.world == 1:
            return n
        return math.ceil(n / self.world) if self.pad else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        return (self.examples() + self.batch_size - 1) // self.batch_size

    def order(self) -> torch.Tensor | None:
        """This epoch's indices for this process; None: all examples in their stored order."""
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.generator is not None else None
        if self.world == 1:
            return order
        order = torch.arange(n) if order is None else order
        if self.pad:  # the order, repeated from its start, up to the next multiple of `world`
            padded = math.ceil(n / self.world) * self.world
            order = order.repeat(math.ceil(padded / n))[:padded]
        return order[self.rank :: self.world]

    def __iter__(self):
        order = self.order()
        if order is not None:
            order = to_device(order, self.x.device)
        if self.each_epoch is not None and order is None:
            order = to_device(torch.arange(len(self.x)), self.x.device)
        x, y = (self.x, self.y) if order is None else (self.x[order], self.y[order])
        if self.each_epoch is not None:
            x = self.each_epoch(x, order)
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size], y[start : start + self.batch_size]
            yield tuple(part.pin_memory() for part in batch) if self.pin else batch


class BatchGroup(list):
    """Consecutive training batches handed to the task in one call from Lightning's loop, which takes a step for each
    (pipeline/fused_steps.py). A list, so Lightning moves every batch in it to the device."""


class GroupedBatches:
    """An epoch's training batches (a TensorBatches) in BatchGroups of `group`: the same batches in the same order,
    so the same steps. Lightning counts the groups; `steps` is how many batches, one optimizer step each."""

    def __init__(self, batches, group: int):
        self.batches, self.group = batches, group

    @property
    def steps(self) -> int:
        return len(self.batches)

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.group)

    def __iter__(self):
        group = BatchGroup()
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.group:
                yield group
                group = BatchGroup()
        if group:
            yield group
