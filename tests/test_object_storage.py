"""Lightning's object-storage question answered without importing s3fs while nothing made an S3 filesystem
(object_storage.py)."""
import importlib.util

import pytest

from conftest import run_py_reporting_at_exit, run_python

needs_s3fs = pytest.mark.skipif(importlib.util.find_spec("s3fs") is None,
                                reason="s3fs is not installed (the project's s3 extra): nothing to keep unimported")


@needs_s3fs
def test_a_run_never_imports_s3fs(tmp_path):
    """Lightning asks at the checkpoint folder's check and at every save: a whole default-sized run of two epochs."""
    (s3fs_imported,) = run_py_reporting_at_exit(tmp_path, "'s3fs' in sys.modules", "logger=csv", "trainer.max_epochs=2")
    assert s3fs_imported == "False"


@needs_s3fs
def test_an_s3_filesystem_is_still_object_storage_and_a_local_one_is_not(tmp_path):
    local, s3fs_imported, s3 = run_python("""
        import sys
        from fsspec.implementations.local import LocalFileSystem
        from lightning_fabric.utilities import cloud_io
        from pipeline import object_storage

        object_storage.ask_only_when_imported()
        object_storage.ask_only_when_imported()  # a second job in the same process: asked once still
        local = cloud_io._is_object_storage(LocalFileSystem())
        s3fs_imported = "s3fs" in sys.modules
        s3 = cloud_io._is_object_storage(cloud_io.get_filesystem("s3://a-bucket/checkpoints"))
        print(local, s3fs_imported, s3)
    """, tmp_path)
    assert (local, s3fs_imported, s3) == ("False", "False", "True")
