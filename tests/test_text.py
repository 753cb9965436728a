"""data=text, model word2vec and the word-vector files, on small texts generated here: tokens and vocabulary,
subsampling rates, windows, seeded splits and epochs, the download, the negative-sampling loss, planted word
pairs found as nearest neighbours, and gensim reading the written vectors."""
import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from pipeline.data.download import md5_of
from pipeline.data.text import (NO_WORD, TextDataModule, draw_windows, encode, keep_probabilities,
                                noise_distribution, vocabulary, words_of)
from pipeline.errors import ChecksumError, ConfigError, DataError
from pipeline.models.word2vec import Word2Vec
from pipeline.train import build_data
from pipeline.word_vectors import nearest, write_word2vec

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def text_module(path, **keys) -> TextDataModule:
    """A TextDataModule as conf/data/text.yaml builds it, over the file `path`."""
    settings = dict(path=str(path), file="unused.txt", url="http://127.0.0.1:9/unused.txt", md5="0" * 32,
                    min_count=1, subsample=0.0, window=2, shrink_window=False, name="text", root=str(path.parent),
                    batch_size=64, val_fraction=0.1, test_fraction=0.1, seed=0)
    module = TextDataModule(**{**settings, **keys})
    module.prepare_data()
    module.setup()
    return module


def distinct_words(tmp_path, count: int) -> Path:
    """w0 w1 ... : every word once, so with min_count=1 a word's id is its position in the text."""
    path = tmp_path / "distinct.txt"
    path.write_text("\n".join(" ".join(f"w{i}" for i in range(start, min(start + 7, count)))
                              for start in range(0, count, 7)) + "\n")
    return path


def test_words_are_lower_case_and_the_vocabulary_keeps_words_seen_min_count_times(tmp_path):
    assert words_of("The KING's men, o'er the hill -- 'tis 2 Kings!") == [
        "the", "king's", "men", "o'er", "the", "hill", "tis", "2", "kings"]
    path = tmp_path / "corpus.txt"
    path.write_text("Cat dog cat.\n\nDOG cat bird\nfish cat dog bird\n")  # cat 4, dog 3, bird 2, fish 1
    module = text_module(path, min_count=2, val_fraction=0.0, test_fraction=0.0)
    assert module.words == ["cat", "dog", "bird"]  # most frequent first; fish is rarer than min_count
    assert module.vocab_size == 3
    assert module.counts.tolist() == [4, 3, 2]
    assert module.tokens.tolist() == [0, 1, 0, 1, 0, 2, 0, 1, 2]  # fish is dropped before windows are cut
    assert module.describe()["words"] == ["cat", "dog", "bird"]
    expected = torch.tensor([4, 3, 2.0]) ** 0.75
    assert torch.allclose(module.noise, expected / expected.sum())
    assert vocabulary(["b", "a", "a", "b", "c"], 1)[0] == ["b", "a", "c"]  # ties: first seen first
    assert encode(["a", "x", "c"], ["c", "a"]).tolist() == [1, 0]


def test_subsampling_keeps_rare_words_and_drops_frequent_ones_at_words2vecs_rate():
    # Word 0 is half of the text; words 1..999 share the rest, each far rarer than the threshold.
    generator = torch.Generator().manual_seed(0)
    tokens = torch.where(torch.rand(200_000, generator=generator) < 0.5, 0,
                         torch.randint(1, 1000, (200_000,), generator=generator))
    counts = torch.bincount(tokens, minlength=1000)
    keep = keep_probabilities(counts, 1e-3)
    frequency = counts[0].item() / len(tokens)
    assert keep[0].item() == pytest.approx((1e-3 / frequency) ** 0.5 + 1e-3 / frequency, rel=1e-5)  # ~0.047
    assert (keep[1:] == 1).all()
    parts = torch.zeros(len(tokens), dtype=torch.int8)
    centres, _, _ = draw_windows(tokens, parts, keep, 5, False, torch.Generator().manual_seed(1))
    kept = torch.bincount(centres, minlength=1000)
    assert (kept[1:] == counts[1:]).all()  # every rare occurrence is kept
    expected = counts[0].item() * keep[0].item()
    spread = (expected * (1 - keep[0].item())) ** 0.5
    assert abs(kept[0].item() - expected) < 4 * spread, (kept[0].item(), expected)
    assert (keep_probabilities(counts, 0.0) == 1).all()


