"""The data of the studies: where it lives, how it is downloaded, verified and extracted.

A study file lists its data under ``data:``; each entry names the ``path`` in the
data folder that its recipes' ``data.root`` refers to, the official ``url``, the
published file's ``md5`` and, for an archive, the ``archive`` file name it is
kept under in the data folder (it is extracted into ``path``).

The data folder is ``--data-dir``, else ``$MEDVOL_DATA``, else the per-user
cache folder (``~/.cache/medvol/data`` on Linux, from ``platformdirs``).

- A file already there is checked against its MD5 once: the check is recorded
  in ``.medvol-verified.json`` in the data folder with the file's size and
  modification time, and repeated only when either changes. A file with
  another MD5 is refused, naming both checksums; medvol never deletes it.
- A missing file is streamed to ``NAME.part``, resumed with an HTTP Range
  request when the transfer breaks (also in a later run), checked, then
  renamed into place.
- An archive is extracted into a hidden folder beside ``path`` (members that
  would leave it, links and device files are refused), then renamed to
  ``path``, with a record ``.medvol-extracted.json`` of the archive it came from.
- A folder at ``path`` without that record (copied or extracted by hand) cannot
  be verified: it is used as it is, with a warning.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medvol.errors import MedvolError
from medvol.io.atomic import process_alive, write_json
from medvol.logs import Progress, get_logger

logger = get_logger(__name__)

DATA_ENV = "MEDVOL_DATA"
"""The environment variable that names the data folder when ``--data-dir`` is not given."""
RECORD = ".medvol-verified.json"
EXTRACTED = ".medvol-extracted.json"
CHUNK = 1 << 20
ATTEMPTS = 5
"""Transfers of one download; each must receive bytes, or the download gives up."""
TIMEOUT_S = 60.0
_MD5 = re.compile(r"[0-9a-f]{32}")
_KEYS = {"path", "url", "md5", "archive"}


@dataclass(frozen=True)
class Source:
    """One entry of a study's ``data:`` list."""

    path: str  # in the data folder: the file, or the folder an archive is extracted into
    url: str
    md5: str  # of the file at ``url``
    archive: str | None = None  # the archive's file name in the data folder


@dataclass(frozen=True)
class Fetched:
    """A source, where it is, and whether its content was verified against the published MD5."""

    source: Source
    location: Path
    verified: bool


def parse_sources(entries: Any, study: Path) -> list[Source]:
    """The ``data:`` list of a study file, checked.

    Raises:
        MedvolError: not a list of mappings with ``path``, ``url`` and ``md5``;
            a path that leaves the data folder; an MD5 that is not 32 hex digits.
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MedvolError(study, "data: should be a list of {path, url, md5, archive (optional)}")
    sources = []
    for number, entry in enumerate(entries, 1):
        where = f"data entry {number}"
        if not isinstance(entry, dict) or not {"path", "url", "md5"} <= set(entry):
            raise MedvolError(study, f"{where} needs path, url and md5")
        if set(entry) - _KEYS:
            raise MedvolError(study, f"{where}: unknown key(s) {', '.join(sorted(set(entry) - _KEYS))}")
        path, archive = PurePosixPath(str(entry["path"])), entry.get("archive")
        if path.is_absolute() or ".." in path.parts:
            raise MedvolError(study, f"{where}: path {path} must stay inside the data folder")
        if archive is not None and PurePosixPath(str(archive)).name != str(archive):
            raise MedvolError(study, f"{where}: archive {archive!r} must be a file name")
        md5 = str(entry["md5"]).lower()
        if not _MD5.fullmatch(md5):
            raise MedvolError(study, f"{where}: md5 {entry['md5']!r} is not 32 hexadecimal digits")
        sources.append(Source(str(path), str(entry["url"]), md5, None if archive is None else str(archive)))
    return sources


def data_folder(data_dir: Path | None = None) -> Path:
    """``data_dir``, else ``$MEDVOL_DATA``, else the per-user cache folder's ``data``; absolute.

    Resolved, so that runs trained with ``--data-dir ../data`` and ``--data-dir /abs/data``
    (the same folder) record the same ``data.root`` and can resume one another.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    import platformdirs

    return (Path(platformdirs.user_cache_dir("medvol", appauthor=False)) / "data").resolve()


