"""Fetching a real dataset's public files into `dataset.raw_dir` (used by the `download` stage).

All three public sources are Hugging Face dataset repos, so the transfer is huggingface_hub's `hf_hub_download`
(resume from its `.incomplete` file, atomic move, HF_ENDPOINT mirrors, HF_HUB_OFFLINE, tokens from the
environment). What is ours: the checks, the unpacking and the manifest.

What `dataset.download` in conf/dataset/<name>.yaml describes: the dataset repo (`repo`), the `revision` (a
commit id pins it; a branch name is followed and the commit it resolved to is recorded), the hub (`endpoint`:
null means $HF_ENDPOINT or https://huggingface.co), and per file its path in the repo (`path`), what it is
(`size` in bytes and `sha256` of the object as served, null where no public source states them) and the file
name the loader expects in raw_dir (`file`). `.gz` objects are decompressed; `.zip` and `.tar[.gz]`/`.tgz`
objects need `member` (the path inside the archive).

How a file gets into raw_dir, so that a file there is always complete:

1. present already (downloaded before, or placed by hand): skipped;
2. asked for its metadata (one HEAD: size, commit, ETag), checked against the config and the free disk space;
3. fetched by `hf_hub_download(repo_type="dataset", local_dir=raw_dir/.download)`, which resumes an interrupted
   transfer from its `.incomplete` file with an HTTP Range request; transient failures (connection errors,
   429/5xx, a cut transfer) are retried `retries` times with exponential backoff, each retry resuming;
4. checked: size and sha256 (the config's; else the hub's own LFS sha256, which is the ETag of an LFS file;
   else unchecked, said in the log) and that it is what the name says (gzip/zip magic bytes); a mismatch
   deletes the object, the next run starts over;
5. unpacked into a hidden temporary file in raw_dir and renamed to its final name (atomic on one filesystem);
   `.download` is then removed unless `keep_archives`;
6. recorded in `raw_dir/_DOWNLOAD.json`: repo, commit, size and sha256 of the object and of the unpacked file
   (for objects without a published checksum, the one recorded at the first download; put it into the
   dataset config to pin it).

Bad input, one line each (DownloadError, exit 2 from the stage), nothing half-written under a loader's name:
no network, offline mode, a repo / revision / file the hub does not have, another HTTP error, an endpoint that
does not answer as a hub, an interrupted transfer (the part stays, the rerun resumes), a size or checksum
mismatch, an HTML page instead of the file, no room on the disk (checked before the transfer and before
unpacking, and ENOSPC during either).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from llm4trx.core import registry
from llm4trx.core.errors import Llm4trxError
from llm4trx.core.sections import DatasetSpec

log = logging.getLogger(__name__)

MANIFEST = registry.file("download", "manifest")
PART_DIR = ".download"  # hf_hub_download's local_dir: objects, and its .cache/huggingface/ (metadata, .incomplete)
CHUNK = 1 << 20
MAGIC = {"gzip": b"\x1f\x8b", "zip": b"PK\x03\x04"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_ENDPOINT = "https://huggingface.co"


class DownloadError(Llm4trxError):
    """A file could not be fetched or did not verify; names the file and what to do."""

    def __init__(self, name: str, message: str):
        super().__init__(f"download {name}: {message}")


class _Transient(Exception):
    """A failure worth retrying (the rerun resumes); carries the one-line DownloadError to raise at the end."""

    def __init__(self, error: DownloadError):
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Remote:
    repo: str  # dataset repo id (dllllb/rosbank-churn)
    revision: str  # commit id (pinned) or branch
    endpoint: str  # the hub's base URL
    path: str  # path of the object in the repo (train.csv.gz)
    file: str  # name in raw_dir (train.csv)
    size: int | None
    sha256: str | None
    member: str | None  # path inside a zip/tar archive

    @property
    def object_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, self.path, repo_type="dataset", revision=self.revision, endpoint=self.endpoint)

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


def endpoint_of(spec: dict[str, Any]) -> str:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    return str(spec.get("endpoint") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def remotes(ds: DatasetSpec) -> list[Remote]:
    spec = ds.download
    if not spec:
        return []
    endpoint, repo, revision = endpoint_of(spec), str(spec["repo"]), str(spec.get("revision") or "main")
    return [
        Remote(
            repo,
            revision,
            endpoint,
            str(item["path"]),
            str(item["file"]),
            item.get("size"),
            item.get("sha256"),
            item.get("member"),
        )
        for item in spec["files"]
    ]


def human(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ensure(ds: DatasetSpec) -> dict[str, Any]:
    """Make every file of `dataset.download` present and verified in raw_dir; returns counts."""
    from llm4trx.data.archives import unpack  # here: that module uses this one's helpers

    items = remotes(ds)
    if not items:
        raise DownloadError(
            ds.name,
            "this dataset has no `dataset.download` section (only the public real datasets "
            "rosbank, age_pred and gender are downloadable); put its files into dataset.raw_dir",
        )
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
    retries, backoff = int(spec.get("retries", 5)), float(spec.get("backoff", 1.0))
    timeout = float(spec.get("timeout", 60))
    for r in todo:
        started = time.time()
        archive, meta = with_retries(partial(fetch, r, raw / PART_DIR, timeout), retries, backoff)
        record = unpack(r, archive, raw, meta)  # data/archives.py
        manifest[r.file] = record
        write_manifest(raw, manifest)
        counts["downloaded"] += 1
        counts["bytes"] += record["object_size"]
        log.info(
            "%s: %s from %s@%s in %.1f s (sha256 %s, %s)",
            raw / r.file,
            human(record["object_size"]),
            r.repo,
            record["commit"][:12],
            time.time() - started,
            record["object_sha256"],
            record["checked_against"],
        )
        if r.sha256 is None:
            log.warning(
                "%s has no published sha256 in the dataset config; recorded %s (size %d) in %s: put "
                "`sha256: %s` and `size: %d` into conf/dataset/%s.yaml to pin it",
                r.object_name,
                record["object_sha256"],
                record["object_size"],
                raw / MANIFEST,
                record["object_sha256"],
                record["object_size"],
                ds.name,
            )
    if not COMMIT.match(todo[0].revision):
        log.warning(
            "dataset.download.revision %r is a branch, not a commit: the files came from commit %s (recorded "
            "in %s); put `revision: %s` into conf/dataset/%s.yaml to pin it",
            todo[0].revision,
            record["commit"],
            raw / MANIFEST,
            record["commit"],
            ds.name,
        )
    if not spec.get("keep_archives", False):
        shutil.rmtree(raw / PART_DIR, ignore_errors=True)  # every object is unpacked: nothing left to resume
    return counts


def with_retries(call, retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            return call()
        except _Transient as err:
            if attempt == retries:
                raise err.error from None
            wait = backoff * 2**attempt
            log.warning("%s; retry %d of %d in %.0f s", err, attempt + 1, retries, wait)
            time.sleep(wait)


def read_manifest(raw: Path) -> dict[str, Any]:
    path = raw / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(raw: Path, manifest: dict[str, Any]) -> None:
    tmp = raw / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, raw / MANIFEST)


def short(err: BaseException) -> str:
    # requests and huggingface_hub wrap the cause (and a request id) in args: report the innermost message.
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    text = next((a for a in err.args if isinstance(a, str)), None) or str(err) or type(err).__name__
    text = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return text if len(text) < 200 else text[:200] + "..."


def incomplete_parts(parts: Path) -> list[Path]:
    return sorted((parts / ".cache" / "huggingface" / "download").glob("*.incomplete"))


def http_error(r: Remote, err: Exception) -> DownloadError | _Transient:
    """One line for an HTTP error of the hub; 429 and 5xx are transient."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    resp = getattr(err, "response", None)
    status = getattr(resp, "status_code", None)
    reason = getattr(resp, "reason", "") or ""
    if isinstance(err, EntryNotFoundError):
        return DownloadError(
            r.object_name,
            f"no file {r.path!r} in dataset repo {r.repo} at revision {r.revision} "
            f"(HTTP {status} for {r.url}); check dataset.download.files",
        )
    if isinstance(err, RevisionNotFoundError):
        return DownloadError(
            r.object_name,
            f"no revision {r.revision!r} in dataset repo {r.repo} (HTTP {status} for "
            f"{r.url}); check dataset.download.revision",
        )
    if isinstance(err, RepositoryNotFoundError):
        return DownloadError(
            r.object_name,
            f"no dataset repo {r.repo} on {r.endpoint} (HTTP {status}; a private or "
            "gated repo needs HF_TOKEN); check dataset.download.repo and the endpoint",
        )
    error = DownloadError(
        r.object_name,
        f"HTTP {status} {reason} for {r.url}; check dataset.download.endpoint (or HF_ENDPOINT) and the file name",
    )
    return _Transient(error) if status is not None and (status == 429 or status >= 500) else error


