"""Events to codes: a model's vocabularies, appended events, continuations.

A fitted recommender knows its items (``classes_``), its users (``users_``),
each user's history (:class:`~skcrnn._events.Sequences`, group ``u`` is user
``u``) and, to keep histories growing forward, each user's last time and the
kind (datetime or numeric) of the times it was fitted with. This module turns
event frames into codes against them:

:func:`encode_training`
    the vocabularies and histories of a fit;
:class:`Encoder`
    a fitted model's vocabularies and its ``handle_unknown`` rule: the codes
    of items and users (:meth:`~Encoder.item_codes`,
    :meth:`~Encoder.user_codes`), events appended to the histories
    (:meth:`Encoder.appended`, for ``update`` and ``partial_fit``) and scored
    rows as continuations of the histories (:meth:`Encoder.continuations`);
:func:`grown` and :func:`extend_history`
    the vocabularies and histories after appended events.

It knows nothing of estimators: :class:`~skcrnn._base.BaseRecommender` builds
an :class:`Encoder` from its fitted attributes and sets what these return.
"""

import warnings
from functools import cached_property

import numpy as np
import pandas as pd

from ._events import Sequences, check_events, group_sorted, time_kind, time_order


def encode_training(users, items, times):
    """The vocabularies and histories that a fit learns from.

    Parameters
    ----------
    users, items, times : ndarray
        The checked columns of the training events (see ``check_events``).

    Returns
    -------
    classes, user_labels : ndarray
        The sorted distinct items and users.
    history : Sequences
        One group per user (group ``u`` is user ``u``), items in time order.
    last_times : ndarray
        Each user's last time.
    """
    classes, item_codes = np.unique(items, return_inverse=True)
    user_labels, user_codes = np.unique(users, return_inverse=True)
    n_users = len(user_labels)
    order = time_order(user_codes, times)
    history = Sequences(
        user_codes=np.arange(n_users, dtype=np.int64),
        indptr=group_sorted(user_codes[order], n_users),
        items=item_codes[order].astype(np.int64))
    return classes, user_labels, history, times[order][history.indptr[1:] - 1]


