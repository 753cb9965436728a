"""Names by language: `<root>/names/<Language>.txt`, one name per line. Each file is a class, so a user's own
folder with other languages works unchanged; names become padded token-id rows (PAD = 0 marks the end)."""
import hashlib
import os
import zipfile
from pathlib import Path

import torch

from pipeline.data.download import download
from pipeline.data.in_memory import InMemoryDataModule
from pipeline.data.vocabulary import CharVocabulary
from pipeline.errors import ChecksumError, ConfigError, DataError
from pipeline.files import scratch_folder


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file; any other encoding is an error naming the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 (byte 0x{raw[error.start]:02x}); "
                        "save the file as UTF-8") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_names_folder(folder: Path) -> tuple[list[str], list[int], list[str], list[str]]:
    """Names, their class ids, where each came from (file:line) and the class names (file stems, sorted)."""
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if len(files) < 2:
        raise DataError(f"data=chars: {folder} holds {len(files)} <Language>.txt file(s); it needs one per "
                        "language, at least two")
    names, labels, where = [], [], []
    for label, path in enumerate(files):
        lines = read_lines(path)
        if not lines:
            raise DataError(f"{path} has no names: every <Language>.txt needs at least one name per line")
        names += [name for _, name in lines]
        labels += [label] * len(lines)
        where += [f"{path}:{number}" for number, _ in lines]
    return names, labels, where, [path.stem for path in files]


class CharNamesDataModule(InMemoryDataModule):
    """Seeded stratified train/val/test split of the names; repeated (name, language) lines are dropped by
    default, so a test name never also sits in the training set."""

    def __init__(self, folder: str, alphabet: str, fold_ascii: bool, max_length: int, url: str,
                 archive_folder: str, files: dict, download: bool = True, deduplicate: bool = True,
                 vocab_size: int | None = None, **common):
        super().__init__(**common)
        self.folder = Path(self.root) / folder
        self.vocabulary = CharVocabulary(alphabet, fold_ascii, max_length)
        if vocab_size is not None and vocab_size != self.vocabulary.size:
            raise ConfigError(f"data.vocab_size={vocab_size} but data.alphabet has {len(alphabet)} characters "
                              f"(+2 reserved ids = {self.vocabulary.size}); leave data.vocab_size null")
        self.vocab_size = self.vocabulary.size
        self.url = url
        self.archive_folder = archive_folder
        self.files = dict(files)
        self.download = download
        self.deduplicate = deduplicate

    def prepare_data(self) -> None:
        if any(self.folder.glob("*.txt")) or not self.download:
            return
        try:
            self.fetch()
        except ChecksumError:
            raise
        except DataError as error:
            raise DataError(f"data=chars: no <Language>.txt files in {self.folder} and the download failed "
                            f"({error}). Put the files there, or set PIPELINE_DATA_DIR (data.root) to a "
                            f"folder that has {self.folder.name}/") from None

    def fetch(self) -> None:
        """Download the archive, check every names file against its published md5, then move the folder into
        place in one rename. The archive itself has no published checksum; its files do."""
        with scratch_folder(self.folder.parent, "names-download") as scratch:
            archive = download([self.url], Path(scratch) / "archive.zip", md5=None)
            unpacked = Path(scratch) / "names"
            unpacked.mkdir()
            try:
                with zipfile.ZipFile(archive) as zipped:
                    for name, md5 in self.files.items():
                        content = zipped.read(f"{self.archive_folder}/{name}")
                        if hashlib.md5(content, usedforsecurity=False).hexdigest() != md5:
                            raise ChecksumError(f"checksum mismatch for {name} in {self.url} (expected md5 "
                                                f"{md5}); nothing was written to {self.folder}")
                        (unpacked / name).write_bytes(content)
            except (zipfile.BadZipFile, KeyError) as error:
                raise DataError(f"{self.url} is not the names archive: {error}") from None
            if self.folder.is_dir():
                self.folder.rmdir()  # empty (it had no .txt files); rmdir refuses if the user put anything there
            os.replace(unpacked, self.folder)

    def load(self):
        names, labels, where, classes = read_names_folder(self.folder)
        if self.deduplicate:
            seen, keep = set(), []
            for index, (name, label) in enumerate(zip(names, labels)):
                key = (self.vocabulary.clean(name), label)
                if key not in seen:
                    seen.add(key)
                    keep.append(index)
            names, labels, where = ([values[i] for i in keep] for values in (names, labels, where))
        if self.num_classes is not None and self.num_classes != len(classes):
            raise ConfigError(f"data.num_classes={self.num_classes} but {self.folder} holds {len(classes)} "
                              f"languages ({', '.join(classes)}); leave data.num_classes null to use them all")
        counts = torch.bincount(torch.tensor(labels), minlength=len(classes))
        if counts.min() < 3:
            raise DataError(f"{classes[int(counts.argmin())]}.txt in {self.folder} has {int(counts.min())} "
                            "distinct name(s); each language needs at least 3 (one each for train, val, test)")
        self.num_classes, self.class_names = len(classes), classes
        return self.vocabulary.encode_all(names, where), torch.tensor(labels, dtype=torch.long)

    def describe(self) -> dict:
        return {**super().describe(), **self.vocabulary.describe()}
