"""Stochastic gradient descent with optional momentum, the update torch.optim.SGD makes.

For each parameter θ with gradient g, learning rate η, weight decay λ, momentum μ, dampening τ:

    g ← g + λ θ                                   (L2 penalty λ/2 ‖θ‖², when λ ≠ 0)
    v ← g                       on the first step  (the buffer starts at the gradient, undamped)
    v ← μ v + (1 − τ) g         afterwards         (when μ ≠ 0)
    d ← g + μ v  (Nesterov: look ahead along v)   or   d ← v   (classic momentum)   or   d ← g   (μ = 0)
    θ ← θ − η d
"""
from pipeline.scratch.optimizer import ScratchOptimizer


class SGD(ScratchOptimizer):
    """torch.optim.SGD's defaults and trajectory; momentum > 0 is the momentum lab, nesterov=True its look-ahead."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening=0, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    def update(self, param, grad, state, group):
        momentum = group["momentum"]
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        if momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            velocity = state["momentum_buffer"]
            grad = grad.add(velocity, alpha=momentum) if group["nesterov"] else velocity
        param.add_(grad, alpha=-group["lr"])
