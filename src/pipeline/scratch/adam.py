"""Adam: momentum on the gradient and RMSprop's per-parameter scaling, both corrected for starting at zero;
the update torch.optim.Adam makes (weight decay as an L2 term in the gradient; AdamW decouples it instead).

For each parameter θ with gradient g at step t = 1, 2, ..., learning rate η, weight decay λ; m, v start at 0:

    g ← g + λ θ                                   (L2 penalty, when λ ≠ 0)
    m ← β₁ m + (1 − β₁) g                         (first moment: running mean of gradients)
    v ← β₂ v + (1 − β₂) g²                        (second moment: running mean of squared gradients)
    vmax ← max(vmax, v)                           (AMSGrad only: the scale never shrinks; vmax replaces v below)
    m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)        (bias correction: the averages start at 0)
    θ ← θ − η m̂ / (√v̂ + ε)
"""
import torch

from pipeline.scratch.optimizer import ScratchOptimizer


def checked_betas(betas) -> tuple[float, float]:
    """betas as a tuple of two numbers in [0, 1) (what OneCycleLR rewrites), or a ValueError naming them."""
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ValueError(f"Adam: betas={list(betas)!r} is invalid: must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    return float(betas[0]), float(betas[1])


class Adam(ScratchOptimizer):
    """torch.optim.Adam's defaults and trajectory."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=checked_betas(betas), eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)

    def update(self, param, grad, state, group):
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0  # a plain int: state_dict keeps it as it is
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)  # m + (1 − β₁)(g − m): the same average, rounded as torch does
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        # η m̂ / (√v̂ + ε) with the corrections folded into scalars: η/(1-β₁ᵗ) · m / (√v / √(1-β₂ᵗ) + ε)
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        denominator = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(group["eps"])
        param.addcdiv_(exp_avg, denominator, value=-group["lr"] / bias_correction1)
