"""Loaders for the public event logs used with collaborative RNNs.

Every loader returns one row per event with the columns ``user``, ``item`` and
``timestamp`` first (renamable with ``user_col``, ``item_col``, ``time_col``),
followed by data-set specific extras. Times are ``datetime64[ns]`` holding UTC
without a time zone (tz-naive UTC), so they compare directly with each other.
Rows keep the order of the file.

The tab-separated logs (SNAP check-ins, Last.fm 1K) are parsed in two passes:
a vectorised byte scan counts the fields of every line, then
:func:`pandas.read_csv` (C engine) reads only the lines with the right number
of fields. This keeps malformed lines out without a Python loop per line, and
lets the loaders report exactly how many lines they skipped.
"""

import csv
import gzip
import os
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_GZIP_MAGIC = b"\x1f\x8b"
_SCAN_BLOCK = 1 << 24  # bytes read at a time by the field-count scan

_SNAP_FIELDS = ["user", "time", "latitude", "longitude", "location_id"]
_SNAP_LAYOUT = ("the SNAP check-in layout: no header, 5 tab-separated fields "
                "'user \\t time(ISO 8601) \\t latitude \\t longitude \\t "
                "location_id'")

_LASTFM_FIELDS = ["user", "time", "artist_id", "artist_name", "track_id",
                  "track_name"]
_LASTFM_LAYOUT = ("the Last.fm 1K layout: no header, 6 tab-separated fields "
                  "'userid \\t timestamp(ISO 8601) \\t artist-mbid \\t "
                  "artist-name \\t track-mbid \\t track-name'")

_MOVIELENS_LAYOUTS = (
    "one of the MovieLens rating layouts: ratings.csv (header "
    "'userId,movieId,rating,timestamp'), ratings.dat "
    "('UserID::MovieID::Rating::Timestamp', no header) or u.data "
    "('user \\t item \\t rating \\t timestamp', no header)")
_MOVIELENS_CSV_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
_MOVIELENS_FILE_NAMES = ("ratings.csv", "ratings.dat", "u.data")


# --------------------------------------------------------------- public API
def load_snap_checkins(path, *, user_col="user", item_col="item",
                       time_col="timestamp"):
    """Load a SNAP location-based check-in log (Brightkite, Gowalla).

    The file has no header and one check-in per line, 5 tab-separated fields::

        user \\t time \\t latitude \\t longitude \\t location_id

    with times in ISO 8601 such as ``2010-10-17T01:48:53Z``. It may be plain
    text or gzip-compressed (recognised by its magic bytes, whatever its name).

    The published Brightkite file holds a few malformed lines. Like the
    authors of the Collaborative RNN paper, the loader skips every line that
    does not split into 5 fields; it also skips lines whose user is not an
    integer, whose time is empty or not a time, or whose location is empty.
    One :class:`UserWarning` says how many lines were skipped. Latitude and
    longitude are not needed for an event: unparsable ones become NaN.

    Parameters
    ----------
    path : str or os.PathLike
        The check-in file, e.g. ``loc-brightkite_totalCheckins.txt.gz``.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    pandas.DataFrame
        One row per check-in, in file order, with columns ``user`` (int64),
        ``item`` (the location id, str), ``timestamp`` (datetime64[ns],
        tz-naive UTC), ``latitude`` and ``longitude`` (float64).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is empty, a corrupted gzip file or an archive, or no
        line is in the SNAP check-in layout (the message shows what the
        first line holds), or if the column names collide.

    Warns
    -----
    UserWarning
        Once, if some lines were skipped as malformed.

    Examples
    --------
    >>> events = load_snap_checkins("loc-brightkite_totalCheckins.txt.gz")  # doctest: +SKIP
    >>> list(events.columns)  # doctest: +SKIP
    ['user', 'item', 'timestamp', 'latitude', 'longitude']
    """
    path = _existing_file(path)
    table = _read_tab_separated(
        path, _SNAP_FIELDS, _SNAP_LAYOUT,
        numeric={"user": np.int64, "latitude": np.float64,
                 "longitude": np.float64})
    frame = table.frame

    users = _as_numbers(frame["user"])
    times = _parse_iso_times(frame["time"])
    table.reject(~_is_integral(users), "user is not an integer")
    table.reject(times.isna(), "time is empty or not an ISO 8601 time")
    table.reject(frame["location_id"].isna(), "location_id is empty")
    keep = table.finish(path, _SNAP_LAYOUT)

    events = pd.DataFrame({
        "user": users[keep].astype(np.int64),
        "item": _as_strings(frame["location_id"][keep]),
        "timestamp": times[keep],
        "latitude": _as_numbers(frame["latitude"][keep]).astype(np.float64),
        "longitude": _as_numbers(frame["longitude"][keep]).astype(np.float64),
    }).reset_index(drop=True)
    return _rename(events, user_col, item_col, time_col)


