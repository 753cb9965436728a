"""2-D convolution as im2col + one matrix multiply (lab 3).

Forward:  X = im2col(x)                     (N·Ho·Wo, k·k·C_in): one row per output pixel, its window unrolled
          Y = X Wᵀ + b                      W: (C_out, k·k·C_in), the kernel unrolled in the same (i, j, c) order
          y = Y seen as (N, Ho, Wo, C_out)  returned as an (N, C_out, Ho, Wo) channels_last tensor, not copied
Backward: ∂L/∂W = (∂L/∂Y)ᵀ X                 (the saved columns: no second im2col)
          ∂L/∂b = Σ_rows ∂L/∂Y
          ∂L/∂x = col2im((∂L/∂Y) W)         each window's gradient added back onto the pixels it was read from

Speed: X and ∂L/∂Y·W are k·k times the image, so copying them costs more than the GEMMs on them. With many
channels they are kept row by row (a window's C channels are adjacent), with few (an image's 1 or 3, LeNet's 6) in
transposed memory, one shifted copy of each channel per column, so every copy moves long contiguous runs.
"""
import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from pipeline.errors import ConfigError
from pipeline.scratch.autocast import follows_autocast
from pipeline.scratch.im2col import col2im, im2col

FEW_CHANNELS = 16  # below this many input channels the columns are stored transposed (see the module docstring)
SUPPORTED = {"groups": 1, "dilation": 1, "padding_mode": "zeros"}


def refuse_unsupported(module: nn.Module, scratch: type, supported: dict) -> None:
    """ConfigError naming the first hyperparameter of `module` the scratch class does not implement; an int and
    the pair of it are the same setting (torch keeps dilation=1 as (1, 1))."""
    for name, allowed in supported.items():
        value = getattr(module, name)
        same = _pair(value) == _pair(allowed) if isinstance(allowed, int) and not isinstance(allowed, bool) \
            else value == allowed
        if not same:
            raise ConfigError(f"modules=scratch: {type(module).__name__}({name}={value!r}) is not implemented by "
                              f"{scratch.__module__}.{scratch.__name__}; supported: {name}={allowed!r}")
    if isinstance(getattr(module, "padding", 0), str):
        raise ConfigError(f"modules=scratch: {type(module).__name__}(padding={module.padding!r}) is not "
                          f"implemented by {scratch.__module__}.{scratch.__name__}; supported: padding as an int "
                          "or a pair of ints")


def unrolled(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, kh, kw) kernel → (C_out, kh·kw·C_in), columns in im2col's (i, j, c) order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def as_image(rows: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """(N·H·W, C) rows → (N, C, H, W) with channels_last strides: the same memory, seen as an image."""
    return rows.view(n, height, width, rows.shape[1]).permute(0, 3, 1, 2)


def as_rows(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N·H·W, C); free for a channels_last image, one copy otherwise."""
    return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1])


@follows_autocast
class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, _, height, width = x.shape
        kernel = tuple(weight.shape[2:])
        few_channels = x.shape[1] < FEW_CHANNELS
        cols = im2col(x, kernel, stride, padding, positions_innermost=few_channels)
        kernel_rows = unrolled(weight)
        out = cols @ kernel_rows.t() if bias is None else torch.addmm(bias, cols, kernel_rows.t())
        out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        ctx.save_for_backward(cols if ctx.needs_input_grad[1] else None,
                              kernel_rows if ctx.needs_input_grad[0] else None)
        ctx.geometry = (tuple(x.shape), kernel, stride, padding)
        ctx.few_channels, ctx.has_bias, ctx.dtype = few_channels, bias is not None, weight.dtype
        return as_image(out, n, out_h, out_w)

    @staticmethod
    def backward(ctx, grad_y):
        cols, kernel_rows = ctx.saved_tensors
        image_shape, kernel, stride, padding = ctx.geometry
        # under autocast the output, so its gradient, is bfloat16 while x and W are float32: work in theirs
        grad_rows = as_rows(grad_y.to(ctx.dtype))
        grad_x = grad_weight = grad_bias = None
        # With few channels every product is formed on transposed operands: it leaves the columns in the same
        # transposed layout, and MKL is faster on these shapes (few rows per kernel) that way round.
        if ctx.needs_input_grad[0]:
            if ctx.few_channels:
                grad_cols = (kernel_rows.t() @ grad_rows.t()).t()
            else:
                grad_cols = grad_rows @ kernel_rows
            grad_x = col2im(grad_cols, image_shape, kernel, stride, padding)
        if ctx.needs_input_grad[1]:
            grad_weight = (cols.t() @ grad_rows).t() if ctx.few_channels else grad_rows.t() @ cols
            out_channels, in_channels = grad_rows.shape[1], image_shape[1]
            grad_weight = grad_weight.view(out_channels, *kernel, in_channels).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(dim=0)
        return grad_x, grad_weight, grad_bias, None, None


class Conv2d(nn.Module):
    """torch.nn.Conv2d with groups=1, dilation=1 and zero padding, initialised as torch does (Kaiming-uniform
    with a=√5: W and b uniform in ±1/√fan_in). The output is channels_last in memory, like the GEMM produced it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        if isinstance(padding, str):
            raise ValueError(f"Conv2d(padding={padding!r}) is not implemented by {__name__}.Conv2d: "
                             "give padding as an int or a pair of ints")
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights afresh (explanations' sanity check re-initialises a model through this)."""
        bound = 1 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    @classmethod
    def like(cls, module: nn.Conv2d) -> "Conv2d":
        refuse_unsupported(module, cls, SUPPORTED)
        return cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                   module.bias is not None)

    def forward(self, x):
        return Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")
