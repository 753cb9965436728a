"""The shared base of all small datasets: load tensors once, split them with a seed, serve batches."""
import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split

from pipeline.errors import ConfigError
from pipeline.data.batches import TensorBatches


class InMemoryDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` returning (x, y) tensors; this class splits and batches them.

    The train/val/test split is stratified and seeded, so the same seed always gives the same split.
    """

    def __init__(self, name: str, input_shape, num_classes: int, root: str, batch_size: int,
                 val_fraction: float, test_fraction: float, seed: int):
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.root = root
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y = self.load()
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"data.input_shape={list(self.input_shape)} does not match data={self.name}, "
                              f"whose samples have shape {list(x.shape[1:])}")
        index = torch.arange(len(y)).numpy()
        labels = y.numpy()
        rest, test = train_test_split(index, test_size=self.test_fraction, stratify=labels,
                                      random_state=self.seed)
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest],
                                      random_state=self.seed)
        for split, rows in (("train", train), ("val", val), ("test", test)):
            rows = torch.from_numpy(rows)
            self.splits[split] = (x[rows].contiguous(), y[rows].contiguous())

    def batches(self, split: str, shuffle: bool = False) -> TensorBatches:
        x, y = self.splits[split]
        return TensorBatches(x, y, self.batch_size, shuffle=shuffle, seed=self.seed)

    def train_dataloader(self):
        return self.batches("train", shuffle=True)

    def val_dataloader(self):
        return self.batches("val")

    def test_dataloader(self):
        return self.batches("test")
