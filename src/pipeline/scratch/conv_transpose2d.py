"""2-D transposed convolution (lab 6 decoders, DCGAN's generator): the adjoint of a convolution, so its forward is
a convolution's backward with respect to the input, and its backward is a convolution's forward.

Each input pixel paints a k×k patch, scaled by its value, onto a stride-s grid; overlapping patches add up.

Forward:  X = x as rows                     (N·H·W, C_in)
          Y = X W                           W: (C_in, k·k·C_out), columns in im2col's (i, j, c) order
          y = col2im(Y) + b                 the patch of each input pixel added onto the output, padding cut off
          H_out = (H − 1)·s − 2p + k + output_padding
Backward: ∂L/∂Y = im2col(∂L/∂y)            the k×k patch each input pixel painted, read back
          ∂L/∂x = ∂L/∂Y Wᵀ
          ∂L/∂W = Xᵀ ∂L/∂Y
          ∂L/∂b = Σ over n, h, w of ∂L/∂y
"""
import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from pipeline.scratch.autocast import follows_autocast
from pipeline.scratch.conv2d import as_image, as_rows, refuse_unsupported
from pipeline.scratch.im2col import col2im, im2col

SUPPORTED = {"groups": 1, "dilation": 1, "padding_mode": "zeros"}


def unrolled(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, kh, kw) kernel → (C_in, kh·kw·C_out), columns in im2col's (i, j, c) order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


@follows_autocast
class ConvTranspose2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        n, _, height, width = x.shape
        out_channels, kernel = weight.shape[1], tuple(weight.shape[2:])
        out_shape = (n, out_channels, *((size - 1) * s - 2 * p + k + extra for size, s, p, k, extra
                                        in zip((height, width), stride, padding, kernel, output_padding)))
        rows, kernel_rows = as_rows(x), unrolled(weight)
        y = col2im(rows @ kernel_rows, out_shape, kernel, stride, padding)
        if bias is not None:
            y = y.add_(bias.view(1, -1, 1, 1))  # y is a fresh buffer: adding in place saves a copy
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None,
                              kernel_rows if ctx.needs_input_grad[0] else None)
        ctx.geometry = (n, height, width, kernel, stride, padding)
        ctx.has_bias, ctx.dtype = bias is not None, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        rows, kernel_rows = ctx.saved_tensors
        n, height, width, kernel, stride, padding = ctx.geometry
        grad_y = grad_y.to(ctx.dtype)  # bfloat16 under autocast, while x and W are float32: work in theirs
        grad_cols = im2col(grad_y, kernel, stride, padding)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = as_image(grad_cols @ kernel_rows.t(), n, height, width)
        if ctx.needs_input_grad[1]:
            in_channels, out_channels = rows.shape[1], grad_y.shape[1]
            grad_weight = (rows.t() @ grad_cols).view(in_channels, *kernel, out_channels).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


class ConvTranspose2d(nn.Module):
    """torch.nn.ConvTranspose2d with groups=1, dilation=1 and zero padding; weight (C_in, C_out, kh, kw) as torch
    keeps it, initialised as torch does (W and b uniform in ±1/√(C_out·kh·kw))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.output_padding = _pair(padding), _pair(output_padding)
        if any(extra >= s for extra, s in zip(self.output_padding, self.stride)):
            raise ValueError(f"ConvTranspose2d(output_padding={output_padding!r}) must be smaller than "
                             f"stride={stride!r}: it only restores the rows a strided convolution dropped")
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.out_channels * math.prod(self.kernel_size))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    @classmethod
    def like(cls, module: nn.ConvTranspose2d) -> "ConvTranspose2d":
        refuse_unsupported(module, cls, SUPPORTED)
        return cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                   module.output_padding, module.bias is not None)

    def forward(self, x, output_size=None):
        if output_size is not None:
            raise ValueError("ConvTranspose2d(output_size=...) is not implemented by the scratch module: "
                             "give output_padding when it is built")
        return ConvTranspose2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding,
                                             self.output_padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}, bias={self.bias is not None}")
