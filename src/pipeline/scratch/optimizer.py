"""What the scratch optimizers (and pipeline.muon) share, so each file is its update rule alone: step() evaluates
the closure (the way Lightning calls it) and hands every parameter that has a gradient to `update`;
torch.optim.Optimizer underneath keeps the parameter groups, the state and its state_dict, which schedulers and
checkpoints rely on."""
import torch


class ScratchOptimizer(torch.optim.Optimizer):
    def __init__(self, params, **defaults):
        for name, value in defaults.items():
            if not isinstance(value, bool) and isinstance(value, (int, float)) and not value >= 0:
                raise ValueError(f"{type(self).__name__}: {name}={value!r} is invalid: must be a number >= 0")
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # The hyperparameters are read from the group at every step: a scheduler may change lr, momentum, betas.
            for param in group["params"]:
                if param.grad is not None:
                    self.update(param, param.grad, self.state[param], group)
        return loss

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """Change `param` in place by the rule, given its gradient, its state (empty at first) and its group."""
        raise NotImplementedError
