"""Speed of the labs' scratch modules against torch.nn: forward + backward of each, at the shapes the labs use, the
torch module and its scratch replacement (built as modules=scratch builds it, from conf/modules/scratch.yaml) timed
alternately in one process.

    python benchmarks/scratch.py [--threads 2] [--repeats 7] [--cases lenet_conv1 cifar_conv2 ...]
    python benchmarks/scratch.py --quick    # seconds: batch 2, one repeat: checks every row still runs
    python benchmarks/scratch.py --threads 1 --cpu-time    # on a shared, busy machine: steadier ratios
    PIPELINE_DATA_DIR=../shared/data python benchmarks/scratch.py --labs    # the labs end to end, torch vs scratch

Prints one row per case: ms per forward + backward for torch and for scratch (medians over the repeats) and the
ratio scratch/torch (1.0 = as fast as torch). With --labs it times whole `python run.py` commands instead: each lab
with modules=torch and with modules=scratch, alternately, and prints seconds and their ratio. Add a row: one Case(name, make_torch_module, make_inputs) in CASES; make_inputs(batch) gives the module's inputs,
those to differentiate with requires_grad set (a first layer's input has none: its gradient is not computed).
"""
import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
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
    # the char-RNN lab (data=chars): embedding 32 -> hidden 128, names padded to 20 steps
    Case("rnn 32->128, 20 steps", lambda: nn.RNN(32, 128, batch_first=True), sequences(32, 20)),
    Case("lstm 32->128, 20 steps", lambda: nn.LSTM(32, 128, batch_first=True), sequences(32, 20)),
    Case("gru 32->128, 20 steps", lambda: nn.GRU(32, 128, batch_first=True), sequences(32, 20)),
]


def scratch_version(module: nn.Module) -> nn.Module:
    """The module as modules=scratch replaces it (its own copy)."""
    return swap_modules(copy.deepcopy(module), SCRATCH_LAYERS)


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


def ms_per_call(module: nn.Module, inputs: tuple, upstream: torch.Tensor, calls: int, clock=time.perf_counter):
    start = clock()
    for _ in range(calls):
        forward_backward(module, inputs, upstream)
    return (clock() - start) / calls * 1000


def measure(case: Case, batch: int, repeats: int, clock=time.perf_counter) -> tuple[float, float]:
    """(torch ms, scratch ms) per forward + backward: medians over `repeats`, the two alternating (the machine may
    be noisy), each repeat at least ~50 ms of calls."""
    reference = case.make_torch_module()
    scratch = scratch_version(reference)
    inputs = case.make_inputs(batch)
    upstream = forward_backward(reference, inputs, None)
    forward_backward(scratch, inputs, upstream)  # warm up both
    calls = max(1, int(50 / ms_per_call(reference, inputs, upstream, 1))) if repeats > 1 else 1
    times = {"torch": [], "scratch": []}
    for _ in range(repeats):
        times["torch"].append(ms_per_call(reference, inputs, upstream, calls, clock))
        times["scratch"].append(ms_per_call(scratch, inputs, upstream, calls, clock))
    return statistics.median(times["torch"]), statistics.median(times["scratch"])


# The labs of the issue, one epoch each (two for the names): the torch command and what modules=scratch adds to it.
LABS = {
    "mnist_linear": (["experiment=mnist_linear", "trainer.max_epochs=1"], ["modules=scratch", "optimizer=scratch_sgd"]),
    "mnist_lenet": (["experiment=mnist_lenet", "trainer.max_epochs=1"], ["modules=scratch"]),
    "chars_lstm": (["data=chars", "model=lstm", "trainer.max_epochs=2"], ["modules=scratch"]),
}
QUICK_LABS = {"digits_lenet": (["model=lenet", "trainer.max_epochs=1"], ["modules=scratch"])}  # no files needed


def lab_seconds(overrides: list[str], threads: int, folder: Path) -> float:
    """Wall seconds of one whole `python run.py` (start-up, data, fit, test) without tracking."""
    folder.mkdir(parents=True)
    command = [sys.executable, str(ROOT / "run.py"), *overrides, f"threads={threads}", "logger=none",
               f"hydra.run.dir={folder}", f"paths.output_dir={folder}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def labs(chosen: dict, threads: int, repeats: int) -> None:
    print(f"{'lab':<14}{'torch s':>9}{'scratch s':>11}{'scratch/torch':>15}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (command, scratch) in chosen.items():
            times = {"torch": [], "scratch": []}
            for repeat in range(repeats):
                for kind, overrides in (("torch", command), ("scratch", [*command, *scratch])):
                    times[kind].append(lab_seconds(overrides, threads, Path(folder) / f"{name}-{kind}-{repeat}"))
            torch_s, scratch_s = statistics.median(times["torch"]), statistics.median(times["scratch"])
            print(f"{name:<14}{torch_s:9.1f}{scratch_s:11.1f}{scratch_s / torch_s:15.2f}", flush=True)


def main() -> None:
    names = [case.name.split()[0] for case in CASES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="per row (default 7; with --labs: per command, default 1)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", nargs="+", choices=sorted(set(names)), help="the rows whose first word is one "
                        "of these (default: all)")
    parser.add_argument("--quick", action="store_true", help="batch 2, one repeat: checks every row still runs")
    parser.add_argument("--labs", action="store_true", help="time whole run.py commands of the labs instead "
                        "(needs the datasets: PIPELINE_DATA_DIR)")
    parser.add_argument("--cpu-time", action="store_true", help="time the process's CPU time, not the wall clock: "
                        "other programs' load barely moves it (use it with --threads 1: with more, it also counts "
                        "threads waiting for each other)")
    args = parser.parse_args()
    batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats or 7)
    print(f"load average {open('/proc/loadavg').read().split()[0]}")
    if args.labs:
        return labs(QUICK_LABS if args.quick else LABS, args.threads, 1 if args.quick else args.repeats or 1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, median of {repeats}, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}")
    width = max(len(case.name) for case in CASES)
    print(f"{'case':<{width}}  {'torch ms':>9}  {'scratch ms':>10}  {'scratch/torch':>13}")
    for case, name in zip(CASES, names):
        if args.cases and name not in args.cases:
            continue
        torch_ms, scratch_ms = measure(case, batch, repeats, time.process_time if args.cpu_time else time.perf_counter)
        print(f"{case.name:<{width}}  {torch_ms:9.3f}  {scratch_ms:10.3f}  {scratch_ms / torch_ms:13.2f}", flush=True)


if __name__ == "__main__":
    main()
