"""The base class every recommender derives from.

:class:`BaseRecommender` implements the public contract of the package once
(validation, ``fit``, ``update``, ``partial_fit``, ``score_samples``,
``score``, ``predict_proba``, ``predict``, ``recommend``, ``handle_unknown``);
it leaves turning events into codes to :mod:`skcrnn._encoding`. A model fills
in two steps:

``_fit_sequences(sequences)``
    learn from the encoded training sequences (one group per known user). It
    runs on a copy of the estimator without its fitted attributes (with the
    parameters, ``classes_``, ``users_``, ``n_items_``, ``n_users_`` and
    ``_history`` set), whose attributes become the estimator's only when it
    returns;
``_log_proba(sequences, prefixes, targets=None)``
    next-item log-probabilities after the requested prefixes of *continuation*
    sequences, i.e. sequences that continue each group's user's training
    history (the empty prefix of a group is "right after the training
    history"; a group whose user code is ``-1`` belongs to a user the model does
    not know, whose history is empty).

For :meth:`~BaseRecommender.save` and :meth:`~BaseRecommender.load`, a model
lists in ``_saved_attributes`` the fitted attributes that ``_fit_sequences``
sets (arrays, sparse matrices, scalars), or overrides ``_fitted_state`` and
``_restore_fitted_state``.
"""

from abc import ABCMeta, abstractmethod
from collections.abc import Hashable
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from . import _encoding, _migrations, _persistence
from ._events import (TIME_UNIT, Sequences, check_events, mean_of_group_means,
                      time_kind)

#: Largest ``predict_proba`` answer (rows x items) built in memory.
MAX_PREDICT_PROBA_CELLS = 2 ** 27
#: Most log-probabilities (rows x items) that the full-distribution paths
#: (``predict``, ``predict_proba``'s blocks, ``recommend``, the ranking metrics)
#: compute at once, however long a user's sequence is: 32 MiB of float64
#: (one row at a time where there are more items).
_CHUNK_CELLS = 2 ** 22
#: Entries of a saved file written by :meth:`BaseRecommender.save` itself.
_BASE_ENTRIES = ("format", "format_version", "estimator", "checksum",
                 _migrations.FILE_ENTRY, "params", "classes", "users",
                 "fit_sequences", "last_times", "time_kind", "time_unit")
#: Errors that restoring a model from a record with missing or odd entries
#: raises; :meth:`BaseRecommender.load` reports them as a damaged file.
_DAMAGE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError,
                  RuntimeError)


