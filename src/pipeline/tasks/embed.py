"""Word embeddings (lab 6): a model with a negative-sampling loss (word2vec) learns a vector per word from the
words around it. Measured by the held-out loss; judged by the nearest neighbours of probe words, a 2-D map of the
most frequent words, and the vectors themselves in the word2vec text format, which other tools read."""
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.data.placement import to_device
from pipeline.errors import ConfigError
from pipeline.files import write_json
from pipeline.checks import model_name
from pipeline.tasks.base import Task
from pipeline.word_vectors import nearest, write_word2vec


class Embedding(Task):
    """Trains `model` (with loss(centre, context, negatives) and vectors()) on data=text's (centre, context) rows,
    drawing `negatives` noise words per centre from the data's unigram^0.75 distribution. Training draws from
    torch's global RNG (seeded, and kept in checkpoints); validation and test draw from a fixed seed each epoch,
    so their loss compares across epochs. Logged: `<stage>/loss`."""

    name = "embed"

    def __init__(self, model: nn.Module, optimizer, scheduler=None, negatives: int = 5, probes=(),
                 neighbours: int = 8, projection_words: int = 150, monitor: str = "val/loss", mode: str = "min",
                 log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        if not isinstance(negatives, int) or negatives < 1:
            raise ConfigError(f"task.negatives={negatives!r} is invalid: must be an integer >= 1 (word2vec uses 5-20)")
        self.negatives, self.probes = negatives, list(probes)
        self.neighbours, self.projection_words = neighbours, projection_words
        self.noise = None  # on the host: the draws come from CPU generators, the same on any device
        self.evaluation_generator = torch.Generator()

    def setup(self, stage: str) -> None:
        self.noise = self.trainer.datamodule.noise

    def on_validation_epoch_start(self):
        self.evaluation_generator.manual_seed(0)

    def on_test_epoch_start(self):
        self.evaluation_generator.manual_seed(0)

    def _step(self, batch, stage: str):
        centre, context = batch
        generator = None if stage == "train" else self.evaluation_generator
        negatives = torch.multinomial(self.noise, len(centre) * self.negatives, replacement=True, generator=generator)
        negatives = to_device(negatives.view(len(centre), self.negatives), centre.device)
        loss = self.model.loss(centre, context, negatives)
        self.log_loss(stage, loss, len(centre))
        return loss

    # --- what the pipeline asks of the task ---------------------------------------------------------
    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        if "window" not in cfg.data or "vocab_size" not in cfg.data:
            raise ConfigError(f"task=embed needs a word corpus with context windows (data=text): data={cfg.data.name}"
                              " has " + ("no words" if "vocab_size" not in cfg.data else "no word windows"))

    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        if not (callable(getattr(model, "loss", None)) and callable(getattr(model, "vectors", None))):
            raise ConfigError(f"model {model_name(cfg)} has no loss(centre, context, negatives) and vectors(): "
                              "task=embed trains word embeddings (model=word2vec)")

    def probe_neighbours(self, words: list[str]) -> dict:
        return {probe: [[word, round(score, 4)] for word, score in found]
                for probe, found in nearest(words, self.model.vectors().cpu(), self.probes, self.neighbours).items()}

    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """The most frequent words in 2-D."""
        from pipeline.viz.embeddings import plot_word_projection

        return [plot_word_projection(datamodule.words, self.model.vectors().cpu(), folder / "words.png", viz.dpi,
                                     self.projection_words)]

    def evaluation(self, datamodule, folder: Path) -> tuple[dict, list[Path]]:
        """The probes' nearest neighbours (neighbours.json) and every word's vector (vectors.txt, word2vec text
        format: gensim's KeyedVectors.load_word2vec_format reads it)."""
        words = datamodule.words
        found = self.probe_neighbours(words)
        return {}, [write_json(folder / "neighbours.json", found),
                    write_word2vec(folder / "vectors.txt", words, self.model.vectors().cpu())]

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        """The model: word ids in (the vocabulary's order is `words` in data/description.json), vectors out."""
        return self.model, torch.arange(min(8, len(datamodule.words))), {"inputs": "word ids", "outputs": "vectors"}
