"""Lightning asks whether a checkpoint's filesystem is object storage (S3, GCS, Azure) before it checks the checkpoint
folder and at every save, by importing s3fs, gcsfs and adlfs wherever they are installed
(lightning_fabric.utilities.cloud_io._is_object_storage). With the project's `s3` extra (DVC's S3 remote) that is
0.3-0.6 s of s3fs, aiobotocore and aiohttp in every training process, none of which reads or writes S3. A filesystem
object comes from its module, so while none of those modules is imported the answer is no: asked first, the question
costs nothing; once one is imported (a checkpoint path on s3://, say), Lightning's own check answers."""
import sys

from lightning_fabric.utilities import cloud_io

MODULES = ("s3fs", "gcsfs", "adlfs")


def ask_only_when_imported() -> None:
    """Put the cheap question in front of Lightning's (once per process)."""
    lightnings_check = cloud_io._is_object_storage
    if getattr(lightnings_check, "asks_only_when_imported", False):
        return

    def is_object_storage(fs) -> bool:
        return any(module in sys.modules for module in MODULES) and lightnings_check(fs)

    is_object_storage.asks_only_when_imported = True
    cloud_io._is_object_storage = is_object_storage
