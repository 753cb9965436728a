"""What a crash or a damaged disk leaves behind is caught: the decoded image cache is checked against its digest
(rebuilt from the raw files with a notice, or refused naming the file), and the part files and scratch folders of a
killed download or write are removed, while those of a running process are left alone."""
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pipeline.data import images
from pipeline.data.download import download
from pipeline.errors import DataError
from pipeline.files import write_atomically
from test_images import cifar_module, mnist_module, serve_cifar_archive, write_mnist

LABELS = bytes(range(10)) + bytes(range(10))  # how write_mnist's labels 0..9, 0..9 look inside the cache


def replace_with(path, content: bytes) -> None:
    """Put `content` at `path` as a new file: a new inode, so this process cannot take it for the file it checked
    (a damaged disk is normally met by the next run, a new process)."""
    damaged = path.with_name("damaged")
    damaged.write_bytes(content)
    os.replace(damaged, path)


def truncated(content: bytes) -> bytes:
    return content[: len(content) // 2]


def label_flipped(content: bytes) -> bytes:
    """One label byte set to 200, the damage that trained on garbage before ('Target 200 is out of bounds')."""
    at = content.index(LABELS) + 3
    return content[:at] + bytes([200]) + content[at + 1:]


@pytest.fixture
def cached(tmp_path):
    """A tiny MNIST, its raw files, its splits and the cache they were decoded into."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    module = mnist_module(tmp_path)
    module.setup()
    return module.splits, tmp_path / "cache" / "mnist.pt"


@pytest.mark.parametrize("damage", [truncated, label_flipped])
def test_a_damaged_cache_is_rebuilt_from_the_raw_files_with_a_notice(tmp_path, cached, damage, caplog):
    splits, cache = cached
    good = cache.read_bytes()
    replace_with(cache, damage(good))
    module = mnist_module(tmp_path)
    with caplog.at_level(logging.WARNING):
        module.setup()
    notices = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(notices) == 1 and str(cache) in notices[0] and "rebuilding it" in notices[0]
    assert ("truncated" if damage is truncated else "does not match its digest") in notices[0]
    for split, (x, y) in splits.items():
        assert torch.equal(module.splits[split][0], x) and torch.equal(module.splits[split][1], y)
    assert int(module.splits["train"][1].max()) == 9
    assert cache.read_bytes() != damage(good)
    caplog.clear()
    mnist_module(tmp_path).setup()  # the rebuilt cache is good: no notice again
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", [truncated, label_flipped])
def test_a_damaged_cache_without_raw_files_is_refused_in_one_line(tmp_path, cached, damage):
    _, cache = cached
    replace_with(cache, damage(cache.read_bytes()))
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError) as error:
        mnist_module(tmp_path).setup()
    message = str(error.value)
    assert message.startswith(str(cache)) and "\n" not in message
    assert "raw files to rebuild it are not in" in message and "delete the cache" in message


def test_a_good_cache_alone_is_enough(tmp_path, cached):
    splits, _ = cached
    shutil.rmtree(tmp_path / "data")
    module = mnist_module(tmp_path)
    module.setup()
    assert torch.equal(module.splits["train"][0], splits["train"][0])


def test_a_cache_without_a_digest_is_rebuilt_or_refused(tmp_path, cached):
    splits, cache = cached
    old = torch.load(cache)
    del old["digest"]
    old["fingerprint"][0] = 1  # written by CACHE_VERSION 1, before caches had a digest
    torch.save(old, cache.with_name("old"))
    os.replace(cache.with_name("old"), cache)
    mnist_module(tmp_path).setup()  # raw files there: rebuilt
    assert "digest" in torch.load(cache)
    torch.save(old, cache.with_name("old"))
    os.replace(cache.with_name("old"), cache)
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError, match=r"mnist.pt was written by another version \(cache 1, now 2\)"):
        mnist_module(tmp_path).setup()


def test_the_cache_is_read_and_checked_once_per_process(tmp_path, cached, monkeypatch):
    """Lightning calls prepare_data() again in trainer.fit after build_data's prepare_data() and setup()."""
    _, cache = cached
    replace_with(cache, cache.read_bytes())  # as if written by an earlier run: not yet checked here
    loads, digests = [], []
    real_load, real_digest = torch.load, images.digest_of
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: loads.append(path) or real_load(path, *a, **k))
    monkeypatch.setattr(images, "digest_of", lambda arrays: digests.append(1) or real_digest(arrays))
    for _ in range(2):  # a second datamodule in the same process (a sweep's next job) checks nothing again
        module = mnist_module(tmp_path)
        module.prepare_data()
        module.setup("fit")
        module.prepare_data()
    assert len(digests) == 1
    assert loads == [cache, cache]  # one read per datamodule


def dead_pid() -> int:
    """The pid of a process that has ended, as one killed with -9 in the middle of a download."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """A process still running, as a concurrent download."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


def test_a_killed_downloads_part_file_is_removed_a_running_ones_kept(http_folder, tmp_path, live_pid):
    served, url = http_folder
    (served / "file.bin").write_bytes(b"complete")
    folder = tmp_path / "data"
    folder.mkdir()
    stale, running = folder / f".file.bin.{dead_pid()}.part", folder / f".file.bin.{live_pid}.part"
    other = folder / f".other.bin.{dead_pid()}.part"  # another file's leftover: its own next write removes it
    for part in (stale, running, other):
        part.write_bytes(b"half")
    download([url + "file.bin"], folder / "file.bin", md5=None)
    assert (folder / "file.bin").read_bytes() == b"complete"
    assert not stale.exists() and running.read_bytes() == b"half" and other.exists()
    write_atomically(folder / "other.bin", lambda partial: partial.write_bytes(b"x"))
    assert not other.exists()


def test_a_killed_cache_write_leaves_nothing_after_the_next_one(tmp_path):
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    (tmp_path / "cache").mkdir()
    stale = tmp_path / "cache" / f".mnist.pt.{dead_pid()}.part"
    stale.write_bytes(b"half a cache")
    mnist_module(tmp_path).setup()
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["mnist.pt"]


def test_a_killed_cifar_downloads_scratch_folder_is_removed_a_running_ones_kept(http_folder, tmp_path, live_pid):
    served, url = http_folder
    md5 = serve_cifar_archive(served, tmp_path / "staging")
    data = tmp_path / "data"
    stale, running = data / f".cifar-download-{dead_pid()}-k2x8q0ab", data / f".cifar-download-{live_pid}-m3z7w1cd"
    for scratch in (stale, running):
        scratch.mkdir(parents=True)
        (scratch / ".cifar-10-python.tar.gz.1.part").write_bytes(b"half an archive")
    module = cifar_module(tmp_path, download=True, archive_url=url + "cifar-10-python.tar.gz", archive_md5=md5)
    module.setup()
    assert sorted(path.name for path in data.iterdir()) == sorted(["cifar-10-batches-py", running.name])