def load_lastfm_1k(path, *, user_col="user", item_col="item",
                   time_col="timestamp"):
    """Load the Last.fm 1K listening log (Celma, 2010).

    The file ``userid-timestamp-artid-artname-traid-traname.tsv`` (plain or
    gzip-compressed) has no header and one play per line, 6 tab-separated
    fields::

        userid \\t timestamp \\t artist-mbid \\t artist-name \\t track-mbid \\t track-name

    MusicBrainz ids (MBIDs) may be empty. Names may contain quote characters,
    which are kept as they are. The item of a play is its artist, as in the
    Collaborative RNN paper: the artist MBID, or the artist name where the
    MBID is empty. Lines that do not split into 6 fields, or that lack a user,
    a valid time or an artist, are skipped with one :class:`UserWarning`.

    This reads the TSV, not the published ``lastfm-dataset-1K.tar.gz``
    archive; :func:`fetch_lastfm_1k` downloads and extracts it.

    Parameters
    ----------
    path : str or os.PathLike
        The TSV file.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    pandas.DataFrame
        One row per play, in file order (the published file lists each user's
        plays newest first), with columns ``user`` (str), ``item`` (str),
        ``timestamp`` (datetime64[ns], tz-naive UTC), ``artist_name``,
        ``track_id`` and ``track_name`` (str, NaN where empty).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is empty, a corrupted gzip file or an archive, or no
        line is in the Last.fm 1K layout, or if the column names collide.

    Warns
    -----
    UserWarning
        Once, if some lines were skipped as malformed.

    Examples
    --------
    >>> events = load_lastfm_1k(
    ...     "userid-timestamp-artid-artname-traid-traname.tsv")  # doctest: +SKIP
    >>> list(events.columns)  # doctest: +SKIP
    ['user', 'item', 'timestamp', 'artist_name', 'track_id', 'track_name']
    """
    path = _existing_file(path)
    table = _read_tab_separated(path, _LASTFM_FIELDS, _LASTFM_LAYOUT)
    frame = table.frame

    times = _parse_iso_times(frame["time"])
    items = frame["artist_id"].fillna(frame["artist_name"])
    table.reject(frame["user"].isna(), "userid is empty")
    table.reject(times.isna(), "timestamp is empty or not an ISO 8601 time")
    table.reject(items.isna(), "both artist-mbid and artist-name are empty")
    keep = table.finish(path, _LASTFM_LAYOUT)

    events = pd.DataFrame({
        "user": _as_strings(frame["user"][keep]),
        "item": _as_strings(items[keep]),
        "timestamp": times[keep],
        "artist_name": _as_strings(frame["artist_name"][keep]),
        "track_id": _as_strings(frame["track_id"][keep]),
        "track_name": _as_strings(frame["track_name"][keep]),
    }).reset_index(drop=True)
    return _rename(events, user_col, item_col, time_col)


