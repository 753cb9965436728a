"""What "best" means, declared once by the task (task.monitor, task.mode in conf/task/): the checkpoint callback
keeps the best epoch by `monitor`, and a sweep ranks its runs by the best epoch's value, `<monitor>_best`."""
from omegaconf import DictConfig


def objective(cfg: DictConfig) -> tuple[str, str]:
    """The metric a sweep ranks its runs by and its direction: (`<monitor>_best`, maximize or minimize)."""
    return f"{cfg.task.monitor}_best", "maximize" if cfg.task.mode == "max" else "minimize"
