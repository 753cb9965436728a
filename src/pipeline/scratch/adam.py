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


def check_at_least_zero(name: str, value: float) -> None:
    """Refuse a negative (or NaN) hyperparameter, naming it."""
    if not value >= 0:
        raise ValueError(f"Adam: {name}={value!r} is invalid: must be a number >= 0")


def checked_betas(betas) -> tuple[float, float]:
    """betas as a tuple of two numbers in [0, 1) (what OneCycleLR rewrites), or a ValueError naming them."""
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ValueError(f"Adam: betas={list(betas)!r} is invalid: must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    return float(betas[0]), float(betas[1])


class Adam(torch.optim.Optimizer):
    """torch.optim.Adam's defaults and trajectory."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            check_at_least_zero(name, value)
        defaults = dict(lr=lr, betas=checked_betas(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Read every step: a scheduler (OneCycleLR) may change lr and beta1 between steps.
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0  # a plain int: state_dict keeps it as it is
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                if amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                if weight_decay != 0:
                    grad = grad.add(param, alpha=weight_decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)  # m + (1 − β₁)(g − m): the same average, rounded as torch does
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if amsgrad:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    exp_avg_sq = state["max_exp_avg_sq"]
                # η m̂ / (√v̂ + ε) with the corrections folded into scalars: η/(1-β₁ᵗ) · m / (√v / √(1-β₂ᵗ) + ε)
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                denominator = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
                param.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)
        return loss
