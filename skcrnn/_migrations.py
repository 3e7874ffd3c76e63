"""What saved files and pickles of earlier versions lack, and how it is filled.

Files written by :meth:`~skcrnn.BaseRecommender.save` hold the package version
that wrote them (the record entry :data:`FILE_ENTRY`); pickled estimators
hold it too (the state's key :data:`PICKLE_KEY`, as scikit-learn's
``_sklearn_version``). A file or pickle without one was written before 0.2.0,
the first version that stamps it, and is taken to be older than every version
of :data:`MIGRATIONS`.

:data:`MIGRATIONS` is the one table of what changed: for each version, the
entries that files and pickles of every earlier version may lack, and the
value that gives an estimator the behaviour it had then. Loading a file
(:func:`migrate_record`) or unpickling (:func:`migrate_state`) applies it
once, where the estimator is rebuilt, from the stamped version: each entry of
a version later than the stamp is filled where it is missing (a file of an
unreleased snapshot may already hold it). A file or pickle of this version
(or a later one) gets nothing: an entry that it lacks is damage, not age.

Reading the layout of a file (format versions 1 to 3) is
:mod:`skcrnn._persistence`'s job; this module only sees records and states.
It imports nothing of skcrnn but the version, so every layer may use it.
"""

import copy
import re
import warnings
from typing import NamedTuple

from ._version import __version__

#: The version that files and pickles written now record.
VERSION = __version__
#: Entry of a saved file's record that holds the package version that wrote it.
FILE_ENTRY = "skcrnn_version"
#: Key of a pickled estimator's state that holds the package version.
PICKLE_KEY = "_skcrnn_version"


class Parameter(NamedTuple):
    """A constructor parameter added in a version.

    Filled, in ``record["params"]`` of a file or as the attribute of a
    pickled estimator, with ``fill``, the value that behaves as the
    estimator did before the parameter existed. Applies to the estimators
    derived from the class named ``scope`` that have the parameter.
    """

    scope: str
    name: str
    fill: object
    why: str


class Fitted(NamedTuple):
    """Something fitted estimators keep since a version.

    ``entry`` is its name in a saved file's record, ``attribute`` its name
    on the estimator (what a pickle holds); both are filled with a copy of
    ``fill``. Applies to the estimators derived from the class named
    ``scope`` (by name, so that this module imports no estimator), and in a
    pickle only to a fitted one.
    """

    scope: str
    entry: str
    attribute: str
    fill: object
    why: str


class Derived(NamedTuple):
    """Something pickled estimators keep since a version, derived from the rest.

    A pickle of a fitted estimator that holds ``needs`` but not
    ``attribute`` gets ``derive(cls, state)``, computed from its state once
    the other entries are filled. Files need none: their loader rebuilds it.
    """

    scope: str
    attribute: str
    needs: str
    derive: object
    why: str


class Converted(NamedTuple):
    """An entry whose form changed in a version, converted from the old form.

    Files (``entry``) and fitted pickles (``attribute``) of earlier versions
    get ``convert(value, other)``, where ``other`` is the value of the
    entry or attribute that ``reads`` names (``(entry, attribute)``), once
    the fills are done.
    """

    scope: str
    entry: str
    attribute: str
    reads: tuple
    convert: object
    why: str


def _last_times_in_nanoseconds(last_times, time_kind):
    if last_times is None or time_kind != "datetime":
        return last_times
    from ._events import nanoseconds_from_magnitude
    return nanoseconds_from_magnitude(last_times)


def _pickled_fit_time_params(cls, state):
    return {name: state[name] for name in cls._fit_time_param_names()}


#: For each version, in order: what files and pickles of earlier versions
#: lack. Release 0.1.0 wrote format version 2 files (format 1 files were
#: written before it), neither stamped with the package version; format 3
#: files without the stamp were written by unreleased snapshots of 0.2.0.
_GRU, _TORCH, _BASE = ("CollaborativeGRURecommender", "TorchRecommender",
                       "BaseRecommender")

MIGRATIONS = (
    ("0.2.0", (
        Parameter(_GRU, "copy_history", False, "the copy gate: off"),
        Parameter(_GRU, "copy_decay", 1.0, "the copy gate's decay"),
        Parameter(_GRU, "rank", None, "low-rank recurrent weights"),
        Parameter(_GRU, "deviation_penalty", 0.0, "no penalty: the paper's"),
        Parameter(_GRU, "dropout", 0.0, "no dropout"),
        Parameter(_GRU, "loss", "full", "the exact softmax"),
        Parameter(_GRU, "n_negatives", None, "sampled softmax"),
        Parameter(_GRU, "negative_power", 0.75, "sampled softmax"),
        Parameter(_GRU, "n_jobs", None, "the thread policy"),
        Parameter(_GRU, "partial_epochs", 1, "partial_fit"),
        Parameter(_TORCH, "replay_epochs", 0, "partial_fit: no replay"),
        Parameter(_TORCH, "repeat_bias", 0.0, "no repeat bias"),
        Parameter(_TORCH, "warm_start", False, "fit starts afresh"),
        Fitted(_BASE, "time_kind", "_time_kind", None,
               "update(): no time kind known, any kind goes"),
        Fitted(_BASE, "last_times", "_last_times", None,
               "update(): no last times known, any order goes"),
        Fitted(_TORCH, "optimizer_state", "optimizer_state_", None,
               "partial_fit: no optimizer statistics, they start at zero"),
        Fitted(_TORCH, "partial_history", "partial_history_", [],
               "partial_fit: not called yet"),
        Converted(_BASE, "last_times", "_last_times", ("time_kind", "_time_kind"),
                  _last_times_in_nanoseconds,
                  "datetimes were kept in their column's unit (s, ms, us or ns), "
                  "now in nanoseconds: the unit is told by their magnitude"),
        Fitted(_BASE, "time_unit", "_time_unit", "ns",
               "the unit of datetimes: nanoseconds once converted"),
        Derived(_BASE, "_fitted_params", "classes_", _pickled_fit_time_params,
                "the fit-time parameters: those pickled with the model"),
        Derived(_GRU, "history_weights_decay_", "history_weights_",
                lambda cls, state: None,
                "the decay of the copy gate's cache: unknown, so the cache is "
                "recomputed from the histories when first read"),
    )),
)


