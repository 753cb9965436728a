"""Trained word vectors as others use them: the word2vec text format (gensim, fastText, spaCy and the original C
tools read it) and each probe word's nearest neighbours by cosine similarity."""
from pathlib import Path

import torch

from pipeline.files import write_atomically


def write_word2vec(path: Path, words: list[str], vectors: torch.Tensor) -> Path:
    """First line `<count> <dim>`, then one line per word: the word and its numbers. Nine significant digits keep
    float32 values exact enough that a reader finds the same neighbours."""
    if len(words) != len(vectors):
        raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
    rows = vectors.detach().cpu().tolist()

    def write(partial: Path) -> None:
        with open(partial, "w", encoding="utf-8") as out:
            out.write(f"{len(words)} {vectors.shape[1]}\n")
            for word, row in zip(words, rows):
                out.write(word + " " + " ".join(f"{value:.9g}" for value in row) + "\n")

    return write_atomically(Path(path), write)


def nearest(words: list[str], vectors: torch.Tensor, probes: list[str], k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """The `k` words most cosine-similar to each probe, best first, the probe itself left out. Probes outside the
    vocabulary are left out of the answer (a corpus decides its words)."""
    index = {word: i for i, word in enumerate(words)}
    known = [probe for probe in probes if probe in index]
    if not known:
        return {}
    unit = torch.nn.functional.normalize(vectors.detach().float(), dim=1)
    rows = torch.tensor([index[probe] for probe in known])
    similarity = unit[rows] @ unit.T
    similarity[torch.arange(len(rows)), rows] = float("-inf")
    scores, ids = similarity.topk(min(k, len(words) - 1), dim=1)
    return {probe: [(words[i], s) for i, s in zip(ids[n].tolist(), scores[n].tolist())]
            for n, probe in enumerate(known)}
