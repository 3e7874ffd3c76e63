"""Download, verify and cache the paper's data sets.

A download goes to a temporary file (``.*.part``) next to its final place in
the cache; it is checked (length, SHA-256 when pinned, full gzip/tar
integrity, the publisher's MD5 of an extracted member when known), flushed to
disk, and only then renamed into place with :func:`os.replace`. A file in the
cache is therefore always complete, and a later call reads it without any
network. The checks apply to the very bytes used: the downloaded file is
hashed again as it is decompressed, and an MD5 covers every byte written to
the extracted file, from an archive whose members are plain files and folders
inside it, each listed once.

Fetches into one folder hold a lock on it (where the system offers one), so
they run one at a time; temporary files found by the holder were left by a
fetch that was killed, and are removed.
"""

import gzip
import hashlib
import http.client
import os
import re
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from .._files import fsync_directory
from ._loaders import load_lastfm_1k, load_snap_checkins

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_DATA_HOME_ENV = "SKCRNN_DATA"
_DEFAULT_DATA_HOME = "~/skcrnn_data"
_CHUNK = 1 << 20
_TIMEOUT = 60  # seconds without progress before a download is abandoned
# Where the cache folder cannot be locked, a younger temporary file may be that
# of a fetch running now, so only older ones are removed (seconds).
_STALE_AFTER = 24 * 3600


@dataclass(frozen=True)
class _RemoteFile:
    """A file published online, and what is known to verify it.

    ``sha256`` and ``size`` describe the downloaded file (None: unknown). For
    an archive, ``member`` is the path of the one file that is extracted into
    the cache and ``member_md5`` its checksum as published (None: unknown).
    """

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    member: str | None = None
    member_md5: str | None = None

    @property
    def cached_name(self):
        return PurePosixPath(self.member).name if self.member else self.filename


# No SHA-256 of either file is published, and this package could not download
# them to compute one, so they are unpinned (a warning says so at download).
# The Last.fm 1K README (inside the archive and on
# http://ocelma.net/MusicRecommendationDataset/lastfm-1K.html) publishes the
# MD5 of the extracted TSV, which is checked.
_REMOTE_FILES = {
    "brightkite": _RemoteFile(
        url="https://snap.stanford.edu/data/loc-brightkite_totalCheckins.txt.gz",
        filename="loc-brightkite_totalCheckins.txt.gz"),
    "lastfm_1k": _RemoteFile(
        url="http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-1K.tar.gz",
        filename="lastfm-dataset-1K.tar.gz",
        member="lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv",
        member_md5="64747b21563e3d2aa95751e0ddc46b68"),
}


# --------------------------------------------------------------- public API
def fetch_brightkite(data_home=None, *, download_if_missing=True, url=None,
                     user_col="user", item_col="item", time_col="timestamp"):
    """Load the SNAP Brightkite check-ins, downloading them the first time.

    The file ``loc-brightkite_totalCheckins.txt.gz`` (about 4.5 million
    check-ins, 2008-2010) is downloaded from SNAP
    (https://snap.stanford.edu/data/loc-brightkite.html) into
    ``data_home/brightkite/`` and read with :func:`load_snap_checkins`.
    Later calls read the cached file without any network access. A call that
    finds another one fetching the file waits for it; a fetch that was killed
    leaves temporary files (``.*.part``), which the next fetch removes.

    Parameters
    ----------
    data_home : str or os.PathLike, default None
        The cache folder. By default the environment variable ``SKCRNN_DATA``,
        or ``~/skcrnn_data`` if it is not set.
    download_if_missing : bool, default True
        If False, raise instead of downloading a file missing from the cache.
    url : str, default None
        Download from this address (a mirror) instead of SNAP's. The checks
        of the published file apply to it.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    pandas.DataFrame
        The check-ins, as returned by :func:`load_snap_checkins`.

    Raises
    ------
    FileNotFoundError
        If the file is not cached and ``download_if_missing`` is False.
    OSError
        If the download fails (the machine may be offline; the message says
        where to place a manually downloaded file), is truncated, is not a
        valid gzip file, does not match its pinned checksum, or changed on
        disk before it was used. Nothing is left in the cache then.

    Warns
    -----
    UserWarning
        When downloading while no SHA-256 of the file is pinned in this
        package (only its gzip integrity can be verified then), and when the
        file has malformed lines, which are skipped.

    Examples
    --------
    >>> events = fetch_brightkite()  # doctest: +SKIP
    """
    path = _fetch_file("brightkite", data_home, download_if_missing, url)
    return load_snap_checkins(path, user_col=user_col, item_col=item_col,
                              time_col=time_col)


