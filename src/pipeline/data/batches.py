"""Mini-batches sliced from in-memory tensors: no per-sample Python, no collate, no worker processes."""
import torch


class TensorBatches:
    """An iterable of (x, y) batches; with a generator, reshuffled every epoch from it (the datamodule owns the
    generator, so its state travels in checkpoints and a resumed run draws the same orders).

    Lightning accepts any sized iterable as a dataloader; this one costs one index_select per batch,
    which is what a plain PyTorch loop over pre-shuffled tensors pays.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.x)
        if self.generator is not None:
            order = torch.randperm(n, generator=self.generator)
            x, y = self.x[order], self.y[order]
        else:
            x, y = self.x, self.y
        for start in range(0, n, self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]
