"""What every job of a parallel sweep imports, imported once by the process its workers are forked from."""
from pipeline import collector

with collector.paused():
    import captum.attr  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import mlflow.store.db.utils  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.export  # noqa: F401

    import pipeline.train  # noqa: F401
    from pipeline.viz import pyplot

    pyplot()
