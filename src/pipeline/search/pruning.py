"""Pruning: a trial reports its validation value after every epoch, and stops when the study's pruner says it is
hopeless. optuna-integration's Lightning callback imports the `lightning` package, which cannot be mixed with
`pytorch_lightning` (MEASURED.md), hence this small one."""
import optuna
import pytorch_lightning as pl

from pipeline.errors import TrainingError
from pipeline.search import study as studies


class Pruned(TrainingError, optuna.TrialPruned):
    """A trial its pruner stopped: recorded PRUNED in the study and KILLED (tag search.state=PRUNED) in MLflow."""

    pruned = True


class PruneHopeless(pl.Callback):
    """Report `monitor` after each validation epoch to trial `number` of the study; stop the run when pruned."""

    def __init__(self, storage_url: str, study_name: str, pruner_name: str, monitor: str, number: int):
        self.monitor, self.number = monitor, number
        study = optuna.load_study(study_name=study_name, storage=studies.storage(storage_url),
                                  pruner=studies.pruner(pruner_name))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self.trial = optuna.trial.Trial(study, trial_id)
        # Optuna prunes single-objective studies only: a trial of a Pareto search always runs its whole budget.
        self.active = len(study.directions) == 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self.active or trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise Pruned(f"pruned after epoch {epoch + 1}: {self.monitor}={value:.4f} is worse than the pruner "
                         f"allows at that epoch (trial {self.number})")


def trial_callbacks(cfg) -> list[pl.Callback]:
    """The pruning callback when this run is a search's trial (cfg.trial set, the study in the environment)."""
    found = studies.of_this_run()
    if found is None or cfg.get("trial") is None or found["pruner"] == "none":
        return []
    return [PruneHopeless(found["storage"], found["study"], found["pruner"], found["monitor"], int(cfg.trial))]
