"""Event sequences from a known collaborative recurrent process."""

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

_START = np.datetime64("2020-01-01T00:00:00", "ns")
_START_SPREAD_SECONDS = 30 * 24 * 3600  # users start within the first 30 days
_MEAN_GAP_SECONDS = 3600.0
_LENGTH_SIGMA = 0.75  # log-normal spread of the users' shares of events


def make_sequences(n_users=100, n_items=500, n_events=20000, *, n_topics=None,
                   user_heterogeneity=0.8, memory=0.5, noise=0.05,
                   popularity_exponent=1.0, shared_concentration=0.5,
                   min_length=20, random_state=None,
                   return_params=False, user_col="user", item_col="item",
                   time_col="timestamp"):
    r"""Generate events from a collaborative recurrent process.

    Users move between ``n_topics`` topics (groups of items) with dynamics
    that are partly shared by everybody and partly their own, and carry a
    recurrent state. A model with per-user recurrent weights (a collaborative
    RNN) can learn each user's dynamics; a shared-weights RNN or a global
    bigram model only sees their mixture. This gives model comparisons a
    known ground truth without downloads.

    The process, with :math:`K` topics, :math:`h` = ``user_heterogeneity``,
    :math:`m` = ``memory``, :math:`\varepsilon` = ``noise``, :math:`a` =
    ``popularity_exponent`` and :math:`c` = ``shared_concentration``:

    - Items are split at random into :math:`K` topics of near-equal sizes.
      Within topic :math:`k`, the item of rank :math:`r` (a random order) has
      probability :math:`q_k(r) \propto r^{-a}` (Zipf-like; :math:`a=0` is
      uniform).
    - A shared row-stochastic matrix :math:`A` (rows drawn from a symmetric
      Dirichlet(:math:`c`); a small :math:`c` puts most of a row's mass on
      a few topics) holds the collaborative dynamics. Each user :math:`u`
      has a random permutation :math:`\pi_u` of the topics, with permutation
      matrix :math:`P_u` (:math:`P_u[k, \pi_u(k)] = 1`), and the transition
      matrix

      .. math:: W_u = (1 - h) A + h P_u.

    - The first topic is uniform, :math:`z_0 \sim U\{0..K-1\}`, and the state
      starts at :math:`s_0 = e_{z_0}` (one-hot). For :math:`t \ge 1`:

      .. math::

         s_t &= m \, s_{t-1} + (1 - m) \, e_{z_{t-1}}, \\
         z_t &\sim \mathrm{Categorical}\big((1 - \varepsilon)\, s_t W_u
                 + \varepsilon / K\big).

      With :math:`m = 0` the topics form a Markov chain with transition
      matrix :math:`(1-\varepsilon) W_u + \varepsilon / K`; with
      :math:`h = 1, m = 0, \varepsilon = 0` user :math:`u` follows
      :math:`z_t = \pi_u(z_{t-1})` exactly.
    - The item of event :math:`t` is drawn from :math:`q_{z_t}`.

    Sequence lengths are ``min_length`` plus a multinomial share of the
    remaining events, with log-normal weights, so they vary across users and
    sum to ``n_events`` exactly. Each user's times start at 2020-01-01 plus a
    uniform offset of up to 30 days and grow by ``1 + floor(Exp(1 hour))``
    seconds per event, so they strictly increase.

    The simulation loops over time steps only, vectorised over users, so a
    million events take a few seconds.

    Parameters
    ----------
    n_users : int, default 100
        Number of users (at least 1).
    n_items : int, default 500
        Number of items, at least ``n_topics``. Only items that occur appear.
    n_events : int, default 20000
        Total number of events, at least ``n_users * min_length``.
    n_topics : int, default None
        Number of topics :math:`K`, between 1 and ``n_items``. By default
        ``max(2, min(32, n_items // 10))``, at most ``n_items``.
    user_heterogeneity : float in [0, 1], default 0.8
        Weight :math:`h` of each user's own dynamics against the shared ones.
    memory : float in [0, 1), default 0.5
        How much of the recurrent state :math:`m` carries over per step.
    noise : float in [0, 1], default 0.05
        Probability :math:`\varepsilon` of a uniformly random next topic.
    popularity_exponent : float >= 0, default 1.0
        Exponent :math:`a` of the within-topic Zipf-like popularity.
    shared_concentration : float > 0, default 0.5
        Parameter :math:`c` of the symmetric Dirichlet of the rows of
        :math:`A`. Below 1 the shared dynamics favour a few successors of each
        topic, which a global bigram can learn; large values make every row
        of :math:`A` close to uniform.
    min_length : int, default 20
        Shortest sequence (at least 1).
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        Seed or random generator. The same seed gives the same frame. A
        Generator is used to seed a RandomState (and so is advanced).
    return_params : bool, default False
        Also return the ground truth of the process.
    user_col, item_col, time_col : str, default "user", "item", "timestamp"
        Names of the user, item and time columns of the result.

    Returns
    -------
    events : pandas.DataFrame
        Columns ``user`` (int64, 0 to ``n_users - 1``), ``item`` (int64, 0 to
        ``n_items - 1``) and ``timestamp`` (datetime64[ns]); sorted by user
        then time.
    params : dict
        Only with ``return_params=True``:

        - ``"topic"``: ndarray (n_events,), the topic of each row of
          ``events``;
        - ``"topic_of_item"``: ndarray (n_items,);
        - ``"item_probability"``: ndarray (n_items,), :math:`q` within the
          item's topic;
        - ``"shared_transition"``: :math:`A`, ndarray (K, K);
        - ``"user_permutation"``: ndarray (n_users, K), row :math:`u` is
          :math:`\pi_u`;
        - ``"user_transition"``: the :math:`W_u`, ndarray (n_users, K, K);
        - ``"lengths"``: ndarray (n_users,), events per user.

    Raises
    ------
    ValueError
        If a parameter is out of range, e.g. ``n_events < n_users *
        min_length`` or a probability outside [0, 1], or column names repeat.

    Examples
    --------
    >>> from skcrnn.datasets import make_sequences
    >>> events = make_sequences(n_users=5, n_items=50, n_events=200,
    ...                         random_state=0)
    >>> events.shape
    (200, 3)
    >>> list(events.columns)
    ['user', 'item', 'timestamp']
    """
    n_topics = _check_params(n_users, n_items, n_events, n_topics,
                             user_heterogeneity, memory, noise,
                             popularity_exponent, shared_concentration,
                             min_length)
    if len({user_col, item_col, time_col}) != 3:
        raise ValueError("user_col, item_col and time_col must differ; got "
                         f"{[user_col, item_col, time_col]!r}.")
    rng = _check_random_state(random_state)

    topic_items, topic_sizes = _split_items(n_items, n_topics, rng)
    item_cdf = _within_topic_cdf(topic_sizes, popularity_exponent)
    shared = _shared_transition(n_topics, shared_concentration, rng)
    permutations = np.argsort(rng.random_sample((n_users, n_topics)), axis=1)
    lengths = _sequence_lengths(n_users, n_events, min_length, rng)

    topics = _simulate_topics(lengths, shared, permutations, user_heterogeneity,
                              memory, noise, rng)
    items = _draw_items(topics, topic_items, topic_sizes, item_cdf, rng)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    times = _timestamps(lengths, rng)

    events = pd.DataFrame({user_col: users, item_col: items, time_col: times})
    if not return_params:
        return events
    return events, _ground_truth(topics, topic_items, topic_sizes, item_cdf,
                                 shared, permutations, user_heterogeneity,
                                 lengths, n_items)


