"""Verified, atomic downloads: a file appears under its final name only once its checksum matched."""
import functools
import hashlib
import urllib.request
from pathlib import Path

from pipeline.errors import ChecksumError, DataError
from pipeline.files import write_atomically


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_verified(url: str, md5: str | None, timeout: float, partial: Path) -> None:
    """Stream `url` into `partial`, hashing as it goes; a checksum mismatch raises, so the part is never kept."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    if md5 is not None and digest.hexdigest() != md5:
        raise ChecksumError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}")


def download(urls: list[str], destination: Path, md5: str | None, timeout: float = 60) -> Path:
    """Fetch the first URL that works into `destination`, verifying `md5`.

    md5=None is only for archives without a published checksum whose caller verifies every file it takes
    out of them (the names archive).

    The bytes go to a part file beside the destination (see pipeline.files) and are renamed into place only
    after the checksum matched, so a killed or corrupt download never leaves a file that looks complete.
    """
    failures = []
    for url in urls:
        try:
            return write_atomically(destination, functools.partial(fetch_verified, url, md5, timeout))
        except ChecksumError as error:
            raise ChecksumError(f"{error}; nothing was written to {destination}") from None
        except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts and bad URLs
            failures.append(f"{url}: {error}")
    raise DataError(f"could not download {destination.name} ({'; '.join(failures) or 'no URL given'})")