class BaseRecommender(BaseEstimator, metaclass=ABCMeta):
    """Base class for next-item recommenders over event DataFrames.

    Subclasses implement ``_fit_sequences`` and ``_log_proba``; everything a
    user calls is implemented here. Not meant to be instantiated.
    """

    _parameter_constraints = {
        "user_col": [Hashable],
        "item_col": [Hashable],
        "time_col": [Hashable],
        "handle_unknown": [StrOptions({"ignore", "error"})],
    }

    #: Parameters that may change after ``fit`` and take effect at once
    #: (``docs/parameters.rst``): those read when scoring, and those that only
    #: say how the next training call runs. Every other parameter is
    #: *fit-time*: it shaped what was fitted, and changing it without a refit
    #: makes scoring, ``update``, ``partial_fit`` and ``save`` raise.
    #: Subclasses add theirs to this set.
    _scoring_time_params = frozenset({"user_col", "item_col", "time_col",
                                      "handle_unknown"})

    #: Fitted attributes that :meth:`save` writes besides the vocabularies and
    #: the histories: name -> the names of an array's (or sparse matrix's)
    #: dimensions, or a scalar's type (see ``_persistence.from_saved``).
    #: ``"n_users"`` and ``"n_items"`` are the vocabularies' sizes; other
    #: dimension names must agree wherever they appear.
    _saved_attributes = {}

    # ------------------------------------------------------------------ steps
    @abstractmethod
    def _fit_sequences(self, sequences):
        """Learn from encoded training sequences (group ``u`` is user ``u``)."""

    @abstractmethod
    def _log_proba(self, sequences, prefixes, targets=None):
        """Next-item log-probabilities after prefixes of continuation sequences.

        Parameters
        ----------
        sequences : Sequences
            Continuations of the training histories of ``sequences.user_codes``.
        prefixes : ndarray of int64
            Prefix ids: prefix ``k`` of group ``g`` (its first ``k`` items) has
            id ``sequences.prefix_start[g] + k``.
        targets : ndarray of int64 or None
            Item codes, one per prefix.

        Returns
        -------
        ndarray
            ``log P(targets[j] | prefix j)`` of shape ``(len(prefixes),)`` when
            ``targets`` is given, else the whole distributions, of shape
            ``(len(prefixes), n_items_)``.
        """

    # -------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Learn from the events in ``X``.

        The fit is all or nothing: if it raises (bad data found late, a
        diverging optimizer, ``KeyboardInterrupt``), the recommender is left
        exactly as it was before the call, fitted or not.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.
        y : None
            Ignored; present for scikit-learn's API.

        Returns
        -------
        self : object
            The fitted recommender.
        """
        self._validate_params()
        self._check_fit_params()
        users, items, times = check_events(X, self.user_col, self.item_col,
                                           self.time_col)
        staged = self._unfitted_copy()
        classes, user_labels, history, last_times = _encoding.encode_training(
            users, items, times)
        staged.classes_ = classes
        staged.users_ = user_labels
        staged.n_items_ = len(staged.classes_)
        staged.n_users_ = len(staged.users_)
        staged._history = history
        staged._time_kind = time_kind(X[self.time_col])
        staged._time_unit = TIME_UNIT
        staged._last_times = last_times
        staged._fit_sequences(history)
        staged._fitted_params = staged._fit_time_params()
        self._adopt_fit(staged)
        return self

    @classmethod
    def _fit_time_param_names(cls):
        """The parameters fixed by ``fit`` (all but ``_scoring_time_params``)."""
        return sorted(set(cls._get_param_names()) - cls._scoring_time_params)

    def _fit_time_params(self):
        """The current values of the fit-time parameters."""
        params = self.get_params(deep=False)
        return {name: params[name] for name in self._fit_time_param_names()}

    def _check_fitted(self):
        """``NotFittedError`` before ``fit``; ``ValueError`` if a fit-time
        parameter changed since. Every method that reads the fitted model
        calls it first."""
        check_is_fitted(self)
        self._check_params_as_fitted()

    def _changed_fit_time_params(self):
        """``(name, fitted value, current value)`` of each fit-time parameter changed since fit."""
        params = self.get_params(deep=False)
        return [(name, fitted, params[name]) for name, fitted
                in self._fitted_params.items() if not _same_value(fitted, params[name])]

    def _check_params_as_fitted(self):
        """Raise ``ValueError`` if a fit-time parameter changed since ``fit``.

        The rule of ``docs/parameters.rst``: a parameter that shaped what was
        fitted cannot change under a fitted model; the message names it, its
        fitted value, and the two ways out.
        """
        changed = self._changed_fit_time_params()
        if changed:
            name, fitted, value = changed[0]
            others = ("" if len(changed) == 1 else
                      f" (and {', '.join(n for n, _, _ in changed[1:])})")
            raise ValueError(
                f"{type(self).__name__}: {name}={value!r} was set after fit, but "
                f"the model was fitted with {name}={fitted!r}{others}; it is a "
                f"fit-time parameter, fixed by fit. Refit (fit), or set it back "
                f"with set_params({name}={fitted!r}).")

    def _check_fit_params(self):
        """Checks of parameters that constraints cannot express (override)."""

    def _fitted_names(self):
        """Names of the attributes that a fit (or :meth:`load`) sets.

        Public names that end with an underscore (scikit-learn's convention),
        ``_history`` and the private names of ``_saved_attributes``. Other
        private attributes, such as those that scikit-learn's metadata
        routing, output settings and callbacks put on an estimator, are no
        fitted state.
        """
        private = {"_history", "_last_times", "_time_kind", "_time_unit",
                   "_fitted_params"} | {
            name for name in self._saved_attributes if name.startswith("_")}
        return [name for name in vars(self) if name in private
                or (name.endswith("_") and not name.startswith("_"))]

    def _unfitted_copy(self):
        """A shallow copy of ``self`` without its fitted attributes.

        :meth:`fit` fits this copy, so that a fit that raises (bad data found
        late, a diverging optimizer, ``KeyboardInterrupt``) leaves ``self``
        as it was. It is made without ``copy.copy``, whose pickling hooks
        would move a fitted network between devices.
        """
        staged = object.__new__(type(self))
        fitted = set(self._fitted_names())
        vars(staged).update((name, value) for name, value in vars(self).items()
                            if name not in fitted)
        return staged

    def _adopt_fit(self, staged):
        """Make the fit of ``staged`` this estimator's, in one assignment.

        The old fitted attributes that the new fit did not set go with the
        old dictionary; the other attributes were copied into ``staged``.
        """
        self.__dict__ = vars(staged)

    # ------------------------------------------------------------ living logs
    def update(self, X):
        """Append events to the users' histories, without learning.

        Each row of ``X`` is appended to its user's history, after the
        events seen so far; nothing the model learned changes. Scoring,
        :meth:`predict_proba` and :meth:`recommend` then continue from the
        longer histories (a recurrent model advances each updated user's
        cached state instead of replaying the history): for a model fitted
        on ``X0``, ``update(X1)`` then ``score_samples(X2)`` equals
        ``score_samples(concat(X1, X2))`` on the rows of ``X2``.

        Users not yet known are added to ``users_`` (after the known ones)
        with the events of ``X`` as their history; where the model has
        per-user parameters, they are scored with the documented fallback of
        unknown users until :meth:`partial_fit` learns theirs. Items unknown
        to the model follow ``handle_unknown``: left out with a warning, or
        ``ValueError``. The update is all or nothing: if it raises, the
        model is left as it was.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns, none earlier than
            its user's last event seen so far.

        Returns
        -------
        self : object
            The updated recommender.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the model is not fitted.
        ValueError
            If an event is earlier than its user's last stored event, or
            (``handle_unknown="error"``) its item is unknown.
        TypeError
            If ``X``'s times are not of the kind (datetime or numeric) that
            the model was fitted with.
        """
        appended = self._encoder().appended(X)
        staged = self._shallow_copy()
        staged._grow_vocabularies(appended)
        staged._append_events(appended.sequences)
        staged._extend_history(appended)
        self._adopt_fit(staged)
        return self

    def partial_fit(self, X, y=None):
        """Continue learning from the events in ``X``.

        scikit-learn's incremental convention: on an unfitted recommender
        this is :meth:`fit`. On a fitted one, users and items not yet known
        are added to ``users_`` and ``classes_`` (after the known ones, in
        sorted order), the events are appended to their users' histories as
        :meth:`update` does, and learning continues from the current
        parameters (each model says how in its docstring; the count models
        then equal a fit on every event seen so far, exactly). It is all or
        nothing: if it raises, the model is left as it was.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns, none earlier than
            its user's last event seen so far.
        y : None
            Ignored; present for scikit-learn's API.

        Returns
        -------
        self : object
            The updated recommender.

        Raises
        ------
        ValueError
            If an event is earlier than its user's last stored event.
        TypeError
            If ``X``'s times are not of the kind (datetime or numeric) that
            the model was fitted with.
        """
        if not hasattr(self, "classes_"):
            return self.fit(X, y)
        self._validate_params()
        self._check_fitted()  # a fit-time parameter changed, before other checks
        self._check_fit_params()
        appended = self._encoder().appended(X, learn_items=True)
        staged = self._shallow_copy()
        staged._grow_vocabularies(appended)
        previous_history = staged._history
        staged._extend_history(appended)
        staged._learn_events(appended.sequences, previous_history)
        self._adopt_fit(staged)
        return self

    def _learn_events(self, continuation, previous_history):
        """Continue learning from the appended events (override).

        Called by :meth:`partial_fit` with ``classes_`` and ``users_`` grown
        (new codes after the old ones) and ``_history`` already holding the
        appended events; ``previous_history`` is the history before them.
        Like :meth:`_append_events`, it replaces fitted attributes with new
        objects and grows those indexed by user or item.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot yet continue learning from new "
            f"events; use update() to follow them, or fit() on all events.")

    def _append_events(self, continuation):
        """Follow the appended events without learning (override).

        Called by :meth:`update` with ``users_`` already grown and the
        previous ``_history`` in place. ``continuation`` has one group per
        updated user (codes into ``users_``), items in time order. A model
        whose fitted attributes depend on the histories (a cached state, the
        last item, the user's counts) replaces them here with new objects,
        never changing the old ones in place (the update is all or nothing).
        """

    def _grow_vocabularies(self, appended):
        """Add the new users and items of ``appended`` to ``users_`` and
        ``classes_`` (after the known ones), as new arrays."""
        self.classes_ = _encoding.grown(self.classes_, appended.new_items)
        self.users_ = _encoding.grown(self.users_, appended.new_users)
        self.n_items_ = len(self.classes_)
        self.n_users_ = len(self.users_)

    def _extend_history(self, appended):
        """Append the events of ``appended`` to ``_history`` and the users'
        last times (``users_`` already grown)."""
        history, last_times = _encoding.extend_history(
            self._history, self._last_times, self.n_users_,
            appended)
        self._history = history
        if last_times is not None:
            self._last_times = last_times

    def _shallow_copy(self):
        """A copy of ``self`` that shares its attributes' objects.

        :meth:`update` and :meth:`partial_fit` work on it and replace
        attributes with new objects, so that ``self`` is untouched until
        they succeed.
        """
        staged = object.__new__(type(self))
        vars(staged).update(vars(self))
        return staged

    # ---------------------------------------------------------------- scoring
    def score_samples(self, X):
        """Log-probability of each event given the user's history.

        The history of a row is the user's events seen in ``fit`` followed by
        the user's earlier rows of ``X`` (by time; ties keep row order).

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.

        Returns
        -------
        ndarray of shape (n_rows,)
            ``log P(item | history)`` in natural log, in the row order of ``X``;
            NaN for rows whose item is unknown to the model (when
            ``handle_unknown="ignore"``).
        """
        return self._score_rows(X)[0]

    def score(self, X, y=None):
        """Mean over users of the mean log-probability of their events.

        This is minus the paper's error: greater is better.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.
        y : None
            Ignored.

        Returns
        -------
        float
            The mean over users (with at least one scored row) of the mean of
            :meth:`score_samples` over that user's scored rows.
        """
        log_proba, groups = self._score_rows(X)
        return mean_of_group_means(log_proba, groups)

    def _score_rows(self, X):
        encoded = self._encoder().continuations(X)
        log_proba = np.full(len(encoded.row_items), np.nan)
        known = encoded.row_items >= 0
        if known.any():
            log_proba[known] = self._log_proba(
                encoded.sequences, encoded.row_prefixes[known],
                encoded.row_items[known])
        return log_proba, encoded.row_groups

    def predict_proba(self, X):
        """The whole next-item distribution before each row of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.

        Returns
        -------
        ndarray of shape (n_rows, n_items)
            Row ``i`` is ``P(. | history before row i)``, columns in the order
            of ``classes_``. Meant for small ``X``: use :meth:`score_samples` or
            :meth:`recommend` on large inputs.
        """
        self._check_fitted()
        n_cells = len(X) * self.n_items_ if hasattr(X, "__len__") else 0
        if n_cells > MAX_PREDICT_PROBA_CELLS:
            raise ValueError(
                f"predict_proba would build a {len(X)} x {self.n_items_} matrix "
                f"({n_cells} cells, more than {MAX_PREDICT_PROBA_CELLS}); use "
                f"score_samples for the probability of the observed items, "
                f"recommend for the top items, or pass fewer rows.")
        encoded = self._encoder().continuations(X)
        proba = np.empty((len(encoded.row_items), self.n_items_))
        for rows, log_proba in self._full_log_proba(encoded.sequences,
                                                    encoded.row_prefixes):
            proba[rows] = np.exp(log_proba)
        return proba

    def predict(self, X):
        """The most probable next item before each row of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            Events with the user, item and time columns.

        Returns
        -------
        ndarray of shape (n_rows,)
            Item labels from ``classes_``.
        """
        encoded = self._encoder().continuations(X)
        best = np.empty(len(encoded.row_items), dtype=np.int64)
        label_order = self._label_order()
        for rows, log_proba in self._full_log_proba(encoded.sequences,
                                                    encoded.row_prefixes):
            best[rows] = label_order[np.argmax(log_proba[:, label_order], axis=1)]
        return self.classes_[best]

    def _label_order(self):
        """Item codes in the order of their labels: how ties are broken.

        ``classes_`` is sorted after ``fit``; ``partial_fit`` appends new
        items at its end. Breaking ties by label, not by code, makes
        ``predict`` and ``recommend`` after ``partial_fit`` those of a fit
        on all the events.
        """
        return np.argsort(self.classes_, kind="stable")

    def recommend(self, users, k=10, exclude_seen=False):
        """The ``k`` most probable next items of each user.

        Parameters
        ----------
        users : array-like or scalar
            User labels. Users unknown to the model are recommended from an
            empty history (``handle_unknown="ignore"``, with a warning) or
            rejected (``"error"``).
        k : int, default=10
            How many items per user, ``1 <= k <= n_items_``.
        exclude_seen : bool, default=False
            Leave out items in the user's training history (a user may then get
            fewer than ``k`` rows). A Python or numpy boolean.

        Items of equal probability are ranked by their labels (ascending), so
        a model grown by ``partial_fit`` ranks ties as one fitted on all the
        events does.

        Returns
        -------
        pandas.DataFrame
            Columns user, item, ``score`` (the log-probability) and ``rank``
            (1 for the best), ``k`` rows per user in the order of ``users``.

        Raises
        ------
        TypeError
            If ``k`` is not an integer or ``exclude_seen`` not a boolean.
        ValueError
            If ``k`` is out of range, or ``users`` is empty, not
            one-dimensional or has missing values.
        """
        self._check_fitted()
        users = _encoding.as_label_array(users, "users")
        if not isinstance(k, Integral) or isinstance(k, bool):
            raise TypeError(f"k must be an integer; got {type(k).__name__}.")
        if not 1 <= k <= self.n_items_:
            raise ValueError(
                f"k must be between 1 and the number of known items "
                f"({self.n_items_}); got {k}.")
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise TypeError(f"exclude_seen must be True or False; got "
                            f"{type(exclude_seen).__name__}.")
        users = pd.unique(users)
        codes = self._encoder().user_codes(users)
        sequences = Sequences(codes, np.zeros(len(codes) + 1, dtype=np.int64),
                              np.empty(0, dtype=np.int64))
        item_idx = np.empty((len(users), k), dtype=np.int64)
        scores = np.empty((len(users), k))
        label_order = self._label_order()
        for rows, log_proba in self._full_log_proba(sequences,
                                                    sequences.prefix_start):
            if exclude_seen:
                _mask_seen(log_proba, self._history, codes[rows])
            top, scores[rows] = _top_k(log_proba[:, label_order], k)
            item_idx[rows] = label_order[top]
        frame = pd.DataFrame({
            self.user_col: np.repeat(users, k),
            self.item_col: self.classes_[item_idx.ravel()],
            "score": scores.ravel(),
            "rank": np.tile(np.arange(1, k + 1), len(users)),
        })
        if exclude_seen:
            frame = frame[np.isfinite(frame["score"].to_numpy())]
        return frame.reset_index(drop=True)

    def _rank_statistics(self, X):
        """For each row: items strictly more probable, and other items as probable.

        Returns two float arrays (NaN where the row's item is unknown) and the
        rows' user groups; used by the ranking metrics.
        """
        encoded = self._encoder().continuations(X)
        greater = np.full(len(encoded.row_items), np.nan)
        ties = np.full(len(encoded.row_items), np.nan)
        known = np.flatnonzero(encoded.row_items >= 0)
        targets = encoded.row_items[known]
        for rows, log_proba in self._full_log_proba(
                encoded.sequences, encoded.row_prefixes[known]):
            target_lp = log_proba[np.arange(len(rows)), targets[rows]][:, None]
            greater[known[rows]] = (log_proba > target_lp).sum(axis=1)
            ties[known[rows]] = (log_proba == target_lp).sum(axis=1) - 1
        return greater, ties, encoded.row_groups

    # --------------------------------------------------------------- encoding
    def _encoder(self):
        """An :class:`~skcrnn._encoding.Encoder` over the fitted vocabularies.

        Its warnings name the caller of the method that calls the encoder's
        method: call it where the user's call is one or two frames up, as
        the public methods here do. It checks the model first
        (:meth:`_check_fitted`).
        """
        self._check_fitted()
        return _encoding.Encoder(
            self.classes_, self.users_,
            (self.user_col, self.item_col, self.time_col), self.handle_unknown,
            last_times=self._last_times,
            fitted_time_kind=self._time_kind)

    # ----------------------------------------------------------- full chunks
    def _full_log_proba(self, sequences, prefixes):
        """Yield ``(positions, log_proba)`` for the requested prefixes.

        ``positions`` index into ``prefixes``. The prefixes are taken in
        blocks of at most ``max(1, _CHUNK_CELLS // n_items_)``, so that at
        most ``_CHUNK_CELLS`` log-probabilities (one row where there are more
        items) exist at once however many rows a user has: a long user's
        rows are spread over several blocks, each given the user's items up
        to its last prefix only.
        """
        prefixes = np.asarray(prefixes, dtype=np.int64)
        group = sequences.group_of(prefixes)
        # prefix ids grow with the group, then the position inside it
        order = np.argsort(prefixes, kind="stable")
        rows_per_block = max(1, _CHUNK_CELLS // self.n_items_)
        for first in range(0, len(order), rows_per_block):
            positions = order[first:first + rows_per_block]
            yield positions, self._block_log_proba(sequences, group[positions],
                                                   prefixes[positions])

    def _block_log_proba(self, sequences, group, prefixes):
        """``_log_proba`` of the prefixes of ``group``, given only the items
        of each group that its longest requested prefix holds."""
        groups, local = np.unique(group, return_inverse=True)
        position = prefixes - sequences.prefix_start[group]
        longest = np.zeros(len(groups), dtype=np.int64)
        np.maximum.at(longest, local, position)
        subset = sequences.subset(groups, keep=longest)
        return self._log_proba(subset, subset.prefix_start[local] + position)

    # ------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted model to one file.

        The file holds the parameters, the vocabularies, the users' fitted
        histories and the fitted arrays and tensors: a zip of a JSON
        document and ``.npy`` arrays, which loads without pickle (loading
        runs no code) and, for the models that compute with numpy, without
        torch. It also holds a checksum of its content, which :meth:`load`
        verifies. A ``random_state`` given as a generator object is saved as
        ``None``.

        Parameters
        ----------
        path : str or path-like
            Where to write. An existing file is replaced atomically: until
            the new file is complete, ``path`` holds the old one, even if
            the save fails or the process is killed.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the model is not fitted.
        ValueError
            If a label or parameter cannot be saved without pickle (labels
            must be strings, numbers or booleans).
        OSError
            If ``path`` is a directory, or its directory is missing or may
            not be written; raised before any work, naming ``path``.

        See Also
        --------
        load : Read the model back.
        """
        self._check_fitted()
        _persistence.check_writable(path)
        state = self._fitted_state()
        clash = sorted(set(state) & set(_BASE_ENTRIES))
        if clash:
            raise RuntimeError(f"{type(self).__name__}._fitted_state uses the "
                               f"reserved entries {clash}.")
        payload = {
            _migrations.FILE_ENTRY: _migrations.VERSION,
            "params": _persistence.plain_params(self.get_params(deep=False)),
            "classes": _persistence.labels_to_plain(self.classes_),
            "users": _persistence.labels_to_plain(self.users_),
            "fit_sequences": _persistence.sequences_to_tensors(self._history),
            "last_times": self._last_times,
            "time_kind": self._time_kind,
            "time_unit": self._time_unit,
            **state,
        }
        _persistence.write(path, type(self).__name__, payload)

    @classmethod
    def load(cls, path, device=None):
        """Read a model written by :meth:`save`.

        The loaded model gives the same answers as the saved one in every
        method.

        Parameters
        ----------
        path : str or path-like
            A file written by ``save`` of this class.
        device : str, optional
            Where to put the tensors of a model that computes with torch
            (:class:`~skcrnn.CollaborativeGRURecommender`); ignored by the
            other models.

        Returns
        -------
        model : object
            The fitted model, an instance of this class.

        Raises
        ------
        ValueError
            If the file is not a skcrnn model file, is damaged or truncated,
            was written by a newer version of skcrnn, or holds another
            estimator class.
        FileNotFoundError
            If there is no file at ``path``.
        """
        record = _persistence.read(path, cls.__name__, map_location="cpu")
        try:
            record = _migrations.migrate_record(cls, record)
            model = cls(**record["params"])
            model._validate_params()
            model._restore_fit(record)
            model._restore_fitted_state(record, device)
        except _DAMAGE_ERRORS as error:
            raise ValueError(f"{path!s} is a damaged skcrnn model file: "
                             f"{type(error).__name__}: {error}") from error
        return model

    def _restore_fit(self, record):
        """Set what :meth:`fit` sets before ``_fit_sequences``.

        The fit-time parameters are those of the file: ``save`` writes none
        that changed since the fit.
        """
        self._fitted_params = self._fit_time_params()
        self.classes_ = _persistence.labels_from_plain(record["classes"])
        self.users_ = _persistence.labels_from_plain(record["users"])
        for name in ("classes_", "users_"):
            if not pd.Index(getattr(self, name)).is_unique:
                raise ValueError(f"{name} has repeated labels")
        self.n_items_ = len(self.classes_)
        self.n_users_ = len(self.users_)
        history = _persistence.sequences_from_tensors(record["fit_sequences"])
        _persistence.check_history(history, self.n_users_, self.n_items_)
        self._history = history
        # None where the file predates update() (_migrations): any order goes
        self._time_kind = record["time_kind"]
        if record["time_unit"] != TIME_UNIT:
            raise ValueError(f"its datetimes are in unit {record['time_unit']!r}, "
                             f"not {TIME_UNIT!r}")
        self._time_unit = record["time_unit"]
        last_times = record["last_times"]
        if last_times is not None and np.shape(last_times) != (self.n_users_,):
            raise ValueError("its users' last times do not match its users")
        self._last_times = None if last_times is None else np.asarray(last_times)

    def _fitted_state(self):
        """What ``_fit_sequences`` learned, as entries of a saved file.

        Returns
        -------
        dict
            Tensors (on the CPU), dicts of them, and plain values. By default
            the attributes named in ``_saved_attributes``, under their names.
        """
        return {name: _persistence.to_saved(getattr(self, name))
                for name in self._saved_attributes}

    def _restore_fitted_state(self, record, device):
        """Inverse of :meth:`_fitted_state`; ``classes_``, ``users_``,
        ``n_items_``, ``n_users_`` and ``_history`` are already set.

        Raises ``ValueError`` (or ``KeyError``, ``TypeError``) when the record
        does not fit; :meth:`load` reports it as a damaged file.
        """
        sizes = {"n_users": self.n_users_, "n_items": self.n_items_}
        for name, spec in self._saved_attributes.items():
            setattr(self, name,
                    _persistence.from_saved(record[name], spec, sizes, name))

    def __getstate__(self):
        # the version that pickles it, as scikit-learn's _sklearn_version
        return _migrations.stamp_state(super().__getstate__())

    def __setstate__(self, state):
        # what a pickle of an earlier version lacks, filled once (_migrations)
        super().__setstate__(_migrations.migrate_state(type(self), state))


def _mask_seen(log_proba, history, user_codes):
    known = np.flatnonzero(user_codes >= 0)
    seen = history.subset(user_codes[known])
    log_proba[known[seen.group_of_event], seen.items] = -np.inf


def _top_k(log_proba, k):
    """Indices and values of each row's k largest entries, best first.

    Ties are broken by the smaller item index, as a stable sort of the whole
    row would, so results are deterministic; but only the ``k`` best of each
    row are sorted (a partition finds them), unless the ``k``-th value is
    tied with an item outside them, where the row is sorted whole.
    """
    n_items = log_proba.shape[1]
    if k >= n_items:
        top = np.argsort(-log_proba, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(log_proba, top, axis=1)
    best = np.sort(np.argpartition(-log_proba, k - 1, axis=1)[:, :k], axis=1)
    values = np.take_along_axis(log_proba, best, axis=1)
    # best is in index order: a stable sort by value breaks ties by index
    top = np.take_along_axis(best, np.argsort(-values, axis=1, kind="stable"), axis=1)
    kth = values.min(axis=1, keepdims=True)
    tied = np.flatnonzero((log_proba >= kth).sum(axis=1) > k)
    if len(tied):
        top[tied] = np.argsort(-log_proba[tied], axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(log_proba, top, axis=1)


def _same_value(fitted, value):
    """Whether a parameter still has its fitted value (``1 == 1.0``, not ``True``)."""
    if isinstance(fitted, bool) != isinstance(value, bool):
        return False
    try:
        return bool(fitted == value)
    except (TypeError, ValueError):  # arrays and other odd values
        return fitted is value