# ------------------------------------------------------------ validation
def _check_params(n_users, n_items, n_events, n_topics, user_heterogeneity,
                  memory, noise, popularity_exponent, shared_concentration,
                  min_length):
    """Validate the parameters; return the number of topics to use."""
    for name, value, lowest in (("n_users", n_users, 1), ("n_items", n_items, 1),
                                ("n_events", n_events, 1),
                                ("min_length", min_length, 1)):
        _check_int(name, value, lowest)
    if n_events < n_users * min_length:
        raise ValueError(
            f"n_events={n_events} is too small for n_users={n_users} users of "
            f"at least min_length={min_length} events (needs at least "
            f"{n_users * min_length}).")
    if n_topics is None:
        n_topics = min(n_items, max(2, min(32, n_items // 10)))
    _check_int("n_topics", n_topics, 1)
    if n_topics > n_items:
        raise ValueError(
            f"n_topics={n_topics} exceeds n_items={n_items}: every topic needs "
            f"at least one item.")
    for name, value in (("user_heterogeneity", user_heterogeneity),
                        ("memory", memory), ("noise", noise)):
        _check_real(name, value, 0.0, 1.0)
    if memory == 1:
        raise ValueError("memory must be below 1: with memory=1 the state never "
                         "sees the items.")
    _check_real("popularity_exponent", popularity_exponent, 0.0, np.inf)
    _check_real("shared_concentration", shared_concentration, 0.0, np.inf)
    if shared_concentration == 0:
        raise ValueError("shared_concentration must be positive; got 0.")
    return int(n_topics)


def _check_int(name, value, lowest):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}.")
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}; got {value}.")


def _check_real(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, Real) or np.isnan(value):
        raise ValueError(f"{name} must be a number; got {value!r}.")
    if not low <= value <= high or not np.isfinite(value):
        raise ValueError(f"{name} must be in [{low}, {high}]; got {value}.")


def _check_random_state(random_state):
    """sklearn's check_random_state, also accepting a numpy Generator."""
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(random_state.integers(2 ** 32, dtype=np.uint64))
    return check_random_state(random_state)


# ----------------------------------------------------------------- pieces
def _split_items(n_items, n_topics, rng):
    """Items grouped by topic (each group in rank order) and group sizes."""
    shuffled = rng.permutation(n_items)
    groups = [shuffled[k::n_topics] for k in range(n_topics)]
    return np.concatenate(groups).astype(np.int64), np.array([len(g) for g in groups])


def _within_topic_cdf(topic_sizes, exponent):
    """Cumulative popularity, shifted by the topic: topic k spans (k, k + 1]."""
    starts = np.concatenate([[0], np.cumsum(topic_sizes)[:-1]])
    ranks = np.arange(topic_sizes.sum()) - np.repeat(starts, topic_sizes) + 1
    weights = ranks.astype(np.float64) ** -exponent
    weights /= np.repeat(np.add.reduceat(weights, starts), topic_sizes)
    running = np.cumsum(weights)
    before = np.concatenate([[0.0], running[starts[1:] - 1]])
    topic_of_slot = np.repeat(np.arange(len(topic_sizes)), topic_sizes)
    cdf = topic_of_slot + running - np.repeat(before, topic_sizes)
    cdf[np.cumsum(topic_sizes) - 1] = np.arange(1, len(topic_sizes) + 1)
    return cdf


def _shared_transition(n_topics, concentration, rng):
    """Rows of A from a symmetric Dirichlet(concentration)."""
    shared = rng.dirichlet(np.full(n_topics, float(concentration)), size=n_topics)
    # With a tiny concentration every gamma draw of a row can underflow to 0
    # and the row comes back NaN; the Dirichlet's limit there is a vertex
    # of the simplex chosen uniformly.
    degenerate = np.flatnonzero(~np.isfinite(shared).all(axis=1))
    if len(degenerate):
        shared[degenerate] = np.eye(n_topics)[rng.randint(n_topics, size=len(degenerate))]
    return shared


def _sequence_lengths(n_users, n_events, min_length, rng):
    shares = rng.lognormal(0.0, _LENGTH_SIGMA, size=n_users)
    extra = rng.multinomial(n_events - n_users * min_length, shares / shares.sum())
    return (min_length + extra).astype(np.int64)


def _simulate_topics(lengths, shared, permutations, heterogeneity, memory,
                     noise, rng):
    """Topic of every event, users in order, each user's events in time order.

    Users are simulated longest first, so the users still active at step t
    are a prefix of the batch and every step works on views, not copies.
    """
    n_users, n_topics = permutations.shape
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    # (s @ P_u)[j] = s[inverse_u[j]]: a gather instead of a batched matmul.
    inverse = np.argsort(permutations[order], axis=1)
    max_length = int(sorted_lengths[0])
    n_active = np.searchsorted(-sorted_lengths, -np.arange(max_length), side="left")

    topics = np.empty((n_users, max_length), dtype=np.int32)
    rows = np.arange(n_users)
    state = np.zeros((n_users, n_topics))
    topics[:, 0] = rng.randint(n_topics, size=n_users)
    state[rows, topics[:, 0]] = 1.0
    for t in range(1, max_length):
        n = n_active[t]
        s = state[:n]
        s *= memory
        s[rows[:n], topics[:n, t - 1]] += 1.0 - memory
        mixed = (1.0 - heterogeneity) * (s @ shared)
        mixed += heterogeneity * np.take_along_axis(s, inverse[:n], axis=1)
        cdf = np.cumsum(mixed, axis=1)
        cdf *= 1.0 - noise
        cdf += noise / n_topics * np.arange(1, n_topics + 1)
        u = rng.random_sample(n) * cdf[:, -1]
        drawn = (cdf < u[:, None]).sum(axis=1)
        topics[:n, t] = np.minimum(drawn, n_topics - 1)

    unsorted = np.empty_like(topics)
    unsorted[order] = topics
    return unsorted[np.arange(max_length) < lengths[:, None]]


def _draw_items(topics, topic_items, topic_sizes, item_cdf, rng):
    """Item of each event: inverse-CDF draw within its topic, all at once."""
    slot = np.searchsorted(item_cdf, topics + rng.random_sample(len(topics)),
                           side="right")
    ends = np.cumsum(topic_sizes)
    slot = np.clip(slot, ends[topics] - topic_sizes[topics], ends[topics] - 1)
    return topic_items[slot]


def _timestamps(lengths, rng):
    n_events = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps = 1 + np.floor(rng.exponential(_MEAN_GAP_SECONDS, n_events)).astype(np.int64)
    gaps[starts] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[starts], lengths)
    offsets = rng.randint(_START_SPREAD_SECONDS, size=len(lengths)).astype(np.int64)
    seconds = np.repeat(offsets, lengths) + elapsed
    return _START + seconds.astype("timedelta64[s]").astype("timedelta64[ns]")


def _ground_truth(topics, topic_items, topic_sizes, item_cdf, shared,
                  permutations, heterogeneity, lengths, n_items):
    n_users, n_topics = permutations.shape
    topic_of_item = np.empty(n_items, dtype=np.int64)
    topic_of_item[topic_items] = np.repeat(np.arange(n_topics), topic_sizes)
    item_probability = np.empty(n_items)
    # The shifted CDF is continuous across topics (topic k ends at k + 1,
    # where topic k + 1 starts), so its steps are the probabilities.
    item_probability[topic_items] = np.diff(item_cdf, prepend=0.0)
    personal = np.zeros((n_users, n_topics, n_topics))
    personal[np.arange(n_users)[:, None], np.arange(n_topics), permutations] = 1.0
    return {
        "topic": topics.astype(np.int64),
        "topic_of_item": topic_of_item,
        "item_probability": item_probability,
        "shared_transition": shared,
        "user_permutation": permutations,
        "user_transition": (1 - heterogeneity) * shared + heterogeneity * personal,
        "lengths": lengths,
    }
