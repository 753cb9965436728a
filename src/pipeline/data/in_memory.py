"""The shared base of all small datasets: load tensors once, split them with a seed, serve batches."""
import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split

from pipeline.data.batches import BatchGroup, GroupedBatches, TensorBatches
from pipeline.data.placement import fits_on, training_device
from pipeline.errors import ConfigError

# How the loss balances imbalanced classes: per-class weights from the training split's class frequencies.
CLASS_WEIGHTINGS = ("none", "balanced", "sqrt")


def stratified_split(x: torch.Tensor, y: torch.Tensor, fraction: float | int, seed: int):
    """Split (x, y) into a part and a held-out `fraction` (an int: that many examples), with every class in both
    in its proportion."""
    index = torch.arange(len(y)).numpy()
    keep, held = train_test_split(index, test_size=fraction, stratify=y.numpy(), random_state=seed)
    keep, held = torch.from_numpy(keep), torch.from_numpy(held)
    return (x[keep].contiguous(), y[keep].contiguous()), (x[held].contiguous(), y[held].contiguous())


class InMemoryDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` returning (x, y) tensors, or `load_splits()` for predefined splits.

    Splits are stratified and seeded, so the same seed always gives the same split.
    """

    splits_across_processes = True  # data-parallel training gives each process its share of batches()

    def __init__(self, name: str, input_shape, num_classes: int, root: str, batch_size: int,
                 val_fraction: float, seed: int, test_fraction: float | None = None, class_names=None,
                 class_weighting: str = "none", train_size: int | None = None, classes=None):
        super().__init__()
        self.name = name
        # num_classes=None: the data finds its classes when loaded (chars: one per language file).
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes or 0)]
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.root = root
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.class_weighting = class_weighting
        self.train_size = train_size
        self.classes = list(classes) if classes is not None else None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shuffle_generator = torch.Generator().manual_seed(seed)
        self.on_device: dict = {}  # served(): (split, device) -> (the host tensors, their GPU copies or None)
        self.training_group = 1  # training batches per call of the task (set by pipeline/fused_steps.py)
        self.training_passes = 0  # passes over the training split so far (each_training_pass), kept in checkpoints

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.load()
        rest, test = stratified_split(x, y, self.test_fraction, self.seed)
        train, val = stratified_split(*rest, self.val_fraction / (1.0 - self.test_fraction), self.seed)
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        sample_shape = tuple(splits["train"][0].shape[1:])
        if sample_shape != self.input_shape:
            raise ConfigError(f"data.input_shape={list(self.input_shape)} does not match data={self.name}, "
                              f"whose samples have shape {list(sample_shape)}")
        self.splits = self.subset_training(self.keep_classes(splits))

    def keep_classes(self, splits: dict) -> dict:
        """With `classes`, only those classes' examples, relabelled 0, 1, ... in the order given: a task of its
        own from part of a dataset (MNIST's digits 5-9 after a model learned 0-4)."""
        if self.classes is None:
            return splits
        known = max(int(y.max()) for _, y in splits.values()) + 1
        if len(set(self.classes)) != len(self.classes) or not all(0 <= c < known for c in self.classes):
            raise ConfigError(f"data.classes={self.classes}: must be distinct class indices of data={self.name}, "
                              f"in [0, {known})")
        if self.num_classes != len(self.classes):
            raise ConfigError(f"data.classes={self.classes} keeps {len(self.classes)} classes but data.num_classes="
                              f"{self.num_classes}: set data.num_classes={len(self.classes)}")
        relabel = torch.full((known,), -1, dtype=torch.long)
        relabel[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        named = len(self.class_names) == known
        self.class_names = [self.class_names[c] if named else str(c) for c in self.classes]
        kept = {}
        for split, (x, y) in splits.items():
            mask = relabel[y] >= 0
            kept[split] = (x[mask].contiguous(), relabel[y[mask]])
        return kept

    def subset_training(self, splits: dict) -> dict:
        """With `train_size`, a stratified, seeded subset of that many training examples (validation and test
        untouched): how a lab shows what a model learns from few labels (experiment=transfer uses 1,000)."""
        x, y = splits["train"]
        if self.train_size is None or self.train_size >= len(y):
            return splits
        if self.train_size < len(torch.unique(y)):
            raise ConfigError(f"data.train_size={self.train_size} is fewer than data={self.name}'s "
                              f"{len(torch.unique(y))} classes: a stratified subset needs one example of each")
        _, kept = stratified_split(x, y, self.train_size, self.seed)  # an int: that many examples
        return {**splits, "train": kept}

    def prepared(self) -> dict:
        """The loaded splits and what loading found (the classes): all a later process needs, see restore()."""
        return {"splits": self.splits, "class_names": self.class_names, "num_classes": self.num_classes}

    def restore(self, prepared: dict) -> None:
        """Take splits saved by prepared() (the DVC prepare stage's file) instead of loading the files again."""
        self.splits = prepared["splits"]
        self.class_names = list(prepared["class_names"])
        self.num_classes = prepared["num_classes"]

    def state_dict(self) -> dict:
        """The state of every random generator the datamodule draws from (shuffling, augmentation) and the count of
        training passes, which Lightning keeps in checkpoints: a resumed run then sees the batches an uninterrupted
        one would."""
        generators = {name: value.get_state() for name, value in vars(self).items()
                      if isinstance(value, torch.Generator)}
        return {**generators, "training_passes": self.training_passes}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, state in state_dict.items():
            if name == "training_passes":
                self.training_passes = state
            else:
                getattr(self, name).set_state(state)

    def class_counts(self) -> torch.Tensor:
        """Training examples per class: what class-weighted losses balance against."""
        return torch.bincount(self.splits["train"][1], minlength=self.num_classes)

    def class_weights(self) -> torch.Tensor | None:
        """Loss weights per class, mean 1: `balanced` = 1/frequency (every class counts equally), `sqrt` =
        1/sqrt(frequency) (a milder correction), `none` = None (plain cross-entropy)."""
        if self.class_weighting == "none":
            return None
        counts = self.class_counts().float().clamp(min=1)
        weights = 1.0 / counts if self.class_weighting == "balanced" else counts.rsqrt()
        return weights * len(counts) / weights.sum()

    def example_inputs(self, count: int = 2) -> torch.Tensor:
        """A few real training inputs: what a model is tried on before training (checks.check_model_fits_data)."""
        return self.splits["train"][0][:count]

    def sizes(self) -> dict[str, int]:
        """Examples per split, as the prepare stage reports them and the train stage records them."""
        return {split: len(y) for split, (_, y) in self.splits.items()}

    def describe(self) -> dict:
        """What a logged model needs besides its weights to be used on new inputs."""
        return {"data": self.name, "class_names": self.class_names, "input_shape": list(self.input_shape)}

    def batches(self, split: str, shuffle: bool = False, device: torch.device | None = None) -> TensorBatches:
        """A split's batches; inside a data-parallel fit or test, this process's share of them (TensorBatches).
        Outside them (plots, predictions after the test) the whole split. On a GPU (the trainer's, or `device`),
        served from the GPU or from pinned memory (served())."""
        trainer = self.trainer  # set by Lightning once a trainer uses this datamodule
        device = device or training_device(trainer)
        inside = trainer is not None and trainer.state.stage is not None
        rank, world = (trainer.global_rank, trainer.world_size) if inside else (0, 1)
        (x, y), pin = self.served(split, device)
        return TensorBatches(x, y, self.batch_size, self.shuffle_generator if shuffle else None, rank, world,
                             pad=shuffle, pin=pin, each_epoch=self.each_training_pass if shuffle else None)

    def each_training_pass(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Called as each pass over the (shuffled) training split starts, with its inputs in order (a copy) and the
        indices they came from: counts the passes; subclasses may change the inputs (image data: alternating
        flips)."""
        self.training_passes += 1
        return x

    def served(self, split: str, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        """The split's tensors to slice batches from and whether to pin them: on a GPU a copy there, made once
        (data/placement.py), or the host tensors, pinned batch by batch where the split does not fit."""
        x, y = self.splits[split]
        if device.type != "cuda":
            return (x, y), False
        key = (split, str(device))
        source, copy = self.on_device.get(key, (None, None))
        if source is None or source[0] is not x or source[1] is not y:  # first time, or the split was redrawn
            copy = (x.to(device), y.to(device)) if fits_on(device, x, y) else None
            self.on_device[key] = ((x, y), copy)
        return (copy, False) if copy is not None else ((x, y), True)

    def teardown(self, stage: str) -> None:
        """After each fit or test, the GPU copies go (a sweep's jobs in one process would otherwise keep theirs)."""
        self.on_device = {}

    def train_dataloader(self):
        batches = self.batches("train", shuffle=True)
        return GroupedBatches(batches, self.training_group) if self.training_group > 1 else batches

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook after a batch reached its device: training batches, each of a group, go through
        training_batch."""
        if self.trainer is None or not self.trainer.training:
            return batch
        if isinstance(batch, BatchGroup):
            return BatchGroup(self.training_batch(part) for part in batch)
        return self.training_batch(batch)

    def training_batch(self, batch):
        """A training batch on its device, as the task gets it (image data augments it here)."""
        return batch

    def val_dataloader(self):
        return self.batches("val")

    def test_dataloader(self):
        return self.batches("test")
