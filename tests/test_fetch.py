"""Tests of the fetchers, through the real download path.

A local HTTP server on 127.0.0.1 serves generated files in the published
layouts; no other address is ever contacted (the registry is pointed at a
closed local port unless a test points it at the server).
"""

import gzip
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections import Counter
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from skcrnn.datasets import (fetch_brightkite, fetch_lastfm_1k, load_lastfm_1k,
                             load_snap_checkins)
from skcrnn.datasets import _fetch
from skcrnn.datasets._fetch import _RemoteFile

TSV_MEMBER = "lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv"
TSV_NAME = "userid-timestamp-artid-artname-traid-traname.tsv"
SNAP_NAME = "loc-brightkite_totalCheckins.txt.gz"

SNAP_TEXT = "".join(
    f"{user}\t2010-10-{day:02d}T01:48:53Z\t39.7\t-104.9\tloc{(user * 7 + day) % 5}\n"
    for user in range(4) for day in range(1, 11))
LASTFM_TEXT = "".join(
    f"user_{user:06d}\t2009-05-{day:02d}T13:54:10Z\t"
    f"{'' if day % 3 else 'a7f7df4a-77d8-4f12-8acd-5c60c93f4de8'}\tArtist {day % 4}"
    f"\t\tTrack \"{day}\"\n"
    for user in range(1, 4) for day in range(28, 0, -1))


