"""The garbage collector paused during the big imports and their objects frozen after (collector.py)."""
import gc

import pytest

from conftest import run_py_reporting_at_exit, run_python


def test_a_first_import_is_not_collected_and_is_frozen_after_and_a_second_freezes_nothing(tmp_path):
    (tmp_path / "many_objects.py").write_text("TABLE = [[index] for index in range(20_000)]\n")
    passes, frozen, enabled, frozen_again = run_python("""
        import gc
        from pipeline import collector

        passes = []
        gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
        module = collector.import_module("many_objects")
        passes_in_import, frozen, enabled = len(passes), gc.get_freeze_count(), gc.isenabled()
        garbage_of_a_job = [[index] for index in range(5_000)]
        assert collector.import_module("many_objects") is module
        print(passes_in_import, frozen, enabled, gc.get_freeze_count())
    """, tmp_path)
    assert passes == "0"  # 20,000 new lists would have started a collection every 700 allocations
    assert int(frozen) >= 20_000
    assert enabled == "True"
    assert frozen_again == frozen  # a sweep's later job: what earlier jobs left stays collectable


def test_a_run_freezes_what_torch_and_lightning_imported_and_collects_again_after(tmp_path):
    """The whole run.py, watched from inside: at its exit the collector is on and the imports' objects frozen."""
    enabled, frozen = run_py_reporting_at_exit(tmp_path, "gc.isenabled(), gc.get_freeze_count()", "logger=csv",
                                               "trainer.max_epochs=1")
    assert enabled == "True"
    assert int(frozen) > 200_000  # torch and Lightning alone create ~400,000


def test_the_tracking_process_collects_again_after_its_preload_even_a_failed_one(monkeypatch):
    from pipeline import tracking_worker

    def failing_preload():
        raise ImportError("no torch.export here")

    monkeypatch.setattr(tracking_worker, "preload", failing_preload)
    gc.disable()
    try:
        with pytest.raises(ImportError):
            tracking_worker.preload_then_collect()
        assert gc.isenabled()
    finally:
        gc.unfreeze()  # this test process's objects: collectable again
        gc.enable()


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "visualize"])
def test_each_dvc_stage_imports_torch_and_lightning_uncollected_and_frozen(stage, tmp_path):
    """`python -m pipeline.stages.<stage>` imports them as the module loads, before any entry point could."""
    enabled, frozen, torch_loaded = run_python(f"""
        import gc, sys
        import pipeline.stages.{stage}

        print(gc.isenabled(), gc.get_freeze_count(), "torch" in sys.modules)
    """, tmp_path)
    assert enabled == "True" and torch_loaded == "True"
    assert int(frozen) > 200_000
