"""RMSprop: divide each gradient by a running root-mean-square of its recent values, so every parameter
takes steps of similar size whatever the scale of its gradient; the update torch.optim.RMSprop makes.

For each parameter θ with gradient g, learning rate η, smoothing α, weight decay λ, momentum μ; s, ḡ, b start at 0:

    g ← g + λ θ                                   (L2 penalty, when λ ≠ 0)
    s ← α s + (1 − α) g²                          (running mean of squared gradients)
    ḡ ← α ḡ + (1 − α) g,   r = √(s − ḡ²) + ε      (centered: the running variance)
                           r = √s + ε             (otherwise)
    b ← μ b + g / r,   θ ← θ − η b                (momentum, when μ > 0)
    θ ← θ − η g / r                               (otherwise)
"""
import torch

from pipeline.scratch.optimizer import ScratchOptimizer


class RMSprop(ScratchOptimizer):
    """torch.optim.RMSprop's defaults and trajectory."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)

    def update(self, param, grad, state, group):
        alpha, eps, momentum = group["alpha"], group["eps"], group["momentum"]
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(param)
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if group["centered"]:
            grad_avg = state.setdefault("grad_avg", torch.zeros_like(param))
            grad_avg.lerp_(grad, 1 - alpha)  # ḡ + (1 − α)(g − ḡ): the same average, rounded as torch does
            rms = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
        else:
            rms = square_avg.sqrt().add_(eps)
        if momentum > 0:
            buffer = state.setdefault("momentum_buffer", torch.zeros_like(param))
            buffer.mul_(momentum).addcdiv_(grad, rms)
            param.add_(buffer, alpha=-group["lr"])
        else:
            param.addcdiv_(grad, rms, value=-group["lr"])