def fetch(source: Source, data_dir: Path) -> Fetched:
    """Make ``source`` present and verified in ``data_dir``: reuse, download, extract as needed."""
    location = data_dir / source.path
    if source.archive is None:
        _obtain(source, location, data_dir)
        return Fetched(source, location, verified=True)
    if location.is_dir():
        return Fetched(source, location, verified=_extracted_by_medvol(location, source))
    archive = data_dir / source.archive
    _obtain(source, archive, data_dir)
    extract(archive, location, source)
    return Fetched(source, location, verified=True)


def _obtain(source: Source, target: Path, data_dir: Path) -> None:
    """The file at ``target``, downloaded if absent, its MD5 checked (or known from the record)."""
    if not target.exists():
        download(source.url, target, source.md5)
        _remember(target, source.md5, data_dir)
        return
    if not target.is_file():
        raise MedvolError(target, f"is not a file; medvol keeps {source.url} there")
    if _recorded(target, source.md5, data_dir):
        return
    logger.info("checking the MD5 of %s", target)
    actual = file_md5(target)
    if actual != source.md5:
        raise MedvolError(
            target,
            f"MD5 {actual}, expected {source.md5} (the published {source.url}); "
            "remove it to download it again, or put the published file there",
        )
    _remember(target, source.md5, data_dir)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_key(path: Path, data_dir: Path) -> str:
    return path.relative_to(data_dir).as_posix()


