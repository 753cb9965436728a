"""2-D max pooling (lab 3): each output is the largest value of its k×k window; the gradient flows only to it.

Forward:  y[n, c, ho, wo] = max over (i, j) of x_pad[n, c, ho·s + i, wo·s + j]      (padding counts as −∞)
          a[n, c, ho, wo] = the first (i, j) in scan order (row by row) reaching that maximum
          indices = (ho·s − p + i)·W + (wo·s − p + j)     where the maximum sits in its H×W input plane
Backward: ∂L/∂x[n, c, h, w] = Σ over the windows whose maximum sits at (h, w) of ∂L/∂y     (overlapping windows
          can share a maximum, which then receives the sum)

Ties go to the first position in scan order, as in torch: after a ReLU many windows are all zeros, and which zero
receives the gradient decides which unit learns. A window holding NaN gives NaN, as in torch (its gradient goes to
the window's last position, torch's to its last NaN).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from pipeline.scratch.conv2d import refuse_unsupported
from pipeline.scratch.im2col import output_size

SUPPORTED = {"dilation": 1, "ceil_mode": False}


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether x is laid out as channels_last (N, H, W, C in memory), as a scratch convolution returns it."""
    return x.stride(1) < x.stride(3)


def window_maxima(x: torch.Tensor, kernel, stride, out_h: int, out_w: int):
    """(maximum, its offset i·kw + j) of every window, as (N, C, Ho, Wo) tensors in x's own memory layout.

    The windows are copied into one (kh·kw, ...) stack, slice (i, j) holding every window's entry (i, j), so both
    reductions below compare whole slices elementwise, which vectorises (torch.max with indices over that first
    dimension does not). The offset is the first (i, j) in scan order holding the maximum: ranks kh·kw − 1, ..., 0
    on the stack, the largest rank among the positions equal to the maximum. For a channels_last x the stack
    keeps channels innermost.
    """
    (kh, kw), (sh, sw) = kernel, stride
    s_n, s_c, s_h, s_w = x.stride()
    n, channels = x.shape[:2]
    if channels_innermost(x):
        stack = x.as_strided((kh, kw, n, out_h, out_w, channels), (s_h, s_w, s_n, sh * s_h, sw * s_w, s_c),
                             x.storage_offset()).reshape(kh * kw, n, out_h, out_w, channels)
    else:
        stack = x.as_strided((kh, kw, n, channels, out_h, out_w), (s_h, s_w, s_n, s_c, sh * s_h, sw * s_w),
                             x.storage_offset()).reshape(kh * kw, n, channels, out_h, out_w)
    maximum = stack.amax(dim=0)
    last = kh * kw - 1
    rank = torch.arange(last, -1, -1, dtype=offset_dtype(kh * kw), device=x.device).view(-1, 1, 1, 1, 1)
    offset = last - ((stack == maximum) * rank).amax(dim=0)
    if channels_innermost(x):
        return maximum.permute(0, 3, 1, 2), offset.permute(0, 3, 1, 2)
    return maximum, offset


def offset_dtype(positions: int) -> torch.dtype:
    """The smallest integer type holding a window offset: a byte for any kernel up to 16x16."""
    return torch.uint8 if positions <= 256 else torch.int64


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding, with_indices: bool = True):
        n, channels, height, width = x.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
        padded = F.pad(x, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else x
        y, offset = window_maxima(padded, kernel, stride, out_h, out_w)
        ctx.save_for_backward(offset)
        ctx.geometry = (tuple(x.shape), kernel, stride, padding)
        if not with_indices:
            return y
        # flat index in the unpadded H×W plane: the window's top-left corner plus the offset (i, j) as i·W + j
        top = torch.arange(out_h, device=x.device) * sh - ph
        left = torch.arange(out_w, device=x.device) * sw - pw
        corner = top[:, None] * width + left
        within = torch.tensor([i * width + j for i in range(kh) for j in range(kw)], device=x.device)
        indices = corner + within.take(offset.long())
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    def backward(ctx, grad_y, *grad_indices):
        """Slice (i, j) of the padded gradient receives ∂L/∂y where the window's maximum sat at offset (i, j).
        Windows that do not overlap write disjoint slices, so each is written once (and nothing zeroed where they
        tile the input); overlapping ones add up."""
        (offset,) = ctx.saved_tensors
        (n, channels, height, width), (kh, kw), (sh, sw), (ph, pw) = ctx.geometry
        out_h, out_w = offset.shape[2:]
        memory_format = torch.channels_last if channels_innermost(grad_y) else torch.contiguous_format
        padded = torch.empty(n, channels, height + 2 * ph, width + 2 * pw, dtype=grad_y.dtype,
                             device=grad_y.device, memory_format=memory_format)
        overlapping = sh < kh or sw < kw
        tiled = (sh, sw) == (kh, kw) and (ph, pw) == (0, 0) and (height, width) == (out_h * kh, out_w * kw)
        if not tiled:
            padded.zero_()
        for i in range(kh):
            rows = slice(i, i + sh * (out_h - 1) + 1, sh)
            for j in range(kw):
                here = padded[:, :, rows, j:j + sw * (out_w - 1) + 1:sw]
                if overlapping:
                    here.add_((offset == i * kw + j) * grad_y)
                else:
                    torch.mul(offset == i * kw + j, grad_y, out=here)
        return padded[:, :, ph:ph + height, pw:pw + width], None, None, None, None


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
        return MaxPool2dFunction.apply(x, self.kernel_size, self.stride, self.padding, self.return_indices)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