# ---------------------------------------------------------------- helpers
class LocalServer:
    """An HTTP server on 127.0.0.1 serving bytes from a dict of routes.

    A route served with ``stall=True`` sends half its body, sets ``stalled``
    and sends the rest only once ``release`` is set (``stop`` sets it).
    ``requests`` counts the requests of each path.
    """

    def __init__(self):
        self.routes = {}
        self.requests = Counter()
        self.stalled = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, truncate, stall = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                half = len(body) // 2
                with suppress(OSError):  # the client may be killed meanwhile
                    self.wfile.write(body[:half] if truncate or stall else body)
                    if stall:
                        self.wfile.flush()
                        server.stalled.set()
                        server.release.wait(30)
                        self.wfile.write(body[half:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()

    def serve(self, path, body, truncate=False, stall=False):
        self.routes[path] = (body, truncate, stall)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def closed_port_url(path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def cached_files(home):
    return sorted(str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file())


def tar_gz(members):
    """A gzip'd tar from (TarInfo, data or None) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def file_member(name, data):
    return tarfile.TarInfo(name), data


def link_member(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def lastfm_archive(*extra_after, extra_before=()):
    data = LASTFM_TEXT.encode()
    directory = tarfile.TarInfo("lastfm-dataset-1K")
    directory.type = tarfile.DIRTYPE
    return tar_gz([
        (directory, None),
        *extra_before,
        file_member("lastfm-dataset-1K/README.txt", b"Version 1.0, May 2010\n"),
        file_member(TSV_MEMBER, data),
        file_member("lastfm-dataset-1K/userid-profile.tsv", b"user_000001\tm\n"),
        *extra_after,
    ])


def register(monkeypatch, name, **fields):
    defaults = {"brightkite": dict(filename=SNAP_NAME),
                "lastfm_1k": dict(filename="lastfm-dataset-1K.tar.gz",
                                  member=TSV_MEMBER)}[name]
    monkeypatch.setitem(_fetch._REMOTE_FILES, name,
                        _RemoteFile(**{**defaults, **fields}))


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args, **kwargs)


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Never reach the real publishers, nor a proxy, from these tests."""
    for name in list(_fetch._REMOTE_FILES):
        register(monkeypatch, name, url=closed_port_url(f"/{name}"))
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                     "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server():
    local = LocalServer()
    yield local
    local.stop()


@pytest.fixture
def snap_gz():
    return gzip.compress(SNAP_TEXT.encode())


# -------------------------------------------------------------- Brightkite
def test_brightkite_download_then_cache_without_network(tmp_path, server, snap_gz,
                                                        monkeypatch):
    url = server.serve("/data/" + SNAP_NAME, snap_gz)
    register(monkeypatch, "brightkite", url=url, sha256=sha256(snap_gz))
    events = quietly(fetch_brightkite, tmp_path)

    assert cached_files(tmp_path) == [f"brightkite/{SNAP_NAME}"]
    assert (tmp_path / "brightkite" / SNAP_NAME).read_bytes() == snap_gz
    assert len(events) == 40 and events["user"].nunique() == 4
    source = tmp_path / "source.txt"
    source.write_text(SNAP_TEXT)
    pd.testing.assert_frame_equal(events, load_snap_checkins(source))

    server.stop()
    register(monkeypatch, "brightkite", url=closed_port_url("/gone"),
             sha256=sha256(snap_gz))
    again = quietly(fetch_brightkite, tmp_path, download_if_missing=False,
                    user_col="u", item_col="i", time_col="t")
    assert list(again.columns[:3]) == ["u", "i", "t"]
    pd.testing.assert_frame_equal(again.set_axis(events.columns, axis=1), events)


def test_unpinned_checksum_warns_and_checks_gzip(tmp_path, server, snap_gz,
                                                 monkeypatch):
    register(monkeypatch, "brightkite",
             url=server.serve("/b.gz", snap_gz), sha256=None)
    with pytest.warns(UserWarning, match="No SHA-256 checksum .* gzip integrity"):
        events = fetch_brightkite(tmp_path)
    assert len(events) == 40
    assert cached_files(tmp_path) == [f"brightkite/{SNAP_NAME}"]


def test_url_keyword_overrides_the_registry(tmp_path, server, snap_gz):
    url = server.serve("/mirror/b.gz", snap_gz)
    with pytest.warns(UserWarning, match="No SHA-256"):
        events = fetch_brightkite(tmp_path, url=url)
    assert len(events) == 40


def test_data_home_from_environment(tmp_path, server, snap_gz, monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", snap_gz),
             sha256=sha256(snap_gz))
    monkeypatch.setenv("SKCRNN_DATA", str(tmp_path / "env-home"))
    quietly(fetch_brightkite)
    assert cached_files(tmp_path / "env-home") == [f"brightkite/{SNAP_NAME}"]
    monkeypatch.delenv("SKCRNN_DATA")
    assert _fetch._get_data_home() == Path("~/skcrnn_data").expanduser()
    assert _fetch._get_data_home("~/x") == Path.home() / "x"


def test_checksum_mismatch_leaves_nothing(tmp_path, server, snap_gz, monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", snap_gz),
             sha256="0" * 64)
    with pytest.raises(OSError, match="SHA-256 .* not the expected 0000"):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []


def test_size_mismatch_leaves_nothing(tmp_path, server, snap_gz, monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", snap_gz),
             size=len(snap_gz) + 1)
    with pytest.raises(OSError, match="the published file has"):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []


def test_truncated_download_leaves_nothing(tmp_path, server, snap_gz, monkeypatch):
    register(monkeypatch, "brightkite",
             url=server.serve("/b.gz", snap_gz, truncate=True),
             sha256=sha256(snap_gz))
    with pytest.raises(OSError, match="truncated|interrupted"):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_corrupted_gzip_leaves_nothing(tmp_path, server, snap_gz, monkeypatch,
                                       damage):
    if damage == "cut":
        body = snap_gz[:-20]
    else:
        middle = len(snap_gz) // 2
        body = snap_gz[:middle] + bytes([snap_gz[middle] ^ 0xFF]) + snap_gz[middle + 1:]
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", body), sha256=None)
    with pytest.raises(OSError, match="not a valid gzip file"):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []


def test_offline_error_says_what_to_do(tmp_path):
    url = _fetch._REMOTE_FILES["brightkite"].url  # a closed port on 127.0.0.1
    with pytest.raises(OSError) as caught:
        fetch_brightkite(tmp_path)
    message = str(caught.value)
    assert f"Could not download {url}" in message
    assert "offline" in message
    assert str(tmp_path / "brightkite" / SNAP_NAME) in message
    assert cached_files(tmp_path) == []


def test_http_error(tmp_path, server, monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/x", b"") + "-missing")
    with pytest.raises(OSError, match="HTTP 404"):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []


def test_no_download_when_not_allowed(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_if_missing is False") as caught:
        fetch_brightkite(tmp_path, download_if_missing=False)
    assert str(tmp_path / "brightkite" / SNAP_NAME) in str(caught.value)
    assert not (tmp_path / "brightkite").exists()
    with pytest.raises(FileNotFoundError, match=TSV_NAME):
        fetch_lastfm_1k(tmp_path, download_if_missing=False)


# ----------------------------------------------------------------- Last.fm
def test_lastfm_download_extracts_only_the_log(tmp_path, server, monkeypatch):
    archive = lastfm_archive()
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive),
             sha256=sha256(archive),
             member_md5=hashlib.md5(LASTFM_TEXT.encode()).hexdigest())
    events = quietly(fetch_lastfm_1k, tmp_path)

    assert cached_files(tmp_path) == [f"lastfm_1k/{TSV_NAME}"]
    assert (tmp_path / "lastfm_1k" / TSV_NAME).read_text() == LASTFM_TEXT
    assert len(events) == 84 and events["user"].nunique() == 3
    source = tmp_path / "source.tsv"
    source.write_text(LASTFM_TEXT)
    pd.testing.assert_frame_equal(events, load_lastfm_1k(source))

    server.stop()
    pd.testing.assert_frame_equal(quietly(fetch_lastfm_1k, tmp_path), events)


def test_lastfm_unpinned_archive_warns(tmp_path, server, monkeypatch):
    archive = lastfm_archive()
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive),
             member_md5=hashlib.md5(LASTFM_TEXT.encode()).hexdigest())
    with pytest.warns(UserWarning, match="No SHA-256 .* published MD5"):
        events = fetch_lastfm_1k(tmp_path)
    assert len(events) == 84


def test_lastfm_member_md5_mismatch_leaves_nothing(tmp_path, server, monkeypatch):
    register(monkeypatch, "lastfm_1k",
             url=server.serve("/l.tar.gz", lastfm_archive()), member_md5="f" * 32)
    with pytest.raises(OSError, match="MD5 .* not the published ffff"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


def test_lastfm_corrupted_archive_leaves_nothing(tmp_path, server, monkeypatch):
    archive = lastfm_archive()
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive[:-30]))
    with pytest.raises(OSError, match="not a valid gzip'd tar archive"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


def test_lastfm_missing_member(tmp_path, server, monkeypatch):
    archive = tar_gz([file_member("lastfm-dataset-1K/other.tsv", b"x\n")])
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive))
    with pytest.raises(ValueError, match="has no member"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("make_archive, problem", [
    (lambda root: lastfm_archive(file_member("../evil", b"evil\n")), "'..'"),
    (lambda root: lastfm_archive(
        extra_before=[file_member("lastfm-dataset-1K/../../evil", b"evil\n")]), "'..'"),
    (lambda root: lastfm_archive(file_member(f"{root}/abs-evil", b"evil\n")),
     "absolute path"),
    (lambda root: lastfm_archive(link_member("lastfm-dataset-1K/escape",
                                             "../../evil")), "symbolic link"),
    (lambda root: lastfm_archive(
        extra_before=[link_member("lastfm-dataset-1K/etc", "/etc/passwd")]),
     "symbolic link"),
    (lambda root: lastfm_archive(link_member("hard", "../outside", tarfile.LNKTYPE)),
     "hard link"),
    (lambda root: lastfm_archive(link_member("lastfm-dataset-1K/dev", "",
                                             tarfile.CHRTYPE)), "character device"),
    (lambda root: tar_gz([link_member(TSV_MEMBER, "README.txt")]), "symbolic link"),
    (lambda root: tar_gz([link_member(TSV_MEMBER, "", tarfile.DIRTYPE)]),
     "should be a regular file"),
])
def test_unsafe_archives_are_refused(tmp_path, server, monkeypatch, make_archive,
                                     problem):
    home = tmp_path / "home"
    register(monkeypatch, "lastfm_1k",
             url=server.serve("/l.tar.gz", make_archive(tmp_path)))
    with pytest.raises(ValueError, match=problem):
        fetch_lastfm_1k(home)
    assert cached_files(home) == []
    assert not list(tmp_path.rglob("*evil*"))


def test_member_safety_rules():
    check = _fetch._check_member_is_safe

    def member(name, kind=tarfile.REGTYPE, target=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    check(member("./lastfm-dataset-1K/data.tsv"), "a.tar")
    check(member("lastfm-dataset-1K", tarfile.DIRTYPE), "a.tar")
    for bad in (member("a/../../b"), member("/abs"), member("C:/windows"),
                member("a\\..\\..\\b"), member("link", tarfile.SYMTYPE, "../x"),
                member("a/link", tarfile.SYMTYPE, "/x"),
                member("hard", tarfile.LNKTYPE, "../../x"),
                member("a/b/link", tarfile.SYMTYPE, "../c"),  # inside, still a link
                member("a/hard", tarfile.LNKTYPE, "a/data.tsv"),
                member("fifo", tarfile.FIFOTYPE)):
        with pytest.raises(ValueError, match="Refusing the archive a.tar"):
            check(bad, "a.tar")


# ------------------------------------------------------- hostile conditions
def genuine_lastfm(monkeypatch, server, archive):
    """Serve ``archive`` as Last.fm's, with the genuine log's MD5 published."""
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive),
             member_md5=hashlib.md5(LASTFM_TEXT.encode()).hexdigest())