def fetch_lastfm_1k(data_home=None, *, download_if_missing=True, url=None,
                    user_col="user", item_col="item", time_col="timestamp"):
    """Load the Last.fm 1K listening log, downloading it the first time.

    The archive ``lastfm-dataset-1K.tar.gz`` (about 640 MB) is downloaded
    from its publisher (http://ocelma.net/MusicRecommendationDataset/lastfm-1K.html),
    checked, and only its log
    ``userid-timestamp-artid-artname-traid-traname.tsv`` (about 2.4 GB, whose
    MD5 the data set's README publishes) is extracted into
    ``data_home/lastfm_1k/``; the archive is not kept. The log is read with
    :func:`load_lastfm_1k`. Later calls read the cached file without any
    network access. A call that finds another one fetching the file waits
    for it; a fetch that was killed leaves temporary files (``.*.part``),
    which the next fetch removes.

    Parameters
    ----------
    data_home : str or os.PathLike, default None
        The cache folder. By default the environment variable ``SKCRNN_DATA``,
        or ``~/skcrnn_data`` if it is not set.
    download_if_missing : bool, default True
        If False, raise instead of downloading a file missing from the cache.
    url : str, default None
        Download the archive from this address (a mirror) instead of the
        publisher's. The checks of the published file apply to it.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    pandas.DataFrame
        The plays, as returned by :func:`load_lastfm_1k`.

    Raises
    ------
    FileNotFoundError
        If the log is not cached and ``download_if_missing`` is False.
    OSError
        If the download fails (the machine may be offline; the message says
        where to place a manually extracted file), is truncated, is not a
        valid gzip'd tar archive, a checksum does not match, or the archive
        changed on disk before it was used. Nothing is left in the cache then.
    ValueError
        If the archive has a member that is not a plain file or folder (a
        link, a device), one with an absolute path or a ``..``, a member listed
        twice, or no log. Nothing is left in the cache then.

    Warns
    -----
    UserWarning
        When downloading while no SHA-256 of the archive is pinned in this
        package, and when the log has malformed lines, which are skipped.

    Examples
    --------
    >>> events = fetch_lastfm_1k()  # doctest: +SKIP
    """
    path = _fetch_file("lastfm_1k", data_home, download_if_missing, url)
    return load_lastfm_1k(path, user_col=user_col, item_col=item_col,
                          time_col=time_col)


# ------------------------------------------------------------------ cache
def _get_data_home(data_home=None):
    """The cache folder (not created): argument, $SKCRNN_DATA or ~/skcrnn_data."""
    if data_home is None:
        data_home = os.environ.get(_DATA_HOME_ENV) or _DEFAULT_DATA_HOME
    return Path(os.fspath(data_home)).expanduser()


def _fetch_file(name, data_home, download_if_missing, url=None):
    """Path of the cached file of data set ``name``, downloading it if needed."""
    remote = _REMOTE_FILES[name]
    if url is not None:
        remote = replace(remote, url=url)
    folder = _get_data_home(data_home) / name
    target = folder / remote.cached_name
    if target.is_file():
        return target
    if not download_if_missing:
        raise FileNotFoundError(
            f"{str(target)!r} is not in the cache and download_if_missing is "
            f"False. {_manual_hint(remote, target)}")
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder) as locked:
        if target.is_file():  # fetched by another call while this one waited
            return target
        _remove_stale_parts(folder, remote, all_of_them=locked)
        if remote.member is None:
            _download_gzip_file(remote, target)
        else:
            _download_tar_member(remote, target)
    return target


