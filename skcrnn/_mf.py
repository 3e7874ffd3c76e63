"""Matrix factorization (``implicit``) turned into a calibrated next-item model.

Factors are learned on the user x item count matrix; their scores ``s_ui``
become a distribution with a softmax over all items,

    P(i | u) = (1 - w) softmax_i(a * s_ui + b * log(1 + c_i)) + w / n_items,

whose three scalars ``a``, ``b`` and ``w`` are fitted by maximum likelihood
(with a weak prior on ``a`` and ``b``) on the tail of each user's training
sequence, with factors fitted on the rest only: the calibration never sees the
events it is judged on, nor any data being scored later.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logit, logsumexp
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from threadpoolctl import threadpool_limits

from ._base import _CHUNK_CELLS, BaseRecommender

#: Standard deviation of the Gaussian prior on the softmax weights ``a`` and
#: ``b`` in the calibration, in logits per standard deviation of their feature
#: (factor scores, log popularity) over the held-out events. It weighs like one
#: event among all the held-out ones: negligible on a real tail, it keeps a
#: tail of a few events, whose likelihood alone may grow without end with
#: ``|a|`` or ``|b|``, from a saturated softmax.
_WEIGHT_PRIOR_SD = 10.0
#: One evaluation of the calibration's likelihood computes each held-out
#: user's normalizer over every item: users x items cells. At most this many
#: per training event (or ``_CALIBRATION_MIN_CELLS`` where that is more) are
#: computed; beyond, the calibration uses the tails of a random sample of users.
_CALIBRATION_CELLS_PER_EVENT = 16
_CALIBRATION_MIN_CELLS = 2 ** 24


def calibration_split(sequences, fraction):
    """Mask of the events held out to calibrate the softmax.

    Each user's last ``round(fraction * n_u)`` events (half to even), clipped
    to ``[1, n_u - 1]`` so that the factors always see at least one event of
    the user; a user with a single event holds out nothing.

    Parameters
    ----------
    sequences : Sequences
        The training sequences.
    fraction : float
        Share of each sequence held out, in ``(0, 1)``.

    Returns
    -------
    ndarray of bool of shape (n_events,)
        True for the held-out (tail) events.
    """
    lengths = sequences.lengths
    n_tail = np.minimum(np.maximum(np.round(fraction * lengths), 1), lengths - 1)
    first_tail = (lengths - n_tail)[sequences.group_of_event]
    return sequences.position_of_event >= first_tail


def _calibration_users(tail_users, n_items, n_events, seed):
    """The held-out users whose tails calibrate: all of them, or a random
    sample small enough that their normalizers fit the budget of cells."""
    users = np.unique(tail_users)
    budget = max(_CALIBRATION_MIN_CELLS, _CALIBRATION_CELLS_PER_EVENT * n_events)
    n_kept = max(1, int(budget // n_items))
    if n_kept >= len(users):
        return users
    return np.sort(np.random.RandomState(seed).choice(users, n_kept, replace=False))


class MatrixFactorizationRecommender(BaseRecommender):
    r"""Static user/item factors from ``implicit``, calibrated into probabilities.

    The factors come from ``implicit`` (alternating least squares or BPR)
    fitted on the user x item count matrix of the training events. Their dot
    products ``s_ui`` are turned into a next-item distribution

    .. math::

        P(i \mid u) = (1 - w)\,
        \frac{\exp(a s_{ui} + b \log(1 + c_i))}
              {\sum_j \exp(a s_{uj} + b \log(1 + c_j))} + \frac{w}{n_{items}},

    where ``c_i`` is the training count of item ``i``. Every known item is
    scored (consuming an item again is normal in event logs). ``a``, ``b`` and
    ``w`` are fitted by maximum likelihood inside :meth:`fit`: the last
    ``calibration_fraction`` of each user's training sequence is held out,
    factors are fitted on the rest, the three scalars are fitted on the
    held-out tail, and then the factors are fitted again on all training
    events (same seed) and used with the calibrated scalars. A weak Gaussian
    prior on ``a`` and ``b`` (standard deviation 10 logits per standard
    deviation of the scores and of ``log(1 + c_i)``, as much weight as one
    held-out event) keeps them finite on a tail of a few events. Where the
    held-out users times the items exceed both 16 per training event and
    ``2**24``, the scalars are fitted on the tails of a random sample of the
    users that keeps within the larger bound, so that the calibration's time
    grows with the events, not with users x items.

    The model is static: a known user's distribution does not change along
    a scored sequence (the rows of ``X`` before a row play no role). A user
    unknown to the model has no factors; it gets ``s_ui = 0``, i.e. the
    calibrated popularity part ``(1 - w) softmax(b log(1 + c)) + w / n_items``.
    So do the users that :meth:`update` adds, until :meth:`partial_fit`
    learns their factors.

    *Incremental learning.* :meth:`partial_fit` keeps ``a``, ``b`` and ``w``
    and recomputes ``c_i`` from every stored event. With ALS it recalculates
    only the factors that the new events touch, with ``implicit``'s
    ``partial_fit_users`` and ``partial_fit_items`` on the count matrix of
    every stored history: the users with new events (and the users that
    :meth:`update` added, who have none) are solved from the item factors,
    then the items of the new events from the user factors, then those users
    again, so that they see the new items; new users and items start from
    zero factors, and every other factor stays. ``implicit`` has no such
    update for BPR: there :meth:`partial_fit` runs ``n_iterations`` more
    epochs of BPR on every stored event from the current factors (new users
    and items start from zero), which moves every factor. Either way
    ``partial_fit`` computes on the CPU, and :meth:`fit` on all events
    recalibrates ``a``, ``b`` and ``w``.

    Parameters
    ----------
    n_factors : int, default=32
        Number of latent factors.
    algorithm : {"als", "bpr"}, default="als"
        ``implicit``'s alternating least squares (on the counts, as
        confidences) or Bayesian personalized ranking.
    regularization : float, default=0.01
        L2 regularization of the factors.
    alpha : float, default=40.0
        ALS confidence scale: the counts are multiplied by ``alpha`` (40 is
        the value of Hu, Koren and Volinsky; ``implicit``'s own default is 1,
        which fits check-in data much worse). Ignored by BPR.
    n_iterations : int, default=15
        ALS sweeps, or BPR epochs (BPR usually needs many more, e.g. 100).
    learning_rate : float, default=0.01
        BPR's SGD step. Ignored by ALS.
    calibration_fraction : float, default=0.1
        Share of each user's training sequence held out (its tail) to fit
        ``a``, ``b`` and ``w``; see :func:`calibration_split`.
    uniform_share_init : float, default=0.01
        Starting value of ``w`` for the maximum-likelihood fit, in ``(0, 1)``.
    use_gpu : bool, default=False
        Fit the factors with ``implicit``'s CUDA code (needs a CUDA build of
        ``implicit``); scoring runs on the CPU either way.
    n_jobs : int or None, default=None
        Threads ``implicit`` uses: ``None`` for 1, ``-1`` for all cores. BPR
        is only reproducible with one thread.
    random_state : int, RandomState instance or None, default=None
        Seeds the factors' initialization (one int seed drawn in
        :meth:`fit`, used for both factor fits).
    verbose : int, default=0
        Show ``implicit``'s progress bars when positive.
    user_col, item_col, time_col : str, default="user", "item", "timestamp"
        Column names of the events frame.
    handle_unknown : {"ignore", "error"}, default="ignore"
        See :class:`UniformRecommender`.

    Attributes
    ----------
    user_factors_ : ndarray of shape (n_fitted_users, n_factors)
        Factors of the known users, fitted on all training events (BPR adds
        a column of ones that multiplies the item biases); the users that
        :meth:`update` added since the last fit or :meth:`partial_fit`
        (numbered last) have none yet.
    item_factors_ : ndarray of shape (n_items, n_factors)
        Factors of the known items (BPR: with the item bias as last column).
    item_counts_ : ndarray of shape (n_items,)
        Training counts ``c_i`` (of every stored event after
        :meth:`partial_fit`).
    score_weight_ : float
        ``a``, the weight of the factor scores.
    popularity_weight_ : float
        ``b``, the weight of ``log(1 + c_i)``.
    uniform_share_ : float
        ``w``, the uniform share of the mixture.
    n_calibration_events_ : int
        Number of held-out tail events the scalars were fitted on.
    calibration_log_likelihood_ : float
        Mean log-likelihood of those events at the fitted scalars (with the
        factors fitted without them), without the prior.
    classes_, users_, n_items_, n_users_
        See :class:`UniformRecommender`.

    Examples
    --------
    >>> from skcrnn import MatrixFactorizationRecommender
    >>> from skcrnn.datasets import make_sequences
    >>> from skcrnn.model_selection import suffix_split
    >>> train, test = suffix_split(make_sequences(20, 100, 2000, random_state=0))
    >>> model = MatrixFactorizationRecommender(n_factors=8, random_state=0)
    >>> model.fit(train).score(test) > -4.6  # uniform: -log(100)
    True
    """

    _parameter_constraints = {
        **BaseRecommender._parameter_constraints,
        "n_factors": [Interval(Integral, 1, None, closed="left")],
        "algorithm": [StrOptions({"als", "bpr"})],
        "regularization": [Interval(Real, 0, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "n_iterations": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "calibration_fraction": [Interval(Real, 0, 1, closed="neither")],
        "uniform_share_init": [Interval(Real, 0, 1, closed="neither")],
        "use_gpu": ["boolean"],
        "n_jobs": [None, Options(Integral, {-1}),
                   Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: See BaseRecommender: these take effect at once after fit.
    _scoring_time_params = BaseRecommender._scoring_time_params | {
        "n_iterations", "learning_rate", "n_jobs", "use_gpu", "random_state",
        "verbose"}
    # the normalizers are saved, not recomputed: a matrix product may round
    # differently on another machine
    _saved_attributes = {
        "n_calibration_events_": int, "score_weight_": float,
        "popularity_weight_": float, "_uniform_logit": float,
        "uniform_share_": float, "calibration_log_likelihood_": float,
        "item_counts_": ("n_items",), "user_factors_": ("n_fitted_users", "factors"),
        "item_factors_": ("n_items", "factors"), "_popularity": ("n_items",),
        "_log_norm": ("n_fitted_users",), "_stranger_log_norm": float,
    }

    def __init__(self, n_factors=32, *, algorithm="als", regularization=0.01,
                 alpha=40.0, n_iterations=15, learning_rate=0.01,
                 calibration_fraction=0.1, uniform_share_init=0.01,
                 use_gpu=False, n_jobs=None, random_state=None, verbose=0,
                 user_col="user", item_col="item", time_col="timestamp",
                 handle_unknown="ignore"):
        self.n_factors = n_factors
        self.algorithm = algorithm
        self.regularization = regularization
        self.alpha = alpha
        self.n_iterations = n_iterations
        self.learning_rate = learning_rate
        self.calibration_fraction = calibration_fraction
        self.uniform_share_init = uniform_share_init
        self.use_gpu = use_gpu
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.user_col = user_col
        self.item_col = item_col
        self.time_col = time_col
        self.handle_unknown = handle_unknown

    def _check_fit_params(self):
        if self.use_gpu:
            import implicit.gpu
            if not implicit.gpu.HAS_CUDA:
                raise ValueError("use_gpu=True needs implicit built with CUDA and "
                                 "a GPU; this installation has none.")

    # -------------------------------------------------------------------- fit
    def _fit_sequences(self, sequences):
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        tail = calibration_split(sequences, self.calibration_fraction)
        users, items = sequences.group_of_event, sequences.items
        calibrated = tail & np.isin(users, _calibration_users(
            users[tail], self.n_items_, len(items), seed))
        self.n_calibration_events_ = int(calibrated.sum())
        if self.n_calibration_events_:
            head_counts = self._count_matrix(users[~tail], items[~tail])
            user_f, item_f = self._factorize(head_counts, seed)
            head_popularity = np.log1p(np.bincount(items[~tail],
                                                   minlength=self.n_items_))
            self._calibrate(user_f, item_f, head_popularity, users[calibrated],
                            items[calibrated])
        else:
            warnings.warn("No user has two training events: the softmax cannot "
                          "be calibrated and uses a=0, b=1 (popularity).",
                          UserWarning, stacklevel=3)
            self.score_weight_, self.popularity_weight_ = 0.0, 1.0
            self._uniform_logit = float(logit(self.uniform_share_init))
            self.uniform_share_ = float(self.uniform_share_init)
            self.calibration_log_likelihood_ = np.nan
        self._set_factors(*self._factorize(self._count_matrix(users, items), seed),
                          items)

    def _learn_events(self, continuation, previous_history):
        """Recalculate factors from every stored history (see the class's
        *Incremental learning*); the calibrated scalars stay."""
        history = self._history
        counts = self._count_matrix(history.group_of_event, history.items)
        if self.algorithm == "als":
            factors = self._recalculate_als(counts, continuation)
        else:
            factors = self._continue_bpr(counts)
        self._set_factors(*factors, history.items)

    def _set_factors(self, user_factors, item_factors, items):
        """Adopt factors of every user and item, with the counts of ``items``
        (every training event) and the normalizers at the calibrated scalars."""
        self.item_counts_ = np.bincount(items, minlength=self.n_items_)
        self.user_factors_, self.item_factors_ = user_factors, item_factors
        self._popularity = np.log1p(self.item_counts_)
        self._log_norm = _log_normalizers(
            self.user_factors_, self.item_factors_, self._popularity,
            self.score_weight_, self.popularity_weight_)
        self._stranger_log_norm = float(
            logsumexp(self.popularity_weight_ * self._popularity))

    def _count_matrix(self, users, items):
        matrix = sp.csr_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)),
            shape=(self.n_users_, self.n_items_))
        matrix.sum_duplicates()
        return matrix

    def _factorize(self, user_items, seed):
        """User and item factors (float64) of ``implicit`` on ``user_items``."""
        # implicit parallelizes itself; a threaded BLAS inside it oversubscribes
        with threadpool_limits(1, "blas"):
            model = self._implicit_model(seed, self.use_gpu)
            model.fit(user_items, show_progress=bool(self.verbose))
        if self.use_gpu:
            model = model.to_cpu()
        return _float64_factors(model)

    def _implicit_model(self, seed, use_gpu, dtype=np.float32):
        """An unfitted ``implicit`` model of ``algorithm`` with the parameters.

        Callers make it under a one-thread BLAS limit, in which ``implicit``
        also computes: it warns of a threaded BLAS when it makes an ALS model.
        """
        threads = {None: 1, -1: 0}.get(self.n_jobs, self.n_jobs)
        if self.algorithm == "als":
            from implicit.als import AlternatingLeastSquares
            return AlternatingLeastSquares(
                factors=self.n_factors, regularization=self.regularization,
                alpha=self.alpha, iterations=self.n_iterations, dtype=dtype,
                use_gpu=use_gpu, num_threads=threads, random_state=seed)
        from implicit.bpr import BayesianPersonalizedRanking
        return BayesianPersonalizedRanking(
            factors=self.n_factors, learning_rate=self.learning_rate,
            regularization=self.regularization, iterations=self.n_iterations,
            dtype=dtype, use_gpu=use_gpu, num_threads=threads,
            random_state=seed)

    def _grown_factors(self):
        """Copies of the factors with a row of zeros for each user and item
        that has none yet (BPR: a user's weight of the item bias is 1)."""
        user_f = _with_zero_rows(self.user_factors_, self.n_users_)
        item_f = _with_zero_rows(self.item_factors_, self.n_items_)
        if self.algorithm == "bpr":
            user_f[len(self.user_factors_):, -1] = 1.0
        return user_f, item_f

    def _recalculate_als(self, counts, continuation):
        """ALS steps on the rows that the new events touch, in float64.

        The users with new events (and those that :meth:`update` added, who
        have no factors) are solved from the item factors, then the items of
        the new events from the user factors, then those users again, so that
        they see the new items' factors: ``implicit``'s ``partial_fit_users``
        and ``partial_fit_items`` on the rows of ``counts`` (every stored
        event). The other factors stay as they were.
        """
        users = np.union1d(continuation.user_codes,
                           np.arange(len(self.user_factors_), self.n_users_))
        items = np.unique(continuation.items)
        item_users = counts.T.tocsr()
        with threadpool_limits(1, "blas"):
            model = self._implicit_model(None, use_gpu=False, dtype=np.float64)
            model.user_factors, model.item_factors = self._grown_factors()
            model.partial_fit_users(users, counts[users])
            model.partial_fit_items(items, item_users[items])
            model.partial_fit_users(users, counts[users])
        return _float64_factors(model)

    def _continue_bpr(self, counts):
        """``n_iterations`` more BPR epochs on ``counts`` (every stored
        event) from the current factors, new rows from zero."""
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        with threadpool_limits(1, "blas"):
            model = self._implicit_model(seed, use_gpu=False)
            model.user_factors, model.item_factors = (
                factors.astype(np.float32) for factors in self._grown_factors())
            model.fit(counts, show_progress=bool(self.verbose))
        return _float64_factors(model)

    def _calibrate(self, user_f, item_f, popularity, tail_users, tail_items):
        """Most probable ``a``, ``b``, ``w`` given the held-out tail events.

        The mean log-likelihood of the tail, minus the weak prior's penalty,
        is maximized over ``a`` and ``b``, in units of their features' spread
        so that the unknowns have the same scale, and ``w``: first over ``a``
        and ``b`` alone, at ``w = uniform_share_init``, from
        ``a = 1 / std(scores)`` and ``b = 1``; then over all three.
        """
        objective = _TailLikelihood(user_f, item_f, popularity, tail_users,
                                    tail_items)
        initial_share = self.uniform_share_init

        def at_initial_share(weights):
            value, grad = objective.penalized(np.r_[weights, initial_share])
            return value, grad[:2]

        # The mixture's likelihood is not concave. From the plain start, a
        # first step could reach w = 1, where a and b no longer matter and
        # the prior takes them to 0: a stationary point no better than the
        # uniform model. A nearly pure softmax's is concave in a and b.
        start = objective.standardized(objective.score_scale, 1.0, initial_share)
        weights = _maximize(at_initial_share, start[:2], [(None, None)] * 2).x
        # |logit w| <= 30 keeps both mixture weights representable
        bounds = [(None, None), (None, None), (expit(-30.0), expit(30.0))]
        result = _maximize(objective.penalized, np.r_[weights, initial_share],
                           bounds)
        a, b, w = objective.natural(result.x)
        self.score_weight_ = float(a)
        self.popularity_weight_ = float(b)
        self._uniform_logit = float(logit(w))
        self.uniform_share_ = float(w)
        self.calibration_log_likelihood_ = float(
            -result.fun + objective.penalty(result.x)[0])

    # ---------------------------------------------------------------- scoring
    def _log_proba(self, sequences, prefixes, targets=None):
        groups = sequences.group_of(prefixes)
        # users added by update() have no factors yet: strangers
        users = np.where(sequences.user_codes[groups] < len(self.user_factors_),
                         sequences.user_codes[groups], -1)
        known = users >= 0
        if targets is not None:
            scores = np.zeros(len(prefixes))
            scores[known] = _row_dots(self.user_factors_, users[known],
                                      self.item_factors_, targets[known])
            logits = (self.score_weight_ * scores
                      + self.popularity_weight_ * self._popularity[targets])
            return self._mix(logits - self._user_log_norm(users))
        distinct, row_of = np.unique(users, return_inverse=True)
        scores = np.zeros((len(distinct), self.n_items_))
        has_factors = distinct >= 0
        scores[has_factors] = (self.user_factors_[distinct[has_factors]]
                               @ self.item_factors_.T)
        logits = (self.score_weight_ * scores
                  + self.popularity_weight_ * self._popularity)
        return self._mix(logits - self._user_log_norm(distinct)[:, None])[row_of]

    def _user_log_norm(self, users):
        return np.where(users >= 0, self._log_norm[np.maximum(users, 0)],
                        self._stranger_log_norm)

    def _mix(self, log_softmax):
        return _mix(log_softmax, self._uniform_logit, self.n_items_)


def _float64_factors(model):
    """The user and item factors of a fitted CPU ``implicit`` model, as new
    float64 arrays."""
    return (np.array(model.user_factors, dtype=np.float64),
            np.array(model.item_factors, dtype=np.float64))


def _with_zero_rows(factors, n_rows):
    """A copy of ``factors`` with rows of zeros appended up to ``n_rows``."""
    grown = np.zeros((n_rows, factors.shape[1]), dtype=np.float64)
    grown[:len(factors)] = factors
    return grown


def _maximize(function, start, bounds):
    """L-BFGS-B from ``start`` on ``function(x) = (value, gradient)``, within
    ``bounds``; ``scipy.optimize.minimize``'s result of ``-function``."""
    def negative(x):
        value, gradient = function(x)
        return -value, -gradient
    return minimize(negative, start, jac=True, method="L-BFGS-B", bounds=bounds)


def _mix(log_softmax, uniform_logit, n_items):
    """``log((1 - w) softmax + w / n_items)`` with ``w = expit(uniform_logit)``."""
    return np.logaddexp(log_expit(-uniform_logit) + log_softmax,
                        log_expit(uniform_logit) - np.log(n_items))


def _row_dots(left, left_rows, right, right_rows, chunk=2 ** 16):
    """``left[left_rows[j]] @ right[right_rows[j]]`` for every ``j``, gathering
    a bounded number of factor rows at a time."""
    out = np.empty(len(left_rows))
    for start in range(0, len(left_rows), chunk):
        part = slice(start, start + chunk)
        out[part] = np.einsum("ij,ij->i", left[left_rows[part]],
                              right[right_rows[part]])
    return out


def _inverse_spread(values):
    """``1 / std(values)``, or 1 for values without spread (one item, say),
    which say nothing about their weight: 1 / ~0 sent it to ~1e12."""
    spread = float(np.std(values))
    return 1.0 / spread if spread > 1e-8 else 1.0


def _user_chunks(n_users, n_items):
    rows = max(1, _CHUNK_CELLS // max(n_items, 1))
    return [slice(start, min(start + rows, n_users))
            for start in range(0, n_users, rows)]


def _softmax_weights(scores, a, b, popularity):
    """Row-wise ``exp(logit - max logit)``, their sums and the log normalizers.

    The logits are ``a * scores + b * popularity``; the weights are computed
    in place of one new array (this runs on every calibration step).
    """
    weights = a * scores
    weights += b * popularity
    row_max = weights.max(axis=1, keepdims=True)
    weights -= row_max
    np.exp(weights, out=weights)
    totals = weights.sum(axis=1)
    return weights, totals, row_max[:, 0] + np.log(totals)


def _log_normalizers(user_f, item_f, popularity, a, b):
    """``log sum_j exp(a s_uj + b f_j)`` of every user, in chunks of users."""
    out = np.empty(len(user_f))
    for chunk in _user_chunks(len(user_f), len(item_f)):
        out[chunk] = _softmax_weights(user_f[chunk] @ item_f.T, a, b, popularity)[2]
    return out


class _TailLikelihood:
    """Mean log-likelihood of held-out events and its gradient in (a, b, w).

    :meth:`penalized` adds the prior on ``a`` and ``b`` and works in
    standardized units, ``theta = (a / score_scale, b / popularity_scale, w)``.
    ``w`` itself, not its logit, is the third unknown: the likelihood is
    concave in ``w``, and its slope does not vanish as ``w`` nears 0 or 1,
    where that in ``logit w`` does (``w (1 - w)`` times it) and left the
    optimizer stranded at, e.g., ``w = 0.99999``.
    """

    def __init__(self, user_f, item_f, popularity, tail_users, tail_items):
        self.users, event_user = np.unique(tail_users, return_inverse=True)
        self.user_f, self.item_f = user_f[self.users], item_f
        self.popularity = popularity
        self.event_user, self.items = event_user, tail_items
        self.event_scores = _row_dots(self.user_f, event_user, item_f, tail_items)
        self.event_popularity = popularity[tail_items]
        self.score_scale = _inverse_spread(self.event_scores)
        self.popularity_scale = _inverse_spread(self.event_popularity)

    def standardized(self, a, b, w):
        """``theta`` of ``(a, b, w)``."""
        return np.array([a / self.score_scale, b / self.popularity_scale, w])

    def natural(self, theta):
        """``(a, b, w)`` of ``theta``."""
        return (theta[0] * self.score_scale, theta[1] * self.popularity_scale,
                theta[2])

    def penalty(self, theta):
        """The prior's penalty at ``theta``, per held-out event, and its gradient."""
        precision = 1.0 / (_WEIGHT_PRIOR_SD ** 2 * len(self.items))
        weights = np.array([theta[0], theta[1], 0.0])
        return 0.5 * precision * float(weights @ weights), precision * weights

    def penalized(self, theta):
        """Mean log-likelihood minus the penalty, and its gradient in ``theta``."""
        value, grad = self(*self.natural(theta))
        grad *= [self.score_scale, self.popularity_scale, 1.0]
        penalty, penalty_grad = self.penalty(theta)
        return value - penalty, grad - penalty_grad

    def __call__(self, a, b, w):
        n_users, n_items = len(self.users), len(self.item_f)
        log_norm = np.empty(n_users)
        mean_score = np.empty(n_users)  # softmax expectations, for the gradient
        mean_popularity = np.empty(n_users)
        for chunk in _user_chunks(n_users, n_items):
            scores = self.user_f[chunk] @ self.item_f.T
            weights, totals, log_norm[chunk] = _softmax_weights(
                scores, a, b, self.popularity)
            mean_score[chunk] = np.einsum("ij,ij->i", weights, scores) / totals
            mean_popularity[chunk] = (weights @ self.popularity) / totals
        u = self.event_user
        log_softmax = (a * self.event_scores + b * self.event_popularity
                       - log_norm[u])
        log_mix = np.logaddexp(np.log1p(-w) + log_softmax,
                               np.log(w) - np.log(n_items))
        # each event's softmax probability over its probability, and the share
        # of the latter that comes from the softmax part
        softmax_ratio = np.exp(log_softmax - log_mix)
        softmax_share = (1.0 - w) * softmax_ratio
        grad = np.array([
            np.mean(softmax_share * (self.event_scores - mean_score[u])),
            np.mean(softmax_share * (self.event_popularity - mean_popularity[u])),
            np.mean(np.exp(-np.log(n_items) - log_mix) - softmax_ratio),
        ])
        return float(np.mean(log_mix)), grad
