"""The search behind `python run.py -m search=<name>`: Optuna's ask/tell over Hydra's launcher.

Each round asks the study for as many trials as run at once (`n_jobs`; the joblib launcher runs them in
parallel), checks each trial's config, launches the valid ones as ordinary runs (children of one MLflow parent),
and tells the study each result: COMPLETE with the objective values, PRUNED, or FAIL (an error, a refused config,
a NaN objective). The study is in SQLite beside the MLflow store: the same command again continues it.
Strategy oneshot (oneshot.py) asks nothing: one weight-sharing supernet picks the architectures, launched the same way.
"""
import logging
import math
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"


class SearchFailed(TrainingError):
    """Too many trials failed: the search stops rather than spend its budget on a broken setup."""


class SearchSweeper(Sweeper):
    """Settings: hydra.sweeper.* in conf/hydra/sweeper/search.yaml, set by each conf/search/*.yaml."""

    def __init__(self, strategy: str = "tpe", n_trials: int = 20, n_jobs: int = 1, params=None, lists=None,
                 objectives=None, pruner: str = "median", budget=None, max_failure_rate: float = 0.5,
                 seed: int = 0, study_name: str | None = None, storage: str | None = None, evolution=None,
                 oneshot=None):
        self.strategy, self.n_trials, self.n_jobs = strategy, n_trials, n_jobs
        self.params = dict(params or {})
        self.lists = {key: dict(value) for key, value in (lists or {}).items()}
        self.objectives = [list(pair) for pair in objectives] if objectives else None
        self.pruner_name, self.budget = pruner, dict(budget or {})
        self.max_failure_rate, self.seed = max_failure_rate, seed
        self.study_name, self.storage_url = study_name, storage
        self.evolution = dict(evolution or {})
        self.oneshot = dict(oneshot or {})  # strategy oneshot's options: pipeline/search/oneshot.py

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # --- what the search is ---------------------------------------------------------------------------------
    def split_arguments(self, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
        """Command-line sweeps (`optimizer.lr=tag(log,interval(1e-4,1e-1))`) join the search space, replacing a
        configured key of that name; the other overrides are fixed for every trial."""
        parsed = OverridesParser.create().parse_overrides(arguments)
        fixed, swept = [], {}
        for override, text in zip(parsed, arguments):
            if override.is_sweep_override():
                swept[override.get_key_element()] = text.split("=", 1)[1]
            else:
                fixed.append(text)
        return fixed, swept

    def budget_overrides(self) -> list[str]:
        """The per-candidate budget: epochs, and the fraction of the training batches each epoch sees."""
        found = []
        if self.budget.get("epochs"):
            found.append(f"trainer.max_epochs={int(self.budget['epochs'])}")
        if self.budget.get("train_fraction"):
            found.append(f"++trainer.limit_train_batches={float(self.budget['train_fraction'])}")
        return found

    def compose(self, overrides: list[str]) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def objectives_of(self, base: DictConfig) -> list[tuple[str, str]]:
        from pipeline.objective import objective

        pairs = [tuple(pair) for pair in (self.objectives or [objective(base)])]
        for metric, direction in pairs:
            if direction not in ("maximize", "minimize"):
                raise ConfigError(f"hydra.sweeper.objectives: {metric} {direction!r} is invalid: must be maximize "
                                  "or minimize")
        return pairs

    # --- the loop -------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]):
        from pipeline.search.sweep_parent_run import open_store

        open_store(self.config)  # MLflow imports in the tracking process while Optuna imports here
        import optuna

        from pipeline.search import study as studies
        from pipeline.search.space import distributions, parse_space
        from pipeline.search.strategies import make_sampler

        fixed, swept = self.split_arguments(list(arguments))
        space = self.space = parse_space({**self.params, **swept}, self.lists)
        fixed = fixed + self.budget_overrides()
        base = self.compose(fixed)
        objectives = self.objectives_of(base)
        if self.strategy == "oneshot":  # refused before a study or a run exists; the defaults filled in
            from pipeline.search.oneshot import check

            self.oneshot = check(self.oneshot, space, base)
        with open_dict(self.config):  # the parent names its children by the searched keys
            self.config.hydra.sweeper.params = {**self.params, **swept}
        definition = {"strategy": self.strategy, "objectives": objectives, "fixed": sorted(fixed),
                      "params": {**self.params, **swept}, "lists": self.lists, "seed": self.seed}
        if self.strategy == "oneshot":  # another supernet ranks other candidates: another study
            definition["oneshot"] = self.oneshot
        name = self.study_name or studies.study_name(self.config.hydra.job.name, definition)
        url = self.storage_url or studies.storage_url(base.logger.get("tracking_uri", ""), base.paths.root)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=name, storage=studies.storage(url), load_if_exists=True,
            sampler=make_sampler(self.strategy, space, self.seed, len(objectives), **self.evolution),
            directions=[direction for _, direction in objectives], pruner=studies.pruner(self.pruner_name))
        orphans = studies.fail_orphans(study)
        done = len(study.trials)
        if done:
            log.info("search %s continues: %d%s trials done (%d left running by a search that died, now FAIL)",
                     name, done, "" if self.strategy == "oneshot" else f" of {self.n_trials}", orphans)
        trial_environment = studies.for_trial_runs(url, name, self.pruner_name, objectives[0][0].removesuffix("_best"))

        from pipeline.search.job_environment import job_environment
        from pipeline.search.sweep_parent_run import sweep_parent_run

        tags = {"search.strategy": self.strategy, "search.study": name, "search.storage": url,
                "search.objectives": json_list(objectives), "search.fixed_overrides": json_list(fixed)}
        with job_environment(self.config, trial_environment), \
                sweep_parent_run(self.config, study.user_attrs.get(PARENT_ATTR), tags=tags) as parent:
            if parent.run_id and PARENT_ATTR not in study.user_attrs:
                study.set_user_attr(PARENT_ATTR, parent.run_id)
                parent.record(texts={"search/space.yaml": OmegaConf.to_yaml(OmegaConf.create(
                    {"params": {**self.params, **swept}, "lists": self.lists}))})
            if self.strategy == "oneshot":
                from pipeline.search.oneshot import oneshot_search

                oneshot_search(self, space, fixed, base, study, parent, objectives)
            else:
                while len(study.trials) < self.n_trials and not exhausted(study):
                    self.check_failure_rate(study)
                    batch = min(self.n_jobs, self.n_trials - len(study.trials))
                    trials = [study.ask(distributions(space)) for _ in range(batch)]
                    self.run_trials(study, trials, fixed, space, objectives, parent)
        self.print_best(study, objectives, fixed, space)
        return []

    def run_trials(self, study, trials, fixed, space, objectives, parent) -> None:
        """Check each asked trial's config, launch the valid ones together, and tell the study each result."""
        from pipeline.search.space import from_params, overrides

        jobs = []
        for trial in trials:
            job = fixed + overrides(from_params(trial.params, space)) + [f"trial={trial.number}"]
            refused = self.refusal(job)
            if refused:
                self.fail(study, trial, refused, parent, job)
            else:
                jobs.append((trial, job))
        if jobs:
            results = self.launcher.launch([job for _, job in jobs], initial_job_idx=jobs[0][0].number)
            for (trial, job), result in zip(jobs, results):
                self.tell(study, trial, result, objectives, parent, job)

    def refusal(self, job: list[str]) -> str | None:
        """The one-line reason a trial's config is refused before it runs (job_checks.problem), or None."""
        from pipeline.cli import describe
        from pipeline.search.job_checks import problem

        try:
            cfg = self.compose(job)
        except Exception as error:
            message = describe(error)
            if message is None:
                raise
            return message
        return problem(cfg)

    def tell(self, study, trial, result, objectives, parent, job) -> None:
        from optuna.trial import TrialState

        if result.status.name == "COMPLETED":
            metrics = result.return_value or {}
            values = [metrics.get(metric, math.nan) for metric, _ in objectives]
            if all(isinstance(value, (int, float)) and math.isfinite(value) for value in values):
                study.tell(trial, values)
                parent.mark_child(trial.number, "COMPLETE")
                return
            missing = [metric for (metric, _), value in zip(objectives, values) if not math.isfinite(value)]
            self.fail(study, trial, f"objective {', '.join(missing)} is missing or not finite", parent, job)
            return
        error = result._return_value
        if getattr(error, "pruned", False):
            study.tell(trial, state=TrialState.PRUNED)
            parent.mark_child(trial.number, "PRUNED")
            return
        from pipeline.cli import one_line

        self.fail(study, trial, one_line(error), parent, job)

    def fail(self, study, trial, reason: str, parent, job) -> None:
        from optuna.trial import TrialState

        from pipeline.search.space import from_params

        study.set_user_attr(f"fail_reason_{trial.number}", reason[:500])
        study.tell(trial, state=TrialState.FAIL)
        parent.failures.append((job, reason))
        parent.mark_child(trial.number, "FAIL", reason, from_params(trial.params, self.space))
        print(f"trial {trial.number} failed: {reason}", file=sys.stderr)

    def check_failure_rate(self, study) -> None:
        from optuna.trial import TrialState

        done = [t for t in study.trials if t.state.is_finished()]
        failed = [t for t in done if t.state == TrialState.FAIL]
        if len(done) >= 4 and len(failed) / len(done) > self.max_failure_rate:
            raise SearchFailed(f"search stopped: {len(failed)} of {len(done)} trials failed (more than "
                               f"hydra.sweeper.max_failure_rate={self.max_failure_rate}); their errors are in "
                               "MLflow and above")

    @staticmethod
    def print_best(study, objectives, fixed, space) -> None:
        from optuna.trial import TrialState

        from pipeline.search.space import from_params, overrides

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            print("search: no trial completed", file=sys.stderr)
            return
        best = study.best_trials if len(objectives) > 1 else [study.best_trial]
        for trial in best:
            values = "  ".join(f"{metric}={value:.4g}" for (metric, _), value in zip(objectives, trial.values))
            command = " ".join(["python run.py", *fixed, *overrides(from_params(trial.params, space))])
            print(f"best trial {trial.number}: {values}\n  {command}")


def exhausted(study) -> bool:
    """A grid search ends when every point was run, whatever n_trials says."""
    check = getattr(study.sampler, "is_exhausted", None)
    return bool(check and check(study))


def json_list(values) -> str:
    import json

    return json.dumps([list(value) if isinstance(value, tuple) else value for value in values])
