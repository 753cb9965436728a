"""DVC stage entry points: prepare → train → evaluate → visualize (dvc.yaml runs `python -m pipeline.stages.X`).

Each reads the config from params.yaml (DVC's Hydra integration composes it from conf/ on `dvc exp run -S`)
and calls the same functions as `python run.py`; each writes only the files dvc.yaml declares for it.
"""
