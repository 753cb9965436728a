"""2-D max unpooling (lab 6, the autoencoder's decoder): the inverse the pool's indices allow.

Forward:  y[n, c, indices[n, c, ho, wo]] = x[n, c, ho, wo],   y = 0 everywhere else      (y seen as H·W planes)
Backward: ∂L/∂x[n, c, ho, wo] = ∂L/∂y[n, c, indices[n, c, ho, wo]]                        (a gather)

Written as one scatter into zeros, which torch.use_deterministic_algorithms(True) allows (nn.MaxUnpool2d is refused
there): pools that do not overlap never send two values to one place, so the order of writes cannot matter.
"""
import torch
from torch import nn
from torch.nn.modules.utils import _pair


class MaxUnpool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, height: int, width: int):
        n, channels = x.shape[:2]
        where = indices.reshape(n, channels, -1)
        if where.numel():
            low, high = (int(v) for v in torch.aminmax(where))
            if low < 0 or high >= height * width:
                raise ValueError(f"MaxUnpool2d: indices must lie in [0, {height * width}) for an output of "
                                 f"{height}x{width}, got {low}..{high}")
        planes = x.new_zeros(n, channels, height * width)
        planes.scatter_(2, where, x.reshape(n, channels, -1))
        ctx.save_for_backward(where)
        ctx.input_shape = x.shape
        ctx.mark_non_differentiable(indices)
        return planes.view(n, channels, height, width)

    @staticmethod
    def backward(ctx, grad_y):
        (where,) = ctx.saved_tensors
        grad_x = grad_y.reshape(*where.shape[:2], -1).gather(2, where).view(ctx.input_shape)
        return grad_x, None, None, None


class MaxUnpool2d(nn.Module):
    """torch.nn.MaxUnpool2d, called as unpool(x, indices, output_size=None). The default output size is the one
    torch infers, (H − 1)·s − 2p + k per side, unless `output_size` was given here: then that is the default, as
    pipeline.models.autoencoder.Unpool keeps the size before its pool."""

    def __init__(self, kernel_size, stride=None, padding=0, output_size=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        self.output_size = tuple(output_size) if output_size is not None else None

    @classmethod
    def like(cls, module: nn.Module) -> "MaxUnpool2d":
        from pipeline.models.autoencoder import Unpool  # the model package is heavier than this module needs

        if isinstance(module, Unpool):  # undoes the autoencoder's 2x2 pool, back to the size before it
            return cls(2, output_size=module.size)
        return cls(module.kernel_size, module.stride, module.padding)

    def forward(self, x, indices, output_size=None):
        size = output_size if output_size is not None else self.output_size
        if size is None:
            size = [(x.shape[d] - 1) * s - 2 * p + k
                    for d, k, s, p in zip((2, 3), self.kernel_size, self.stride, self.padding)]
        height, width = (int(d) for d in list(size)[-2:])
        return MaxUnpool2dFunction.apply(x, indices, height, width)

    def extra_repr(self) -> str:
        size = f", output_size={self.output_size}" if self.output_size is not None else ""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{size}"
