"""Linear layer (lab 1, "design the linear layer").

Forward:  y = x Wᵀ + b                      x: (..., in), W: (out, in), b: (out)
Backward: ∂L/∂x = ∂L/∂y · W
          ∂L/∂W = Σ_rows (∂L/∂y)ᵀ · x        (every leading dimension is a row)
          ∂L/∂b = Σ_rows ∂L/∂y
"""
import math

import torch
from torch import nn

from pipeline.scratch.autocast import follows_autocast


@follows_autocast
class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = x @ weight.t()
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        rows_y = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = rows_y.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows_y.sum(dim=0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Module):
    """y = x Wᵀ + b, initialised as torch.nn.Linear is: W and b uniform in ±1/√in."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights afresh (explanations' sanity check re-initialises a model through this)."""
        bound = 1 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    @classmethod
    def like(cls, module: nn.Linear) -> "Linear":
        return cls(module.in_features, module.out_features, module.bias is not None)

    def forward(self, x):
        return LinearFunction.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
