"""Validation of event frames and their encoding into per-user sequences.

An *events* frame has one row per event with a user, an item and a time
column. Everything downstream works on :class:`Sequences`: integer item codes
grouped by user (CSR layout), each group sorted by time with a stable sort so
that ties keep their row order.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

_LABEL_KINDS = {"integer", "string", "floating", "boolean", "mixed-integer-float",
                "bytes", "decimal"}


def check_events(X, user_col="user", item_col="item", time_col="timestamp",
                 name="X"):
    """Validate an events frame and return its three columns as arrays.

    Parameters
    ----------
    X : pandas.DataFrame
        The events, one row per event.
    user_col, item_col, time_col : str
        Names of the user, item and time columns.
    name : str
        How to call ``X`` in error messages.

    Returns
    -------
    users, items : numpy.ndarray
        The label columns, as they are in ``X``.
    times : numpy.ndarray of int64 or float64
        The time column as sortable numbers (datetimes as nanoseconds, UTC).

    Raises
    ------
    TypeError
        If ``X`` is not a DataFrame, or a column has an unusable type.
    ValueError
        If a column is missing or duplicated, ``X`` is empty, or a value is
        missing.
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            f"{name} must be a pandas DataFrame of events with columns "
            f"{user_col!r}, {item_col!r}, {time_col!r}; got {type(X).__name__}.")
    columns = (user_col, item_col, time_col)
    if len(set(columns)) != 3:
        raise ValueError(
            f"user_col, item_col and time_col must be three different columns; "
            f"got {columns!r}.")
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise ValueError(
            f"{name} is missing the column(s) {missing!r}; it has "
            f"{list(X.columns)!r}. Rename them or pass user_col/item_col/time_col.")
    duplicated = [c for c in columns if int((X.columns == c).sum()) > 1]
    if duplicated:
        raise ValueError(f"{name} has duplicated column(s) {duplicated!r}.")
    if len(X) == 0:
        raise ValueError(f"{name} has no rows: at least one event is needed.")
    users = _check_labels(X[user_col], user_col, name)
    items = _check_labels(X[item_col], item_col, name)
    times = _check_times(X[time_col], time_col, name)
    return users, items, times


def _check_labels(column, col_name, name):
    n_missing = int(column.isna().sum())
    if n_missing:
        raise ValueError(
            f"{name}[{col_name!r}] has {n_missing} missing value(s) (NaN/None); "
            f"drop or fill them before fitting or scoring.")
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(column.cat.categories.dtype)
    kind = pd.api.types.infer_dtype(column, skipna=False)
    if kind not in _LABEL_KINDS:
        raise TypeError(
            f"{name}[{col_name!r}] must hold labels of one kind (all integers or "
            f"all strings, for instance); pandas infers {kind!r}.")
    return column.to_numpy()


def _check_times(column, col_name, name):
    n_missing = int(column.isna().sum())
    if n_missing:
        raise ValueError(
            f"{name}[{col_name!r}] has {n_missing} missing time(s) (NaN/NaT).")
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        dtype = column.dtype
    if pd.api.types.is_datetime64_dtype(dtype):
        return _nanoseconds(column, col_name, name)
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        if pd.api.types.infer_dtype(column) == "datetime":
            problem = _datetime_objects_problem(column)
        else:
            problem = (f"it has dtype {dtype}. Convert it with "
                       f"pandas.to_datetime(..., utc=True) or to numbers.")
        raise TypeError(
            f"{name}[{col_name!r}] must be numeric or datetime64; {problem}")
    values = column.to_numpy()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{name}[{col_name!r}] has infinite time(s).")
    return values


#: The one unit of validated datetimes: nanoseconds since the epoch, UTC.
TIME_UNIT = "ns"


def _nanoseconds(column, col_name, name):
    """A datetime64 column of any resolution as int64 :data:`TIME_UNIT` (UTC).

    Columns come in seconds, milliseconds, microseconds (pandas parses
    strings so) or nanoseconds; their integers differ by factors of 1000,
    so every one is converted to one unit before times are compared.
    """
    try:
        return column.dt.as_unit(TIME_UNIT).to_numpy().view(np.int64)
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        raise ValueError(
            f"{name}[{col_name!r}] has times outside the range that nanoseconds "
            f"hold ({pd.Timestamp.min.date()} to {pd.Timestamp.max.date()}); "
            f"give them as numbers instead.") from None


def nanoseconds_from_magnitude(values):
    """Integer datetimes of an unrecorded unit, converted to nanoseconds.

    Files and pickles written before 0.2.0 kept datetimes as the integers
    of their column's unit (seconds, milliseconds, microseconds, which
    pandas gives parsed strings, or nanoseconds). The unit is told by the
    largest magnitude: below 1e11 seconds, below 1e14 milliseconds, below
    1e17 microseconds, else nanoseconds, which is right for every time
    between 1973 and 2262 (in any unit) and for nanoseconds before.
    """
    values = np.asarray(values, dtype=np.int64)
    largest = int(np.abs(values).max()) if len(values) else 0
    for bound, factor in ((10 ** 11, 10 ** 9), (10 ** 14, 10 ** 6), (10 ** 17, 10 ** 3)):
        if largest < bound:
            return values * factor
    return values


