"""Fetching a real dataset's public files into `dataset.raw_dir` (used by the `download` stage).

What `dataset.download` in conf/dataset/<name>.yaml describes, per file: where it lives (`base_url` + `url`),
what it is (`size` in bytes and `sha256` of the object as served, null where no public source states them),
and the file name the loader expects in raw_dir (`file`). `.gz` objects are decompressed; `.zip` and
`.tar[.gz]`/`.tgz` objects need `member` (the path inside the archive).

How a file gets into raw_dir, so that a file there is always complete:

1. present already (downloaded before, or placed by hand): skipped;
2. fetched to `raw_dir/.download/<object>.part`, resuming after an interruption with an HTTP Range request
   (a server that ignores Range sends everything again; the part is restarted), with urllib3's `Retry`
   for transient failures (connection errors, 429/5xx, with backoff);
3. checked: size and sha256 against the config (a mismatch deletes the part: the next run starts over), and
   that it is what the name says (gzip/zip/tar magic bytes: an HTML page served with status 200 is caught);
4. unpacked into a hidden temporary file in raw_dir and renamed to its final name (atomic on one filesystem);
   the archive is then removed unless `keep_archives`;
5. recorded in `raw_dir/_DOWNLOAD.json`: url, size and sha256 of the object and of the unpacked file
   (for objects without a published checksum, this is the checksum recorded at the first download; put it
   into the dataset config to pin it).

Bad input, one line each (DownloadError, exit 2 from the stage), nothing half-written under a loader's name:
HTTP errors (404: check base_url), an HTML page instead of the file, an interrupted transfer (the part stays,
the rerun resumes), a size or checksum mismatch, no room on the disk (checked before the transfer and
caught as ENOSPC during it), no network (connection refused / name resolution).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from llm4trx.core.errors import Llm4trxError

log = logging.getLogger(__name__)

MANIFEST = "_DOWNLOAD.json"
PART_DIR = ".download"
CHUNK = 1 << 20
MAGIC = {"gzip": b"\x1f\x8b", "zip": b"PK\x03\x04"}


class DownloadError(Llm4trxError):
    """A file could not be fetched or did not verify; names the file and what to do."""

    def __init__(self, name: str, message: str):
        super().__init__(f"download {name}: {message}")


@dataclass(frozen=True)
class Remote:
    url: str  # full URL
    object_name: str  # name of the object as served (train.csv.gz)
    file: str  # name in raw_dir (train.csv)
    size: int | None
    sha256: str | None
    member: str | None  # path inside a zip/tar archive

    @property
    def kind(self) -> str:
        name = self.object_name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return "tar"
        if name.endswith(".zip"):
            return "zip"
        if name.endswith(".gz"):
            return "gzip"
        return "plain"


def remotes(ds: DictConfig) -> list[Remote]:
    spec = ds.get("download")
    if not spec:
        return []
    base = str(spec.base_url).rstrip("/")
    out = []
    for item in spec.files:
        url = str(item.url)
        full = url if "://" in url else f"{base}/{url}"
        name = url.rsplit("/", 1)[-1].split("?", 1)[0]
        out.append(Remote(full, name, str(item.file), item.get("size"), item.get("sha256"), item.get("member")))
    return out


def files_present(ds: DictConfig) -> bool:
    """Whether every file the download would produce is in raw_dir (cheap: names only)."""
    raw = Path(ds.raw_dir)
    return all((raw / r.file).is_file() for r in remotes(ds))


def human(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def session(retries: int, backoff: float):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
                  raise_on_status=False, respect_retry_after_header=True)
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "llm4trx-download"
    return s


def ensure(ds: DictConfig) -> dict[str, Any]:
    """Make every file of `dataset.download` present and verified in raw_dir; returns counts."""
    items = remotes(ds)
    if not items:
        raise DownloadError(ds.name, "this dataset has no `dataset.download` section (only the public real datasets "
                            "rosbank, age_pred and gender are downloadable); put its files into dataset.raw_dir")
    spec = ds.download
    raw = Path(ds.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(raw)
    counts = {"downloaded": 0, "present": 0, "bytes": 0}
    todo = [r for r in items if not (raw / r.file).is_file()]
    for r in items:
        if r not in todo:
            state = "verified at download" if r.file in manifest else "placed by hand, not verified"
            log.info("%s: present (%s), skipped", raw / r.file, state)
            counts["present"] += 1
    if not todo:
        return counts
    s = session(int(spec.get("retries", 5)), float(spec.get("backoff", 1.0)))
    timeout = float(spec.get("timeout", 60))
    for r in todo:
        started = time.time()
        archive = fetch(s, r, raw / PART_DIR, timeout)
        record = unpack(r, archive, raw)
        if not spec.get("keep_archives", False):
            archive.unlink()
        manifest[r.file] = record
        write_manifest(raw, manifest)
        counts["downloaded"] += 1
        counts["bytes"] += record["object_size"]
        log.info("%s: %s from %s in %.1f s (sha256 %s)", raw / r.file, human(record["object_size"]), r.url,
                 time.time() - started, record["object_sha256"])
        if r.sha256 is None:
            log.warning("%s has no published sha256 in the dataset config; recorded %s (size %d) in %s: put "
                        "`sha256: %s` and `size: %d` into conf/dataset/%s.yaml to pin it", r.object_name,
                        record["object_sha256"], record["object_size"], raw / MANIFEST, record["object_sha256"],
                        record["object_size"], ds.name)
    if (raw / PART_DIR).is_dir() and not any((raw / PART_DIR).iterdir()):
        (raw / PART_DIR).rmdir()
    return counts


def read_manifest(raw: Path) -> dict[str, Any]:
    path = raw / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(raw: Path, manifest: dict[str, Any]) -> None:
    tmp = raw / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, raw / MANIFEST)


def fetch(s, r: Remote, parts: Path, timeout: float) -> Path:
    """The complete, verified object under `parts/` (resumed from `<object>.part` when one exists)."""
    import requests
    import urllib3

    parts.mkdir(parents=True, exist_ok=True)
    final = parts / r.object_name
    if final.is_file() and verify(r, final, raise_=False):
        return final  # fetched and verified before, unpacking was interrupted
    part = parts / (r.object_name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if r.size is not None and have > r.size:
        part.unlink()
        have = 0
    if r.size is not None and have == r.size:
        return finish(r, part, final)
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = s.get(r.url, stream=True, timeout=timeout, headers=headers)
    except requests.exceptions.ConnectionError as err:
        raise DownloadError(r.object_name, f"cannot connect to {r.url} ({short(err)}); check the network "
                            "(or set dataset.download.base_url to a reachable mirror)") from None
    except requests.exceptions.RequestException as err:
        raise DownloadError(r.object_name, f"request to {r.url} failed: {short(err)}") from None
    with resp:
        if resp.status_code == 416 and have:  # range beyond the end: the part is already the whole file
            return finish(r, part, final)
        if resp.status_code >= 400:
            raise DownloadError(r.object_name, f"HTTP {resp.status_code} {resp.reason} for {r.url}; "
                                "check dataset.download.base_url and the file name")
        ctype = resp.headers.get("Content-Type", "").lower()
        if "text/html" in ctype:  # none of the datasets' files is a web page
            raise DownloadError(r.object_name, f"{r.url} answered with an HTML page ({ctype}), not the file; "
                                "check dataset.download.base_url (a login or error page?)")
        resume = have and resp.status_code == 206
        if have and not resume:
            log.info("%s: the server ignored the Range request; downloading from the start", r.object_name)
            have = 0
        length = resp.headers.get("Content-Length")
        expected = r.size if r.size is not None else (int(length) + have if length and length.isdigit() else None)
        if expected is not None:
            need = expected - have
            free = free_bytes(parts)
            if need > free:
                raise DownloadError(r.object_name, f"no room on the disk for {raw_name(parts, r)}: needs {human(need)}, "
                                    f"{human(free)} free; free space or set dataset.raw_dir elsewhere")
        done = have
        try:
            with open(part, "ab" if resume else "wb") as out:
                # The bytes as served (decode_content=False): a .gz sent with Content-Encoding stays a .gz.
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    out.write(chunk)
                    done += len(chunk)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as err:
            total = f" of {human(expected)}" if expected else ""
            raise DownloadError(r.object_name, f"transfer interrupted after {human(done)}{total} ({short(err)}); "
                                f"the part is kept in {part}: rerun to resume") from None
        except OSError as err:
            if err.errno == errno.ENOSPC:
                part.unlink(missing_ok=True)
                raise DownloadError(r.object_name, f"no room left on the disk while writing {part} (after "
                                    f"{human(done)}); the part was removed: free space and rerun") from None
            raise
    if expected is not None and done < expected:
        raise DownloadError(r.object_name, f"transfer ended after {human(done)} of {human(expected)}; the part is "
                            f"kept in {part}: rerun to resume")
    return finish(r, part, final)


def raw_name(parts: Path, r: Remote) -> str:
    return str(parts.parent / r.file)


def short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) < 200 else text[:200] + "..."


def finish(r: Remote, part: Path, final: Path) -> Path:
    verify(r, part)
    os.replace(part, final)
    return final


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(r: Remote, path: Path, raise_: bool = True) -> bool:
    """Size, sha256 and magic bytes of a complete object; on failure the file is removed."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(512)
    if r.size is not None and size != r.size:
        problem = f"size {size} bytes, expected {r.size}"
    elif r.kind in MAGIC and not head.startswith(MAGIC[r.kind]):
        looks = "an HTML page" if head.lstrip().lower().startswith((b"<!doctype html", b"<html")) else "something else"
        problem = f"not a {r.kind} file (it is {looks}); check dataset.download.base_url"
    elif r.sha256 is not None:
        got = sha256_of(path)
        if got != r.sha256.lower():
            problem = f"sha256 {got}, expected {r.sha256} (corrupted transfer or a changed upstream file)"
    if problem is None:
        return True
    path.unlink(missing_ok=True)
    if raise_:
        raise DownloadError(r.object_name, f"{problem}; the file was removed, rerun to download it again")
    return False


