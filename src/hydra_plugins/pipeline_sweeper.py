"""Hydra loads plugins only from its `hydra_plugins` namespace package: the pipeline's sweeper, registered here
(`conf/hydra/sweeper/pipeline.yaml` selects it). One sweeper for both kinds of `-m`: a grid sweep by default
(pipeline/search/sweeper.py), a search when `hydra.sweeper.strategy` is set, as every conf/search/*.yaml does
(pipeline/search/search_sweeper.py). One class, because a config group option cannot override the sweeper the
primary config already chose."""
from hydra.plugins.sweeper import Sweeper

from pipeline.search.search_sweeper import SearchSweeper
from pipeline.search.sweeper import SafeGridSweeper


class PipelineSweeper(Sweeper):
    """Grid sweeps that check every job first, survive failing jobs and always summarise (SafeGridSweeper), or
    Optuna searches, resumable, with one MLflow parent per study (SearchSweeper)."""

    def __init__(self, strategy: str | None = None, max_batch_size: int | None = None, params=None, **search):
        if strategy is None:
            self.chosen = SafeGridSweeper(max_batch_size=max_batch_size, params=params)
        else:
            self.chosen = SearchSweeper(strategy=strategy, params=params, **search)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from pipeline.search.launcher_workers import fork_from_warm_process

        self.chosen.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        fork_from_warm_process(self.chosen.launcher)

    def sweep(self, arguments: list[str]):
        from pipeline.search.launcher_workers import stop_workers

        try:
            return self.chosen.sweep(arguments)
        finally:
            stop_workers(self.chosen.launcher)
