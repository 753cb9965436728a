"""Verified, atomic downloads: a file appears under its final name only once its checksum matched."""
import hashlib
import os
import urllib.request
from pathlib import Path

from pipeline.errors import ChecksumError, DataError


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(urls: list[str], destination: Path, md5: str | None, timeout: float = 60) -> Path:
    """Fetch the first URL that works into `destination`, verifying `md5`.

    md5=None is only for archives without a published checksum whose caller verifies every file it takes
    out of them (the names archive).

    The bytes go to a temporary file beside the destination and are renamed into place only after the
    checksum matched, so a killed or corrupt download never leaves a file that looks complete.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.part")
    failures = []
    for url in urls:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts and bad URLs
            partial.unlink(missing_ok=True)
            failures.append(f"{url}: {error}")
            continue
        if md5 is not None and digest.hexdigest() != md5:
            partial.unlink(missing_ok=True)
            raise ChecksumError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; "
                            f"nothing was written to {destination}")
        os.replace(partial, destination)
        return destination
    raise DataError(f"could not download {destination.name} ({'; '.join(failures) or 'no URL given'})")