def metadata(r: Remote, timeout: float):
    """The hub's HEAD answer for the object: size, commit, ETag (the LFS sha256 for large files)."""
    import requests
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        meta = get_hf_file_metadata(r.url, timeout=timeout)
    except OfflineModeIsEnabled:
        raise DownloadError(
            r.object_name,
            "HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it, or put "
            "the files into dataset.raw_dir by hand",
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
        raise _Transient(
            DownloadError(
                r.object_name,
                f"cannot connect to {r.endpoint} ({short(err)}); check the "
                "network (or set HF_ENDPOINT / dataset.download.endpoint to a reachable "
                "mirror)",
            )
        ) from None
    except HfHubHTTPError as err:
        raise http_error(r, err) from None
    if meta.commit_hash is None or meta.etag is None:
        raise DownloadError(
            r.object_name,
            f"{r.url} does not answer as a Hugging Face hub (no X-Repo-Commit or ETag "
            "header: a proxy, login or error page?); check dataset.download.endpoint (or HF_ENDPOINT)",
        )
    if meta.size is None:
        raise DownloadError(r.object_name, f"{r.url} did not say the file's size; check dataset.download.endpoint")
    if r.size is not None and meta.size != r.size:
        raise DownloadError(
            r.object_name,
            f"the hub serves {meta.size} bytes at revision {r.revision}, the config "
            f"expects {r.size}; check dataset.download.revision (or the size in the dataset config)",
        )
    return meta


def fetch(r: Remote, parts: Path, timeout: float) -> tuple[Path, Any]:
    """The complete, verified object under `parts/` (resumed from hf_hub_download's .incomplete file)."""
    import requests
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    meta = metadata(r, timeout)
    parts.mkdir(parents=True, exist_ok=True)
    have = sum(p.stat().st_size for p in incomplete_parts(parts))
    need, free = meta.size - have, free_bytes(parts)
    if not (parts / r.path).is_file() and need > free:
        raise DownloadError(
            r.object_name,
            f"no room on the disk for {parts.parent / r.file}: needs {human(need)}, "
            f"{human(free)} free; free space or set dataset.raw_dir elsewhere",
        )
    try:
        path = Path(
            hf_hub_download(
                r.repo,
                r.path,
                repo_type="dataset",
                revision=r.revision,
                endpoint=r.endpoint,
                local_dir=parts,
                etag_timeout=timeout,
            )
        )
    except LocalEntryNotFoundError as err:  # its own metadata request failed (the network went away since ours)
        raise _Transient(
            DownloadError(r.object_name, f"cannot reach {r.endpoint} ({short(err)}); check the network and rerun")
        ) from None
    except HfHubHTTPError as err:
        raise http_error(r, err) from None
    except requests.exceptions.RequestException as err:  # cut or timed out mid-transfer: the .incomplete stays
        kept = incomplete_parts(parts)
        size = sum(p.stat().st_size for p in kept)
        where = f"the part ({human(size)} of {human(meta.size)}) is kept in {kept[0]}" if kept else "nothing was kept"
        raise _Transient(
            DownloadError(r.object_name, f"transfer interrupted ({short(err)}); {where}: rerun to resume")
        ) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            for p in incomplete_parts(parts):
                p.unlink(missing_ok=True)
            raise DownloadError(
                r.object_name,
                f"no room left on the disk while downloading into {parts}; the part was removed: free space and rerun",
            ) from None
        if "Consistency check failed" in str(err):  # the body ended short of the announced size
            raise _Transient(DownloadError(r.object_name, f"transfer ended short ({short(err)}); rerun to resume"))
        raise
    verify(r, path, meta, parts)
    return path, meta


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def expected_sha256(r: Remote, meta) -> tuple[str | None, str]:
    """The sha256 to check and where it comes from: the config, else the hub's LFS oid (an LFS file's ETag)."""
    if r.sha256 is not None:
        return r.sha256.lower(), "dataset config"
    etag = (meta.etag or "").lower()
    if SHA256.match(etag):
        return etag, "the hub's LFS sha256"
    return None, "unchecked"


def forget(r: Remote, parts: Path) -> None:
    """Remove a bad object and hf_hub_download's record of it, so that the next run fetches it again."""
    (parts / r.path).unlink(missing_ok=True)
    (parts / ".cache" / "huggingface" / "download" / f"{r.path}.metadata").unlink(missing_ok=True)


def verify(r: Remote, path: Path, meta, parts: Path) -> None:
    """Size, magic bytes and sha256 of a complete object; on failure the object is removed."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(512)
    want, source = expected_sha256(r, meta)
    if r.size is not None and size != r.size:
        problem = f"size {size} bytes, expected {r.size}"
    elif r.kind in MAGIC and not head.startswith(MAGIC[r.kind]):
        looks = "an HTML page" if head.lstrip().lower().startswith((b"<!doctype html", b"<html")) else "something else"
        problem = f"not a {r.kind} file (it is {looks}); check dataset.download.endpoint"
    elif want is not None:
        got = sha256_of(path)
        if got != want:
            problem = f"sha256 {got}, expected {want} ({source}; a corrupted transfer or a changed upstream file)"
    if problem is None:
        if want is None:
            log.warning(
                "%s: sha256 unchecked (no sha256 in the dataset config and the hub gave none); only its "
                "size and its gzip CRC are checked",
                r.object_name,
            )
        return
    forget(r, parts)
    raise DownloadError(r.object_name, f"{problem}; the file was removed, rerun to download it again")