@pytest.mark.parametrize("shrink", [False, True])
def test_contexts_are_the_words_within_the_window_and_never_cross_a_split(tmp_path, shrink):
    module = text_module(distinct_words(tmp_path, 2000), window=3, shrink_window=shrink)
    assert module.tokens.tolist() == list(range(2000))
    offsets = torch.tensor([-3, -2, -1, 1, 2, 3])
    for split in ("train", "val", "test"):
        centres, contexts = module.splits[split]
        assert len(centres) > 0
        present = contexts != NO_WORD
        assert present.any(dim=1).all()
        expected = centres.unsqueeze(1) + offsets
        assert (contexts[present] == expected[present]).all()  # position i of a row is the word at that offset
        assert (module.parts[contexts[present]] == module.parts[centres].unsqueeze(1).expand_as(contexts)[present]).all()
        reach = (offsets.abs() * present).amax(dim=1)
        if shrink:  # a window drawn per centre: every word up to its reach, and reaches vary
            inside = (offsets.abs() <= reach.unsqueeze(1)) & (expected >= 0) & (expected < 2000)
            same_part = module.parts[expected.clamp(0, 1999)] == module.parts[centres].unsqueeze(1)
            assert (present == inside & same_part).all()
            assert set(reach.tolist()) == {1, 2, 3}
        else:
            assert (reach[present.sum(dim=1) == 6] == 3).all()
    fraction = {split: len(module.splits[split][0]) / 2000 for split in ("val", "test")}
    assert fraction == pytest.approx({"val": 0.1, "test": 0.1}, abs=0.01)


def epochs(module, count: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    loader = module.train_dataloader()
    return [list(loader) for _ in range(count)]


def test_the_same_seed_gives_the_same_splits_and_epochs_and_each_epoch_is_drawn_anew(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = random.Random(0)
    path.write_text(" ".join(rng.choices(["the", "a", "king", "queen", "crown", "sword", "war"], k=5000)))
    keys = dict(subsample=0.05, shrink_window=True, batch_size=100)
    one, again, other = text_module(path, **keys), text_module(path, **keys), text_module(path, **keys, seed=1)
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(one.splits[split], again.splits[split]))
    assert not torch.equal(one.parts, other.parts)
    first, second = epochs(one, 2), epochs(again, 2)
    assert len(first[0]) == len(one.train_dataloader())  # exactly len() batches, whatever the draw kept
    for epoch_a, epoch_b in zip(first, second):
        assert all(torch.equal(x, y) for a, b in zip(epoch_a, epoch_b) for x, y in zip(a, b))
    assert not torch.equal(first[0][0][0], first[1][0][0])  # a new shuffle, subsample and windows each epoch
    assert sum(len(c) for c, _ in first[0]) != sum(len(c) for c, _ in first[1])
    # A checkpoint keeps the generator: restoring it replays the next epoch exactly (resume).
    state = one.state_dict()
    upcoming = epochs(one, 1)[0]
    again.load_state_dict(state)
    assert all(torch.equal(x, y) for a, b in zip(upcoming, epochs(again, 1)[0]) for x, y in zip(a, b))


def test_the_prepared_file_restores_the_same_data(tmp_path):
    path = distinct_words(tmp_path, 500)
    module = text_module(path)
    restored = TextDataModule(**{**dict(path=str(path), file="x", url="x", md5="x", min_count=1, subsample=0.0,
                                        window=2, shrink_window=False, name="text", root=str(tmp_path),
                                        batch_size=64, val_fraction=0.1, test_fraction=0.1, seed=0)})
    restored.restore(module.prepared())
    assert restored.words == module.words and restored.vocab_size == module.vocab_size
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(module.splits[split], restored.splits[split]))