def unpack(r: Remote, archive: Path, raw: Path) -> dict[str, Any]:
    """Write the object's content to raw/<file> atomically; returns the manifest record."""
    target = raw / r.file
    tmp = raw / f".{r.file}.tmp-{os.getpid()}"
    if r.kind == "gzip" and archive.stat().st_size >= 18:  # gzip's trailer: the unpacked size mod 2**32
        with open(archive, "rb") as f:
            f.seek(-4, os.SEEK_END)
            need = int.from_bytes(f.read(4), "little")
        free = free_bytes(raw)
        if need > free:
            raise DownloadError(r.object_name, f"no room on the disk for {target}: needs {human(need)}, {human(free)} "
                                "free; free space and rerun (the downloaded archive is kept)")
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
            raise DownloadError(r.object_name, f"no room left on the disk while unpacking to {target}; free space "
                                "and rerun (the downloaded archive is kept)") from None
        if not isinstance(err, gzip.BadGzipFile):
            raise
        archive.unlink(missing_ok=True)
        raise DownloadError(r.object_name, f"corrupt archive ({short(err)}); it was removed, rerun") from None
    except (EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
        tmp.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        raise DownloadError(r.object_name, f"corrupt archive ({short(err)}); it was removed, rerun") from None
    return {"url": r.url, "object": r.object_name, "object_size": archive.stat().st_size,
            "object_sha256": r.sha256 or sha256_of(archive), "checksum_published": r.sha256 is not None,
            "member": r.member, "size": size, "sha256": h.hexdigest(),
            "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def open_member(r: Remote, archive: Path):
    if r.kind == "gzip":
        return gzip.open(archive, "rb")
    if r.kind == "plain":
        return open(archive, "rb")
    if not r.member:
        raise DownloadError(r.object_name, f"set `member` (the path inside the {r.kind} archive) for {r.file} in "
                            "dataset.download.files")
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

