"""Image datasets on disk: find or download the files, decode them once into a cached tensor file, then serve
normalised in-memory batches with whole-batch augmentation (random crop with padding, horizontal flip: random, or
alternating from one epoch to the next)."""
import functools
import hashlib
import logging
from pathlib import Path

import torch

from pipeline.data.in_memory import InMemoryDataModule, stratified_split
from pipeline.data.placement import to_device
from pipeline.errors import ChecksumError, ConfigError, DataError, first_line
from pipeline.files import write_atomically

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the decoded layout changes, so old caches are rebuilt (2: a digest of the tensors)
CHECKED = set()  # stamp() of the caches this process has verified: Lightning calls prepare_data() more than once
FLIPS = (False, True, "alternate")  # data.flip: none, random, alternating (airbench's derandomised flip)


def stamp(path: Path) -> tuple | None:
    """Which file is at `path` now: a rebuilt or replaced cache has another inode, size or time."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return str(path), info.st_ino, info.st_size, info.st_mtime_ns


def digest_of(arrays: dict) -> str:
    """sha256 of every tensor's name, type, shape and bytes: one flipped bit of the pixels or labels changes it
    (sha256 because it is the fastest of hashlib's digests on current CPUs, ~2 GB/s)."""
    digest = hashlib.sha256()
    for key in sorted(key for key, value in arrays.items() if isinstance(value, torch.Tensor)):
        tensor = arrays[key].contiguous()
        digest.update(f"{key} {tensor.dtype} {list(tensor.shape)};".encode())
        digest.update(tensor.numpy())
    return digest.hexdigest()


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
    """Zero-pad each image by `padding` and cut a random window of the original size (or size x size), for the whole
    batch at once."""
    n, _, height, width = x.shape
    h, w = (size, size) if size else (height, width)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    # Offsets come from a CPU generator (reproducible on any device) and move to the batch's device.
    dy = to_device(torch.randint(0, height + 2 * padding - h + 1, (n, 1, 1), generator=generator), x.device)
    dx = to_device(torch.randint(0, width + 2 * padding - w + 1, (n, 1, 1), generator=generator), x.device)
    rows = (dy + torch.arange(h, device=x.device).view(1, h, 1)).expand(n, h, w)
    cols = (dx + torch.arange(w, device=x.device).view(1, 1, w)).expand(n, h, w)
    flat = padded.flatten(2)  # (n, c, (height+2p)*(width+2p))
    index = (rows * (width + 2 * padding) + cols).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view(n, x.shape[1], h, w)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = to_device(torch.rand(len(x), generator=generator) < 0.5, x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def alternating_flip(x: torch.Tensor, order: torch.Tensor, passes: int, first: torch.Tensor) -> torch.Tensor:
    """The examples `order` of one pass (x, a copy, flipped in place), each mirrored in every other pass: in the
    first pass those where `first` is true (a random half of the training split), in the next the other half, and
    so on. Every example is then seen both ways in any two consecutive epochs, which random flips leave to chance
    (airbench's alternating flip: the same accuracy in fewer epochs)."""
    mirrored = to_device(first[order.cpu()] ^ bool(passes % 2), x.device)
    x[mirrored] = x[mirrored].flip(3)
    return x


class ImageDataModule(InMemoryDataModule):
    """Subclasses say which files the dataset needs (`required_files`), how to download them (`fetch`) and how
    to decode them (`decode` -> uint8 images and labels for the official train and test sets)."""

    def __init__(self, folder: str, cache_dir: str, mean, std, crop_padding: int = 0, flip: bool | str = False,
                 download: bool = True, small_crop_size: int | None = None, small_crop_epochs: int = 0, **common):
        super().__init__(**common)
        side = min(self.input_shape[1:])
        if small_crop_size is not None and not (isinstance(small_crop_size, int) and 0 < small_crop_size <= side):
            raise ConfigError(f"data.small_crop_size={small_crop_size!r} is invalid: a whole number of pixels from 1 "
                              f"to the images' side ({side}), or null")
        if not (isinstance(small_crop_epochs, int) and small_crop_epochs >= 0):
            raise ConfigError(f"data.small_crop_epochs={small_crop_epochs!r} is invalid: a whole number >= 0")
        if not (isinstance(flip, bool) or flip == "alternate"):  # 1 == True, but data.flip=1 is a mistake
            choices = ", ".join(str(choice).lower() for choice in FLIPS)
            raise ConfigError(f"data.flip={flip!r} is not one of {choices} (false: none, true: random, alternate: "
                              "each example mirrored in every other epoch)")
        self.folder = Path(self.root) / folder
        self.cache_dir = Path(cache_dir)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = crop_padding
        self.small_crop_size, self.small_crop_epochs = small_crop_size, small_crop_epochs
        self.flip = flip
        self.download = download
        self.augment_generator = torch.Generator().manual_seed(self.seed)
        self.cached = None  # the cache's tensors between prepare_data() and setup(), so they are read once

    # --- what a dataset family implements ---------------------------------------------------------
    def required_files(self) -> list[Path]:
        raise NotImplementedError

    def fetch(self) -> None:
        raise NotImplementedError

    def decode(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- files and cache ------------------------------------------------------------------------
    def missing_files(self) -> list[Path]:
        return [path for path in self.required_files() if not path.exists()]

    def ensure_files(self) -> None:
        if not self.missing_files():
            return
        reason = "data.download=false"
        if self.download:
            try:
                self.fetch()
            except ChecksumError:
                raise
            except DataError as error:  # offline, or the server refused: say where the files should go
                reason = f"download failed: {error}"
            else:
                reason = "the download did not provide them"
        missing = self.missing_files()
        if missing:
            names = ", ".join(path.name for path in missing)
            layout = self.folder.relative_to(self.root)
            raise DataError(f"data={self.name}: {names} not found in {self.folder} ({reason}). Put the files "
                            f"there, or set PIPELINE_DATA_DIR (data.root) to a folder that has {layout}/")

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"{self.name}.pt"

    def fingerprint(self) -> list:
        return [CACHE_VERSION] + [(path.name, path.stat().st_size) for path in self.required_files()]

    def prepare_data(self) -> None:
        """Download if needed and decode once into the cache; later runs load the cache (checked against its
        digest once per process) and need no raw files at all."""
        if stamp(self.cache_path) in CHECKED:
            return
        try:
            self.cached = self.read_cache()
        except DataError as damaged:
            if self.missing_files():
                raise DataError(f"{damaged}, and the raw files to rebuild it are not in {self.folder}: put them "
                                "there, or delete the cache and run with data.download=true") from None
            log.warning(f"{damaged}; rebuilding it from {self.folder}")
        if self.cached is None:
            self.ensure_files()
            arrays = self.decode()
            arrays["fingerprint"] = self.fingerprint()
            arrays["digest"] = digest_of(arrays)
            write_atomically(self.cache_path, functools.partial(torch.save, arrays))
            self.cached = arrays
        CHECKED.add(stamp(self.cache_path))

    def read_cache(self) -> dict | None:
        """The cached tensors (memory-mapped: the digest reads each page once, the splits then take them from
        memory), or None when there is none or the raw files changed; a DataError naming a damaged cache."""
        if not self.cache_path.exists():
            return None
        try:
            arrays = torch.load(self.cache_path, mmap=True)
            fingerprint, version = arrays["fingerprint"], arrays["fingerprint"][0]
        except Exception as error:  # a damaged file fails in the zip reader, the unpickler or the lookup alike
            reason = first_line(error).split(". ")[0]  # torch's zip errors go on for five sentences
            raise DataError(f"{self.cache_path} is truncated or unreadable ({type(error).__name__}: "
                            f"{reason})") from None
        if not self.missing_files() and fingerprint != self.fingerprint():
            return None  # decoded from other raw files, or by an older version: rebuilt without a word
        if version != CACHE_VERSION:
            raise DataError(f"{self.cache_path} was written by another version (cache {version}, now {CACHE_VERSION})")
        if arrays.get("digest") != digest_of(arrays):
            raise DataError(f"{self.cache_path} does not match its digest: its content was altered or damaged")
        return arrays

    # --- splits and batches ---------------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255.0) - self.mean) / self.std

    def unit_pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        """normalise() undone to pixel values in [0, 1], on the batch's device: what tasks that rebuild images
        (task=reconstruct, vae) read and write."""
        return normalised * self.std.to(normalised.device) + self.mean.to(normalised.device)

    def pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        """normalise() undone: the uint8 pixels (exactly: the float error is far below half a level)."""
        return ((normalised * self.std + self.mean) * 255.0).round().clamp(0, 255).to(torch.uint8)

    def prepared(self) -> dict:
        """The splits as uint8 pixels, a quarter of the floats' size (MNIST: 55 MB instead of 220 MB)."""
        state = super().prepared()
        state["splits"] = {split: (self.pixels(x), y) for split, (x, y) in self.splits.items()}
        return state

    def restore(self, prepared: dict) -> None:
        super().restore(prepared)
        self.splits = {split: (self.normalise(x), y) for split, (x, y) in self.splits.items()}

    def load_splits(self):
        self.prepare_data()
        arrays = self.cached if self.cached is not None else torch.load(self.cache_path, mmap=True)
        self.cached = None  # the splits below are copies; the mapping is no longer needed
        train = (self.normalise(arrays["train_x"]), arrays["train_y"].long())
        test = (self.normalise(arrays["test_x"]), arrays["test_y"].long())
        train, val = stratified_split(*train, self.val_fraction, self.seed)
        return {"train": train, "val": val, "test": test}

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop and flip of a whole training batch (a no-op when both are off; alternating flips are made as
        each epoch starts, each_training_pass). In the first `small_crop_epochs` epochs the crops are small (progressive
        resizing): a convolutional net's arithmetic shrinks with the image's area, (24/32)^2 = 0.56 for CIFAR-10's
        24-pixel crops, while what it learns about objects at their size carries over to the whole images later."""
        if self.small_crop_size and self.training_passes <= self.small_crop_epochs:
            x = random_crop(x, self.crop_padding, self.augment_generator, self.small_crop_size)
        elif self.crop_padding:
            x = random_crop(x, self.crop_padding, self.augment_generator)
        if self.flip is True:
            x = random_flip(x, self.augment_generator)
        return x

    def each_training_pass(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        passes = self.training_passes
        x = super().each_training_pass(x, order)
        if self.flip != "alternate":
            return x
        first = torch.rand(len(self.splits["train"][1]), generator=torch.Generator().manual_seed(self.seed)) < 0.5
        return alternating_flip(x, order, passes, first)

    def training_batch(self, batch):
        """Augmented, on its device (InMemoryDataModule.on_after_batch_transfer)."""
        x, y = batch
        return self.augment(x), y
