"""Python's cyclic garbage collector kept off what the big imports create.

Importing torch and Lightning creates ~400,000 objects that live as long as the process, and the collector's full
passes walk all of them again and again while they pile up (~0.6 s of a 3 s import, measured with gc.callbacks), then
at every later full pass (~0.2 s each, one of them inside a default run's plots). Paused during those imports and
frozen after them (gc.freeze: left out of every later pass), they cost nothing more. What the imports made and
dropped is kept (~9 MB: their reference cycles that a pass would have freed).
"""
import gc
import importlib
import sys
from contextlib import contextmanager


def pause() -> None:
    """No collection until resume(): for a process about to import torch (the MLflow tracking process)."""
    gc.disable()


def resume() -> None:
    """Freeze what exists now (left out of every later collection) and collect again from here on."""
    gc.freeze()
    gc.enable()


@contextmanager
def paused():
    """Imports in this block are not collected while they run, and frozen after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_module(name: str):
    """`name` imported: the first time in this process with the collector paused (a sweep's later jobs find it
    imported, and must not freeze the garbage of the jobs before them)."""
    if name in sys.modules:
        return sys.modules[name]
    with paused():
        return importlib.import_module(name)
