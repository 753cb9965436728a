"""Recurrent sequence classifiers (vanilla RNN, LSTM, GRU) over token ids, reading each sequence only up to
its length: padded positions are packed away, so padding never changes a prediction."""
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.data.vocabulary import PAD

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentClassifier(nn.Module):
    """Embedding (or one-hot) → stacked RNN/LSTM/GRU → final hidden state(s) → [BatchNorm] → [Dropout] → classes.

    Input: (batch, length) token ids, left-aligned, PAD (0) after the end. Bidirectional models concatenate
    the last layer's forward state (after the last real token) and backward state (after the first).
    """

    def __init__(self, input_shape, num_classes: int, vocab_size: int, cell: str = "lstm",
                 embedding_dim: int | None = 32, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"model {cell} needs sequences of token ids (input_shape [length]); "
                             f"got input_shape {list(input_shape)}")
        if cell not in CELLS:
            raise ValueError(f"model.cell={cell!r} is not one of {', '.join(CELLS)}")
        if embedding_dim:
            self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        else:  # one-hot: a fixed identity embedding, the classic char-RNN input
            self.embed = nn.Embedding.from_pretrained(torch.eye(vocab_size), freeze=True, padding_idx=PAD)
        # dropout between stacked layers (PyTorch applies it to every layer's output but the last)
        self.rnn = CELLS[cell](self.embed.embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                               bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.directions = 2 if bidirectional else 1
        features = hidden_size * self.directions
        head = [nn.BatchNorm1d(features)] if batchnorm else []
        head += [nn.Dropout(dropout)] if dropout > 0 else []
        self.head = nn.Sequential(*head, nn.Linear(features, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"expected (batch, length) integer token ids, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}: recurrent models read sequence data such as data=chars")
        # An all-PAD row still gets one step, so no sequence has length 0 (which packing rejects).
        lengths = (tokens != PAD).sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM: (hidden state, cell state)
            hidden = hidden[0]
        last_layer = hidden[-self.directions :]  # (directions, batch, hidden_size)
        return self.head(last_layer.transpose(0, 1).flatten(1))
