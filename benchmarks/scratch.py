"""Speed of the labs' scratch modules against torch.nn: forward + backward of each, at the shapes the labs use, the
torch module and its scratch replacement (built as modules=scratch builds it, from conf/modules/scratch.yaml) timed
alternately in one process.

    python benchmarks/scratch.py [--threads 2] [--repeats 7] [--cases lenet_conv1 cifar_conv2 ...]
    python benchmarks/scratch.py --quick    # seconds: batch 2, one repeat: checks every row still runs

Prints one row per case: ms per forward + backward for torch and for scratch (medians over the repeats) and the
ratio scratch/torch (1.0 = as fast as torch). A case whose scratch module is not written yet is skipped, named.
Add a row: one Case(name, make_torch_module, make_inputs) in CASES; make_inputs(batch) gives the module's inputs,
those to differentiate with requires_grad set (a first layer's input has none: its gradient is not computed).
"""
import argparse
import copy
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from omegaconf import OmegaConf
from torch import nn

from pipeline.scratch.swap import swap_modules

ROOT = Path(__file__).resolve().parents[1]
SCRATCH_LAYERS = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "modules" / "scratch.yaml"))["layers"]


class Case(NamedTuple):
    name: str
    make_torch_module: Callable[[], nn.Module]
    make_inputs: Callable[[int], tuple]  # batch size -> the module's inputs


def image(channels: int, size: int, grad: bool = True):
    """make_inputs for an image layer: a batch of channels x size x size; grad=False for a network's first layer."""
    return lambda batch: (torch.randn(batch, channels, size, size).requires_grad_(grad),)


def pooled(channels: int, size: int):
    """make_inputs for an unpool: the values and indices of a 2x2 pool of a size x size ReLU output."""
    def make(batch):
        values, indices = nn.functional.max_pool2d(torch.randn(batch, channels, size, size).relu(), 2,
                                                   return_indices=True)
        return values.requires_grad_(), indices
    return make


def autoencoder_unpool(channels: int, size: int) -> nn.Module:
    from pipeline.models.autoencoder import Unpool

    return Unpool(channels, (size, size))


def tokens(vocabulary: int, length: int):
    return lambda batch: (torch.randint(0, vocabulary, (batch, length)),)


def sequences(features: int, length: int):
    return lambda batch: (torch.randn(batch, length, features, requires_grad=True),)


CASES = [
    # LeNet on MNIST, batch 128
    Case("lenet_conv1 1->6 5x5 pad2 28x28", lambda: nn.Conv2d(1, 6, 5, padding=2), image(1, 28, grad=False)),
    Case("lenet_conv2 6->16 5x5 pad2 14x14", lambda: nn.Conv2d(6, 16, 5, padding=2), image(6, 14)),
    Case("lenet_pool 2x2 6x28x28", lambda: nn.MaxPool2d(2), image(6, 28)),
    # the CIFAR-10 CNN, batch 128
    Case("cifar_conv1 3->64 3x3 32x32", lambda: nn.Conv2d(3, 64, 3, padding=1), image(3, 32, grad=False)),
    Case("cifar_conv2 64->128 3x3 16x16", lambda: nn.Conv2d(64, 128, 3, padding=1), image(64, 16)),
    Case("cifar_conv3 128->256 3x3 8x8", lambda: nn.Conv2d(128, 256, 3, padding=1), image(128, 8)),
    Case("cifar_pool 2x2 64x32x32", lambda: nn.MaxPool2d(2), image(64, 32)),
    # VGG / ResNet on CIFAR-10: a stride-2 stage entry and its 1x1 shortcut
    Case("vgg_conv 64->64 3x3 32x32", lambda: nn.Conv2d(64, 64, 3, padding=1), image(64, 32)),
    Case("resnet_conv 64->128 3x3 stride2 16x16", lambda: nn.Conv2d(64, 128, 3, 2, 1), image(64, 16)),
    Case("resnet_shortcut 64->128 1x1 stride2 16x16", lambda: nn.Conv2d(64, 128, 1, 2), image(64, 16)),
    # the MNIST autoencoder's decoders (decoder: unpool / transposed) and DCGAN's generator
    Case("unpool 16x14x14->28x28", lambda: nn.MaxUnpool2d(2), pooled(16, 28)),
    Case("autoencoder_unpool 16x14x14->28x28", lambda: autoencoder_unpool(16, 28), pooled(16, 28)),
    Case("autoencoder_unpool 32x7x7->14x14", lambda: autoencoder_unpool(32, 14), pooled(32, 14)),
    Case("transposed 16->16 2x2 stride2 14->28", lambda: nn.ConvTranspose2d(16, 16, 2, 2), image(16, 14)),
    Case("transposed 32->32 2x2 stride2 7->14", lambda: nn.ConvTranspose2d(32, 32, 2, 2), image(32, 7)),
    Case("dcgan 64->32 4x4 stride2 pad1 7->14", lambda: nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False),
         image(64, 7)),
    Case("dcgan 32->1 4x4 stride2 pad1 14->28", lambda: nn.ConvTranspose2d(32, 1, 4, 2, 1), image(32, 14)),
    # the other scratch modules, as the labs use them
    Case("linear 784->256", lambda: nn.Linear(784, 256), lambda batch: (torch.randn(batch, 784),)),
    Case("batchnorm2d 64x16x16", lambda: nn.BatchNorm2d(64), image(64, 16)),
    Case("dropout 0.5 on 128x256", lambda: nn.Dropout(0.5), lambda batch: (torch.randn(batch, 256,
                                                                                       requires_grad=True),)),
    Case("embedding 60x32, 20 tokens", lambda: nn.Embedding(60, 32, padding_idx=0), tokens(60, 20)),
    Case("lstm 32->64, 20 steps", lambda: nn.LSTM(32, 64, batch_first=True), sequences(32, 20)),
    Case("gru 32->64, 20 steps", lambda: nn.GRU(32, 64, batch_first=True), sequences(32, 20)),
]


