"""word2vec on tiny Shakespeare: this project's Word2Vec in a plain PyTorch loop against gensim's Word2Vec, same
corpus, tokens and hyper-parameters (skip-gram, 5 negatives, window 5 shrunk per centre, min_count 5, sample 1e-3,
100 dimensions, 5 epochs), each over several seeds.

    python benchmarks/word2vec.py [--text ../shared/data/tinyshakespeare/input.txt] [--seeds 0 1 2] [--threads 2]

Prints, per system, the Spearman correlation on WordSim353 (gensim's bundled copy; pairs with both words in the
vocabulary only, and how many) and the training speed in corpus words per second, then the means and the ratios.
gensim's learning rate falls linearly from 0.025 per pair (plain SGD); ours is Adam on mean losses of batches,
its rate falling linearly too. gensim needs the test extra: pip install -e .[test].
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from pipeline.data.text import (draw_windows, encode, keep_probabilities, noise_distribution, vocabulary,
                                words_of)
from pipeline.models.word2vec import Word2Vec

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(dim=100, window=5, negative=5, min_count=5, sample=1e-3, epochs=5)


def train_ours(words: list[str], seed: int, batch_size: int, lr: float, mode: str = "skipgram"):
    """The loop a task would run: each epoch a fresh draw of subsampled words and shrunk windows, negatives from
    the unigram^0.75 table, one Adam step per batch of centres."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vocabulary_words, counts = vocabulary(words, SETTINGS["min_count"])
    tokens = encode(words, vocabulary_words)
    parts = torch.zeros(len(tokens), dtype=torch.int8)
    keep, noise = keep_probabilities(counts, SETTINGS["sample"]), noise_distribution(counts)
    model = Word2Vec(len(vocabulary_words), SETTINGS["dim"], mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    expected_steps = SETTINGS["epochs"] * int(keep[tokens].sum() / batch_size + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(1 - step / expected_steps, 1e-4))
    start = time.perf_counter()
    for _ in range(SETTINGS["epochs"]):
        centres, contexts, _ = draw_windows(tokens, parts, keep, SETTINGS["window"], True, generator)
        order = torch.randperm(len(centres), generator=generator)
        for rows in order.split(batch_size):
            negatives = torch.multinomial(noise, len(rows) * SETTINGS["negative"], replacement=True,
                                          generator=generator).view(len(rows), -1)
            loss = model.loss(centres[rows], contexts[rows], negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    return vocabulary_words, model.vectors(), seconds


def train_gensim(words: list[str], seed: int, workers: int):
    from gensim.models import Word2Vec as GensimWord2Vec

    sentences = [words[i : i + 10_000] for i in range(0, len(words), 10_000)]  # gensim's longest sentence
    model = GensimWord2Vec(sg=1, negative=SETTINGS["negative"], vector_size=SETTINGS["dim"],
                           window=SETTINGS["window"], min_count=SETTINGS["min_count"], sample=SETTINGS["sample"],
                           seed=seed, workers=workers)
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=SETTINGS["epochs"])
    seconds = time.perf_counter() - start
    return model.wv.index_to_key, torch.from_numpy(model.wv.vectors.copy()), seconds


def wordsim(words: list[str], vectors: torch.Tensor) -> tuple[float, int]:
    """Spearman correlation with WordSim353's human scores over the pairs whose words are both known, and their
    number: gensim's own evaluation, given our vectors as KeyedVectors."""
    from gensim.models import KeyedVectors
    from gensim.test.utils import datapath

    keyed = KeyedVectors(vectors.shape[1])
    keyed.add_vectors(words, vectors.numpy())
    path = datapath("wordsim353.tsv")
    _, spearman, oov_percent = keyed.evaluate_word_pairs(path)
    pairs = sum(1 for line in open(path, encoding="utf-8") if line.strip() and not line.startswith("#"))
    return float(spearman.statistic), round(pairs * (1 - oov_percent / 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare/input.txt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads and gensim workers")
    parser.add_argument("--batch-size", type=int, default=1024, help="centre words per Adam step")
    parser.add_argument("--lr", type=float, default=0.005)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    words = words_of(args.text.read_text(encoding="utf-8"))
    results = {"ours": [], "gensim": []}
    for seed in args.seeds:
        for name, train in (("ours", lambda: train_ours(words, seed, args.batch_size, args.lr)),
                            ("gensim", lambda: train_gensim(words, seed, args.threads))):
            vocabulary_words, vectors, seconds = train()
            spearman, pairs = wordsim(vocabulary_words, vectors)
            rate = len(words) * SETTINGS["epochs"] / seconds
            results[name].append((spearman, rate))
            print(f"seed {seed} {name}: WordSim353 Spearman {spearman:.3f} on {pairs} in-vocabulary pairs, "
                  f"{rate:,.0f} words/s ({seconds:.1f} s)", flush=True)
    means = {}
    for name, rows in results.items():
        correlations = [spearman for spearman, _ in rows]
        spread = statistics.stdev(correlations) if len(rows) > 1 else 0.0
        means[name] = (statistics.mean(correlations), statistics.mean(rate for _, rate in rows))
        print(f"{name}: mean Spearman {means[name][0]:.3f} (seed-to-seed sd {spread:.3f}, range "
              f"{min(correlations):.3f}..{max(correlations):.3f}), mean {means[name][1]:,.0f} words/s")
    print(f"difference ours - gensim: Spearman {means['ours'][0] - means['gensim'][0]:+.3f}; "
          f"speed ratio ours/gensim {means['ours'][1] / means['gensim'][1]:.3f}")


if __name__ == "__main__":
    main()