class InconsistentVersionWarning(UserWarning):
    """An estimator is unpickled from a later version of skcrnn, as
    scikit-learn's ``InconsistentVersionWarning``."""

    def __init__(self, estimator_name, original_version, current_version):
        super().__init__(estimator_name, original_version, current_version)
        self.estimator_name = estimator_name
        self.original_version = original_version
        self.current_version = current_version

    def __str__(self):
        return (f"Trying to unpickle estimator {self.estimator_name} from "
                f"skcrnn version {self.original_version} when using version "
                f"{self.current_version}. This might lead to breaking code or "
                f"invalid results; save and load the model instead.")


# --------------------------------------------------------------- versions
def parse_version(version):
    """``"1.2.3"`` (any suffix after the numbers aside) as ``(1, 2, 3)``.

    Raises
    ------
    ValueError
        If ``version`` is not a string that starts with dotted numbers.
    """
    match = re.match(r"(\d+(?:\.\d+)*)", version) if isinstance(version, str) \
        else None
    if match is None:
        raise ValueError(f"its skcrnn version is {version!r}, not a version")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    return numbers + (0,) * max(0, 3 - len(numbers))


def migrations_since(version):
    """The entries of :data:`MIGRATIONS` that a file or pickle of ``version``
    (None: without a stamp, older than all) may lack, oldest first."""
    stamped = None if version is None else parse_version(version)
    return [change for since, changes in MIGRATIONS
            if stamped is None or stamped < parse_version(since)
            for change in changes]


def _in_scope(change, cls):
    if isinstance(change, Parameter) and change.name not in cls._get_param_names():
        return False
    return any(klass.__name__ == change.scope for klass in cls.__mro__)


# ------------------------------------------------------------------ files
def migrate_record(cls, record):
    """The record of a saved file of ``cls``, filled as :data:`MIGRATIONS`
    says for the version that wrote it.

    Parameters
    ----------
    cls : type
        The estimator class that loads it.
    record : dict
        Of :func:`skcrnn._persistence.read`; not changed.

    Returns
    -------
    dict
        A new record (and a new ``params`` dict) with the entries that the
        file's version lacks; the same entries otherwise.

    Raises
    ------
    ValueError
        If the version stamp is not a version (a damaged file).
    """
    record = dict(record)
    record["params"] = dict(record["params"])
    version = record[FILE_ENTRY] if FILE_ENTRY in record else None
    if FILE_ENTRY in record:
        parse_version(version)  # a stamp that is not a version is damage
    changes = migrations_since(version)
    for change in changes:
        if not _in_scope(change, cls):
            continue
        if isinstance(change, Parameter):
            record["params"].setdefault(change.name, copy.deepcopy(change.fill))
        elif isinstance(change, Fitted):
            record.setdefault(change.entry, copy.deepcopy(change.fill))
    for change in changes:  # converted once the fills are done
        if isinstance(change, Converted) and _in_scope(change, cls):
            record[change.entry] = change.convert(record[change.entry],
                                                  record[change.reads[0]])
    return record


# ---------------------------------------------------------------- pickles
def stamp_state(state):
    """A pickled estimator's state with the package version added."""
    return {**state, PICKLE_KEY: VERSION}


def migrate_state(cls, state):
    """The state of a pickled ``cls``, without its version stamp, filled as
    :data:`MIGRATIONS` says for the version that pickled it.

    A state of a later version of skcrnn gets nothing, with an
    :class:`InconsistentVersionWarning`; so does one whose stamp is not a
    version.
    """
    state = dict(state)
    stamped = PICKLE_KEY in state
    version = state.pop(PICKLE_KEY, None)
    try:
        changes = migrations_since(version)
        later = stamped and parse_version(version) > parse_version(VERSION)
    except ValueError:  # a stamp that is not a version
        changes, later = [], True
    if later:
        warnings.warn(InconsistentVersionWarning(cls.__name__, version, VERSION),
                      stacklevel=3)
    fitted = "classes_" in state
    for change in changes:
        if not _in_scope(change, cls):
            continue
        if isinstance(change, Parameter):
            state.setdefault(change.name, copy.deepcopy(change.fill))
        elif isinstance(change, Fitted) and fitted:
            state.setdefault(change.attribute, copy.deepcopy(change.fill))
    for change in changes:  # converted and derived, once the state is filled
        if not _in_scope(change, cls):
            continue
        if isinstance(change, Converted) and fitted:
            state[change.attribute] = change.convert(state[change.attribute],
                                                     state[change.reads[1]])
        elif (isinstance(change, Derived) and change.needs in state
              and change.attribute not in state):
            state[change.attribute] = change.derive(cls, state)
    return state
