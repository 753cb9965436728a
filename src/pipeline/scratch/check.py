"""How a module is checked against torch: the same weights and inputs through both, every output and gradient
compared, and torch.autograd.gradcheck on the module's own backward (finite differences, float64)."""
import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.imports import import_object
from pipeline.scratch.cases import Case, Loss
from pipeline.scratch.swap import adopt, replacements

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


@dataclass
class Result:
    case: Case
    replacement: str  # the class or function checked, as a dotted path
    gradcheck: bool
    errors: dict  # dtype -> (worst error, which tensor)

    @property
    def passed(self) -> bool:
        return self.gradcheck and all(error <= TOLERANCE[dtype] for dtype, (error, _) in self.errors.items())


def replacement_of(case: Case, reference: nn.Module, modules) -> tuple[nn.Module, str] | None:
    """What conf/modules/ puts where `reference` is, with the same weights (a copy); None if it keeps torch's."""
    if isinstance(reference, Loss):
        path = (modules.get("losses") or {}).get(case.key)
        return (Loss(import_object(path, f"modules.losses.{case.key}"), reference.label_smoothing), path) if path else None
    table = replacements({key: path for key, path in (modules.get("layers") or {}).items() if key == case.key})
    replacement = table.get(type(reference))
    if replacement is None:
        return None
    return adopt(replacement, copy.deepcopy(reference)), f"{replacement.__module__}.{replacement.__name__}"


def float_tensors(value) -> list[torch.Tensor]:
    """The floating-point tensors in an output (a tensor, a tuple of them, a PackedSequence...)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in float_tensors(item)]
    return []


def as_dtype(case: Case, inputs, dtype) -> list:
    """Fresh leaf copies in `dtype`; the ones the case differentiates require grad."""
    chosen = case.differentiable
    return [x.detach().to(dtype).requires_grad_(chosen is None or index in chosen)
            if isinstance(x, torch.Tensor) and x.is_floating_point() else x for index, x in enumerate(inputs)]


@contextmanager
def nondeterministic_allowed():
    """torch.nn.MaxUnpool2d refuses to run while deterministic algorithms are on, and a Lightning run with
    trainer.deterministic=true leaves them on for the rest of its process: a reference runs with them off."""
    mode = torch.get_deterministic_debug_mode()
    torch.set_deterministic_debug_mode(0)  # = use_deterministic_algorithms(False), without importing inductor
    try:
        yield
    finally:
        torch.set_deterministic_debug_mode(mode)


def run(case: Case, module: nn.Module, inputs) -> list[torch.Tensor]:
    """The case's call, with the random stream reset (dropout draws the same mask in both modules)."""
    with torch.random.fork_rng(devices=[]), nondeterministic_allowed():
        torch.manual_seed(1)
        return float_tensors(case.call(module, inputs))


def relative_error(mine: torch.Tensor, reference: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|): absolute for values up to 1, relative for large ones (a summed gradient)."""
    if mine.shape != reference.shape:
        return float("inf")
    scale = max(1.0, reference.detach().abs().max().item()) if reference.numel() else 1.0
    return (mine.detach() - reference.detach()).abs().max().item() / scale if reference.numel() else 0.0


def compare(case: Case, modules, dtype: torch.dtype) -> tuple[float, str] | None:
    """The worst error of the replacement against torch at the lab shape: outputs, buffers after the call, and the
    gradients of every float input and parameter (of a random weighting of the outputs)."""
    generator = torch.Generator().manual_seed(0)
    reference, inputs = case.build(False, generator)
    reference = reference.to(dtype).train(case.training)
    found = replacement_of(case, reference, modules)
    if found is None:
        return None
    mine = found[0].train(case.training)
    reference_inputs, my_inputs = as_dtype(case, inputs, dtype), as_dtype(case, inputs, dtype)
    expected, got = run(case, reference, reference_inputs), run(case, mine, my_inputs)
    if len(expected) != len(got):
        return float("inf"), f"outputs: {len(got)} tensors, torch gives {len(expected)}"
    pairs = [(f"output {i}", g, e) for i, (g, e) in enumerate(zip(got, expected))]
    weights = [torch.randn(e.shape, generator=generator, dtype=torch.float64).to(dtype) for e in expected]
    differentiable = [(e, g, w) for e, g, w in zip(expected, got, weights) if e.requires_grad]
    if differentiable:
        sum((e * w).sum() for e, _, w in differentiable).backward()
        sum((g * w).sum() for _, g, w in differentiable).backward()
    for index, (g, e) in enumerate(zip(my_inputs, reference_inputs)):
        if isinstance(e, torch.Tensor) and e.grad is not None:
            pairs.append((f"gradient of input {index}", g.grad if g.grad is not None else torch.zeros(()), e.grad))
    mine_parameters = dict(mine.named_parameters())
    for name, parameter in reference.named_parameters():
        if parameter.grad is not None:
            theirs = mine_parameters.get(name)
            grad = theirs.grad if theirs is not None and theirs.grad is not None else torch.zeros(())
            pairs.append((f"gradient of {name}", grad, parameter.grad))
    mine_buffers = dict(mine.named_buffers())
    for name, buffer in reference.named_buffers():
        if buffer.is_floating_point():
            pairs.append((name, mine_buffers.get(name, torch.zeros(())), buffer))
    error, worst = max((relative_error(g, e), name) for name, g, e in pairs)
    return error, worst


class Called(nn.Module):
    """A case's call as a module, so torch.func.functional_call can hand it parameters as inputs."""

    def __init__(self, case: Case, module: nn.Module):
        super().__init__()
        self.case, self.module = case, module

    def forward(self, *inputs):
        return tuple(run(self.case, self.module, inputs))


def gradcheck(case: Case, modules) -> bool:
    """torch.autograd.gradcheck of the replacement at the small shape, in float64: its hand-written gradients of
    every float input and parameter against finite differences."""
    reference, inputs = case.build(True, torch.Generator().manual_seed(0))
    found = replacement_of(case, reference.double().train(case.training), modules)
    if found is None:
        return False
    called = Called(case, found[0].train(case.training))
    names = [name for name, p in called.named_parameters() if p.requires_grad]
    inputs = as_dtype(case, inputs, torch.float64)
    floating = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    parameters = [p.detach().clone().requires_grad_() for name, p in called.named_parameters() if name in names]

    def function(*tensors):
        given = list(inputs)
        for position, tensor in zip(floating, tensors):
            given[position] = tensor
        return torch.func.functional_call(called, dict(zip(names, tensors[len(floating):])), tuple(given))

    return torch.autograd.gradcheck(function, (*[inputs[i] for i in floating], *parameters), eps=1e-6, atol=1e-5,
                                    rtol=1e-3, raise_exception=False)


def check(case: Case, modules) -> Result | None:
    """The case checked, or None when conf/modules/ keeps torch's module for it."""
    generator = torch.Generator().manual_seed(0)
    reference = case.build(True, generator)[0].double()
    found = replacement_of(case, reference, modules)
    if found is None:
        return None
    errors = {dtype: compare(case, modules, dtype) for dtype in TOLERANCE}
    return Result(case, found[1], gradcheck(case, modules), errors)
