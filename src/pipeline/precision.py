"""trainer.precision=auto-mixed: mixed precision where the hardware computes it natively, full precision elsewhere.

bf16 autocast runs a CIFAR-10 CNN ~2.4× faster than float32 on CPUs with bf16 matrix instructions (AMX or
AVX512-BF16), and ~2× slower on CPUs without them, where oneDNN emulates it (measured: 83–104 vs 176–189 img/s on
an AVX512 Xeon without AVX512-BF16). One experiment config should be fast on both.
"""
from pathlib import Path

AUTO_MIXED = "auto-mixed"
NATIVE_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux: its /proc/cpuinfo flags; elsewhere: assume not)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & NATIVE_BF16_FLAGS)


def resolved(precision, accelerator: str = "auto") -> str:
    """The Lightning precision to train with: `precision` itself, or for auto-mixed the fastest that keeps float32
    weights (bf16-mixed on a GPU that has bf16, else 16-mixed; bf16-mixed on a CPU with native bf16, else 32-true)."""
    if str(precision) != AUTO_MIXED:
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