@contextmanager
def _folder_lock(folder):
    """Hold an exclusive lock on ``folder``; yield whether one was obtained.

    Fetches into the folder, by threads or processes, then run one at a time.
    The system drops the lock when its holder dies, killed or not. Windows
    and some network file systems offer no such lock.
    """
    descriptor = _locked_descriptor(folder)
    try:
        yield descriptor is not None
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _locked_descriptor(folder):
    """A descriptor of ``folder`` holding its lock (waits); None where impossible."""
    if fcntl is None:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    locked = False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        locked = True
    except OSError:
        pass
    finally:
        if not locked:
            os.close(descriptor)
    return descriptor if locked else None


def _remove_stale_parts(folder, remote, all_of_them):
    """Remove the temporary files that killed fetches of ``remote`` left.

    All of them when this call holds the folder's lock; otherwise only those
    untouched for ``_STALE_AFTER`` seconds.
    """
    prefixes = (f".{remote.filename}.", f".{remote.cached_name}.")
    now = time.time()
    for path in folder.iterdir():
        if not (path.name.startswith(prefixes) and path.name.endswith(".part")):
            continue
        with suppress(OSError):  # gone meanwhile, or open elsewhere (Windows)
            if all_of_them or now - path.stat().st_mtime > _STALE_AFTER:
                path.unlink()


def _manual_hint(remote, target):
    if remote.member is None:
        return f"To add it by hand, download {remote.url} and save it as {str(target)!r}."
    return (f"To add it by hand, download {remote.url}, extract "
            f"{remote.member!r} from it and save that file as {str(target)!r}.")


def _download_gzip_file(remote, target):
    download = _download_verified(remote, target)
    try:
        _check_gzip(download, remote)
        _warn_if_unpinned(remote, "its gzip integrity")
        _move_into_place(download.path, target)
    finally:
        _remove_quietly(download.path)


def _download_tar_member(remote, target):
    download = _download_verified(remote, target)
    try:
        member = _extract_member(download, remote, target.parent)
        try:
            _check_member_md5(member, remote)
            verified = ("the gzip and tar integrity of the archive and the "
                        "published MD5 of the extracted file"
                        if remote.member_md5 else
                        "the gzip and tar integrity of the archive")
            _warn_if_unpinned(remote, verified)
            _move_into_place(member.path, target)
        finally:
            _remove_quietly(member.path)
    finally:
        _remove_quietly(download.path)


def _move_into_place(temporary, target):
    os.chmod(temporary, 0o644)  # mkstemp makes files private to the owner
    os.replace(temporary, target)
    fsync_directory(target.parent)


def _warn_if_unpinned(remote, what_was_checked):
    if remote.sha256 is None:
        warnings.warn(
            f"No SHA-256 checksum of {remote.filename} is pinned in skcrnn, so "
            f"the download from {remote.url} was checked only for "
            f"{what_was_checked}.", UserWarning, stacklevel=5)


# --------------------------------------------------------------- download
@dataclass(frozen=True)
class _Download:
    """A downloaded temporary file and the SHA-256 of the bytes that arrived."""

    path: Path
    sha256: str


def _download_verified(remote, target):
    """Download ``remote`` to a temporary file beside ``target``; check it.

    Returns a :class:`_Download`; the caller moves or removes its file.
    """
    fd, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{remote.filename}.", suffix=".part")
    temporary = Path(temporary)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _stream_to(remote, target, out)
            out.flush()
            os.fsync(out.fileno())
        _check_size_and_sha256(remote, digest, size)
    except BaseException:
        _remove_quietly(temporary)
        raise
    return _Download(temporary, digest)


