"""The grid sweeper behind `python run.py -m ...`: Hydra's basic sweeper, made safe for a night of runs.

- Every job's config is composed and checked before the first job starts: a bad value in job 7 stops the sweep
  before job 1 trains, with one line naming the job and the key.
- A job that fails while running is recorded FAILED (in MLflow, with its error) and the sweep goes on; one line per
  failed job is printed at the end, and the command fails only when no job finished.
- The sweep is one MLflow parent run that always gets its summary; Ctrl-C or SIGTERM ends it and every child still
  running KILLED.

Hydra only accepts plugin classes from its `hydra_plugins` package: hydra_plugins/pipeline_sweeper.py exposes this.
"""
import logging
import sys
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from pipeline.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


class SweepFailed(TrainingError):
    """No job of the sweep finished."""


def job_name(overrides) -> str:
    return " ".join(overrides) or "defaults"


class SafeGridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]):
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        batches = self.split_arguments(overrides, self.max_batch_size)
        jobs = [job for batch in batches for job in batch]
        self.validate_jobs(jobs)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        from pipeline.cli import one_line
        from pipeline.search.sweep_parent_run import sweep_parent_run

        results = []
        with sweep_parent_run(self.config) as parent:
            for batch in batches:
                results += self.launcher.launch(batch, initial_job_idx=len(results))
            # _return_value: the property would raise a failed job's error; it is reported instead
            parent.failures = [(list(result.overrides), one_line(result._return_value)) for result in results
                               if result.status.name == "FAILED"]
        self.report(results, parent.failures)
        return [results]

    def validate_jobs(self, jobs) -> None:
        """Compose every job's config and check it as a single run would be checked (in the joblib launcher's
        workers when it is the launcher: job_checks.py); nothing has started yet."""
        from pipeline.cli import describe
        from pipeline.search.job_checks import problems
        from pipeline.search.sweep_parent_run import open_store

        # First: the tracking process imports MLflow while the jobs are composed and checked here (or, under the
        # joblib launcher, while its workers wait for the process they are forked from to import torch).
        open_store(self.config)
        refused, composed = {}, {}
        for number, job in enumerate(jobs):
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
            except Exception as error:
                refused[number] = describe(error)
                if refused[number] is None:
                    raise
                continue
            with open_dict(cfg):
                del cfg["hydra"]
            composed[number] = cfg
        refused.update(zip(composed, problems(list(composed.values()), self.launcher)))
        bad = [f"sweep job {number} ({job_name(jobs[number])}): {refused[number]}"
               for number in sorted(refused) if refused[number]]
        if bad:
            more = f" (and {len(bad) - 1} more job(s))" if len(bad) > 1 else ""
            raise ConfigError(f"{bad[0]}{more}; nothing was run")

    @staticmethod
    def report(results, failures) -> None:
        """One line per failed job; an error when none finished."""
        for overrides, error in failures:
            print(f"failed: {job_name(overrides)}: {error}", file=sys.stderr)
        if failures and len(failures) == len(results):
            raise SweepFailed(f"all {len(results)} jobs of the sweep failed (their errors are above and in MLflow)")