def scratch_version(module: nn.Module):
    """The module as modules=scratch would replace it (its own copy), or None when its scratch class's file is
    not written yet."""
    available = {name: path for name, path in SCRATCH_LAYERS.items()
                 if importlib.util.find_spec(path.rpartition(".")[0]) is not None}
    replaced = swap_modules(copy.deepcopy(module), available)
    return None if type(replaced) is type(module) else replaced


def forward_backward(module: nn.Module, inputs: tuple, upstream: torch.Tensor | None) -> torch.Tensor:
    """One training step's worth of the module: forward, then backward from `upstream` (drawn on the first call)."""
    output = module(*inputs)
    output = output[0] if isinstance(output, tuple) else output
    if upstream is None:
        upstream = torch.randn_like(output)
    output.backward(upstream)
    for tensor in (*module.parameters(), *inputs):
        tensor.grad = None
    return upstream


def ms_per_call(module: nn.Module, inputs: tuple, upstream: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        forward_backward(module, inputs, upstream)
    return (time.perf_counter() - start) / calls * 1000


def measure(case: Case, batch: int, repeats: int) -> tuple[float, float] | None:
    """(torch ms, scratch ms) per forward + backward: medians over `repeats`, the two alternating (the machine may
    be noisy), each repeat at least ~50 ms of calls."""
    reference = case.make_torch_module()
    scratch = scratch_version(reference)
    if scratch is None:
        return None
    inputs = case.make_inputs(batch)
    upstream = forward_backward(reference, inputs, None)
    forward_backward(scratch, inputs, upstream)  # warm up both
    calls = max(1, int(50 / ms_per_call(reference, inputs, upstream, 1))) if repeats > 1 else 1
    times = {"torch": [], "scratch": []}
    for _ in range(repeats):
        times["torch"].append(ms_per_call(reference, inputs, upstream, calls))
        times["scratch"].append(ms_per_call(scratch, inputs, upstream, calls))
    return statistics.median(times["torch"]), statistics.median(times["scratch"])


def main() -> None:
    names = [case.name.split()[0] for case in CASES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", nargs="+", choices=sorted(set(names)), help="the rows whose first word is one "
                        "of these (default: all)")
    parser.add_argument("--quick", action="store_true", help="batch 2, one repeat: checks every row still runs")
    args = parser.parse_args()
    batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, median of {repeats}, "
          f"load average {open('/proc/loadavg').read().split()[0]}")
    width = max(len(case.name) for case in CASES)
    print(f"{'case':<{width}}  {'torch ms':>9}  {'scratch ms':>10}  {'scratch/torch':>13}")
    skipped = []
    for case, name in zip(CASES, names):
        if args.cases and name not in args.cases:
            continue
        result = measure(case, batch, repeats)
        if result is None:
            skipped.append(case.name)
            continue
        torch_ms, scratch_ms = result
        print(f"{case.name:<{width}}  {torch_ms:9.3f}  {scratch_ms:10.3f}  {scratch_ms / torch_ms:13.2f}", flush=True)
    for name in skipped:
        print(f"skipped {name}: its scratch module is not written yet")


if __name__ == "__main__":
    main()
