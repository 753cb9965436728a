"""Characters → token ids with a fixed vocabulary declared in config, so a model logged today still reads
tomorrow's input the same way (predict uses this very class)."""
import unicodedata

import torch

from pipeline.errors import DataError

PAD, UNKNOWN = 0, 1  # id 0 pads a name to the batch length; id 1 stands for characters outside the alphabet


def fold_to_ascii(text: str) -> str:
    """'Dvořák' → 'Dvorak': split letters from their accents (NFD) and drop the accents."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class CharVocabulary:
    """Ids 2.. are the characters of `alphabet` in order; `size` counts the two reserved ids too."""

    def __init__(self, alphabet: str, fold_ascii: bool = True, max_length: int = 20):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"data.alphabet={alphabet!r} must be a non-empty string without repeated characters")
        self.alphabet = alphabet
        self.fold_ascii = fold_ascii
        self.max_length = max_length
        self.ids = {char: index + 2 for index, char in enumerate(alphabet)}
        self.size = len(alphabet) + 2

    def clean(self, text: str) -> str:
        text = text.strip()
        return fold_to_ascii(text) if self.fold_ascii else text

    def encode(self, text: str, where: str = "") -> list[int]:
        """Token ids of one name, cut to `max_length`; a name with no character of the alphabet is an error."""
        ids = [self.ids.get(char, UNKNOWN) for char in self.clean(text)][: self.max_length]
        if not any(i != UNKNOWN for i in ids):
            raise DataError(f"{where or 'name'} {text!r} has no character of data.alphabet "
                            f"({self.alphabet!r}{', after folding accents' if self.fold_ascii else ''}); "
                            "add its characters to data.alphabet or remove it")
        return ids

    def encode_all(self, texts: list[str], where: list[str] | None = None) -> torch.Tensor:
        """(N, max_length) token ids, each name left-aligned and padded with PAD."""
        out = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text, where[row] if where else "")
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def describe(self) -> dict:
        """What predict needs to encode new names exactly as in training."""
        return {"alphabet": self.alphabet, "fold_ascii": self.fold_ascii, "max_length": self.max_length}
