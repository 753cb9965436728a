"""word2vec (Mikolov et al., 2013): two embedding tables trained so that a word's input vector scores high
against the output vectors of the words around it and low against random "negative" words."""
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

MODES = ("skipgram", "cbow")


class Word2Vec(nn.Module):
    """`skipgram` predicts each context word from the centre word; `cbow` predicts the centre word from the mean
    of its context words. Contexts are rows of word ids with -1 where there is no word (data=text's windows).

    Initialised as word2vec does: small random input vectors, zero output vectors.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, mode: str = "skipgram"):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"model.mode={mode!r} is invalid: must be one of {', '.join(MODES)}")
        self.mode = mode
        self.inputs = nn.Embedding(vocab_size, embedding_dim)
        self.outputs = nn.Embedding(vocab_size, embedding_dim)
        nn.init.uniform_(self.inputs.weight, -0.5 / embedding_dim, 0.5 / embedding_dim)
        nn.init.zeros_(self.outputs.weight)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """The vectors of `words`: what the trained model is used for."""
        return self.inputs(words)

    def vectors(self) -> torch.Tensor:
        """Every word's vector (the input embeddings, as word2vec and gensim report them), row i = word id i."""
        return self.inputs.weight.detach()

    def loss(self, centre: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Negative-sampling loss, -log σ(u_target·h) - Σ log σ(-u_negative·h), averaged over the training
        examples: (centre, context) pairs in skip-gram, centres in CBOW.

        centre (B,), context (B, C) with -1 for no word, negatives (B, K) drawn from data.noise. In skip-gram a
        centre's K negatives serve each of its pairs (the same expected gradient as fresh ones per pair, K times
        fewer dot products).
        """
        present = context >= 0
        context_ids = context.clamp(min=0)
        if self.mode == "skipgram":
            hidden = self.inputs(centre)  # (B, D)
            positive = (self.outputs(context_ids) * hidden.unsqueeze(1)).sum(dim=-1)  # (B, C)
            negative = (self.outputs(negatives) * hidden.unsqueeze(1)).sum(dim=-1)  # (B, K)
            pairs = present.sum(dim=1)
            total = -(F.logsigmoid(positive) * present).sum() - (pairs * F.logsigmoid(-negative).sum(dim=1)).sum()
            return total / pairs.sum().clamp(min=1)
        count = present.sum(dim=1, keepdim=True)
        hidden = (self.inputs(context_ids) * present.unsqueeze(-1)).sum(dim=1) / count.clamp(min=1)
        positive = (self.outputs(centre) * hidden).sum(dim=1)
        negative = (self.outputs(negatives) * hidden.unsqueeze(1)).sum(dim=-1)
        per_centre = -F.logsigmoid(positive) - F.logsigmoid(-negative).sum(dim=1)
        return (per_centre * (count.squeeze(1) > 0)).sum() / (count > 0).sum().clamp(min=1)