def load_movielens(path, *, user_col="user", item_col="item",
                   time_col="timestamp"):
    """Load MovieLens ratings as timestamped events.

    Three published layouts are recognised from the file's content:

    - ``ratings.csv`` (ml-latest, ml-20m, ml-25m...): comma-separated with the
      header ``userId,movieId,rating,timestamp``;
    - ``ratings.dat`` (ml-1m, ml-10m): ``UserID::MovieID::Rating::Timestamp``,
      no header;
    - ``u.data`` (ml-100k): tab-separated ``user item rating timestamp``, no
      header.

    Times are Unix seconds. Files may be gzip-compressed. Unlike the logs of
    the other loaders, MovieLens files are clean, so any malformed line is an
    error rather than skipped; blank lines are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The ratings file, or a directory holding ``ratings.csv``,
        ``ratings.dat`` or ``u.data``.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    pandas.DataFrame
        One row per rating, in file order, with columns ``user`` (int64),
        ``item`` (the movie id, int64), ``timestamp`` (datetime64[ns],
        tz-naive UTC) and ``rating`` (float64).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, or is a directory without a ratings file.
    ValueError
        If the file is empty, a corrupted gzip file, in none of the layouts,
        or has a malformed line (the message names the line), or if the
        column names collide.

    Examples
    --------
    >>> events = load_movielens("ml-latest-small/ratings.csv")  # doctest: +SKIP
    >>> list(events.columns)  # doctest: +SKIP
    ['user', 'item', 'timestamp', 'rating']
    """
    path = _movielens_file(path)
    first_line = _first_line(path)
    if first_line is None:
        raise ValueError(f"{str(path)!r} is empty; expected {_MOVIELENS_LAYOUTS}.")
    if "::" in first_line:
        raw = _read_movielens_dat(path)
    elif first_line.replace(" ", "").lower().startswith("userid,movieid"):
        raw = _read_movielens_csv(path, first_line)
    elif "\t" in first_line:
        raw = _read_movielens_delimited(path, "\t", 4, [0, 1, 2, 3], header=False)
    else:
        raise ValueError(
            f"{str(path)!r} is not a MovieLens ratings file: expected "
            f"{_MOVIELENS_LAYOUTS}; line 1 is {_shorten(first_line)!r}.")
    user, item, rating, seconds = raw
    events = pd.DataFrame({
        "user": user,
        "item": item,
        "timestamp": pd.to_datetime(seconds, unit="s").astype("datetime64[ns]"),
        "rating": rating,
    })
    return _rename(events, user_col, item_col, time_col)


# ------------------------------------------------------- files and bytes
def _existing_file(path):
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No such file: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory, not a file.")
    return path


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


@contextmanager
def _open_bytes(path):
    """The decompressed bytes of ``path``, gzip or not, as a binary stream."""
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as f:
            yield f
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(
            f"{str(path)!r} is a truncated or corrupted gzip file ({error}).") from error


def _first_line(path):
    """The first line of ``path`` (decoded leniently), or None if it is empty."""
    with _open_bytes(path) as f:
        line = f.readline(1 << 16)
    if not line:
        return None
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _reject_archive(path, layout):
    with _open_bytes(path) as f:
        head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise ValueError(
            f"{str(path)!r} is a tar archive; expected a text file in "
            f"{layout}. Extract the data file from the archive first.")


def _shorten(text, limit=120):
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------ field-count scan
@dataclass
class _LineScan:
    """Result of counting the fields of every line of a file."""

    n_lines: int
    bad_lines: np.ndarray  # 0-based numbers of lines with the wrong count
    bad_fields: np.ndarray  # their field counts (0 for a blank line)
    crlf: bool  # whether some line ends with "\r\n"

    @property
    def blank_lines(self):
        return self.bad_lines[self.bad_fields == 0]


def _scan_fields(path, separator, n_fields):
    """Count ``separator``-separated fields per line, vectorised over blocks.

    A blank line counts as 0 fields. A last line without a newline counts.
    """
    bad_lines, bad_fields, n_lines, crlf = [], [], 0, False
    for block in _line_blocks(path):
        fields, block_crlf = _fields_per_line(block, separator)
        bad = np.flatnonzero(fields != n_fields)
        bad_lines.append(bad + n_lines)
        bad_fields.append(fields[bad])
        n_lines += len(fields)
        crlf = crlf or block_crlf
    if not bad_lines:
        bad_lines = bad_fields = [np.zeros(0, dtype=np.int64)]
    return _LineScan(n_lines, np.concatenate(bad_lines),
                     np.concatenate(bad_fields), crlf)


def _line_blocks(path):
    """Blocks of whole lines of ``path``, each ending with a newline."""
    carry = b""
    with _open_bytes(path) as stream:
        while block := stream.read(_SCAN_BLOCK):
            data = carry + block
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if end:
                yield data[:end]
    if carry:
        yield carry + b"\n"  # the last line has no newline


