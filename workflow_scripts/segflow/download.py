"""Resumable, verified HTTP downloads (stdlib only) and the manifests that say what a file should look like.

``fetch`` streams a URL into ``<dest>.part`` and renames it onto ``dest`` only once every check has passed, so a
file at ``dest`` is always complete. What happens on each fault (see also docs/data_sources.md):

* connection refused/reset, dropped mid-transfer, read stall longer than ``timeout``, HTTP 5xx/429: retried with
  exponential backoff; the partial file is kept and the next request asks for the rest (``Range: bytes=N-``). A
  server that answers 200 instead of 206 sends the whole file again, and the partial file starts over;
* HTTP 404/403/401/410 and other 4xx: no retry (the answer will not change); one-line ``SourceError`` naming the
  URL and what to check;
* a finished file of the wrong size, with the wrong SHA-256 or (for ``.gz``) a gzip stream that does not
  decompress to its end: the partial file is deleted. If the file had been resumed, it is downloaded once more from
  zero (the remote file may have changed between the two halves); otherwise it is an error.

Manifests (``read_manifest``) map a file name relative to the data root or base URL to its size and/or SHA-256.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from segflow.sources import SourceError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # at most 1 MiB per read and write
MAX_BACKOFF = 60.0  # seconds; beyond this a retry is better left to Snakemake's job-level retries
LOG_INTERVAL = 15.0  # seconds between progress lines when stderr is not a terminal (rule log files)
USER_AGENT = "segflow (python-urllib)"
NOT_FOUND_CODES = {404, 410}
DENIED_CODES = {401, 403}
RETRY_CODES = {408, 425, 429}  # plus every 5xx

Progress = Callable[[int, "int | None"], None]


class _Retry(Exception):
    """A transient failure: worth another attempt after a pause (at least ``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


class _Restart(Exception):
    """The partial file is unusable (stale or corrupt after a resume): start again from zero, without pausing."""


@dataclass(frozen=True)
class ManifestEntry:
    size: int | None = None
    sha256: str | None = None


# --- fetch --------------------------------------------------------------------------------------------------------


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: Progress | bool | None = None,
    hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming, retrying, verifying); return ``dest``.

    ``retries`` is the number of further attempts after the first. ``timeout`` bounds the connection and every
    single read, so a stalled server is noticed after ``timeout`` seconds. The pause before retry k is
    ``backoff * 2**(k-1)`` seconds (at most ``MAX_BACKOFF``). ``progress``: ``None`` shows a bar on a terminal and
    periodic log lines otherwise, ``False`` nothing, or a callable ``(bytes_so_far, total_or_None)``. ``hint`` is
    added to the error for a missing or forbidden URL (which config key to check).
    On failure ``dest`` is untouched and a ``SourceError`` says what went wrong.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    expected_sha = sha256.lower() if sha256 else None
    attempts = 1 + max(0, int(retries))
    restarted = False
    last_error = "no attempt made"
    attempt = 0
    while attempt < attempts:
        attempt += 1
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, size=size, timeout=timeout, progress=progress, name=dest.name, hint=hint)
            _verify(part, name=url, size=size, sha256=expected_sha, check_gzip=dest.name.endswith(".gz"))
        except _Restart as error:
            part.unlink(missing_ok=True)
            last_error = str(error)
            log.warning("%s: %s; starting again from zero", url, error)
            continue
        except _Retry as error:
            last_error = str(error)
            if attempt < attempts:
                delay = min(max(backoff * 2 ** (attempt - 1), error.retry_after), MAX_BACKOFF)
                log.warning("%s: %s (attempt %d of %d); retrying in %.1f s", url, error, attempt, attempts, delay)
                time.sleep(delay)
            continue
        except IntegrityError as error:
            part.unlink(missing_ok=True)  # complete but wrong: resuming from it could never help
            if resumed_from > 0 and not restarted:
                # A resumed file may be two versions of the remote file spliced together: one clean try from zero.
                restarted = True
                attempt -= 1
                log.warning("%s after resuming; downloading again from zero", error)
                continue
            raise
        os.replace(part, dest)
        log.info("downloaded %s -> %s (%s)", url, dest, _human(dest.stat().st_size))
        return dest
    kept = f"; partial file kept at {part}, rerun to resume" if part.exists() else ""
    raise SourceError(f"download of {url} failed after {attempts} attempts: {last_error}{kept}")


