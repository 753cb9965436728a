"""Embedding (lab 6, word vectors): a lookup table, row i is the vector of token i.

Forward:  y[..., :] = W[ids[...], :]
Backward: ∂L/∂W[i] = Σ over the positions where ids == i of ∂L/∂y there (rows not used get 0; a token used
          twice gets both gradients added); the padding row, if any, gets none. The ids get no gradient.
"""
import torch
from torch import nn

from pipeline.errors import ConfigError


class EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.num_rows, ctx.padding_idx = weight.shape[0], padding_idx
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad_y):
        (ids,) = ctx.saved_tensors
        flat_ids = ids.reshape(-1)
        grad_rows = grad_y.reshape(-1, grad_y.shape[-1])
        grad_weight = grad_rows.new_zeros(ctx.num_rows, grad_rows.shape[1]).index_add_(0, flat_ids, grad_rows)
        if ctx.padding_idx is not None:
            grad_weight[ctx.padding_idx] = 0
        return None, grad_weight, None


class Embedding(nn.Module):
    """Initialised as torch.nn.Embedding: standard normal rows, the padding row zero."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_()
            if self.padding_idx is not None:
                self.weight[self.padding_idx] = 0

    @classmethod
    def like(cls, module: nn.Embedding) -> "Embedding":
        for setting, plain in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
            if getattr(module, setting) != plain:
                raise ConfigError(f"modules=scratch: Embedding({setting}={getattr(module, setting)}) is not "
                                  f"implemented by pipeline.scratch.embedding.Embedding; supported: {setting}={plain}")
        return cls(module.num_embeddings, module.embedding_dim, module.padding_idx)

    def forward(self, ids):
        return EmbeddingFunction.apply(ids, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
