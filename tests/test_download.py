"""Stage `download` (llm4trx.data.fetch) against a local HTTP server on 127.0.0.1 serving archives built here.

Nothing leaves the machine: `dataset.download.base_url` points at the test's own server, which supports HTTP
Range and can misbehave on request (cut a transfer short, answer 404 or an HTML page).
"""

from __future__ import annotations

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
from omegaconf import OmegaConf

from llm4trx.core.config import compose
from llm4trx.core.stage import stage_dir
from llm4trx.data import fetch, synthetic
from llm4trx.data.fetch import DownloadError

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """Serves `files` (path -> bytes) with Range support; `faults[path]` = list of behaviours for the next
    requests of that path: "cut" (send half the body, then close), "404", "html"."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path.startswith("/hub/"):  # like the hub's resolve URLs: a redirect to the storage
                    self.send_response(302)
                    self.send_header("Location", path[len("/hub"):] + "?signed=1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.requests.append((path, self.headers.get("Range")))
                fault = server.faults.get(path, []).pop(0) if server.faults.get(path) else None
                if fault == "404" or path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                if fault == "html":
                    body = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start = server.files[path], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if fault == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def rosbank_raw(tmp_path_factory) -> Path:
    """Small rosbank-schema raw files (the synthetic generator's train.csv and test.csv)."""
    out = tmp_path_factory.mktemp("src")
    ds = compose([f"paths.output_root={out}", "dataset.n_clients=60", "dataset.max_events=30"]).dataset
    return synthetic.ensure_raw(ds)


def rosbank_cfg(server: Server, raw_src: Path, raw_dir: Path, *extra: str):
    """dataset=rosbank pointed at the test server, which serves gzip archives of `raw_src`'s files."""
    files = []
    for name in ("train.csv", "test.csv"):
        body = gzip.compress((raw_src / name).read_bytes(), mtime=0)
        server.files[f"/{name}.gz"] = body
        files.append({"url": f"{name}.gz", "file": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    cfg = compose(["dataset=rosbank", f"dataset.raw_dir={raw_dir}", f"dataset.download.base_url={server.url}",
                   "dataset.download.retries=0", f"paths.output_root={raw_dir.parent / 'outputs'}", *extra])
    cfg.dataset.download.files = OmegaConf.create(files)
    return cfg


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_downloaded_files_are_exactly_what_prepare_reads(server, rosbank_raw, tmp_path):
    from llm4trx.prepare import run as prepare

    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    counts = fetch.ensure(cfg.dataset)
    assert counts["downloaded"] == 2
    for name in ("train.csv", "test.csv"):
        assert (raw / name).read_bytes() == (rosbank_raw / name).read_bytes()
    assert listing(raw) == ["_DOWNLOAD.json", "test.csv", "train.csv"]  # no archives, parts or temporaries left
    manifest = fetch.read_manifest(raw)
    assert manifest["train.csv"]["sha256"] == hashlib.sha256((rosbank_raw / "train.csv").read_bytes()).hexdigest()
    assert manifest["train.csv"]["checksum_published"] is True

    downloaded = pq.read_table(prepare(cfg) / "events.parquet")
    direct_cfg = compose(["dataset=rosbank", f"dataset.raw_dir={rosbank_raw}", f"paths.output_root={tmp_path / 'direct'}"])
    direct = pq.read_table(prepare(direct_cfg) / "events.parquet")
    assert downloaded.equals(direct)

    seen = len(server.requests)
    assert fetch.ensure(cfg.dataset)["present"] == 2  # rerun: skipped, nothing requested
    assert len(server.requests) == seen


def test_an_interrupted_transfer_resumes_with_a_range_request(server, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    server.faults["/train.csv.gz"] = ["cut"]
    with pytest.raises(DownloadError, match=r"train.csv.gz: transfer (interrupted|ended).*rerun to resume"):
        fetch.ensure(cfg.dataset)
    assert not (raw / "train.csv").exists()  # never a half file under the loader's name
    part = raw / fetch.PART_DIR / "train.csv.gz.part"
    assert 0 < part.stat().st_size < len(server.files["/train.csv.gz"])
    kept = part.stat().st_size
    fetch.ensure(cfg.dataset)
    assert ("/train.csv.gz", f"bytes={kept}-") in server.requests  # resumed, not restarted
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()
    assert listing(raw) == ["_DOWNLOAD.json", "test.csv", "train.csv"]


def test_resuming_through_a_redirect_like_the_hubs(server, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    cfg.dataset.download.base_url = f"{server.url}/hub"
    server.faults["/train.csv.gz"] = ["cut"]
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch.ensure(cfg.dataset)
    kept = (raw / fetch.PART_DIR / "train.csv.gz.part").stat().st_size
    fetch.ensure(cfg.dataset)
    assert ("/train.csv.gz", f"bytes={kept}-") in server.requests  # the Range header survives the redirect
    assert (raw / "train.csv").read_bytes() == (rosbank_raw / "train.csv").read_bytes()


def test_a_checksum_mismatch_removes_the_file(server, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    cfg.dataset.download.files[0].sha256 = "0" * 64
    with pytest.raises(DownloadError, match=r"^download train.csv.gz: sha256 [0-9a-f]{64}, expected 0{64}.*removed"):
        fetch.ensure(cfg.dataset)
    assert not (raw / "train.csv").exists() and not list((raw / fetch.PART_DIR).glob("train*"))


@pytest.mark.parametrize("fault, message", [
    ("404", r"HTTP 404 Not Found for http://127\.0\.0\.1:\d+/train\.csv\.gz; check dataset\.download\.base_url"),
    ("html", r"answered with an HTML page \(text/html"),
])
def test_server_errors_are_one_clear_line(server, rosbank_raw, tmp_path, fault, message):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    server.faults["/train.csv.gz"] = [fault]
    with pytest.raises(DownloadError, match=message) as err:
        fetch.ensure(cfg.dataset)
    assert "\n" not in str(err.value)
    assert not (raw / "train.csv").exists() and not list((raw / fetch.PART_DIR).glob("train*"))


def test_an_html_page_without_a_content_type_is_caught_by_its_bytes(server, rosbank_raw, tmp_path):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    page = b"<!DOCTYPE html><html>not the file</html>"
    server.files["/train.csv.gz"] = page
    cfg.dataset.download.files[0].size = None
    cfg.dataset.download.files[0].sha256 = None
    with pytest.raises(DownloadError, match=r"not a gzip file \(it is an HTML page\)"):
        fetch.ensure(cfg.dataset)
    assert not (raw / "train.csv").exists()


def test_no_room_on_the_disk(server, rosbank_raw, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 1000)
    with pytest.raises(DownloadError, match=r"no room on the disk for .*train\.csv: needs [\d.]+ [kM]B, 1\.0 kB free"):
        fetch.ensure(cfg.dataset)
    assert not (raw / "train.csv").exists() and not list((raw / fetch.PART_DIR).glob("train*"))


def test_unpublished_checksums_are_recorded_at_the_first_download(server, rosbank_raw, tmp_path, caplog):
    raw = tmp_path / "raw"
    cfg = rosbank_cfg(server, rosbank_raw, raw)
    for item in cfg.dataset.download.files:
        item.size, item.sha256 = None, None
    fetch.ensure(cfg.dataset)
    record = fetch.read_manifest(raw)["train.csv"]
    assert record["object_sha256"] == hashlib.sha256(server.files["/train.csv.gz"]).hexdigest()
    assert record["checksum_published"] is False
    assert f"sha256: {record['object_sha256']}" in caplog.text


def test_zip_and_tar_members(server, tmp_path):
    data = b"client_id,bins\n1,0\n"
    zbuf, tbuf = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("data/train_target.csv", data)
    with tarfile.open(fileobj=tbuf, mode="w:gz") as t:
        info = tarfile.TarInfo("data/train_target.csv")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    server.files["/a.zip"], server.files["/b.tar.gz"] = zbuf.getvalue(), tbuf.getvalue()
    ds = OmegaConf.create({"name": "x", "raw_dir": str(tmp_path / "raw"), "download": {
        "base_url": server.url, "retries": 0, "files": [
            {"url": "a.zip", "file": "one.csv", "member": "data/train_target.csv"},
            {"url": "b.tar.gz", "file": "two.csv", "member": "data/train_target.csv"}]}})
    fetch.ensure(ds)
    assert (tmp_path / "raw/one.csv").read_bytes() == data == (tmp_path / "raw/two.csv").read_bytes()
    ds.download.files[0].member = "nope.csv"
    ds.download.files[0].file = "three.csv"
    with pytest.raises(DownloadError, match=r"no member 'nope.csv' in the archive"):
        fetch.ensure(ds)
    assert not (tmp_path / "raw/three.csv").exists()


def test_without_network_the_stage_prints_one_line_and_exits_non_zero(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "llm4trx.download", "dataset=rosbank", f"dataset.raw_dir={tmp_path / 'raw'}",
         f"dataset.download.base_url=http://127.0.0.1:{port}", "dataset.download.retries=0",
         f"paths.output_root={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={"PYTHONPATH": str(ROOT / "source"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "error" in line]
    assert len(errors) == 1 and "download train.csv.gz: cannot connect to http://127.0.0.1" in errors[0], proc.stderr
    assert not (tmp_path / "raw" / "train.csv").exists()


def test_a_dataset_without_a_public_source_says_so(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path}"])
    with pytest.raises(DownloadError, match="no `dataset.download` section"):
        fetch.ensure(cfg.dataset)
    assert stage_dir(compose(["dataset=rosbank", f"dataset.raw_dir={tmp_path}"]), "download") == tmp_path
