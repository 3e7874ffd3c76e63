"""Data sets: loaders of the public event logs, fetchers, and a generator.

Every function returns a :class:`pandas.DataFrame` with one row per event and
the columns ``user``, ``item`` and ``timestamp`` first (``datetime64[ns]``,
tz-naive UTC), renamable with ``user_col``, ``item_col`` and ``time_col``.
"""

from ._fetch import fetch_brightkite, fetch_lastfm_1k
from ._generate import make_sequences
from ._loaders import load_lastfm_1k, load_movielens, load_snap_checkins

__all__ = [
    "fetch_brightkite",
    "fetch_lastfm_1k",
    "load_lastfm_1k",
    "load_movielens",
    "load_snap_checkins",
    "make_sequences",
]
