"""Stochastic gradient descent with optional momentum, the update torch.optim.SGD makes.

For each parameter θ with gradient g, learning rate η, weight decay λ, momentum μ, dampening τ:

    g ← g + λ θ                                   (L2 penalty λ/2 ‖θ‖², when λ ≠ 0)
    v ← g                       on the first step  (the buffer starts at the gradient, undamped)
    v ← μ v + (1 − τ) g         afterwards         (when μ ≠ 0)
    d ← g + μ v  (Nesterov: look ahead along v)   or   d ← v   (classic momentum)   or   d ← g   (μ = 0)
    θ ← θ − η d
"""
import torch


def check_at_least_zero(name: str, value: float) -> None:
    """Refuse a negative (or NaN) hyperparameter, naming it."""
    if not value >= 0:
        raise ValueError(f"SGD: {name}={value!r} is invalid: must be a number >= 0")


class SGD(torch.optim.Optimizer):
    """torch.optim.SGD's defaults and trajectory; momentum > 0 is the momentum lab, nesterov=True its look-ahead."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            check_at_least_zero(name, value)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening=0, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Read every step: a scheduler (OneCycleLR) may change lr and momentum between steps.
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if weight_decay != 0:
                    grad = grad.add(param, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - dampening)
                    velocity = state["momentum_buffer"]
                    grad = grad.add(velocity, alpha=momentum) if nesterov else velocity
                param.add_(grad, alpha=-lr)
        return loss
