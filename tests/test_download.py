"""Stage `download` (llm4trx.data.fetch) against a local HTTP server on 127.0.0.1 that answers as the Hugging
Face hub does, serving archives built here.

Nothing leaves the machine: HF_ENDPOINT points at the test's own server. It implements what hf_hub_download calls
(huggingface_hub 0.33): HEAD/GET /datasets/<repo>/resolve/<revision>/<path> with X-Repo-Commit and an ETag (for
an LFS file, X-Linked-Etag = its sha256 and X-Linked-Size, and a redirect to the storage like the hub's CDN),
404s with the hub's X-Error-Code, and GET of the storage with HTTP Range. It can misbehave on request (cut a
transfer short, answer 404, an HTML page or a 503).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.server
import io
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from huggingface_hub.utils import reset_sessions
from omegaconf import OmegaConf

from llm4trx.core.config import compose
from llm4trx.core.sections import DatasetSpec
from llm4trx.core.stage import stage_dir
from llm4trx.data import fetch, synthetic
from llm4trx.data.fetch import DownloadError

ROOT = Path(__file__).resolve().parents[1]
REPO = "dllllb/rosbank-churn"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """A dataset repo `REPO` at commit COMMIT (also its branch `main`) holding `files` (path -> bytes); files
    whose name ends in .gz/.zip/.tar.gz are served like LFS files (redirect to /storage/<sha256>).
    `faults[path]` = list of behaviours for the next requests of that path: "cut" (send half the body, then
    close), "404", "html" (a web page instead of the hub's answer), "503", "drop" (close without an answer),
    "ok" (answer normally: to aim a fault at the second request)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.corrupt: dict[str, bytes] = {}  # what the storage sends instead of files[name] (same LFS pointer)
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def reply(self, status, headers, body=b"", send=True):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send and body:
                    self.wfile.write(body)

            def answer(self, body: bool):
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/storage/"):
                    return self.storage(path[len("/storage/") :], body)
                prefix = f"/datasets/{REPO}/resolve/"
                if not path.startswith(prefix):
                    return self.reply(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", body)
                revision, _, name = path[len(prefix) :].partition("/")
                if revision not in (COMMIT, "main"):
                    return self.reply(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id", body)
                fault = (hub.faults.get(name) or [None])[0]
                if fault in ("ok", "drop", "404", "html", "503"):
                    hub.faults[name].pop(0)
                    if fault == "drop":  # the connection goes away before an answer
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if fault == "404":
                        return self.reply(404, {}, b"Not Found", body)
                    if fault == "503":
                        return self.reply(503, {}, b"Service Unavailable", body)
                    if fault == "html":
                        page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
                        return self.reply(200, {"Content-Type": "text/html; charset=utf-8"}, page, body)
                if name not in hub.files:
                    return self.reply(
                        404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"Entry not found", body
                    )
                data = hub.files[name]
                sha = hashlib.sha256(data).hexdigest()
                if name.endswith((".gz", ".zip")):  # LFS: the hub redirects to its storage
                    return self.reply(
                        302,
                        {
                            "Location": f"{hub.url}/storage/{name}?sha={sha}",
                            "X-Repo-Commit": COMMIT,
                            "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": str(len(data)),
                            "ETag": '"a-git-blob-id"',
                        },
                        b"",
                        body,
                    )
                etag = hashlib.sha1(data).hexdigest()  # a regular file's ETag is its git blob id, not a sha256
                return self.reply(
                    200,
                    {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"},
                    data,
                    body,
                )

            def storage(self, name: str, body: bool):
                data, start = hub.corrupt.get(name, hub.files[name]), 0
                fault = hub.faults[name].pop(0) if hub.faults.get(name) and body else None
                headers = {"Content-Type": "application/octet-stream", "ETag": '"storage"'}
                status = 200
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                rest = data[start:]
                headers["Content-Length"] = str(len(rest))
                if fault == "cut":
                    self.reply(status, headers, rest[: len(rest) // 2], body)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.reply(status, headers, rest, body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of one object's bytes."""
        return [rng for method, path, rng in self.requests if method == "GET" and path == f"/storage/{name}"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    h = Hub()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token or cache of the user's
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    # hf_hub_download writes in 10 MB chunks, and a chunk cut short is lost: small chunks make a cut transfer of
    # these few-kB files keep a part, as a cut transfer of a real file keeps its completed chunks.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 512)
    yield h
    h.close()
    reset_sessions()


@pytest.fixture(scope="module")
def rosbank_raw(tmp_path_factory) -> Path:
    """Small rosbank-schema raw files (the synthetic generator's train.csv and test.csv)."""
    out = tmp_path_factory.mktemp("src")
    ds = compose([f"paths.output_root={out}", "dataset.n_clients=60", "dataset.max_events=30"]).dataset
    return synthetic.ensure_raw(DatasetSpec.from_config(ds))


def rosbank_cfg(hub: Hub, raw_src: Path, raw_dir: Path, *extra: str):
    """dataset=rosbank pointed (through HF_ENDPOINT) at the test hub, which serves gzip archives of `raw_src`."""
    files = []
    for name in ("train.csv", "test.csv"):
        body = gzip.compress((raw_src / name).read_bytes(), mtime=0)
        hub.files[f"{name}.gz"] = body
        files.append(
            {"path": f"{name}.gz", "file": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )
    cfg = compose(
        [
            "dataset=rosbank",
            f"dataset.raw_dir={raw_dir}",
            f"dataset.download.revision={COMMIT}",
            "dataset.download.retries=0",
            f"paths.output_root={raw_dir.parent / 'outputs'}",
            *extra,
        ]
    )
    cfg.dataset.download.files = OmegaConf.create(files)
    return cfg


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_downloaded_files_are_exactly_what_prepare_reads(hub, rosbank_raw, tmp_path):
    from llm4trx.prepare import run as prepare

    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    counts = fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert counts["downloaded"] == 2
    for name in ("train.csv", "test.csv"):
        assert (raw / name).read_bytes() == (rosbank_raw / name).read_bytes()
    assert listing(raw) == ["_DOWNLOAD.json", "test.csv", "train.csv"]  # no archives, parts or hub metadata left
    record = fetch.read_manifest(raw)["train.csv"]
    assert record["sha256"] == hashlib.sha256((rosbank_raw / "train.csv").read_bytes()).hexdigest()
    assert record["object_sha256"] == hashlib.sha256(hub.files["train.csv.gz"]).hexdigest()
    assert (record["repo"], record["commit"], record["checked_against"]) == (REPO, COMMIT, "dataset config")
    assert hub.gets("train.csv.gz") == [None]  # one transfer, through the hub's redirect to its storage

    downloaded = pq.read_table(prepare(cfg) / "events.parquet")
    direct_cfg = compose(
        ["dataset=rosbank", f"dataset.raw_dir={rosbank_raw}", f"paths.output_root={tmp_path / 'direct'}"]
    )
    direct = pq.read_table(prepare(direct_cfg) / "events.parquet")
    assert downloaded.equals(direct)

    seen = len(hub.requests)
    assert fetch.ensure(DatasetSpec.from_config(cfg.dataset))["present"] == 2  # rerun: skipped, nothing requested
    assert len(hub.requests) == seen


def test_an_interrupted_transfer_resumes_with_a_range_request(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    hub.faults["train.csv.gz"] = ["cut"]
    with pytest.raises(
        DownloadError,
        match=r"^download train.csv.gz: transfer (interrupted|ended short).*rerun to "
        "resume",
    ) as err:
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert "\n" not in str(err.value)
    assert not (raw / "train.csv").exists()  # never a half file under the loader's name
    parts = fetch.incomplete_parts(raw / fetch.PART_DIR)
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(hub.files["train.csv.gz"])
    kept = parts[0].stat().st_size
    fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert hub.gets("train.csv.gz")[-1] == f"bytes={kept}-"  # resumed, not restarted
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()
    assert listing(raw) == ["_DOWNLOAD.json", "test.csv", "train.csv"]


def test_transient_errors_are_retried_and_each_retry_resumes(hub, rosbank_raw, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw, "dataset.download.retries=2")
    hub.faults["train.csv.gz"] = ["503", "cut"]  # the metadata answer fails once, then the transfer is cut
    fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    gets = hub.gets("train.csv.gz")
    assert gets[0] is None and gets[-1].startswith("bytes=") and len(gets) == 2
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()


def test_the_network_going_away_between_the_two_metadata_requests(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    hub.faults["train.csv.gz"] = ["ok", "drop"]  # ours answers, hf_hub_download's own finds no server
    with pytest.raises(DownloadError, match=r"^download train.csv.gz: cannot reach http://127\.0\.0\.1:\d+ .*rerun$"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()


def test_a_checksum_mismatch_removes_the_file(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    cfg.dataset.download.files[0].sha256 = "0" * 64
    with pytest.raises(
        DownloadError,
        match=r"^download train.csv.gz: sha256 [0-9a-f]{64}, expected 0{64} \(dataset "
        r"config.*removed",
    ):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert not (raw / "train.csv").exists() and not (raw / fetch.PART_DIR / "train.csv.gz").exists()
    cfg.dataset.download.files[0].sha256 = hashlib.sha256(hub.files["train.csv.gz"]).hexdigest()
    fetch.ensure(DatasetSpec.from_config(cfg.dataset))  # the next run fetches it again
    assert hub.gets("train.csv.gz") == [None, None]
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()


def test_without_a_published_checksum_the_hubs_lfs_sha256_is_checked(hub, rosbank_raw, tmp_path, caplog):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    for item in cfg.dataset.download.files:
        item.size, item.sha256 = None, None
    good = hub.files["train.csv.gz"]
    real = hashlib.sha256(good).hexdigest()
    hub.corrupt["train.csv.gz"] = good[:100] + bytes([good[100] ^ 1]) + good[101:]  # one bit flipped in storage
    with pytest.raises(DownloadError, match=rf"sha256 [0-9a-f]{{64}}, expected {real} \(the hub's LFS sha256"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert not (raw / "train.csv").exists()
    del hub.corrupt["train.csv.gz"]
    fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    record = fetch.read_manifest(raw)["train.csv"]
    assert record["object_sha256"] == real
    assert record["checksum_published"] is False and record["checked_against"] == "the hub's LFS sha256"
    assert f"sha256: {real}" in caplog.text  # the line that pins it
    assert "is a branch" not in caplog.text  # the revision is a commit already


def test_a_branch_revision_records_the_commit_and_a_plain_file_is_unchecked(hub, tmp_path, caplog):
    data = b"client_id,bins\n1,0\n"
    hub.files["train_target.csv"] = data  # a regular (not LFS) file: its ETag is no sha256
    ds = OmegaConf.create(
        {
            "name": "age_pred",
            "raw_dir": str(tmp_path / "raw"),
            "download": {
                "repo": REPO,
                "revision": "main",
                "retries": 0,
                "files": [{"path": "train_target.csv", "file": "t.csv"}],
            },
        }
    )
    fetch.ensure(DatasetSpec.from_config(ds))
    assert (tmp_path / "raw/t.csv").read_bytes() == data
    record = fetch.read_manifest(tmp_path / "raw")["t.csv"]
    assert (record["revision"], record["commit"], record["checked_against"]) == ("main", COMMIT, "unchecked")
    assert "train_target.csv: sha256 unchecked" in caplog.text
    assert f"put `revision: {COMMIT}` into conf/dataset/age_pred.yaml" in caplog.text


@pytest.mark.parametrize(
    "fault, message",
    [
        (
            "404",
            r"HTTP 404 Not Found for http://127\.0\.0\.1:\d+/datasets/dllllb/rosbank-churn/resolve/0123456789abcdef"
            r"0123456789abcdef01234567/train\.csv\.gz; check dataset\.download\.endpoint",
        ),
        ("html", r"http://127\.0\.0\.1:\d+/datasets/.*/train\.csv\.gz does not answer as a Hugging Face hub"),
        ("503", r"HTTP 503 Service Unavailable for http://127\.0\.0\.1"),
    ],
)
def test_server_errors_are_one_clear_line(hub, rosbank_raw, tmp_path, fault, message):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    hub.faults["train.csv.gz"] = [fault]
    with pytest.raises(DownloadError, match=message) as err:
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert "\n" not in str(err.value)
    assert not (raw / "train.csv").exists() and not list((raw / fetch.PART_DIR).glob("train*"))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "dataset.download.revision=fedcba9876543210fedcba9876543210fedcba98",
            r"no revision 'fedcba9876543210fedcba9876543210fedcba98' in dataset repo dllllb/rosbank-churn .*HTTP 404"
            r".*check dataset\.download\.revision",
        ),
        (
            "dataset.download.repo=dllllb/no-such-repo",
            r"no dataset repo dllllb/no-such-repo on http://127\.0\.0\.1:\d+ "
            r"\(HTTP 404; a private or gated repo needs HF_TOKEN\)",
        ),
    ],
)
def test_a_repo_or_revision_the_hub_does_not_have(hub, rosbank_raw, tmp_path, override, message):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw, override)
    with pytest.raises(DownloadError, match=message):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert listing(raw) == []


def test_a_file_the_repo_does_not_have(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    cfg.dataset.download.files[0].path = "data/train.csv.gz"
    with pytest.raises(
        DownloadError,
        match=r"no file 'data/train\.csv\.gz' in dataset repo dllllb/rosbank-churn at "
        rf"revision {COMMIT} \(HTTP 404 .*check dataset\.download\.files",
    ):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))


def test_a_size_other_than_the_configs_is_refused_before_the_transfer(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    cfg.dataset.download.files[0].size += 1
    with pytest.raises(DownloadError, match=r"the hub serves \d+ bytes at revision 0123.*, the config expects \d+"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert hub.gets("train.csv.gz") == []


def test_an_html_page_without_a_content_type_is_caught_by_its_bytes(hub, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    hub.files["train.csv.gz"] = b"<!DOCTYPE html><html>not the file</html>"
    cfg.dataset.download.files[0].size = None
    cfg.dataset.download.files[0].sha256 = None
    with pytest.raises(DownloadError, match=r"not a gzip file \(it is an HTML page\)"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert not (raw / "train.csv").exists() and not (raw / fetch.PART_DIR / "train.csv.gz").exists()


def test_no_room_on_the_disk(hub, rosbank_raw, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 1000)
    with pytest.raises(DownloadError, match=r"no room on the disk for .*train\.csv: needs [\d.]+ [kM]B, 1\.0 kB free"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert not (raw / "train.csv").exists() and hub.gets("train.csv.gz") == []


def test_the_disk_filling_up_during_the_transfer(hub, rosbank_raw, tmp_path, monkeypatch):
    import huggingface_hub.file_download as hf

    def full(url, temp_file, **kwargs):  # the disk fills up after a first chunk
        temp_file.write(b"\x1f\x8b" + b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    raw = tmp_path / "raw"
    cfg = rosbank_cfg(hub, rosbank_raw, raw)
    monkeypatch.setattr(hf, "http_get", full)
    with pytest.raises(
        DownloadError,
        match=r"^download train.csv.gz: no room left on the disk while downloading into "
        r".*the part was removed: free space and rerun$",
    ):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert fetch.incomplete_parts(raw / fetch.PART_DIR) == [] and not (raw / "train.csv").exists()


def test_zip_and_tar_members(hub, tmp_path):
    data = b"client_id,bins\n1,0\n"
    zbuf, tbuf = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("data/train_target.csv", data)
    with tarfile.open(fileobj=tbuf, mode="w:gz") as t:
        info = tarfile.TarInfo("data/train_target.csv")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    hub.files["a.zip"], hub.files["b.tar.gz"] = zbuf.getvalue(), tbuf.getvalue()
    ds = OmegaConf.create(
        {
            "name": "x",
            "raw_dir": str(tmp_path / "raw"),
            "download": {
                "repo": REPO,
                "revision": COMMIT,
                "retries": 0,
                "files": [
                    {"path": "a.zip", "file": "one.csv", "member": "data/train_target.csv"},
                    {"path": "b.tar.gz", "file": "two.csv", "member": "data/train_target.csv"},
                ],
            },
        }
    )
    fetch.ensure(DatasetSpec.from_config(ds))
    assert (tmp_path / "raw/one.csv").read_bytes() == data == (tmp_path / "raw/two.csv").read_bytes()
    ds.download.files[0].member = "nope.csv"
    ds.download.files[0].file = "three.csv"
    with pytest.raises(DownloadError, match=r"no member 'nope.csv' in the archive"):
        fetch.ensure(DatasetSpec.from_config(ds))
    assert not (tmp_path / "raw/three.csv").exists()


def run_stage(tmp_path, *env: tuple[str, str]):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4trx.download",
            "dataset=rosbank",
            f"dataset.raw_dir={tmp_path / 'raw'}",
            "dataset.download.retries=0",
            f"paths.output_root={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "source"), "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"), **dict(env)},
    )


def one_error(proc) -> str:
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    return errors[0]


def test_without_network_the_stage_prints_one_line_and_exits_non_zero(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_stage(tmp_path, ("HF_ENDPOINT", f"http://127.0.0.1:{port}"))
    assert f"download train.csv.gz: cannot connect to http://127.0.0.1:{port}" in one_error(proc)
    assert not (tmp_path / "raw" / "train.csv").exists()


def test_offline_mode_says_so(hub, rosbank_raw, tmp_path, monkeypatch):
    cfg = rosbank_cfg(hub, rosbank_raw, tmp_path / "raw")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, read at import
    reset_sessions()  # the offline adapter is mounted when a session is made
    with pytest.raises(
        DownloadError,
        match=r"^download train.csv.gz: HF_HUB_OFFLINE is set, so nothing can be "
        "downloaded; unset it",
    ):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert hub.requests == []


def test_a_dataset_without_a_public_source_says_so(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path}"])
    with pytest.raises(DownloadError, match="no `dataset.download` section"):
        fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    assert stage_dir(compose(["dataset=rosbank", f"dataset.raw_dir={tmp_path}"]), "download") == tmp_path