def _stream_to(remote, target, out):
    """Write the body at ``remote.url`` to ``out``; its SHA-256 and length.

    Network failures become one OSError that says what to do; failures to
    write (a full disk) propagate as they are.
    """
    digest, size = hashlib.sha256(), 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "skcrnn"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as error:
        raise OSError(
            f"Could not download {remote.url}: the server answered HTTP "
            f"{error.code} ({error.reason}). {_manual_hint(remote, target)}"
        ) from error
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise OSError(
            f"Could not download {remote.url} ({reason}). This machine may be "
            f"offline or the server unreachable. {_manual_hint(remote, target)}"
        ) from error
    with response:
        expected = _content_length(response)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise OSError(
                    f"The download of {remote.url} was interrupted after "
                    f"{size:,} bytes ({error!r}). Nothing was cached; try "
                    f"again. {_manual_hint(remote, target)}") from error
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    if expected is not None and size != expected:
        raise OSError(
            f"The download of {remote.url} is truncated: {size:,} of "
            f"{expected:,} bytes arrived. Nothing was cached; try again.")
    return digest.hexdigest(), size


def _content_length(response):
    value = response.headers.get("Content-Length")
    return int(value) if value and value.strip().isdigit() else None


def _check_size_and_sha256(remote, digest, size):
    if remote.size is not None and size != remote.size:
        raise OSError(
            f"The download of {remote.url} has {size:,} bytes; the published "
            f"file has {remote.size:,}. Nothing was cached.")
    if remote.sha256 is not None and digest != remote.sha256.lower():
        raise OSError(
            f"The download of {remote.url} has SHA-256 {digest}, not the "
            f"expected {remote.sha256}: it is corrupted or the file changed "
            f"upstream. Nothing was cached.")


def _check_gzip(download, remote):
    """Decompress all of the download, which checks its CRC and length."""
    try:
        _read_gzip(download, remote, lambda stream: None)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise OSError(
            f"The download of {remote.url} is not a valid gzip file ({error}); "
            f"it is probably truncated or corrupted. Nothing was cached."
        ) from error


def _read_gzip(download, remote, consume):
    """Return ``consume(stream)`` of the decompressed download, read to its end.

    Reading to the end checks the gzip CRC and length. The compressed bytes
    read are hashed as well: they must be those that arrived and were
    checked, not a file changed on disk since.
    """
    with open(download.path, "rb") as raw:
        hashed = _HashingReader(raw)
        with gzip.GzipFile(fileobj=hashed, mode="rb") as stream:
            result = consume(stream)
            while stream.read(_CHUNK):
                pass
        while hashed.read(_CHUNK):
            pass
    if hashed.sha256.hexdigest() != download.sha256:
        raise OSError(
            f"The file downloaded from {remote.url} changed since its download "
            f"(its SHA-256 is no longer {download.sha256}); something else "
            f"wrote to {str(download.path)!r}. Nothing was cached.")
    return result


class _HashingReader:
    """A binary file opened for reading whose reads update a SHA-256."""

    def __init__(self, file):
        self._file = file
        self.sha256 = hashlib.sha256()

    def read(self, size=-1):
        data = self._file.read(size)
        self.sha256.update(data)
        return data


# ---------------------------------------------------------------- archives
@dataclass
class _Extracted:
    path: Path
    md5: str


