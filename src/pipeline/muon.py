"""Muon for convolution filters, Nesterov SGD for everything else (after airbench94_muon, which reaches airbench94's
accuracy in 8 epochs instead of 10).

A filter's step is its momentum made orthogonal: the (out, in·k·k) matrix's singular values all set near 1 by a few
Newton-Schulz iterations, so every direction the layer can change in moves by about the same amount, however
unevenly the gradient spreads over them. Before each step the filter is scaled back to norm sqrt(out): BatchNorm
follows every conv, so the scale carries no information, and fixing it keeps a step of `filter_lr` the same relative
change all through training (it also stands in for weight decay, which these filters do not get). The filters' momentum
is their group's `filter_momentum`, which a momentum schedule (scheduler=onecycle's cycle_momentum, which sets every
group's `momentum`) leaves alone: it cycles the other parameters' momentum only.

Everything else (biases, BatchNorm shifts, linear layers) takes torch.optim.SGD's Nesterov step (its functional
`sgd`) with the group's lr, momentum and weight decay: the task's parameter groups (task.norm_bias_lr_scale) work
as they do with SGD.

Not torch.optim.Muon: it takes 2-D parameters only and raises on convolution filters; it neither rescales the
weights nor steps the other parameters."""
import torch
from torch.optim.sgd import sgd

from pipeline.scratch.optimizer import ScratchOptimizer

# The quintic iteration's coefficients (Keller Jordan's Muon): they push small singular values up fast rather than
# converging exactly to 1; torch.optim.Muon uses the same ones.
COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalised(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """U·S'·Vᵀ with S' ≈ 1 (between ~0.5 and 1.5) for matrix = U·S·Vᵀ, by Newton-Schulz iterations."""
    a, b, c = COEFFICIENTS
    wide = matrix.shape[0] <= matrix.shape[1]
    x = matrix if wide else matrix.T
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(ScratchOptimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 filter_lr: float = 0.12, filter_momentum: float = 0.6, newton_schulz_steps: int = 3):
        for name, value, low, high in (("lr", lr, 0, None), ("filter_lr", filter_lr, 0, None),
                                       ("momentum", momentum, 0, 1), ("filter_momentum", filter_momentum, 0, 1),
                                       ("weight_decay", weight_decay, 0, None)):
            if not (isinstance(value, (int, float)) and value >= low and (high is None or value < high)):
                allowed = f"in [{low}, {high})" if high else f">= {low}"
                raise ValueError(f"optimizer.{name}={value!r} is invalid: must be a number {allowed}")
        if not (isinstance(newton_schulz_steps, int) and newton_schulz_steps >= 1):
            raise ValueError(f"optimizer.newton_schulz_steps={newton_schulz_steps!r} is invalid: an integer >= 1")
        groups = list(params)
        groups = [{"params": groups}] if not groups or not isinstance(groups[0], dict) else groups
        split = []
        for group in groups:  # each group's filters go into a group of their own, which Muon steps
            params = list(group["params"])
            filters = [p for p in params if p.ndim == 4]
            others = [p for p in params if p.ndim != 4]
            if others:
                split.append({**group, "params": others})
            if filters:
                split.append({**group, "params": filters, "lr": filter_lr, "filter_momentum": filter_momentum,
                              "weight_decay": 0.0, "filter": True})
        super().__init__(split, lr=lr, momentum=momentum, weight_decay=weight_decay, filter=False)
        self.newton_schulz_steps = newton_schulz_steps

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not group["filter"]:
            buffers = [state.get("momentum_buffer")]
            sgd([param], [grad], buffers, weight_decay=group["weight_decay"], momentum=group["momentum"],
                lr=group["lr"], dampening=0.0, nesterov=True, maximize=False)
            state["momentum_buffer"] = buffers[0]
            return
        momentum = group.get("filter_momentum", group["momentum"])  # the latter: checkpoints of the first version
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(momentum).add_(grad)
        update = grad.add(state["momentum_buffer"], alpha=momentum)  # Nesterov
        param.mul_(len(param) ** 0.5 / param.norm().clamp_min(1e-12))
        update = orthogonalised(update.reshape(len(update), -1).float(), self.newton_schulz_steps)
        param.add_(update.view_as(param).to(param.dtype), alpha=-group["lr"])
