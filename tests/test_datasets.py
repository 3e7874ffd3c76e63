"""Tests of the file loaders, on generated files and on the real ones."""

import gzip
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skcrnn.datasets import load_lastfm_1k, load_movielens, load_snap_checkins

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOURSQUARE = SHARED_DATA / "foursquare-checkins" / "checkins.tsv.gz"
MOVIELENS = SHARED_DATA / "movielens-latest-small" / "ratings.csv"


def needs_shared_file(path):
    """Skip a test of a real development file where a checkout lacks ../shared/data.

    The loaders are tested on files written by the tests as well; these tests
    pin the figures of the real files where they exist.
    """
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not on this "
                              f"machine (development data, not in the repository)")


LASTFM_HEAD = (SHARED_DATA / "lastfm-1k-head"
               / "userid-timestamp-artid-artname-traid-traname.tsv")

SNAP_LINES = [
    "0\t2010-10-17T01:48:53Z\t39.747652\t-104.99251\t88c46bf20db295831bd2d1718ad7e6f5",
    "0\t2010-10-16T06:02:04Z\t39.891383\t-105.070814\t7a0f88982aa015062b95e3b4843f9ca2",
    "1\t2009-01-02T03:04:05Z\t0.0\t0.0\t00000000000000000000000000000000",
]

LASTFM_LINES = [
    "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a"
    "\tDeep Dish\t\tFuck Me Im Famous",
    "user_000001\t2009-05-04T13:54:10Z\t\tAfta-1\t9383afaa-4f15-4871-8a33-553ba8dd5560"
    "\tSay \"Hi\"",
    "user_000002\t2008-12-08T06:04:00Z\t\tNA\t\tnull",
]


