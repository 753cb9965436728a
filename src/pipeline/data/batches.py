"""Mini-batches sliced from in-memory tensors: no per-sample Python, no collate, no worker processes."""
import torch


class TensorBatches:
    """An iterable of (x, y) batches that reshuffles every epoch from its own seeded generator.

    Lightning accepts any sized iterable as a dataloader; this one costs one index_select per batch,
    which is what a plain PyTorch loop over pre-shuffled tensors pays.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            x, y = self.x[order], self.y[order]
        else:
            x, y = self.x, self.y
        for start in range(0, n, self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]
