"""fetch() against a local fault-injecting HTTP server: resume, retries, verification, clean failure."""

import gzip
import hashlib
import json
import logging
import os

import pytest
from http_server import FaultServer

from segflow.download import (
    ManifestEntry,
    fetch,
    find_manifest,
    gzip_problem,
    manifest_checks,
    partial_path,
    read_manifest,
    verify_file,
)
from segflow.sources import SourceError

FAST = {"retries": 3, "timeout": 2.0, "backoff": 0.01, "progress": False}
PAYLOAD = os.urandom(300_000)  # several reads, so drops and stalls can happen mid-body


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    (root / "volume.nii.gz").write_bytes(gzip.compress(PAYLOAD))
    with FaultServer(root) as srv:
        yield srv


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(dest):
    return [p.name for p in dest.parent.iterdir()] if dest.parent.exists() else []


def test_normal_download(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    result = fetch(server.url("data.bin"), dest, sha256=sha(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert result == dest and dest.read_bytes() == PAYLOAD
    assert leftovers(dest) == ["data.bin"]  # no partial file left behind
    assert server.requests_for("data.bin")[0].headers.get("Range") is None


def test_404_is_one_clear_error_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "out" / "missing.nii.gz"
    with pytest.raises(SourceError) as error:
        fetch(server.url("missing.nii.gz"), dest, hint="check dataset.imaging_base_url", **FAST)
    message = str(error.value)
    assert "\n" not in message and "404" in message
    assert server.url("missing.nii.gz") in message and "dataset.imaging_base_url" in message
    assert leftovers(dest) == []
    assert len(server.requests_for("missing.nii.gz")) == 1  # a missing file is not retried


def test_403_names_access(server, tmp_path):
    server.fail("data.bin", "status", code=403, times=None)
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(SourceError, match=r"403.*access denied"):
        fetch(server.url("data.bin"), dest, **FAST)
    assert not dest.exists() and not partial_path(dest).exists()
    assert len(server.requests_for("data.bin")) == 1


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.fail("data.bin", "drop", after_bytes=100_000)
    dest = tmp_path / "out" / "data.bin"
    fetch(server.url("data.bin"), dest, sha256=sha(PAYLOAD), **FAST)
    first, second = server.requests_for("data.bin")
    assert first.fault == "drop" and "Range" not in first.headers
    assert second.headers["Range"] == "bytes=100000-" and second.status == 206
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    dest.parent.mkdir()
    partial_path(dest).write_bytes(PAYLOAD[:123_456])
    fetch(server.url("data.bin"), dest, size=len(PAYLOAD), **FAST)
    assert server.requests_for("data.bin")[0].headers["Range"] == "bytes=123456-"
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.fail("data.bin", "drop", after_bytes=50_000)
    server.fail("data.bin", "no_range")
    dest = tmp_path / "out" / "data.bin"
    fetch(server.url("data.bin"), dest, **FAST)
    assert [r.status for r in server.requests_for("data.bin")][1] == 200
    assert dest.read_bytes() == PAYLOAD  # the 50 kB already there were overwritten, not duplicated


def test_mismatched_content_range_restarts(server, tmp_path):
    server.fail("data.bin", "drop", after_bytes=50_000)
    server.fail("data.bin", "wrong_range")
    dest = tmp_path / "out" / "data.bin"
    fetch(server.url("data.bin"), dest, **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_sha256_leaves_no_file_and_no_partial(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(SourceError, match="SHA-256") as error:
        fetch(server.url("data.bin"), dest, sha256="0" * 64, **FAST)
    assert "\n" not in str(error.value)
    assert leftovers(dest) == []


def test_wrong_size_is_an_error(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(SourceError, match=f"size is {len(PAYLOAD)} bytes, expected 1000"):
        fetch(server.url("data.bin"), dest, size=1000, **FAST)
    assert leftovers(dest) == []


def test_corrupt_after_resume_is_downloaded_again_from_zero(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    dest.parent.mkdir()
    partial_path(dest).write_bytes(b"x" * 1000)  # stale bytes from another version of the file
    fetch(server.url("data.bin"), dest, sha256=sha(PAYLOAD), **FAST)
    ranges = [r.headers.get("Range") for r in server.requests_for("data.bin")]
    assert ranges == ["bytes=1000-", None]
    assert dest.read_bytes() == PAYLOAD


def test_stall_times_out_then_resumes(server, tmp_path):
    server.fail("data.bin", "stall", after_bytes=20_000, seconds=3)
    dest = tmp_path / "out" / "data.bin"
    fetch(server.url("data.bin"), dest, **{**FAST, "timeout": 0.3})
    assert server.requests_for("data.bin")[1].headers["Range"] == "bytes=20000-"
    assert dest.read_bytes() == PAYLOAD


def test_stall_every_time_fails_with_clear_error(server, tmp_path):
    server.fail("data.bin", "stall", times=None, seconds=3)
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(SourceError) as error:
        fetch(server.url("data.bin"), dest, **{**FAST, "retries": 1, "timeout": 0.3})
    message = str(error.value)
    assert "failed after 2 attempts" in message and "timed out" in message and "\n" not in message
    assert not dest.exists()
    assert len(server.requests_for("data.bin")) == 2


def test_5xx_is_retried(server, tmp_path):
    server.fail("data.bin", "status", code=500, times=2)
    dest = tmp_path / "out" / "data.bin"
    fetch(server.url("data.bin"), dest, **FAST)
    assert [r.status for r in server.requests_for("data.bin")] == [500, 500, 200]
    assert dest.read_bytes() == PAYLOAD


def test_5xx_every_time_gives_up(server, tmp_path):
    server.fail("data.bin", "status", code=503, times=None)
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(SourceError, match=r"failed after 4 attempts: HTTP 503"):
        fetch(server.url("data.bin"), dest, **FAST)
    assert leftovers(dest) == []


def test_truncated_gzip_is_caught(server, tmp_path):
    server.fail("volume.nii.gz", "truncate_gzip", times=None)
    dest = tmp_path / "out" / "volume.nii.gz"
    with pytest.raises(SourceError, match="damaged gzip"):
        fetch(server.url("volume.nii.gz"), dest, **FAST)
    assert leftovers(dest) == []


def test_intact_gzip_passes(server, tmp_path):
    dest = tmp_path / "out" / "volume.nii.gz"
    fetch(server.url("volume.nii.gz"), dest, **FAST)
    assert gzip.decompress(dest.read_bytes()) == PAYLOAD


def test_connection_refused_is_retried_then_fails(tmp_path):
    with FaultServer(tmp_path) as srv:
        url = srv.url("gone.bin")
    with pytest.raises(SourceError, match="failed after 2 attempts"):
        fetch(url, tmp_path / "gone.bin", **{**FAST, "retries": 1})


def test_progress_callback_and_log_lines(server, tmp_path, caplog):
    seen = []

    def report(done, total):
        seen.append((done, total))

    fetch(server.url("data.bin"), tmp_path / "a.bin", **{**FAST, "progress": report})
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    with caplog.at_level(logging.INFO, logger="segflow.download"):
        fetch(server.url("data.bin"), tmp_path / "b.bin", **{**FAST, "progress": None})
    assert any("downloaded" in r.getMessage() for r in caplog.records)


# --- manifests ----------------------------------------------------------------------------------------------------


def test_manifest_formats(tmp_path):
    digest = sha(b"abc")
    tsv = tmp_path / "manifest.tsv"
    tsv.write_text(f"path\tsize\tsha256\n./images/case_00000.nii.gz\t3\t{digest}\nother.bin\t7\t\n")
    entries = read_manifest(tsv)
    assert entries["images/case_00000.nii.gz"] == ManifestEntry(3, digest)
    assert entries["other.bin"] == ManifestEntry(7, None)
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps({"a/b.nii.gz": {"size": 3, "sha256": digest.upper()}}))
    assert read_manifest(as_json)["a/b.nii.gz"] == ManifestEntry(3, digest)
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps([{"path": "x.nii.gz", "bytes": 5}]))
    assert read_manifest(as_list) == {"x.nii.gz": ManifestEntry(5, None)}
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{digest}  dir/x.nii.gz\n{digest} *y.nii.gz\n")
    assert set(read_manifest(sums)) == {"dir/x.nii.gz", "y.nii.gz"}
    assert manifest_checks(entries, "images/case_00000.nii.gz") == {"size": 3, "sha256": digest}
    assert manifest_checks(entries, "not/listed.nii.gz") == {}


def test_malformed_manifest_is_one_line_error(tmp_path):
    bad = tmp_path / "manifest.tsv"
    bad.write_text("name\tcolour\nx\tred\n")
    with pytest.raises(SourceError, match="manifest .* is malformed"):
        read_manifest(bad)


def test_find_manifest_config_then_next_to_data(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    assert find_manifest({}, tmp_path) == tmp_path / "manifest.json"
    assert find_manifest({}, tmp_path / "nowhere") is None
    with pytest.raises(SourceError, match="dataset.manifest"):
        find_manifest({"manifest": str(tmp_path / "missing.tsv")}, tmp_path)


def test_verify_file_and_gzip_problem(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"hello" * 1000))
    verify_file(path, ManifestEntry(path.stat().st_size, sha(path.read_bytes())))
    verify_file(path, None)  # not in the manifest: nothing to check
    with pytest.raises(SourceError, match="SHA-256"):
        verify_file(path, ManifestEntry(None, "1" * 64))
    assert gzip_problem(path) is None
    path.write_bytes(path.read_bytes()[:-20])
    assert "EOFError" in gzip_problem(path)
