"""2-D max pooling (lab 3): each output is the largest value of its k×k window; the gradient flows only to it.

Forward:  y[n, c, ho, wo] = max over (i, j) of x_pad[n, c, ho·s + i, wo·s + j]      (padding counts as −∞)
          a[n, c, ho, wo] = the first (i, j) in scan order (row by row) reaching that maximum
          indices = (ho·s − p + i)·W + (wo·s − p + j)     where the maximum sits in its H×W input plane
Backward: ∂L/∂x[n, c, h, w] = Σ over the windows whose maximum sits at (h, w) of ∂L/∂y     (overlapping windows
          can share a maximum, which then receives the sum)

Ties go to the first position in scan order, as in torch: after a ReLU many windows are all zeros, and which zero
receives the gradient decides which unit learns.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from pipeline.errors import ConfigError
from pipeline.scratch.conv2d import refuse_unsupported
from pipeline.scratch.im2col import output_size

SUPPORTED = {"dilation": 1, "ceil_mode": False}


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether x is laid out as channels_last (N, H, W, C in memory), as a scratch convolution returns it."""
    return x.stride(1) < x.stride(3)


def window_maxima(x: torch.Tensor, kernel, stride, out_h: int, out_w: int):
    """(maximum, its offset i·kw + j) of every window, as (N, C, Ho, Wo) tensors in x's own memory layout.

    The windows are copied into one (kh·kw, ...) stack, slice (i, j) holding every window's entry (i, j);
    reducing over that first dimension compares whole slices elementwise, which vectorises, and torch.max returns
    the first maximum, the scan-order tie-break. For a channels_last x the stack keeps channels innermost.
    """
    (kh, kw), (sh, sw) = kernel, stride
    s_n, s_c, s_h, s_w = x.stride()
    n, channels = x.shape[:2]
    if channels_innermost(x):
        view = x.as_strided((kh, kw, n, out_h, out_w, channels), (s_h, s_w, s_n, sh * s_h, sw * s_w, s_c),
                            x.storage_offset())
        maximum, offset = view.reshape(kh * kw, n, out_h, out_w, channels).max(dim=0)
        return maximum.permute(0, 3, 1, 2), offset.permute(0, 3, 1, 2)
    view = x.as_strided((kh, kw, n, channels, out_h, out_w), (s_h, s_w, s_n, s_c, sh * s_h, sw * s_w),
                        x.storage_offset())
    return view.reshape(kh * kw, n, channels, out_h, out_w).max(dim=0)


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        n, channels, height, width = x.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
        padded = F.pad(x, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else x
        y, offset = window_maxima(padded, kernel, stride, out_h, out_w)
        # flat index of each window's top-left corner in the unpadded plane, plus the offset (i, j) as i·W + j
        top = torch.arange(out_h, device=x.device) * sh - ph
        left = torch.arange(out_w, device=x.device) * sw - pw
        corner = top[:, None] * width + left
        i, j = offset.div(kw, rounding_mode="floor"), offset.remainder(kw)
        indices = corner + i * width + j
        ctx.save_for_backward(offset)
        ctx.geometry = (tuple(x.shape), kernel, stride, padding)
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    def backward(ctx, grad_y, grad_indices):
        (offset,) = ctx.saved_tensors
        (n, channels, height, width), (kh, kw), (sh, sw), (ph, pw) = ctx.geometry
        out_h, out_w = offset.shape[2:]
        memory_format = torch.channels_last if channels_innermost(grad_y) else torch.contiguous_format
        padded = torch.empty(n, channels, height + 2 * ph, width + 2 * pw, dtype=grad_y.dtype,
                             device=grad_y.device, memory_format=memory_format).zero_()
        zero = grad_y.new_zeros(())
        for i in range(kh):
            rows = slice(i, i + sh * (out_h - 1) + 1, sh)
            for j in range(kw):
                routed = torch.where(offset == i * kw + j, grad_y, zero)  # the gradient of windows whose max is here
                padded[:, :, rows, j:j + sw * (out_w - 1) + 1:sw].add_(routed)
        return padded[:, :, ph:ph + height, pw:pw + width], None, None, None


class MaxPool2d(nn.Module):
    """torch.nn.MaxPool2d with dilation=1 and ceil_mode=False; return_indices gives (values, indices) as torch's."""

    def __init__(self, kernel_size, stride=None, padding=0, return_indices: bool = False):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        self.return_indices = return_indices
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"MaxPool2d(padding={padding!r}) must be at most half of kernel_size "
                             f"{self.kernel_size}, as in torch")

    @classmethod
    def like(cls, module: nn.MaxPool2d) -> "MaxPool2d":
        refuse_unsupported(module, cls, SUPPORTED)
        return cls(module.kernel_size, module.stride, module.padding, module.return_indices)

    def forward(self, x):
        y, indices = MaxPool2dFunction.apply(x, self.kernel_size, self.stride, self.padding)
        return (y, indices) if self.return_indices else y

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