def partial_path(dest: str | os.PathLike) -> Path:
    """Where ``fetch`` keeps an unfinished download of ``dest`` (between attempts and between runs)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _transfer(url, part: Path, *, size, timeout, progress, name, hint) -> None:
    """One request: append to ``part`` from its current size (or rewrite it); raise _Retry/_Restart/SourceError."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        raise _Restart(f"partial file has {offset} bytes, more than the expected {size}")
    if size is not None and offset == size and offset > 0:
        return  # finished by an earlier attempt that then failed in verification or renaming: just verify
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        _raise_for_status(url, error.code, error.reason, offset, hint, error.headers)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Retry(_describe_network_error(error, timeout)) from None
    except ValueError as error:  # malformed URL: retrying cannot help
        raise SourceError(f"{url!r} is not a valid URL ({error}); {hint or 'check the URL in the config'}") from None
    with response:
        offset, total = _start_position(response, offset)
        log.info("fetching %s%s", url, f" from byte {offset}" if offset else "")
        mode = "ab" if offset else "wb"
        received = offset
        meter = _Meter(name, total, progress, start=offset)
        try:
            with open(part, mode) as out:
                while True:
                    # read1: whatever has arrived (up to CHUNK). read() would wait for a full chunk, and a stall
                    # mid-chunk would then lose everything received since the last write.
                    chunk = response.read1(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    meter.update(received)
        except (OSError, http.client.HTTPException) as error:  # timeouts, resets; the bytes so far are kept
            raise _Retry(f"{_describe_network_error(error, timeout)} after {_human(received)}") from None
        finally:
            meter.close(received)
    if total is not None and received < total:
        # http.client returns b"" on an early close instead of raising: compare with the announced length.
        raise _Retry(f"connection closed after {_human(received)} of {_human(total)}")
    if total is not None and received > total:
        raise _Restart(f"server sent {received} bytes but announced {total}")


def _raise_for_status(url, code, reason, offset, hint, headers):
    if code == 416 and offset:
        raise _Restart("server refused to resume (HTTP 416)")
    if code in RETRY_CODES or code >= 500:
        retry_after = str((headers or {}).get("Retry-After", ""))
        raise _Retry(f"HTTP {code} {reason}", float(retry_after) if retry_after.isdigit() else 0.0)
    if code in NOT_FOUND_CODES:
        advice = hint or "check the base URL in the config and the case id"
        raise SourceError(f"{url}: HTTP {code} {reason}; {advice}")
    if code in DENIED_CODES:
        advice = hint or "check the base URL in the config"
        raise SourceError(
            f"{url}: HTTP {code} {reason} (access denied); the host may need a login or accepted terms of use; {advice}"
        )
    raise SourceError(f"{url}: HTTP {code} {reason}; {hint or 'check the URL in the config'}")


def _start_position(response, offset: int) -> tuple[int, int | None]:
    """Where the body starts in the file and the full size, from the status and headers of the response."""
    status = getattr(response, "status", None) or response.getcode()
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset and status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise _Restart(f"server answered the range request with {response.headers.get('Content-Range')!r}")
        total = int(match.group(3)) if match.group(3) != "*" else None
        return offset, total
    if offset:
        log.info("server does not resume (HTTP %s to a range request); downloading from zero", status)
    return 0, length


def _describe_network_error(error: BaseException, timeout: float) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
        return f"no data for {timeout:g} s (timed out)"
    if isinstance(error, http.client.IncompleteRead):
        return "connection closed early"
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


# --- verification -------------------------------------------------------------------------------------------------


class IntegrityError(SourceError):
    """A complete file that is not the expected one (size, checksum, gzip stream)."""


def _verify(path: Path, *, name: str, size: int | None, sha256: str | None, check_gzip: bool) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise IntegrityError(f"{name}: size is {actual_size} bytes, expected {size}")
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256:
            raise IntegrityError(f"{name}: SHA-256 is {digest}, expected {sha256}")
    if check_gzip:
        problem = gzip_problem(path)
        if problem:
            raise IntegrityError(f"{name}: damaged gzip file ({problem})")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def gzip_problem(path: str | os.PathLike) -> str | None:
    """Decompress the whole file (discarding the output); return what is wrong, or ``None`` if it is intact.

    Reading to the end is the only way to catch a file that stops early: the header of a truncated gzip is fine.
    """
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError; truncation raises EOFError
        return f"{type(error).__name__}: {error}"
    return None


def verify_file(path: str | os.PathLike, entry: ManifestEntry | None, name: str | None = None) -> None:
    """Check a local file against its manifest entry (no-op without one); raise ``IntegrityError`` if it differs."""
    if entry is None:
        return
    _verify(Path(path), name=name or str(path), size=entry.size, sha256=entry.sha256, check_gzip=False)


# --- progress -----------------------------------------------------------------------------------------------------


class _Meter:
    """A one-line bar on a terminal; a log line every LOG_INTERVAL seconds otherwise; or a user callback."""

    def __init__(self, name: str, total: int | None, progress: Progress | bool | None, start: int = 0):
        self.name, self.total, self.start, self.callback = name, total, start, None
        self.started = self.last = time.monotonic()
        self.tty = False
        if callable(progress):
            self.callback = progress
        elif progress is None:
            self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled = progress is not False

    def update(self, received: int) -> None:
        if not self.enabled:
            return
        if self.callback:
            self.callback(received, self.total)
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else LOG_INTERVAL):
            return
        self.last = now
        if self.tty:
            sys.stderr.write("\r" + self._line(received, now))
            sys.stderr.flush()
        else:
            log.info("%s", self._line(received, now))

    def close(self, received: int) -> None:
        if self.tty and self.enabled:
            sys.stderr.write("\r" + self._line(received, time.monotonic()) + "\n")
            sys.stderr.flush()

    def _line(self, received: int, now: float) -> str:
        rate = (received - self.start) / max(now - self.started, 1e-6)  # this request's speed, not the resumed bytes
        if self.total:
            fraction = min(received / self.total, 1.0)
            bar = "#" * int(fraction * 30)
            return f"{self.name} [{bar:<30}] {fraction:4.0%} {_human(received)}/{_human(self.total)} {_human(rate)}/s"
        return f"{self.name} {_human(received)} {_human(rate)}/s"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- manifests ----------------------------------------------------------------------------------------------------