def _fields_per_line(buffer, separator):
    """Field counts of the lines of ``buffer``, which ends with a newline."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    newlines = np.flatnonzero(data == ord("\n"))
    separators = np.flatnonzero(data == ord(separator))
    separators_before = np.searchsorted(separators, newlines)
    fields = np.diff(separators_before, prepend=0) + 1
    starts = np.concatenate([[0], newlines[:-1] + 1])
    before_newline = data[np.maximum(newlines - 1, 0)]
    ends_crlf = (newlines > starts) & (before_newline == ord("\r"))
    fields[newlines - ends_crlf == starts] = 0  # blank line, "\n" or "\r\n"
    return fields, bool(ends_crlf.any())


# --------------------------------------------- tab-separated event logs
class _Table:
    """Well-formed lines of a tab-separated file, read as strings.

    Loaders mark rows with invalid values through :meth:`reject`, then
    :meth:`finish` warns once about everything skipped and returns the mask
    of rows to keep.
    """

    def __init__(self, frame, line_numbers, scan, n_fields):
        self.frame = frame
        self.line_numbers = line_numbers  # 1-based line of each row
        self.n_lines = scan.n_lines
        self.invalid = np.zeros(len(frame), dtype=bool)
        self.reasons = []  # (line number, description), first of each kind
        if len(scan.bad_lines):
            self.reasons.append((
                int(scan.bad_lines[0]) + 1,
                f"{scan.bad_fields[0]} field(s) instead of {n_fields}"))
        self.n_bad_layout = len(scan.bad_lines)

    def reject(self, mask, reason):
        mask = np.asarray(mask, dtype=bool) & ~self.invalid
        if mask.any():
            self.reasons.append((int(self.line_numbers[mask.argmax()]), reason))
            self.invalid |= mask

    def finish(self, path, layout):
        n_skipped = self.n_bad_layout + int(self.invalid.sum())
        examples = "; ".join(f"line {line}: {reason}"
                             for line, reason in sorted(self.reasons))
        if n_skipped == self.n_lines:
            raise ValueError(
                f"No line of {str(path)!r} is in {layout}. For example, "
                f"{examples}. First line: {_shorten(_first_line(path))!r}.")
        if n_skipped:
            warnings.warn(
                f"Skipped {n_skipped:,} of {self.n_lines:,} lines of "
                f"{str(path)!r} that are not in {layout} ({examples}).",
                UserWarning, stacklevel=3)
        return ~self.invalid


def _read_tab_separated(path, names, layout, numeric=None):
    """Read the lines of ``path`` that have exactly ``len(names)`` fields.

    Columns are read as strings (object), except those in ``numeric``, which
    the C parser reads as numbers directly when every value is one; if one
    is not, the whole file is read as strings and the loader sorts it out.
    """
    _reject_archive(path, layout)
    scan = _scan_fields(path, "\t", len(names))
    if scan.n_lines == 0:
        raise ValueError(f"{str(path)!r} is empty; expected {layout}.")
    good_lines = np.delete(np.arange(scan.n_lines), scan.bad_lines)
    if len(good_lines) == 0:
        frame = pd.DataFrame({name: pd.Series([], dtype=object) for name in names})
        return _Table(frame, good_lines + 1, scan, len(names))
    options = dict(
        sep="\t", header=None, names=names, index_col=False, engine="c",
        quoting=csv.QUOTE_NONE, lineterminator="\n",
        skiprows=set(scan.bad_lines.tolist()), keep_default_na=False,
        na_values=[""], compression="gzip" if _is_gzip(path) else None,
        encoding="utf-8", encoding_errors="replace")
    strings = dict.fromkeys(names, object)
    try:
        frame = pd.read_csv(path, dtype={**strings, **(numeric or {})}, **options)
    except ValueError:
        frame = pd.read_csv(path, dtype=strings, **options)
    if scan.crlf:
        last = names[-1]
        frame[last] = frame[last].str.removesuffix("\r").replace("", np.nan)
    return _Table(frame, good_lines + 1, scan, len(names))


def _parse_iso_times(strings):
    """ISO 8601 strings to tz-naive UTC ``datetime64[ns]``; NaT where invalid."""
    times = pd.to_datetime(strings, format="ISO8601", utc=True, errors="coerce")
    return times.dt.tz_localize(None).astype("datetime64[ns]")


def _as_numbers(column):
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column
    return pd.to_numeric(column, errors="coerce")


def _as_strings(column):
    """Labels as pandas' default string dtype (NaN stays missing)."""
    return column.astype("str")


def _is_integral(numbers):
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.isfinite(values) & (values == np.round(values))


