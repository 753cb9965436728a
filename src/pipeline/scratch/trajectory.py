"""How an optimizer is checked against torch.optim: both run from the same start on the same small problem, and the
parameters are compared after every step (python -m pipeline.gradcheck, tests/test_scratch_optimizers.py)."""
import torch
import torch.nn.functional as F

STEPS = 100


def fixed_problem(dtype):
    """A 2-layer MLP's cross-entropy on fixed data: its starting parameters and the loss as a function of them.
    The last parameter is not in the loss, so it never has a gradient and must be left alone."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 4, generator=generator, dtype=dtype)
    targets = torch.randint(0, 3, (32,), generator=generator)
    shapes = [(8, 4), (8,), (3, 8), (3,), (2,)]
    start = [0.5 * torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]

    def loss_of(params):
        w1, b1, w2, b2, _unused = params
        return F.cross_entropy(torch.tanh(inputs @ w1.T + b1) @ w2.T + b2, targets)

    return start, loss_of


def copies(start):
    return [tensor.clone().requires_grad_() for tensor in start]


def take_step(optimizer, params, loss_of):
    """optimizer.step with a closure, the way Lightning calls it."""
    def closure():
        optimizer.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    return optimizer.step(closure)


def error(ours, reference) -> torch.Tensor:
    """max |ours - reference| / max(1, max |reference|), as a 0-d tensor (one .item() per run, not per check)."""
    return (ours - reference).abs().max() / reference.abs().max().clamp(min=1)


def trajectory_error(make_reference, make_mine, dtype, steps: int = STEPS) -> float:
    """The largest error of any parameter after any of `steps` steps of `make_mine(params)` against
    `make_reference(params)` from the same start."""
    start, loss_of = fixed_problem(dtype)
    reference_params, my_params = copies(start), copies(start)
    reference, mine = make_reference(reference_params), make_mine(my_params)
    errors = []
    for _ in range(steps):
        take_step(reference, reference_params, loss_of)
        take_step(mine, my_params, loss_of)
        errors += [error(ours.detach(), theirs.detach()) for ours, theirs in zip(my_params, reference_params)]
    return torch.stack(errors).max().item()
