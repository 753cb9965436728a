"""Batch normalisation (lab 5), derived through its computational graph.

Forward, per channel c over the m values of a batch (N, or N·H·W for images):
    μ = Σ x / m,   σ² = Σ (x - μ)² / m,   x̂ = (x - μ) / √(σ² + ε),   y = γ x̂ + β
    running_mean ← (1 - momentum) running_mean + momentum μ,  running_var likewise with the unbiased σ² m/(m-1)
    evaluation uses the running statistics instead of μ, σ².
Backward (training: μ and σ² depend on every x of the channel):
    ∂L/∂γ = Σ ∂L/∂y x̂,   ∂L/∂β = Σ ∂L/∂y,   g = ∂L/∂y γ
    ∂L/∂x = (g - Σ g / m - x̂ Σ (g x̂) / m) / √(σ² + ε)
Backward (evaluation: the statistics are constants):  ∂L/∂x = g / √(running_var + ε)
"""
import torch
from torch import nn


class BatchNormFunction(torch.autograd.Function):
    """x is (N, C, ...); statistics per channel (dim 1). `mean`/`var` are the running statistics, used (and not
    updated here) when `batch_statistics` is false."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, batch_statistics: bool, eps: float):
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        if batch_statistics:
            mean = x.mean(dim=dims)
            var = (x - mean.view(shape)).pow(2).mean(dim=dims)
        inv_std = (var + eps).rsqrt()
        x_hat = (x - mean.view(shape)) * inv_std.view(shape)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.batch_statistics, ctx.dims, ctx.shape = batch_statistics, dims, shape
        y = x_hat * weight.view(shape) if weight is not None else x_hat
        y = y + bias.view(shape) if bias is not None else y
        if not batch_statistics:  # the running statistics were inputs; an output must be a tensor of its own
            mean, var = mean.clone(), var.clone()
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x_hat, inv_std, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_y * x_hat).sum(dim=dims)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(dim=dims)
        if ctx.needs_input_grad[0]:
            g = grad_y * weight.view(shape) if weight is not None else grad_y
            if ctx.batch_statistics:
                g = g - g.mean(dim=dims).view(shape) - x_hat * (g * x_hat).mean(dim=dims).view(shape)
            grad_x = g * inv_std.view(shape)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class BatchNorm(nn.Module):
    """Normalises each channel (dim 1) by the batch's statistics while training, by the running ones in evaluation."""

    input_dims = (2, 3)  # (N, C) or (N, C, L) for 1d, (N, C, H, W) for 2d

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_parameters(self) -> None:
        """γ = 1, β = 0 and fresh running statistics, as torch.nn's batch norms start."""
        with torch.no_grad():
            if self.affine:
                self.weight.fill_(1)
                self.bias.zero_()
            if self.track_running_stats:
                self.running_mean.zero_()
                self.running_var.fill_(1)
                self.num_batches_tracked.zero_()

    @classmethod
    def like(cls, module: nn.modules.batchnorm._BatchNorm) -> "BatchNorm":
        return cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)

    def forward(self, x):
        if x.dim() not in self.input_dims:
            raise ValueError(f"{type(self).__name__} expects {' or '.join(f'{d}-D' for d in self.input_dims)} "
                             f"input (batch first), got shape {tuple(x.shape)}")
        batch_statistics = self.training or not self.track_running_stats
        # Statistics in at least float32, as torch.nn's batch norm keeps them under autocast (bf16-mixed): a mean
        # and variance summed in bfloat16 lose most of their digits.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        with torch.autocast(x.device.type, enabled=False):
            y, mean, var = BatchNormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                                   batch_statistics, self.eps)
        if self.training and self.track_running_stats:
            self.update_running_statistics(mean, var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def update_running_statistics(self, mean, var, count: int) -> None:
        self.num_batches_tracked += 1
        # momentum None: the cumulative average of every batch so far
        momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(BatchNorm):
    input_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    input_dims = (4,)
