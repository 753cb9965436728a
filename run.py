"""python run.py [group=option ...] [key=value ...] [-m]: train, test and track one experiment or a sweep."""
import os
from pathlib import Path

import hydra

os.environ.setdefault("PIPELINE_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float:
    from pipeline.cli import run_job

    return run_job(cfg)


if __name__ == "__main__":
    import sys

    from pipeline.remote_tracking import start_early

    start_early(sys.argv[1:])
    from pipeline.cli import as_main_process, with_clear_errors

    as_main_process(with_clear_errors, main)