def text_config(compose_config, *overrides):
    """The composed config with data=text alone: the default model and task are classifiers (task=embed and
    model=word2vec configs come with the task group)."""
    cfg = compose_config("data=text", *overrides)
    with open_dict(cfg):
        del cfg.model, cfg.task
    return cfg


def test_the_config_builds_the_data_and_fills_vocab_size(tmp_path, compose_config):
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be that is the question\n" * 20)
    cfg = text_config(compose_config, f"data.path={path}", "data.min_count=2")
    assert cfg.data.vocab_size is None
    module = build_data(cfg)
    assert cfg.data.vocab_size == module.vocab_size == 8
    centres, contexts = next(iter(module.train_dataloader()))
    assert centres.dtype == contexts.dtype == torch.long and contexts.shape == (len(centres), 10)
    mismatched = text_config(compose_config, f"data.path={path}", "data.min_count=2", "data.vocab_size=100")
    with pytest.raises(ConfigError, match=r"^data.vocab_size=100 but .* has 8 words"):
        build_data(mismatched)


def test_the_default_corpus_is_downloaded_and_checked(tmp_path, http_folder, compose_config):
    served, url = http_folder
    (served / "input.txt").write_text("first citizen before we proceed any further hear me speak\n")
    good = md5_of(served / "input.txt")
    cfg = compose_config("data=text", f"data.root={tmp_path}/data", f"data.url={url}input.txt", f"data.md5={good}",
                         "data.min_count=1")
    module = instantiate(cfg.data)
    module.prepare_data()
    assert (tmp_path / "data" / "tinyshakespeare" / "input.txt").read_text().startswith("first citizen")
    bad = compose_config("data=text", f"data.root={tmp_path}/other", f"data.url={url}input.txt",
                         f"data.md5={'0' * 32}")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        instantiate(bad.data).prepare_data()
    assert not (tmp_path / "other" / "tinyshakespeare" / "input.txt").exists()


def test_a_missing_file_offline_is_one_clear_line(tmp_path, compose_config):
    cfg = compose_config("data=text", f"data.root={tmp_path}/data", "data.url=http://127.0.0.1:9/input.txt")
    with pytest.raises(DataError) as caught:
        instantiate(cfg.data).prepare_data()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path}/data/tinyshakespeare/input.txt is missing and the download failed" in message
    assert "data.path" in message and "PIPELINE_DATA_DIR" in message
    own = compose_config("data=text", f"data.path={tmp_path}/mine.txt")
    with pytest.raises(DataError, match=rf"^data.path={tmp_path}/mine.txt: no such file"):
        instantiate(own.data).prepare_data()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt: line 1 is not UTF-8"):
        text_module(tmp_path / "latin1.txt")
    (tmp_path / "rare.txt").write_text("every word here is different\n")
    with pytest.raises(DataError, match=r"0 word\(s\) occur at least data.min_count=5 times"):
        text_module(tmp_path / "rare.txt", min_count=5)


def test_an_unknown_mode_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model.mode='glove' is invalid: must be one of skipgram, cbow$"):
        Word2Vec(10, 4, "glove")


def test_the_negative_sampling_loss_is_the_formula_and_ignores_missing_words():
    torch.manual_seed(0)
    model = Word2Vec(20, 6, "skipgram")
    torch.nn.init.normal_(model.outputs.weight)
    centre, context = torch.tensor([3, 7]), torch.tensor([[1, NO_WORD, 4], [NO_WORD, NO_WORD, 9]])
    negatives = torch.tensor([[5, 6], [11, 12]])
    v, u = model.inputs.weight, model.outputs.weight
    logsig = torch.nn.functional.logsigmoid
    by_hand = [-logsig(u[c] @ v[w]) - logsig(-u[negatives[row]] @ v[w]).sum()
               for row, w, c in [(0, 3, 1), (0, 3, 4), (1, 7, 9)]]
    assert model.loss(centre, context, negatives).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    padded = torch.cat([context, torch.full((2, 2), NO_WORD)], dim=1)
    assert model.loss(centre, padded, negatives).item() == pytest.approx(model.loss(centre, context, negatives).item())
    model.mode = "cbow"
    means = [(v[1] + v[4]) / 2, v[9]]
    by_hand = [-logsig(u[w] @ h) - logsig(-u[negatives[row]] @ h).sum() for row, (w, h) in enumerate(zip([3, 7], means))]
    assert model.loss(centre, context, negatives).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)