class Encoder:
    """Encodes event frames against a fitted model's vocabularies.

    Parameters
    ----------
    classes, users : ndarray
        The model's item and user labels (codes are positions in them).
    columns : tuple of three labels
        The user, item and time columns of event frames.
    handle_unknown : {"ignore", "error"}
        What unknown items and users do: warn (and are left out, or scored
        from an empty history), or raise ``ValueError``.
    last_times : ndarray or None
        Each user's last time; ``None`` lets appended events come in any order.
    fitted_time_kind : str or None
        The kind of the fitted times; ``None`` accepts either kind.

    The warnings name the line that called the estimator's method which
    called the encoder (``stacklevel`` counts: the encoder's method, the
    estimator's method, its caller).
    """

    def __init__(self, classes, users, columns, handle_unknown,
                 last_times=None, fitted_time_kind=None):
        self.classes = classes
        self.users = users
        self.columns = columns
        self.handle_unknown = handle_unknown
        self.last_times = last_times
        self.fitted_time_kind = fitted_time_kind

    @cached_property
    def item_index(self):
        return pd.Index(self.classes)

    @cached_property
    def user_index(self):
        return pd.Index(self.users)

    def check_events(self, X):
        """Validate the frame ``X``; its users, items and times as arrays."""
        return check_events(X, *self.columns)

    def appended(self, X, learn_items=False):
        """Validate and encode events appended to the histories.

        Returns an :class:`Appended`: the continuation sequences (one group
        per user with at least one known item, codes into ``users`` grown by
        the new users, which are numbered after the known ones in sorted
        order), the new users' and (with ``learn_items``) the new items'
        labels, and each group's last time. Without ``learn_items``, unknown
        items follow ``handle_unknown``.
        """
        users, items, times = self.check_events(X)
        time_col = self.columns[2]
        kind = time_kind(X[time_col])
        if self.fitted_time_kind not in (None, kind):
            raise TypeError(
                f"X[{time_col!r}] holds {kind} times, but the model was "
                f"fitted with {self.fitted_time_kind} times; convert them.")
        user_col, item_col = self.columns[:2]
        check_same_kind(users, self.users, f"X[{user_col!r}]", "users")
        check_same_kind(items, self.classes, f"X[{item_col!r}]", "items")
        new_items = np.empty(0, dtype=self.classes.dtype)
        if learn_items:
            item_codes = self.item_index.get_indexer(items).astype(np.int64)
            new_items = np.unique(items[item_codes < 0])
            item_codes = np.where(item_codes >= 0, item_codes, len(self.classes)
                                  + pd.Index(new_items).get_indexer(items))
        else:
            item_codes = self.item_codes(items)
        known_user = self.user_index.get_indexer(users).astype(np.int64)
        self.check_order(users, known_user, times)
        keep = item_codes >= 0
        new_users = np.unique(users[keep & (known_user < 0)])
        user_codes = known_user
        if len(new_users):
            new_codes = pd.Index(new_users).get_indexer(users)
            user_codes = np.where(known_user >= 0, known_user,
                                  len(self.users) + new_codes)
        order = time_order(user_codes, times)
        order = order[keep[order]]
        groups, first = np.unique(user_codes[order], return_index=True)
        indptr = np.append(first, len(order)).astype(np.int64)
        sequences = Sequences(groups.astype(np.int64), indptr,
                              item_codes[order].astype(np.int64))
        return Appended(sequences, new_users, times[order][indptr[1:] - 1],
                        new_items)

    def item_codes(self, items, remedy="to leave them out, or use partial_fit "
                   "to learn them", outcome="the users' histories"):
        """Item codes, ``-1`` for unknown items, which follow ``handle_unknown``.

        ``remedy`` ends the error's advice, ``outcome`` the warning's "they
        are left out of ...". The warning names the caller of the
        estimator's method that called the encoder's method that called this.
        """
        codes = self.item_index.get_indexer(items).astype(np.int64)
        n_unknown = int((codes < 0).sum())
        if n_unknown:
            examples = pd.unique(items[codes < 0])[:5].tolist()
            if self.handle_unknown == "error":
                raise ValueError(
                    f"{n_unknown} row(s) of X have items unknown to the model, "
                    f"e.g. {examples}; set handle_unknown='ignore' {remedy}.")
            warnings.warn(
                f"{n_unknown} row(s) of X have items unknown to the model "
                f"(e.g. {examples}); they are left out of {outcome}.",
                UserWarning, stacklevel=4)
        return codes

    def check_order(self, users, codes, times):
        """Raise ``ValueError`` if an event is earlier than its user's last one."""
        last = self.last_times
        known = np.flatnonzero(codes >= 0)
        if last is None or not len(known):
            return
        early = known[times[known] < last[codes[known]]]
        if len(early):
            examples = pd.unique(users[early])[:5].tolist()
            raise ValueError(
                f"{len(early)} row(s) of X are earlier than their user's last "
                f"event seen so far (users e.g. {examples}); a history only "
                f"grows forward in time. Nothing was changed.")

    def user_codes(self, users, rows_per_user=None):
        """Model codes of distinct ``users``, -1 for those it does not know.

        Unknown users raise or warn as ``handle_unknown`` says. The warning
        counts them and, given ``rows_per_user`` (the rows of ``X`` of each
        user, when scoring), the rows they hold; without it the users are
        being recommended to. The warning names the caller of this method's
        caller.
        """
        codes = self.user_index.get_indexer(users).astype(np.int64)
        unknown = codes < 0
        n_unknown = int(unknown.sum())
        if n_unknown:
            examples = pd.unique(users[unknown])[:5].tolist()
            if self.handle_unknown == "error":
                raise ValueError(
                    f"{n_unknown} user(s) unknown to the model, e.g. {examples}; "
                    f"set handle_unknown='ignore' to score them from an empty "
                    f"history.")
            if rows_per_user is None:
                held, verb = "", "recommended"
            else:
                held = f" hold {int(rows_per_user[unknown].sum())} row(s) of X"
                verb = "scored"
            warnings.warn(
                f"{n_unknown} user(s) unknown to the model (e.g. {examples})"
                f"{held}; they are {verb} from an empty history.",
                UserWarning, stacklevel=3)
        return codes

    def continuations(self, X):
        """Validate and encode scored rows as continuations of the histories."""
        users, items, times = self.check_events(X)
        item_codes = self.item_codes(
            items, remedy="to leave them out of the scoring",
            outcome="the scoring (NaN) and of the users' histories")
        row_groups, group_users = pd.factorize(users)
        user_codes = self.user_codes(
            np.asarray(group_users, dtype=object) if group_users.dtype == object
            else np.asarray(group_users),
            rows_per_user=np.bincount(row_groups, minlength=len(group_users)))
        return Continuations.build(row_groups, user_codes, item_codes, times)


class Appended:
    """Events appended to the histories, encoded (see :meth:`Encoder.appended`)."""

    def __init__(self, sequences, new_users, last_times, new_items):
        self.sequences = sequences
        self.new_users = new_users
        self.last_times = last_times
        self.new_items = new_items


