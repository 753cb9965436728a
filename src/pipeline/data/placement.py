"""Where a fit serves its in-memory batches from. On a GPU a split is copied to it once (CIFAR-10's training split
is 0.6 GB of float32), so no step waits for a host-to-device copy and a batch is one index_select on the GPU. A
split that would take more than half the GPU's free memory stays on the host, its batches handed over in pinned
memory: Lightning copies them with non_blocking=True, which overlaps the copy with the GPU's work only from pinned
pages (from pageable ones the copy waits for the GPU to finish everything queued before it)."""
import torch

SHARE_OF_FREE_MEMORY = 0.5  # the rest is the model's, its activations' and the shuffled epoch's copy


def training_device(trainer) -> torch.device:
    """The device this process trains or tests on; the CPU outside a fit or test (plots, predictions)."""
    if trainer is None or trainer.state.stage is None:
        return torch.device("cpu")
    return trainer.strategy.root_device


def fits_on(device: torch.device, *tensors: torch.Tensor) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= SHARE_OF_FREE_MEMORY * free


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (random offsets, an epoch's order) on `device` without stalling the host: through
    pinned memory on CUDA, as is on the CPU."""
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
