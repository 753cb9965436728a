"""A plain-text corpus for word embeddings: lower-case words, a vocabulary by count, and each kept word with the
words around it (its window). One row per centre word serves both word2vec modes: skip-gram takes every (centre,
context) pair in the row, CBOW the mean of the row. Subsampling and window sizes are drawn anew each epoch, as
word2vec does, from the datamodule's generator."""
import collections
import re
from pathlib import Path

import torch

from pipeline.data.chars import read_lines
from pipeline.data.download import download
from pipeline.data.in_memory import InMemoryDataModule
from pipeline.errors import ChecksumError, ConfigError, DataError

WORD = re.compile(r"\w+(?:'\w+)*")  # letters and digits, inner apostrophes kept (king's, o'er)
NO_WORD = -1  # a window position without a word: beyond the window drawn, the text's edge or another split
BLOCKS = 100  # the split hands out the text in this many runs of consecutive words


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def vocabulary(words: list[str], min_count: int) -> tuple[list[str], torch.Tensor]:
    """Words seen at least `min_count` times, most frequent first (ties: first seen first), and their counts."""
    kept = [(word, count) for word, count in collections.Counter(words).most_common() if count >= min_count]
    return [word for word, _ in kept], torch.tensor([count for _, count in kept], dtype=torch.long)


def encode(words: list[str], vocabulary_words: list[str]) -> torch.Tensor:
    """Ids of the words in the vocabulary; the others are dropped before windows are cut, as word2vec does."""
    ids = {word: index for index, word in enumerate(vocabulary_words)}
    return torch.tensor([ids[word] for word in words if word in ids], dtype=torch.long)


def keep_probabilities(counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Chance that each occurrence of a word is kept: Mikolov's subsampling in word2vec's own form (the C tool
    and gensim), min(1, sqrt(t/f) + t/f) for frequency f and threshold t. Words rarer than t are always kept;
    "the" loses most of its occurrences. threshold 0 keeps everything."""
    if threshold <= 0:
        return torch.ones(len(counts))
    ratio = threshold * counts.sum() / counts.double()
    return (ratio.sqrt() + ratio).clamp(max=1.0).float()


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """The unigram distribution raised to 3/4 that negative samples are drawn from (torch.multinomial)."""
    weights = counts.double() ** power
    return (weights / weights.sum()).float()


def split_parts(length: int, val_fraction: float, test_fraction: float, seed: int) -> torch.Tensor:
    """Which split each word of the text belongs to (0 train, 1 val, 2 test): BLOCKS runs of consecutive words,
    a seeded choice of them held out, so held-out windows are real stretches of text."""
    blocks = torch.randperm(BLOCKS, generator=torch.Generator().manual_seed(seed))
    held = [max(1, round(fraction * BLOCKS)) if fraction else 0 for fraction in (val_fraction, test_fraction)]
    block_part = torch.zeros(BLOCKS, dtype=torch.int8)
    block_part[blocks[: held[0]]] = 1
    block_part[blocks[held[0] : held[0] + held[1]]] = 2
    return block_part[torch.arange(length) * BLOCKS // max(length, 1)]


def draw_windows(tokens: torch.Tensor, parts: torch.Tensor, keep: torch.Tensor, window: int, shrink: bool,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Subsample the text, then give each kept word its context: the words up to `window` places either side
    (fewer with `shrink`: a random 1..window per centre, so near words count more, as in word2vec), never across
    a split's edge. Returns centres (N,), contexts (N, 2*window) with NO_WORD where there is none, and each row's
    split; rows without any context are left out. Whole-tensor operations only: one call per epoch."""
    kept = torch.rand(len(tokens), generator=generator) < keep[tokens]
    ids, part = tokens[kept], parts[kept]
    offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)])
    where = torch.arange(len(ids)).unsqueeze(1) + offsets
    inside = (where >= 0) & (where < len(ids))
    where = where.clamp(0, max(len(ids) - 1, 0))
    present = inside & (part[where] == part.unsqueeze(1))
    if shrink:
        reach = torch.randint(1, window + 1, (len(ids), 1), generator=generator)
        present &= offsets.abs() <= reach
    contexts = torch.where(present, ids[where], NO_WORD)
    rows = present.any(dim=1)
    return ids[rows], contexts[rows], part[rows]


class EpochWindows:
    """The training rows, drawn again at the start of every epoch (new subsampling, new window sizes) and
    shuffled. Always `len()` batches, so schedulers and progress bars can count on it."""

    def __init__(self, datamodule: "TextDataModule"):
        self.datamodule = datamodule
        expected = float(datamodule.keep[datamodule.tokens[datamodule.parts == 0]].sum())
        self.num_batches = max(1, round(expected / datamodule.batch_size))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        generator = self.datamodule.shuffle_generator
        centres, contexts = self.datamodule.draw("train", generator)
        order = torch.randperm(len(centres), generator=generator)
        for rows in order.tensor_split(self.num_batches):
            if len(rows):
                yield centres[rows], contexts[rows]