def _read_record(data_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((data_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _fingerprint(path: Path, md5: str) -> dict[str, Any]:
    stat = path.stat()
    return {"md5": md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _recorded(path: Path, md5: str, data_dir: Path) -> bool:
    """Whether the record says ``path``, at its present size and mtime, has this MD5."""
    return _read_record(data_dir).get(_record_key(path, data_dir)) == _fingerprint(path, md5)


def _remember(path: Path, md5: str, data_dir: Path) -> None:
    """Record that ``path`` has this MD5 (skipped, with a debug message, in a read-only folder)."""
    record = _read_record(data_dir)
    record[_record_key(path, data_dir)] = _fingerprint(path, md5)
    try:
        write_json(data_dir / RECORD, record)
    except (OSError, MedvolError) as error:
        logger.debug("cannot record the check of %s (%s); it will be hashed again", path, error)


def download(url: str, target: Path, md5: str) -> None:
    """Stream ``url`` to ``target``'s ``.part`` file, resuming breaks; check its MD5; rename it into place.

    A ``.part`` left by an earlier run is resumed; if the result has another
    MD5 (that part was of another file), the whole file is downloaded again once.

    Raises:
        MedvolError: the server cannot be reached or refuses (naming the URL,
            the MD5 and where to put the file by hand), or the file received
            has another MD5 (naming both; the file is not kept).
    """
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(target.parent, f"cannot create the data folder ({error})") from error
    earlier = _size(part)
    logger.info("downloading %s to %s%s", url, target, f" (resuming at byte {earlier})" if earlier else "")
    _receive(url, part, target, md5)
    actual = file_md5(part)
    if actual != md5 and earlier:
        logger.warning("%s resumed from an earlier run has MD5 %s; downloading it whole again", part, actual)
        part.unlink()
        _receive(url, part, target, md5)
        actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise MedvolError(
            None,
            f"{url}: the file received has MD5 {actual}, expected {md5}; it was not kept. "
            f"Try again later, or download it yourself and put the published file at {target}",
        )
    os.replace(part, target)
    logger.info("downloaded %s (MD5 %s verified)", target, md5)


def _receive(url: str, part: Path, target: Path, md5: str) -> None:
    """The rest of the file into ``part``: transfers resumed while each one receives bytes."""
    for attempt in range(1, ATTEMPTS + 1):
        before = _size(part)
        try:
            _transfer(url, part)
            return
        except (OSError, http.client.HTTPException) as error:
            received = _size(part) != before
            if attempt == ATTEMPTS or not received or isinstance(error, urllib.error.HTTPError):
                raise MedvolError(None, _cannot_download(url, target, md5, error)) from error
            logger.warning("the download of %s broke (%s); resuming at byte %d", url, error, _size(part))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _transfer(url: str, part: Path) -> None:
    """One HTTP request: the rest of the file from ``part``'s size on (Range), or all of it."""
    from medvol.version import __version__

    have = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": f"medvol/{__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after byte `have`: the part is whole, its MD5 decides
            return
        raise
    with response:
        resumed = response.status == 206
        if resumed and not str(response.headers.get("Content-Range", "")).startswith(f"bytes {have}-"):
            part.unlink()
            raise ConnectionError(f"the server resumed at another byte than {have}: starting again")
        expected = response.headers.get("Content-Length")
        start = have if resumed else 0
        total = start + int(expected) if expected is not None else 0
        received = 0
        with (
            open(part, "ab" if resumed else "wb") as handle,
            Progress(total, f"download {part.name.removesuffix('.part')}", "B", logger) as shown,
        ):
            shown.update(start)
            for chunk in iter(lambda: response.read(CHUNK), b""):
                handle.write(chunk)
                received += len(chunk)
                shown.update(len(chunk))
    if expected is not None and received < int(expected):
        raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def _cannot_download(url: str, target: Path, md5: str, error: BaseException) -> str:
    part = target.with_name(target.name + ".part")
    kept = f" ({_size(part)} bytes received so far are kept in {part} and resumed next time)"
    return (
        f"cannot download {url} ({error}){kept if _size(part) else ''}. Without internet access, "
        f"download it elsewhere, check that its MD5 is {md5}, and put it at {target}"
    )


def extract(archive: Path, folder: Path, source: Source) -> None:
    """Extract a tar archive into ``folder`` (its single top folder, if it has one), atomically.

    Raises:
        MedvolError: the archive cannot be read, or a member is a link, a
            device, or would be written outside the folder.
    """
    staging = folder.with_name(f".{folder.name}.extracting-{os.getpid()}")
    _remove_stale_staging(folder)
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("extracting %s into %s", archive, folder)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_members(archive, members)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # Python without extraction filters: the members were checked above
                tar.extractall(staging, members=members)
        content = _top_folder(staging)
        write_json(content / EXTRACTED, {"archive": source.archive, "url": source.url, "md5": source.md5})
        os.replace(content, folder)
    except (tarfile.TarError, EOFError) as error:
        raise MedvolError(archive, f"cannot extract the archive ({error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    for member in members:
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise MedvolError(archive, f"refused: member {member.name!r} would be written outside its folder")
        if not (member.isfile() or member.isdir()):
            raise MedvolError(archive, f"refused: member {member.name!r} is a link or a special file")


def _top_folder(staging: Path) -> Path:
    """The archive's single top folder (hidden names such as ``._*`` aside), else ``staging`` itself."""
    visible = [path for path in staging.iterdir() if not path.name.startswith(".")]
    return visible[0] if len(visible) == 1 and visible[0].is_dir() else staging


def _remove_stale_staging(folder: Path) -> None:
    """Remove the extraction folders that killed runs left beside ``folder``."""
    for staging in folder.parent.glob(f".{folder.name}.extracting-*"):
        pid = staging.name.rpartition("-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _extracted_by_medvol(folder: Path, source: Source) -> bool:
    """Whether ``folder`` holds medvol's record of extracting it from this archive; warns if not."""
    try:
        record = json.loads((folder / EXTRACTED).read_text())
    except (OSError, ValueError):
        record = {}
    if isinstance(record, dict) and record.get("md5") == source.md5:
        return True
    logger.warning(
        "%s was not extracted by medvol from %s (MD5 %s), so it cannot be verified to be the published "
        "data; using it as it is",
        folder,
        source.archive,
        source.md5,
    )
    return False
