"""Hydra loads plugins only from its `hydra_plugins` namespace package: the pipeline's sweeper, registered here
(`conf/hydra/sweeper/pipeline.yaml` selects it). The code is in pipeline/search/sweeper.py."""
from pipeline.search.sweeper import SafeGridSweeper


class PipelineSweeper(SafeGridSweeper):
    """Grid sweeps that check every job first, survive failing jobs and always summarise (see SafeGridSweeper)."""
