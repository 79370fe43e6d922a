"""Unpacking a verified download (a gzip, zip or tar member, or the object itself) into the raw folder,
atomically, with the room on the disk checked first: the last step of llm4trx.data.fetch.ensure."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

from llm4trx.data.fetch import (
    CHUNK,
    PART_DIR,
    DownloadError,
    Remote,
    expected_sha256,
    forget,
    free_bytes,
    human,
    sha256_of,
    short,
)


def unpack(r: Remote, archive: Path, raw: Path, meta) -> dict[str, Any]:
    """Write the object's content to raw/<file> atomically; returns the manifest record."""
    target = raw / r.file
    tmp = raw / f".{r.file}.tmp-{os.getpid()}"
    if r.kind == "gzip" and archive.stat().st_size >= 18:  # gzip's trailer: the unpacked size mod 2**32
        with open(archive, "rb") as f:
            f.seek(-4, os.SEEK_END)
            need = int.from_bytes(f.read(4), "little")
        free = free_bytes(raw)
        if need > free:
            raise DownloadError(
                r.object_name,
                f"no room on the disk for {target}: needs {human(need)}, {human(free)} "
                "free; free space and rerun (the downloaded archive is kept)",
            )
    h, size = hashlib.sha256(), 0
    try:
        with open_member(r, archive) as src, open(tmp, "wb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(block)
                h.update(block)
                size += len(block)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise DownloadError(
                r.object_name,
                f"no room left on the disk while unpacking to {target}; free space "
                "and rerun (the downloaded archive is kept)",
            ) from None
        if not isinstance(err, gzip.BadGzipFile):
            raise
        forget(r, raw / PART_DIR)
        raise DownloadError(r.object_name, f"corrupt archive ({short(err)}); it was removed, rerun") from None
    except (EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
        tmp.unlink(missing_ok=True)
        forget(r, raw / PART_DIR)
        raise DownloadError(r.object_name, f"corrupt archive ({short(err)}); it was removed, rerun") from None
    want, source = expected_sha256(r, meta)
    return {
        "repo": r.repo,
        "revision": r.revision,
        "commit": meta.commit_hash,
        "path": r.path,
        "url": r.url,
        "object": r.object_name,
        "object_size": archive.stat().st_size,
        "object_sha256": want or sha256_of(archive),
        "checksum_published": r.sha256 is not None,
        "checked_against": source,
        "member": r.member,
        "size": size,
        "sha256": h.hexdigest(),
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def open_member(r: Remote, archive: Path):
    if r.kind == "gzip":
        return gzip.open(archive, "rb")
    if r.kind == "plain":
        return open(archive, "rb")
    if not r.member:
        raise DownloadError(
            r.object_name, f"set `member` (the path inside the {r.kind} archive) for {r.file} in dataset.download.files"
        )
    if r.kind == "zip":
        zf = zipfile.ZipFile(archive)
        try:
            return _Closing(zf.open(r.member), zf)
        except KeyError:
            names = zf.namelist()[:10]
            zf.close()
            raise DownloadError(r.object_name, f"no member {r.member!r} in the archive (it has {names})") from None
    tf = tarfile.open(archive)
    try:
        member = tf.extractfile(r.member)
    except KeyError:
        names = tf.getnames()[:10]
        tf.close()
        raise DownloadError(r.object_name, f"no member {r.member!r} in the archive (it has {names})") from None
    return _Closing(member, tf)


class _Closing:
    """A member stream that also closes its archive."""

    def __init__(self, stream, owner):
        self.stream, self.owner = stream, owner

    def read(self, n=-1):
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
        self.owner.close()