class Continuations:
    """Rows of a scored frame encoded as continuation sequences.

    Attributes: ``sequences`` (known items only, one group per distinct user
    of the frame), and per row of the frame its group, its item code (-1 when
    unknown) and the id of the prefix that precedes it.
    """

    def __init__(self, sequences, row_groups, row_items, row_prefixes):
        self.sequences = sequences
        self.row_groups = row_groups
        self.row_items = row_items
        self.row_prefixes = row_prefixes

    @classmethod
    def build(cls, row_groups, user_codes, item_codes, times):
        n_groups = len(user_codes)
        order = time_order(row_groups, times)
        groups_sorted = row_groups[order]
        items_sorted = item_codes[order]
        known = items_sorted >= 0
        sequences = Sequences(
            user_codes=user_codes,
            indptr=group_sorted(groups_sorted[known], n_groups),
            items=items_sorted[known])
        # known items of the same group strictly before each sorted row
        known_before = np.cumsum(known) - known
        group_first = np.searchsorted(groups_sorted, np.arange(n_groups))
        known_before -= known_before[group_first][groups_sorted]
        prefixes_sorted = sequences.prefix_start[groups_sorted] + known_before
        row_prefixes = np.empty_like(prefixes_sorted)
        row_prefixes[order] = prefixes_sorted
        return cls(sequences, row_groups, item_codes, row_prefixes)


#: Kinds of labels (pandas' ``infer_dtype``) that mix in one vocabulary.
_KIND_FAMILY = {"integer": "numeric", "floating": "numeric",
                "mixed-integer-float": "numeric", "decimal": "numeric",
                "boolean": "boolean", "string": "string", "bytes": "bytes"}


def label_kind(labels):
    """The kind of a vocabulary's or a column's labels: numeric, boolean, string, bytes."""
    kind = pd.api.types.infer_dtype(labels, skipna=False)
    return _KIND_FAMILY.get(kind, kind)


def check_same_kind(labels, vocabulary, what, whose):
    """Raise ``TypeError`` unless ``labels`` are of the ``vocabulary``'s kind.

    ``fit`` takes labels of one kind per column; a vocabulary that grows
    (``update``, ``partial_fit``) keeps that rule: booleans never join
    numbers (``True == 1``), nor the string ``"1"`` the integer 1.
    """
    if not len(labels) or not len(vocabulary):
        return
    new, fitted = label_kind(labels), label_kind(vocabulary)
    if new != fitted:
        raise TypeError(
            f"{what} holds {new} labels, but the model's {whose} are {fitted} "
            f"labels: a column holds labels of one kind, as in fit. Convert "
            f"them; nothing was changed.")


def grown(labels, more):
    """``labels`` followed by ``more`` (``labels`` itself when ``more`` is empty).

    An object array where the kinds of their labels differ.
    """
    if not len(more):
        return labels
    if labels.dtype == more.dtype or labels.dtype.kind == more.dtype.kind:
        return np.concatenate([labels, more])
    out = np.empty(len(labels) + len(more), dtype=object)
    out[:len(labels)] = labels
    out[len(labels):] = more
    return out


def extend_history(history, last_times, n_users, appended):
    """The histories and last times after the ``appended`` events.

    Parameters
    ----------
    history : Sequences
        One group per known user, group ``u`` being user ``u``.
    last_times : ndarray or None
        Each known user's last time; ``None`` stays ``None``.
    n_users : int
        How many users there are with the appended events' new ones.
    appended : Appended

    Returns
    -------
    history : Sequences
        One group per user, each user's old events first.
    last_times : ndarray or None
    """
    new = appended.sequences
    groups = np.concatenate([history.group_of_event,
                             new.user_codes[new.group_of_event]])
    items = np.concatenate([history.items, new.items])
    order = np.argsort(groups, kind="stable")  # a user's old events first
    history = Sequences(
        user_codes=np.arange(n_users, dtype=np.int64),
        indptr=group_sorted(groups[order], n_users),
        items=items[order])
    if last_times is not None:
        grown_times = np.empty(
            n_users, dtype=np.result_type(last_times, appended.last_times))
        grown_times[:len(last_times)] = last_times
        grown_times[new.user_codes] = appended.last_times
        last_times = grown_times
    return history, last_times


def as_label_array(values, name):
    """``values`` (a label or a 1-d list of labels) as a checked 1-d array."""
    if isinstance(values, (pd.DataFrame, dict)):
        raise TypeError(f"{name} must be a scalar label or a 1-d list of labels; "
                        f"got {type(values).__name__}.")
    array = np.asarray(values if not np.isscalar(values) else [values])
    if array.dtype.kind == "U":
        array = array.astype(object)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}.")
    if len(array) == 0:
        raise ValueError(f"{name} is empty.")
    if pd.isna(array).any():
        raise ValueError(f"{name} contains missing values (NaN/None).")
    return array