def tampered_log():
    return file_member(TSV_MEMBER, LASTFM_TEXT.replace("Artist", "Evil").encode())


@pytest.mark.parametrize("archive", [
    # the genuine copy last: its MD5 is the published one
    lastfm_archive(extra_before=[tampered_log()]),
    lastfm_archive(tampered_log()),
    lastfm_archive(file_member("./" + TSV_MEMBER, b"x\n")),
    lastfm_archive(file_member("lastfm-dataset-1K//README.txt", b"x\n")),
], ids=["tampered-first", "tampered-last", "dot-slash", "other-member"])
def test_duplicate_members_are_refused(tmp_path, server, monkeypatch, archive):
    genuine_lastfm(monkeypatch, server, archive)
    with pytest.raises(ValueError, match=r"lastfm-dataset-1K\.tar\.gz .* twice"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("link, problem", [
    (link_member("lastfm-dataset-1K/latest.tsv", TSV_NAME), "symbolic link"),
    (link_member("lastfm-dataset-1K/copy.tsv", TSV_MEMBER, tarfile.LNKTYPE),
     "hard link"),
])
def test_links_are_refused_even_inside_the_archive(tmp_path, server, monkeypatch,
                                                   link, problem):
    genuine_lastfm(monkeypatch, server, lastfm_archive(link))
    with pytest.raises(ValueError, match=rf"lastfm-dataset-1K\.tar\.gz.*{problem}"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


def test_archive_changed_after_its_download_is_refused(tmp_path, server,
                                                       monkeypatch):
    archive = lastfm_archive()
    register(monkeypatch, "lastfm_1k", url=server.serve("/l.tar.gz", archive),
             sha256=sha256(archive))
    download = _fetch._download_verified

    def download_then_swap(remote, target):
        result = download(remote, target)
        (part,) = target.parent.glob("*.part")
        part.write_bytes(tar_gz([tampered_log()]))
        return result

    monkeypatch.setattr(_fetch, "_download_verified", download_then_swap)
    with pytest.raises(OSError, match="changed since its download"):
        fetch_lastfm_1k(tmp_path)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("name", ["brightkite", "lastfm_1k"])
def test_stale_partial_files_are_never_used_and_removed(tmp_path, server, snap_gz,
                                                       monkeypatch, name):
    body = snap_gz if name == "brightkite" else lastfm_archive()
    register(monkeypatch, name, url=server.serve("/f", body))
    fetch = fetch_brightkite if name == "brightkite" else fetch_lastfm_1k
    remote = _fetch._REMOTE_FILES[name]
    folder = tmp_path / name
    folder.mkdir()
    for prefix in {remote.filename, remote.cached_name}:
        (folder / f".{prefix}.k1ll3d.part").write_bytes(body[: len(body) // 2])
    with pytest.raises(FileNotFoundError):
        fetch(tmp_path, download_if_missing=False)

    with pytest.warns(UserWarning, match="No SHA-256"):
        events = fetch(tmp_path)
    assert len(events) == (40 if name == "brightkite" else 84)
    assert cached_files(tmp_path) == [f"{name}/{remote.cached_name}"]


def test_without_a_lock_only_old_partial_files_are_removed(tmp_path, server,
                                                          snap_gz, monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", snap_gz),
             sha256=sha256(snap_gz))
    monkeypatch.setattr(_fetch, "fcntl", None)  # as on Windows
    folder = tmp_path / "brightkite"
    folder.mkdir()
    old, young = (folder / f".{SNAP_NAME}.{age}.part" for age in ("old", "young"))
    for part in (old, young, folder / "unrelated.part"):
        part.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))

    quietly(fetch_brightkite, tmp_path)
    assert cached_files(folder) == [f".{SNAP_NAME}.young.part", SNAP_NAME,
                                    "unrelated.part"]


def test_interrupted_download_leaves_nothing(tmp_path, server, snap_gz,
                                             monkeypatch):
    url = server.serve("/b.gz", snap_gz)
    register(monkeypatch, "brightkite", url=url)
    urlopen = _fetch.urllib.request.urlopen

    def interrupted(*args, **kwargs):
        response = urlopen(*args, **kwargs)
        response.read = lambda size: (_ for _ in ()).throw(KeyboardInterrupt)
        return response

    monkeypatch.setattr(_fetch.urllib.request, "urlopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_brightkite(tmp_path)
    assert cached_files(tmp_path) == []
    monkeypatch.undo()
    register(monkeypatch, "brightkite", url=url)
    with pytest.warns(UserWarning, match="No SHA-256"):
        assert len(fetch_brightkite(tmp_path)) == 40


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL")
def test_killed_download_then_fetch_again(tmp_path, server, snap_gz):
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from skcrnn.datasets import fetch_brightkite; "
         "fetch_brightkite(sys.argv[1], url=sys.argv[2])",
         str(tmp_path), server.serve("/slow.gz", snap_gz, stall=True)],
        cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server.stalled.is_set() or child.poll() is not None)
        assert child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    assert cached_files(tmp_path)[0].endswith(".part")  # what a kill leaves

    with pytest.warns(UserWarning, match="No SHA-256"):
        events = fetch_brightkite(tmp_path, url=server.serve("/b.gz", snap_gz))
    assert len(events) == 40
    assert cached_files(tmp_path) == [f"brightkite/{SNAP_NAME}"]


def test_concurrent_fetch_waits_for_the_running_one(tmp_path, server, snap_gz,
                                                    monkeypatch):
    register(monkeypatch, "brightkite", url=server.serve("/b.gz", snap_gz, stall=True),
             sha256=sha256(snap_gz))
    results = {}

    def fetch(key):
        results[key] = fetch_brightkite(tmp_path)

    first = threading.Thread(target=fetch, args=("first",))
    first.start()
    wait_for(server.stalled.is_set)
    second = threading.Thread(target=fetch, args=("second",))
    second.start()
    time.sleep(0.2)  # the second is waiting, and must not remove the first's file
    server.release.set()
    first.join(30)
    second.join(30)

    assert server.requests["/b.gz"] == 1
    pd.testing.assert_frame_equal(results["first"], results["second"])
    assert cached_files(tmp_path) == [f"brightkite/{SNAP_NAME}"]