def _datetime_objects_problem(column):
    """What an object column of datetime objects holds, and how to convert it.

    The column holds a real mix of time zones, or aware and naive objects
    together, or objects that only need converting (one zone or none).
    """
    zones = {None if value.tzinfo is None else str(value.tzinfo) for value in column}
    named = sorted(zone for zone in zones if zone is not None)
    if named and None in zones:
        return ("it holds Python datetime objects, some with a time zone and some "
                "without. Give the naive ones their zone (tz_localize), then "
                "convert it with pandas.to_datetime(..., utc=True).")
    if len(named) > 1:
        return (f"it holds Python datetime objects in a mix of time zones "
                f"({', '.join(named[:5])}{', ...' if len(named) > 5 else ''}). "
                f"Convert it with pandas.to_datetime(..., utc=True).")
    if named:
        return (f"it holds Python datetime objects in one time zone, {named[0]} "
                f"(object dtype). Convert it with pandas.to_datetime(..., "
                f"utc=True).")
    return ("it holds Python datetime objects without a time zone (object "
            "dtype). Convert it with pandas.to_datetime(...).")


def time_kind(column):
    """``"datetime"`` for a datetime column (with or without a zone), else ``"numeric"``."""
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return "datetime"
    return "numeric"


def time_order(group_codes, times):
    """Row order that sorts by group then time, keeping ties in row order."""
    order = np.argsort(times, kind="stable")
    return order[np.argsort(group_codes[order], kind="stable")]


@dataclass(frozen=True)
class Sequences:
    """Item sequences grouped by user, in CSR layout.

    Attributes
    ----------
    user_codes : ndarray of shape (n_groups,)
        The model's code of each group's user, ``-1`` for a user the model
        does not know.
    indptr : ndarray of shape (n_groups + 1,)
        Group ``g`` holds ``items[indptr[g]:indptr[g + 1]]``.
    items : ndarray of shape (n_events,)
        Item codes (all known to the model), in time order within each group.
    """

    user_codes: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    @property
    def n_groups(self):
        return len(self.user_codes)

    @property
    def lengths(self):
        return np.diff(self.indptr)

    @property
    def group_of_event(self):
        return np.repeat(np.arange(self.n_groups), self.lengths)

    @property
    def position_of_event(self):
        """Each event's position inside its group (0 for the first)."""
        return np.arange(len(self.items)) - np.repeat(self.indptr[:-1], self.lengths)

    @property
    def n_prefixes(self):
        """Each group of length n has n + 1 prefixes (lengths 0 to n)."""
        return len(self.items) + self.n_groups

    @property
    def prefix_start(self):
        """Id of each group's empty prefix; prefix ``(g, k)`` has id start[g] + k."""
        return self.indptr[:-1] + np.arange(self.n_groups)

    def group_of(self, prefixes):
        """The group of each prefix id (see :attr:`prefix_start`)."""
        return np.searchsorted(self.prefix_start, prefixes, side="right") - 1

    def subset(self, groups, keep=None):
        """The sequences of the given group indices, in that order.

        Parameters
        ----------
        groups : array-like of int
            Group indices.
        keep : array-like of int, optional
            Keep only the first ``keep[j]`` items of group ``groups[j]`` (all
            of them where it is longer); by default every item.

        Returns
        -------
        Sequences
        """
        groups = np.asarray(groups, dtype=np.int64)
        lengths = self.lengths[groups]
        if keep is not None:
            lengths = np.minimum(lengths, np.asarray(keep, dtype=np.int64))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        starts = self.indptr[groups]
        event_index = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Sequences(self.user_codes[groups], indptr, self.items[event_index])


def group_sorted(group_codes, n_groups):
    """``indptr`` of codes that are already sorted, with ``n_groups`` groups."""
    counts = np.bincount(group_codes, minlength=n_groups)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def mean_of_group_means(values, groups):
    """The mean over groups of each group's mean of ``values`` (NaN rows left out).

    The paper's error is this mean of per-user mean negative log-likelihoods:
    every user counts once, however many events they have.

    Raises
    ------
    ValueError
        If every value is NaN (no row could be scored).
    """
    scored = ~np.isnan(values)
    if not scored.any():
        raise ValueError("No row of X could be scored: every item is unknown "
                         "to the model.")
    n_groups = int(groups.max()) + 1
    sums = np.bincount(groups[scored], weights=values[scored], minlength=n_groups)
    counts = np.bincount(groups[scored], minlength=n_groups)
    has_rows = counts > 0
    return float(np.mean(sums[has_rows] / counts[has_rows]))