MANIFEST_NAMES = ("manifest.tsv", "manifest.json", "MANIFEST.tsv", "MANIFEST.json", "SHA256SUMS")
_NAME_COLUMNS = ("path", "name", "file", "filename")
_SIZE_COLUMNS = ("size", "bytes")
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def read_manifest(path: str | os.PathLike) -> dict[str, ManifestEntry]:
    """Read a manifest: relative file name -> ``ManifestEntry(size, sha256)``.

    Formats: JSON, either ``{name: {"size": .., "sha256": ..}}`` or a list of objects with a ``path`` (or ``name``)
    key; TSV (or CSV) with a header naming a ``path``/``name``/``file`` column and ``size``/``bytes`` and/or
    ``sha256`` columns; or ``sha256sum`` output (``<hex>  <name>`` lines). Names use ``/`` and no leading ``./``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SourceError(f"cannot read manifest {path}: {error.strerror or error}") from None
    try:
        if path.suffix.lower() == ".json":
            return _manifest_from_json(json.loads(text))
        first = next((line for line in text.splitlines() if line.strip()), "")
        if _SHA_LINE.match(first):
            return _manifest_from_sha256sums(text)
        return _manifest_from_table(text)
    except (ValueError, KeyError, TypeError) as error:
        raise SourceError(f"manifest {path} is malformed: {error}") from None


def find_manifest(dataset: dict, data_dir: str | os.PathLike | None = None) -> Path | None:
    """``dataset.manifest`` when set (it must exist), else a manifest file sitting in ``data_dir``, else None."""
    configured = dataset.get("manifest")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise SourceError(f"dataset.manifest {path} does not exist; fix the path or remove the key")
        return path
    if data_dir is not None and Path(data_dir).is_dir():
        for name in MANIFEST_NAMES:
            candidate = Path(data_dir) / name
            if candidate.is_file():
                return candidate
    return None


def load_manifest(dataset: dict, data_dir: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """The manifest that applies to ``dataset`` (see ``find_manifest``), or an empty mapping."""
    path = find_manifest(dataset, data_dir)
    if path is None:
        return {}
    entries = read_manifest(path)
    log.info("manifest %s: %d files", path, len(entries))
    return entries


def manifest_checks(manifest: dict[str, ManifestEntry], name: str) -> dict:
    """``fetch`` keyword arguments (size, sha256) for ``name``; empty when the manifest does not list it."""
    entry = manifest.get(normalise_name(name))
    return {"size": entry.size, "sha256": entry.sha256} if entry else {}


def normalise_name(name: str) -> str:
    name = str(name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _entry(size, sha256) -> ManifestEntry:
    size = int(size) if size not in (None, "") else None
    sha256 = str(sha256).strip().lower() if sha256 not in (None, "") else None
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return ManifestEntry(size=size, sha256=sha256)


def _manifest_from_json(data) -> dict[str, ManifestEntry]:
    if isinstance(data, dict):
        return {normalise_name(k): _entry(v.get("size"), v.get("sha256")) for k, v in data.items()}
    entries = {}
    for item in data:
        name = next(item[key] for key in _NAME_COLUMNS if key in item)
        entries[normalise_name(name)] = _entry(item.get("size", item.get("bytes")), item.get("sha256"))
    return entries


def _manifest_from_table(text: str) -> dict[str, ManifestEntry]:
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = csv.DictReader(io.StringIO(text), dialect=dialect)
    fields = {f.strip().lower(): f for f in rows.fieldnames or []}
    name_col = next((fields[c] for c in _NAME_COLUMNS if c in fields), None)
    size_col = next((fields[c] for c in _SIZE_COLUMNS if c in fields), None)
    sha_col = fields.get("sha256")
    if name_col is None or (size_col is None and sha_col is None):
        raise ValueError(f"header {list(fields)} needs a path column and a size and/or sha256 column")
    entries = {}
    for row in rows:
        if row.get(name_col):
            size = row.get(size_col) if size_col else None
            entries[normalise_name(row[name_col])] = _entry(size, row.get(sha_col) if sha_col else None)
    return entries


def _manifest_from_sha256sums(text: str) -> dict[str, ManifestEntry]:
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SHA_LINE.match(line.strip())
        if not match:
            raise ValueError(f"line {number} is not '<sha256>  <name>': {line[:80]!r}")
        entries[normalise_name(match.group(2))] = _entry(None, match.group(1))
    return entries