PAIRS = 6


def planted_text(seed: int, length: int = 12_000) -> str:
    """Zipf-distributed filler words, and PAIRS planted pairs (a_i, b_i): either word of a pair appears between
    two of its pair's own context words (c_i_0..c_i_2), so a_i and b_i share every context, as synonyms do.
    (Pairs that only occur next to each other are not each other's nearest neighbours in word2vec: a word's vector
    is pulled towards its contexts' output vectors, so shared contexts are what make two vectors alike.)"""
    rng = random.Random(seed)
    fillers = [f"f{i}" for i in range(60)]
    weights = [1 / (i + 1) for i in range(60)]
    words = []
    while len(words) < length:
        if rng.random() < 0.25:
            pair = rng.randrange(PAIRS)
            words += [f"c{pair}_{rng.randrange(3)}", rng.choice([f"a{pair}", f"b{pair}"]), f"c{pair}_{rng.randrange(3)}"]
        else:
            words += rng.choices(fillers, weights, k=rng.randint(1, 4))
    return " ".join(words)


def train_word2vec(module: TextDataModule, mode: str, epochs: int = 4, dim: int = 16, negatives: int = 5) -> Word2Vec:
    """A plain Adam loop over the datamodule's batches, negatives drawn from its noise distribution."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Word2Vec(module.vocab_size, dim, mode)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(epochs):
            for centres, contexts in module.train_dataloader():
                noise = torch.multinomial(module.noise, len(centres) * negatives, replacement=True)
                loss = model.loss(centres, contexts, noise.view(len(centres), negatives))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_word2vec_finds_each_planted_partner_as_the_nearest_neighbour(tmp_path, mode):
    path = tmp_path / "planted.txt"
    path.write_text(planted_text(seed=0))
    module = text_module(path, min_count=5, subsample=1e-2, window=2, shrink_window=True, batch_size=256)
    model = train_word2vec(module, mode)
    probes = [f"{side}{pair}" for pair in range(PAIRS) for side in "ab"]
    found = nearest(module.words, model.vectors(), probes, k=1)
    partners = {probe: found[probe][0][0] for probe in probes}
    assert partners == {probe: {"a": "b", "b": "a"}[probe[0]] + probe[1:] for probe in probes}


def test_gensim_reads_the_written_vectors_and_finds_the_same_neighbours(tmp_path):
    keyed_vectors = pytest.importorskip("gensim.models").KeyedVectors
    torch.manual_seed(0)
    words = [f"word{i}" for i in range(199)] + ["café"]
    vectors = torch.randn(200, 12)
    path = write_word2vec(tmp_path / "vectors.txt", words, vectors)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "200 12" and lines[-1].startswith("café ") and len(lines[1].split()) == 13
    loaded = keyed_vectors.load_word2vec_format(str(path), binary=False)
    assert loaded.index_to_key == words
    probes = ["word0", "word17", "word123", "café", "not-a-word"]
    ours = nearest(words, vectors, probes, k=5)
    assert set(ours) == set(probes) - {"not-a-word"}
    for probe, neighbours in ours.items():
        theirs = loaded.most_similar(probe, topn=5)
        assert [word for word, _ in neighbours] == [word for word, _ in theirs]
        assert [score for _, score in neighbours] == pytest.approx([score for _, score in theirs], abs=1e-5)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="needs ../shared/data/tinyshakespeare")
def test_tiny_shakespeare_loads_with_the_default_settings(compose_config):
    cfg = text_config(compose_config, f"data.root={SHAKESPEARE.parents[1]}")
    module = build_data(cfg)
    assert md5_of(SHAKESPEARE) == cfg.data.md5
    assert module.words[:4] == ["the", "and", "to", "i"] and module.vocab_size == 3323
    assert len(module.train_dataloader()) == pytest.approx(125_000 / cfg.data.batch_size, rel=0.02)