def write_text(path, lines, compress=False, newline="\n", final_newline=True):
    text = newline.join(lines) + (newline if final_newline and lines else "")
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def load_quietly(loader, path, **kwargs):
    """Call a loader, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return loader(path, **kwargs)


# ------------------------------------------------------------------- SNAP
def test_snap_values_and_dtypes(tmp_path):
    events = load_quietly(load_snap_checkins, write_text(tmp_path / "c.txt", SNAP_LINES))
    assert list(events.columns) == ["user", "item", "timestamp", "latitude",
                                    "longitude"]
    assert events["user"].dtype == np.int64
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert pd.api.types.is_string_dtype(events["item"].dtype)
    assert events["user"].tolist() == [0, 0, 1]
    assert events["item"].tolist() == ["88c46bf20db295831bd2d1718ad7e6f5",
                                       "7a0f88982aa015062b95e3b4843f9ca2",
                                       "00000000000000000000000000000000"]
    assert events["timestamp"].iloc[0] == pd.Timestamp("2010-10-17 01:48:53")
    assert events["latitude"].tolist() == [39.747652, 39.891383, 0.0]
    assert events["longitude"].iloc[1] == -105.070814
    assert events.index.tolist() == [0, 1, 2]


@pytest.mark.parametrize("name, compress", [("c.txt.gz", True), ("c.txt", True),
                                            ("c.txt.gz", False)])
def test_snap_gzip_detected_by_magic_bytes(tmp_path, name, compress):
    path = write_text(tmp_path / name, SNAP_LINES, compress=compress)
    events = load_quietly(load_snap_checkins, path)
    assert len(events) == 3
    assert events["item"].iloc[2] == "0" * 32


def test_snap_times_are_tz_naive_utc(tmp_path):
    lines = ["5\t2010-01-01T12:00:00+02:00\t1\t2\tA",
             "5\t2010-01-01T12:00:00.5Z\t1\t2\tB"]
    events = load_quietly(load_snap_checkins, write_text(tmp_path / "c", lines))
    assert events["timestamp"].dt.tz is None
    assert events["timestamp"].tolist() == [pd.Timestamp("2010-01-01 10:00:00"),
                                            pd.Timestamp("2010-01-01 12:00:00.5")]


def test_snap_skips_malformed_lines_with_one_warning(tmp_path):
    lines = [
        "0\t2010-10-17T01:48:53Z\t1.0\t2.0\t6\tEXTRA",   # 6 fields, first line
        SNAP_LINES[0],
        "58186\t\t\t\t",                                  # empty time
        "7\t2010-10-17T01:48:53Z\t3",                     # 3 fields
        "",                                               # blank
        "x\t2010-10-17T01:48:53Z\t1.0\t2.0\tloc",         # user not an integer
        "8\tnot a time\t1.0\t2.0\tloc",                   # bad time
        "9\t2010-10-17T01:48:53Z\t1.0\t2.0\t",            # empty location
        "10\t2010-10-17T01:48:53Z\t\t\tloc\"q",           # fine, no coordinates
        SNAP_LINES[2],
    ]
    path = write_text(tmp_path / "c.txt", lines)
    with pytest.warns(UserWarning, match=r"Skipped 7 of 10 lines") as record:
        events = load_snap_checkins(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "line 1: 6 field(s) instead of 5" in message
    assert "line 3: time is empty" in message
    assert "line 6: user is not an integer" in message
    assert events["user"].tolist() == [0, 10, 1]
    assert events["item"].tolist() == ["88c46bf20db295831bd2d1718ad7e6f5",
                                       "loc\"q", "0" * 32]
    assert np.isnan(events["latitude"].iloc[1])


def test_snap_crlf_and_missing_final_newline(tmp_path):
    path = write_text(tmp_path / "c.txt", SNAP_LINES, newline="\r\n",
                      final_newline=False)
    events = load_quietly(load_snap_checkins, path)
    assert events["item"].tolist()[-1] == "0" * 32
    assert not events["item"].str.endswith("\r").any()


def test_snap_quotes_do_not_swallow_lines(tmp_path):
    lines = ['1\t2010-10-17T01:48:53Z\t1\t2\t"open', SNAP_LINES[0], SNAP_LINES[1]]
    events = load_quietly(load_snap_checkins, write_text(tmp_path / "c", lines))
    assert events["item"].tolist()[0] == '"open'
    assert len(events) == 3


def test_snap_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_snap_checkins(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="empty"):
        load_snap_checkins(write_text(tmp_path / "empty.gz", [], compress=True))


def test_snap_wrong_layout(tmp_path):
    path = write_text(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp",
                                                 "1,31,2.5,1260759144"])
    with pytest.raises(ValueError, match=r"SNAP check-in layout.*line 1: 1 field"):
        load_snap_checkins(path)
    path = write_text(tmp_path / "c", ["a\tb\tc\td\te"])
    with pytest.raises(ValueError, match="No line of"):
        load_snap_checkins(path)


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    for loader in (load_snap_checkins, load_lastfm_1k, load_movielens):
        with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
            loader(missing)
    with pytest.raises(IsADirectoryError):
        load_snap_checkins(tmp_path)


def test_tar_archive_is_refused(tmp_path):
    data = "\n".join(LASTFM_LINES).encode()
    path = tmp_path / "lastfm-dataset-1K.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("lastfm-dataset-1K/data.tsv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="tar archive"):
        load_lastfm_1k(path)


def test_rename_columns(tmp_path):
    path = write_text(tmp_path / "c", SNAP_LINES)
    events = load_snap_checkins(path, user_col="u", item_col="i", time_col="t")
    assert list(events.columns) == ["u", "i", "t", "latitude", "longitude"]
    with pytest.raises(ValueError, match="already used"):
        load_snap_checkins(path, item_col="latitude")
    with pytest.raises(ValueError, match="must differ"):
        load_snap_checkins(path, user_col="x", item_col="x")


@needs_shared_file(FOURSQUARE)
def test_real_foursquare_checkins():
    events = load_quietly(load_snap_checkins, FOURSQUARE)
    assert events.shape == (185_984, 5)
    assert events["user"].nunique() == 4_969
    assert events["item"].nunique() == 8_000
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")
    first = events.iloc[0]
    assert (first["user"], first["item"]) == (0, "0")
    assert first["timestamp"] == pd.Timestamp("2012-04-03 10:00:08")
    assert (first["latitude"], first["longitude"]) == (40.748939, -73.99228)
    assert events["timestamp"].min().year == 2012
    assert events["timestamp"].max().year == 2013


# ---------------------------------------------------------------- Last.fm
def test_lastfm_values(tmp_path):
    events = load_quietly(load_lastfm_1k, write_text(tmp_path / "l.tsv", LASTFM_LINES))
    assert list(events.columns) == ["user", "item", "timestamp", "artist_name",
                                    "track_id", "track_name"]
    assert events["user"].tolist() == ["user_000001", "user_000001", "user_000002"]
    # The artist MBID, or the artist's name where the MBID is empty.
    assert events["item"].tolist() == ["f1b1cf71-bd35-4e99-8624-24a6e15f133a",
                                       "Afta-1", "NA"]
    assert events["timestamp"].tolist() == [pd.Timestamp("2009-05-04 23:08:57"),
                                            pd.Timestamp("2009-05-04 13:54:10"),
                                            pd.Timestamp("2008-12-08 06:04:00")]
    assert events["track_name"].tolist() == ["Fuck Me Im Famous", 'Say "Hi"', "null"]
    assert events["track_id"].isna().tolist() == [True, False, True]
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")


def test_lastfm_gzip_and_malformed_lines(tmp_path):
    lines = LASTFM_LINES + [
        "user_000003\t2009-01-01T00:00:00Z\t\tArtist\t\tTrack\textra",  # 7 fields
        "user_000003\t2009-01-01T00:00:00Z\t\tArtist\t",                # 5 fields
        "user_000003\t\t\tArtist\t\tTrack",                            # no time
        "user_000003\t2009-01-01T00:00:00Z\t\t\t\tTrack",              # no artist
        "\t2009-01-01T00:00:00Z\t\tArtist\t\tTrack",                   # no user
    ]
    path = write_text(tmp_path / "l.tsv.gz", lines, compress=True)
    with pytest.warns(UserWarning, match=r"Skipped 5 of 8 lines.*line 4: 7 field") as record:
        events = load_lastfm_1k(path)
    assert len(record) == 1
    assert "both artist-mbid and artist-name are empty" in str(record[0].message)
    assert len(events) == 3
    assert events["user"].nunique() == 2


def test_lastfm_wrong_layout(tmp_path):
    path = write_text(tmp_path / "c.txt", SNAP_LINES)
    with pytest.raises(ValueError, match=r"Last.fm 1K layout.*5 field\(s\) instead of 6"):
        load_lastfm_1k(path)
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_lastfm_1k(tmp_path / "empty.tsv")


@needs_shared_file(LASTFM_HEAD)
def test_real_lastfm_head():
    events = load_quietly(load_lastfm_1k, LASTFM_HEAD)
    assert len(events) == 5_000
    assert events["user"].value_counts().to_dict() == {"user_000001": 4_997,
                                                       "user_000002": 3}
    assert events["item"].nunique() == 235
    assert events["artist_name"].nunique() == 235
    assert events["track_id"].isna().sum() == 1_396
    assert events["timestamp"].iloc[0] == pd.Timestamp("2009-05-04 23:08:57")
    assert events["timestamp"].iloc[-1] == pd.Timestamp("2008-12-08 06:04:00")
    # Newest first within user_000001, as published.
    first_user = events.loc[events["user"] == "user_000001", "timestamp"]
    assert first_user.is_monotonic_decreasing
    assert 'Johnny "Hammond" Smith' in set(events["artist_name"])


# -------------------------------------------------------------- MovieLens
ML_ROWS = [(1, 31, 2.5, 1260759144), (1, 1029, 3.0, 1260759179),
           (7, 5, 4.0, 0)]


def check_movielens_rows(events):
    assert list(events.columns) == ["user", "item", "timestamp", "rating"]
    assert events["user"].tolist() == [1, 1, 7]
    assert events["item"].tolist() == [31, 1029, 5]
    assert events["rating"].tolist() == [2.5, 3.0, 4.0]
    assert events["timestamp"].tolist() == [pd.Timestamp("2009-12-14 02:52:24"),
                                            pd.Timestamp("2009-12-14 02:52:59"),
                                            pd.Timestamp("1970-01-01")]
    assert events["user"].dtype == np.int64 and events["item"].dtype == np.int64
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")


@pytest.mark.parametrize("name, header, fmt, compress", [
    ("ratings.csv", "userId,movieId,rating,timestamp", "{},{},{},{}", False),
    ("ratings.csv.gz", "userId,movieId,rating,timestamp", "{},{},{},{}", True),
    ("ratings.dat", None, "{}::{}::{}::{}", False),
    ("u.data", None, "{}\t{}\t{}\t{}", False),
    ("anything", None, "{}\t{}\t{}\t{}", True),
])
def test_movielens_layouts(tmp_path, name, header, fmt, compress):
    lines = ([header] if header else []) + [
        fmt.format(u, i, f"{r:g}", t) for u, i, r, t in ML_ROWS]
    path = write_text(tmp_path / name, lines + [""], compress=compress)
    check_movielens_rows(load_quietly(load_movielens, path))


def test_movielens_directory(tmp_path):
    write_text(tmp_path / "u.data", [f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in ML_ROWS])
    check_movielens_rows(load_movielens(tmp_path))
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="No MovieLens ratings file"):
        load_movielens(tmp_path / "other")


def test_movielens_crlf(tmp_path):
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{i},{r:g},{t}" for u, i, r, t in ML_ROWS]
    check_movielens_rows(load_movielens(write_text(tmp_path / "r.csv", lines,
                                                   newline="\r\n")))


@pytest.mark.parametrize("lines, match", [
    (["userId,movieId,rating,timestamp", "1,2,3,4", "1,2,3,4,5"],
     r"line 3 has 5 ','-separated field\(s\) instead of 4"),
    (["userId,movieId,rating,timestamp", "1,2,3,4", "1,2,x,4"],
     r"line 3 has the rating 'x'"),
    (["userId,movieId,rating,timestamp", "1,2.5,3,4"], r"line 2 has the movie id '2.5'"),
    (["userId,movieId,rating,timestamp", "1,2,,4"], r"line 2 has the rating"),
    (["user,item,rating,time", "1,2,3,4"], "is not a MovieLens ratings file"),
    (["userId,movieId,timestamp,rating", "1,2,3,4"], "has the header"),
    (["1::2::3"], r"line 1 has 5 ':'-separated field\(s\) instead of 7"),
    (["1\t2\t3\t4", "5\t6\t7"], r"line 2 has 3 '\\t'-separated"),
    (["1 2 3 4"], "is not a MovieLens ratings file"),
    (["userId,movieId,rating,timestamp"], "has no ratings"),
])
def test_movielens_malformed(tmp_path, lines, match):
    path = write_text(tmp_path / "ratings", lines)
    with pytest.raises(ValueError, match=match):
        load_movielens(path)


def test_movielens_empty(tmp_path):
    (tmp_path / "ratings.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_movielens(tmp_path / "ratings.csv")


@needs_shared_file(MOVIELENS)
def test_real_movielens():
    events = load_quietly(load_movielens, MOVIELENS)
    assert events.shape == (100_004, 4)
    assert events["user"].nunique() == 671
    assert events["item"].nunique() == 9_066
    assert events["rating"].min() == 0.5 and events["rating"].max() == 5.0
    first = events.iloc[0]
    assert (first["user"], first["item"], first["rating"]) == (1, 31, 2.5)
    assert first["timestamp"] == pd.Timestamp("2009-12-14 02:52:24")
    renamed = load_movielens(MOVIELENS, user_col="u", item_col="i", time_col="t")
    assert list(renamed.columns) == ["u", "i", "t", "rating"]


def test_blank_lines_with_crlf(tmp_path):
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{i},{r:g},{t}" for u, i, r, t in ML_ROWS] + ["", ""]
    path = write_text(tmp_path / "r.csv", lines, newline="\r\n")
    check_movielens_rows(load_quietly(load_movielens, path))
    path = write_text(tmp_path / "c.txt", SNAP_LINES + [""], newline="\r\n")
    with pytest.warns(UserWarning, match="Skipped 1 of 4 lines.*line 4: 0 field"):
        assert len(load_snap_checkins(path)) == 3


def test_corrupted_gzip(tmp_path):
    data = gzip.compress("\n".join(SNAP_LINES * 50).encode())
    path = tmp_path / "c.txt.gz"
    path.write_bytes(data[:-30])
    with pytest.raises(ValueError, match="truncated or corrupted gzip"):
        load_snap_checkins(path)
    path.write_bytes(data[:12])
    with pytest.raises(ValueError, match="truncated or corrupted gzip"):
        load_movielens(path)
