"""Stage 1: obtain and verify the dataset (download with checksums when missing), decode it, split it with the
seed, and save the splits as one tensor file, so later stages never read the raw files again."""
from omegaconf import DictConfig

from pipeline import collector

with collector.paused():  # torch and Lightning: imported once, then left out of the collector's passes
    from pipeline.cli import as_main_process, run_stage
    from pipeline.stages.outputs import PREPARED, save_torch
    from pipeline.train import build_data, start


def prepare(cfg: DictConfig) -> None:
    start(cfg)
    datamodule = build_data(cfg)
    save_torch(PREPARED, datamodule.prepared())
    sizes = ", ".join(f"{split} {size}" for split, size in datamodule.sizes().items())
    found = (f"; {datamodule.num_classes} classes" if getattr(datamodule, "num_classes", None)
             else f"; {datamodule.vocab_size} words" if getattr(datamodule, "vocab_size", None) else "")
    print(f"prepared data={cfg.data.name} ({sizes}{found}) -> {PREPARED}")


if __name__ == "__main__":
    as_main_process(run_stage, prepare)