class TextDataModule(InMemoryDataModule):
    """Any UTF-8 plain-text file (`path`), or the default corpus (`file` under `root`), downloaded from `url` and
    checked against `md5` when missing. Batches are (centres, contexts): `batch_size` centre words with their
    windows. `noise` holds the negative-sampling distribution, `words` the vocabulary (id order)."""

    PARTS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, path: str | None, file: str, url: str, md5: str, min_count: int, subsample: float,
                 window: int, shrink_window: bool, download: bool = True, vocab_size: int | None = None,
                 **common):
        super().__init__(input_shape=(), num_classes=None, **common)
        for key, value, low in (("min_count", min_count, 1), ("window", window, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key}={value!r} is invalid: must be an integer >= {low}")
        if not isinstance(subsample, (int, float)) or subsample < 0:
            raise ConfigError(f"data.subsample={subsample!r} is invalid: must be a number >= 0 (0 keeps every word; "
                              "word2vec uses 1e-3 to 1e-5)")
        self.path = Path(path) if path else Path(self.root) / file
        self.default_corpus = not path
        self.url, self.md5, self.download = url, md5, download
        self.min_count, self.subsample = min_count, subsample
        self.window, self.shrink_window = window, shrink_window
        self.vocab_size = vocab_size
        self.words: list[str] = []

    def prepare_data(self) -> None:
        if self.path.is_file():
            return
        if not self.default_corpus:
            raise DataError(f"data.path={self.path}: no such file; give a plain-text file (UTF-8)")
        if not self.download:
            raise DataError(f"data=text: {self.path} is missing and data.download is false; put the corpus there "
                            "or set data.path to a plain-text file")
        try:
            download([self.url], self.path, self.md5)
        except ChecksumError:
            raise
        except DataError as error:
            raise DataError(f"data=text: {self.path} is missing and the download failed ({error}). Put the file "
                            "there, set data.path to a plain-text file, or set PIPELINE_DATA_DIR (data.root) to a "
                            f"folder that has {Path(*self.path.parts[-2:])}") from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.path.is_file():
            raise DataError(f"data=text: {self.path} does not exist (prepare_data downloads the default corpus)")
        words = words_of(" ".join(line for _, line in read_lines(self.path)))
        vocabulary_words, counts = vocabulary(words, self.min_count)
        if len(vocabulary_words) < 2:
            raise DataError(f"{self.path}: {len(vocabulary_words)} word(s) occur at least data.min_count="
                            f"{self.min_count} times; lower data.min_count or use a longer text")
        tokens = encode(words, vocabulary_words)
        parts = split_parts(len(tokens), self.val_fraction, self.test_fraction or 0.0, self.seed)
        self.restore({"words": vocabulary_words, "counts": counts, "tokens": tokens, "parts": parts})

    def draw(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        centres, contexts, part = draw_windows(self.tokens, self.parts, self.keep, self.window,
                                               self.shrink_window, generator)
        rows = part == self.PARTS[split]
        return centres[rows], contexts[rows]

    def prepared(self) -> dict:
        """The text as ids and the vocabulary: later processes redraw training windows from them each epoch."""
        return {"words": self.words, "counts": self.counts, "tokens": self.tokens, "parts": self.parts}

    def restore(self, prepared: dict) -> None:
        words = list(prepared["words"])
        if self.vocab_size is not None and self.vocab_size != len(words):
            raise ConfigError(f"data.vocab_size={self.vocab_size} but {self.path} has {len(words)} words occurring "
                              f"at least data.min_count={self.min_count} times; leave data.vocab_size null")
        self.words, self.counts = words, prepared["counts"]
        self.tokens, self.parts = prepared["tokens"], prepared["parts"]
        self.vocab_size = len(words)
        self.keep = keep_probabilities(self.counts, self.subsample)
        self.noise = noise_distribution(self.counts)
        # Validation and test rows are drawn once, from the seed: every epoch is measured on the same windows.
        fixed = torch.Generator().manual_seed(self.seed)
        self.splits = {split: self.draw(split, fixed) for split in self.PARTS}
        if not len(self.splits["train"][0]):
            raise DataError(f"{self.path}: no training windows (a text of {len(self.tokens)} vocabulary words); "
                            "use a longer text or lower data.min_count")

    def describe(self) -> dict:
        """The vocabulary in id order: what turns a logged model's rows back into words."""
        return {"data": self.name, "path": str(self.path), "min_count": self.min_count, "words": self.words}

    splits_across_processes = False  # EpochWindows draws the training windows whole

    def train_dataloader(self):
        return EpochWindows(self)
