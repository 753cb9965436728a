"""trainer.precision=auto-mixed: mixed precision where the hardware computes it natively, full precision elsewhere;
trainer.precision=gpu-mixed (the default): mixed precision on a GPU, full precision on any CPU.

bf16 autocast runs a CIFAR-10 CNN ~2.4× faster than float32 on CPUs with bf16 matrix instructions (AMX or
AVX512-BF16), and ~2× slower on CPUs without them, where oneDNN emulates it (measured: 83–104 vs 176–189 img/s on
an AVX512 Xeon without AVX512-BF16). One experiment config should be fast on both.
"""
from pathlib import Path

AUTO_MIXED = "auto-mixed"
GPU_MIXED = "gpu-mixed"
NATIVE_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux: its /proc/cpuinfo flags; elsewhere: assume not)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & NATIVE_BF16_FLAGS)


def on_gpu(accelerator: str) -> bool:
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolved(precision, accelerator: str = "auto") -> str:
    """The Lightning precision to train with: `precision` itself, or for auto-mixed the fastest that keeps float32
    weights (bf16-mixed on a GPU that has bf16, else 16-mixed; bf16-mixed on a CPU with native bf16, else 32-true);
    gpu-mixed is auto-mixed on a GPU and 32-true on every CPU (small models gain nothing from bf16 there)."""
    if str(precision) not in (AUTO_MIXED, GPU_MIXED):
        return precision
    if on_gpu(accelerator):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if str(precision) == AUTO_MIXED and cpu_has_native_bf16() else "32-true"


def use_tensor_cores(accelerator: str) -> None:
    """On a GPU, float32 matrix products in TensorFloat-32 (10-bit mantissa products, float32 sums): what the
    parts of a mixed-precision step left in float32 and float32 runs get from the tensor cores (Lightning warns
    without it)."""
    if on_gpu(accelerator):
        import torch

        torch.set_float32_matmul_precision("high")