def _extract_member(download, remote, folder):
    """Extract ``remote.member`` of a gzip'd tar to a temporary file in ``folder``.

    Reads the archive as a stream, once: every member is checked for safety
    and listed once at most (the whole archive is refused otherwise) and the
    gzip stream is read to its end so that its CRC is checked. Only the
    wanted member is written, under a name chosen here, never one taken from
    the archive.
    """
    fd, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{remote.cached_name}.", suffix=".part")
    temporary = Path(temporary)
    try:
        with os.fdopen(fd, "wb") as out:
            md5 = _copy_member(download, remote, out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        _remove_quietly(temporary)
        raise
    return _Extracted(temporary, md5)


def _copy_member(download, remote, out):
    """Copy ``remote.member`` of the downloaded archive to ``out``; its MD5."""
    try:
        return _read_gzip(download, remote,
                          lambda stream: _copy_from_tar(stream, remote, out))
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise OSError(
            f"The download of {remote.url} is not a valid gzip'd tar archive "
            f"({error}); it is probably truncated or corrupted. Nothing was "
            f"cached.") from error


def _copy_from_tar(stream, remote, out):
    """Check every member of the tar ``stream``; copy the wanted one to ``out``.

    Returns the MD5 of all the bytes written to ``out``.
    """
    archive = f"{remote.filename} downloaded from {remote.url}"
    wanted = _normalized(remote.member)
    seen, found = set(), False
    md5 = hashlib.md5(usedforsecurity=False)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            _check_member_is_safe(info, archive)
            _check_member_is_new(info, seen, archive)
            if _normalized(info.name) == wanted:
                _copy_regular_file(tar, info, out, md5, archive)
                found = True
    if not found:
        raise ValueError(
            f"The archive {archive} has no member {remote.member!r}. Nothing "
            f"was cached.")
    return md5.hexdigest()


def _copy_regular_file(tar, info, out, md5, archive):
    if not info.isreg():
        raise ValueError(
            f"Refusing the archive {archive}: its member {info.name!r} should "
            f"be a regular file but is a {_member_kind(info)}. Nothing was "
            f"cached.")
    source = tar.extractfile(info)
    while chunk := source.read(_CHUNK):
        out.write(chunk)
        md5.update(chunk)


def _check_member_md5(member, remote):
    if remote.member_md5 is not None and member.md5 != remote.member_md5.lower():
        raise OSError(
            f"{remote.member!r} extracted from {remote.url} has MD5 {member.md5},"
            f" not the published {remote.member_md5}: the archive is corrupted "
            f"or changed upstream. Nothing was cached.")


def _check_member_is_safe(info, archive):
    """Refuse members other than plain files and folders inside the archive.

    Links are refused even when they point inside: none is needed to extract
    one regular file, and one could stand for the file that is checked.
    ``archive`` names the archive in the message.
    """
    problem = None
    if _is_absolute(info.name):
        problem = "has an absolute path"
    elif ".." in _parts(info.name):
        problem = "has a '..' in its path"
    elif info.issym() or info.islnk():
        problem = f"is a {_member_kind(info)} (to {info.linkname!r})"
    elif not (info.isreg() or info.isdir()):
        problem = f"is a {_member_kind(info)}"
    if problem:
        raise ValueError(
            f"Refusing the archive {archive}: its member {info.name!r} "
            f"{problem}. Nothing was cached.")


def _check_member_is_new(info, seen, archive):
    """Refuse a member whose path, normalized, was already in the archive.

    Extracting a path listed twice would keep either copy depending on the
    tool, so its checksum could be that of the other one.
    """
    name = _normalized(info.name)
    if name in seen:
        raise ValueError(
            f"Refusing the archive {archive}: its member {info.name!r} appears "
            f"twice. Nothing was cached.")
    seen.add(name)


def _member_kind(info):
    for test, kind in ((info.isreg, "regular file"), (info.isdir, "directory"),
                       (info.issym, "symbolic link"), (info.islnk, "hard link"),
                       (info.ischr, "character device"),
                       (info.isblk, "block device"), (info.isfifo, "FIFO")):
        if test():
            return kind
    return "special file"


def _is_absolute(name):
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _parts(name):
    return [part for part in re.split(r"[/\\]", name) if part]


def _normalized(name):
    """Archive path without '.' parts, with '..' resolved (may stay leading)."""
    return os.path.normpath(name.replace("\\", "/")).replace(os.sep, "/")


# ------------------------------------------------------------------- files
def _remove_quietly(path):
    with suppress(FileNotFoundError):
        os.unlink(path)