# ------------------------------------------------------------- MovieLens
def _movielens_file(path):
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        for name in _MOVIELENS_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"No MovieLens ratings file ({', '.join(_MOVIELENS_FILE_NAMES)}) "
            f"in the directory {str(path)!r}.")
    return _existing_file(path)


def _read_movielens_csv(path, header):
    columns = [c.strip() for c in header.split(",")]
    if columns != _MOVIELENS_CSV_COLUMNS:
        raise ValueError(
            f"{str(path)!r} has the header {header!r}; expected "
            f"{','.join(_MOVIELENS_CSV_COLUMNS)!r} ({_MOVIELENS_LAYOUTS}).")
    return _read_movielens_delimited(path, ",", 4, [0, 1, 2, 3], header=True)


def _read_movielens_dat(path):
    # "u::i::r::t" split on ":" gives 7 fields with empty ones in between,
    # which the fast C engine can read (it only takes 1-character separators).
    return _read_movielens_delimited(path, ":", 7, [0, 2, 4, 6], header=False)


def _read_movielens_delimited(path, separator, n_fields, value_fields, header):
    """User, item, rating and seconds arrays of a MovieLens ratings file."""
    scan = _scan_fields(path, separator, n_fields)
    malformed = scan.bad_fields != 0
    if malformed.any():
        first = int(np.argmax(malformed))
        raise ValueError(
            f"{str(path)!r} is not in {_MOVIELENS_LAYOUTS}: line "
            f"{scan.bad_lines[first] + 1} has {scan.bad_fields[first]} "
            f"{separator!r}-separated field(s) instead of {n_fields}.")
    blank = scan.blank_lines
    skipped = set(blank.tolist()) | ({0} if header else set())
    line_numbers = np.delete(np.arange(scan.n_lines), sorted(skipped)) + 1
    if len(line_numbers) == 0:
        raise ValueError(f"{str(path)!r} has no ratings; expected {_MOVIELENS_LAYOUTS}.")
    names = [f"f{i}" for i in range(n_fields)]
    kept = [names[i] for i in value_fields]
    options = dict(
        sep=separator, header=None, names=names, usecols=kept, index_col=False,
        engine="c", quoting=csv.QUOTE_NONE, skiprows=skipped,
        compression="gzip" if _is_gzip(path) else None)
    numeric = dict(zip(kept, [np.int64, np.int64, np.float64, np.int64]))
    try:
        frame = pd.read_csv(path, dtype=numeric, **options)
        if np.isfinite(frame[kept[2]].to_numpy()).all():
            return tuple(frame[name].to_numpy() for name in kept)
    except (ValueError, TypeError):
        pass
    # Slow path, only for a broken file: read strings to name the bad line.
    frame = pd.read_csv(path, dtype="str", keep_default_na=False,
                        na_values=[""], **options)
    return (
        _numbers(frame[kept[0]], "user id", path, line_numbers, integer=True),
        _numbers(frame[kept[1]], "movie id", path, line_numbers, integer=True),
        _numbers(frame[kept[2]], "rating", path, line_numbers),
        _numbers(frame[kept[3]], "timestamp", path, line_numbers, integer=True),
    )


def _numbers(strings, what, path, line_numbers, integer=False):
    """Parse a column of numbers, naming the first bad line if any."""
    values = pd.to_numeric(strings, errors="coerce")
    valid = (_is_integral(values) if integer
             else np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan)))
    if not valid.all():
        row = int(np.argmin(valid))
        raise ValueError(
            f"{str(path)!r} is not in {_MOVIELENS_LAYOUTS}: line "
            f"{line_numbers[row]} has the {what} {strings.iloc[row]!r}, which is "
            f"not {'an integer' if integer else 'a number'}.")
    return values.to_numpy(dtype=np.int64 if integer else np.float64)


# --------------------------------------------------------------- columns
def _rename(events, user_col, item_col, time_col):
    """Rename the three event columns, refusing names that would collide."""
    new_names = [user_col, item_col, time_col]
    extras = list(events.columns[3:])
    if len(set(new_names)) != 3:
        raise ValueError(
            f"user_col, item_col and time_col must differ; got {new_names!r}.")
    clashes = [name for name in new_names if name in extras]
    if clashes:
        raise ValueError(
            f"Column name(s) {clashes!r} are already used by the extra columns "
            f"{extras!r}; choose other user_col/item_col/time_col names.")
    return events.set_axis(new_names + extras, axis=1)
