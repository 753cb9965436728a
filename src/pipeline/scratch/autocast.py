"""Scratch Functions under autocast (trainer.precision=bf16-mixed, 16-mixed): what torch.amp.custom_fwd and
custom_bwd do, for whichever device the inputs are on. The forward runs under the caller's autocast (its matrix
products in bfloat16 or float16, as torch.nn's would be); the backward runs under the same autocast state, so its
products meet operands of one dtype, and autograd casts each returned gradient to its input's dtype."""
import functools

import torch


def follows_autocast(function: type) -> type:
    """Class decorator for a torch.autograd.Function: its backward replays the autocast state of its forward."""
    forward, backward = function.forward, function.backward

    @functools.wraps(forward)
    def forward_noting_autocast(ctx, *args):
        device = next((arg.device.type for arg in args if isinstance(arg, torch.Tensor)), "cpu")
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return forward(ctx, *args)

    @functools.wraps(backward)
    def backward_under_that_autocast(ctx, *grads):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return backward(ctx, *grads)

    function.forward = staticmethod(forward_noting_autocast)
    function.backward = staticmethod(backward_under_that_autocast)
    return function
