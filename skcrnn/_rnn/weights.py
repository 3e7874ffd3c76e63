"""Who has which recurrent matrices: per-user, shared, shared plus a deviation.

A collaborative network's recurrent matrices ``R_u`` (``H x k*H``, see
:mod:`.cells`) are parameterised in one of five ways (the ``kind``):

``"per_user"``
    ``recurrent`` (n_users, H, k*H): each user's own dense matrices, the
    paper's C-GRU and C-tanh;
``"shared"``
    ``recurrent`` (1, H, k*H): one set for everybody, the paper's P-GRU;
``"deviation"``
    ``recurrent`` (1, H, k*H) shared plus ``deviation`` (n_users, H, k*H):
    ``R_u = R + D_u``, the same family as ``"per_user"``, written so that a
    penalty on ``||D_u||^2`` shrinks each user toward the shared matrices;
``"low_rank"``
    ``recurrent`` (1, H, k*H) shared plus ``low_rank_left`` and
    ``low_rank_right`` (n_users, k, H, rank): per gate block ``b`` (columns
    ``b*H .. (b+1)*H``), ``R_u[:, block b] = R[:, block b] + U_u^b V_u^b.T``
    with ``U_u^b = low_rank_left[u, b]`` and ``V_u^b = low_rank_right[u, b]``,
    each ``H x rank``;
``"basis"``
    ``recurrent`` (1, H, k*H) shared plus ``basis_directions`` (rank, H, k*H),
    shared too, and ``basis_coefficients`` (n_users, rank): ``R_u = R +
    sum_j c_uj A_j`` with ``c_u = basis_coefficients[u]`` and ``A_j =
    basis_directions[j]``. A user is ``rank`` numbers (the compact kind:
    the users' deviations, stacked, have rank ``rank``); the map from
    coefficients to matrices is linear, so the mean coefficients give the
    mean matrices.

In every kind but ``"shared"`` the per-user tensors are indexed by user along
their first dimension (``row_indexed``), so that a training step reads, and
the lazy optimizer (:mod:`skcrnn._torch.optim`) updates, only its batch's
users. A user's *deviation* is ``R_u - R`` (zero for ``"shared"``, and not
defined for ``"per_user"``, which has no shared part).

Each kind composes the matrices of a batch of users in two ways:
:meth:`~PerUser.for_step` for training (the per-user rows read as leaves
through :class:`~skcrnn._torch.optim.Rows`, with the batch's deviations for
a penalty), and :meth:`~PerUser.for_users` for scoring, where unknown users
(code ``-1``, or past the fitted users: users added by ``update``) get the
mean of the known users' matrices.
"""

import math

import torch

#: The parameterisations, by name.
KINDS = ("per_user", "shared", "deviation", "low_rank", "basis")
#: The directions of ``"basis"`` when the estimator's ``rank`` is None.
BASIS_RANK = 16


class PerUser:
    """Dense matrices per user (the collaborative RNN of the paper)."""

    kind = "per_user"
    has_deviation = False

    def __init__(self, n_blocks, hidden_size, rank=None):
        self.n_blocks = n_blocks
        self.hidden_size = hidden_size
        self.rank = None

    def recurrent_sets(self, n_users):
        """Rows of ``recurrent``: one per user."""
        return n_users

    def extra_shapes(self, n_users):
        """Shapes of the per-user parameters besides ``recurrent``."""
        return {}

    def row_indexed(self):
        return {"recurrent": "user"}

    def n_users(self, network):
        return network.recurrent.shape[0]

    def reset(self, network, generator, std):
        """Initialize the :meth:`extra_shapes` parameters (the network draws ``recurrent``)."""

    def for_step(self, network, users, rows):
        """A training step's matrices of ``users`` (distinct, known).

        Parameters
        ----------
        network : CollaborativeRNN
        users : LongTensor of shape (B,)
        rows : Rows
            Reads the per-user rows as leaves of the step's graph.

        Returns
        -------
        weights : Tensor of shape (B, H, k*H), or (H, k*H) when shared
        deviation : Tensor of shape (B, H, k*H) or None
            ``R_u - R``, differentiable, for kinds that have it.
        """
        return rows.read("recurrent", network.recurrent, users), None

    def for_users(self, network, users, dtype=None):
        """Scoring: the matrices of ``users``, the mean ones for unknown users.

        Parameters
        ----------
        network : CollaborativeRNN
        users : LongTensor of shape (B,)
            ``-1`` and codes past the fitted users get the mean of the
            per-user matrices.
        dtype : torch.dtype, optional
            Compute and return in this type.

        Returns
        -------
        Tensor of shape (B, H, k*H), or (H, k*H) when shared
        """
        unknown = (users < 0) | (users >= self.n_users(network))
        weights = self._known(network, torch.where(unknown, 0, users), dtype)
        if bool(unknown.any()):
            mean = self._mean(network, weights.dtype)
            weights = torch.where(unknown[:, None, None], mean, weights)
        return weights

    def _known(self, network, users, dtype):
        weights = network.recurrent.index_select(0, users)
        return weights if dtype is None else weights.to(dtype)

    def _mean(self, network, dtype):
        return network.recurrent.mean(dim=0, dtype=dtype)

    def elements_per_user(self, network):
        """Elements of one user's composed matrices (``H * k*H``)."""
        return self.hidden_size * self.n_blocks * self.hidden_size


class Shared(PerUser):
    """One set of matrices for everybody (P-GRU)."""

    kind = "shared"

    def recurrent_sets(self, n_users):
        return 1

    def row_indexed(self):
        return {}

    def n_users(self, network):
        return 1

    def for_step(self, network, users, rows):
        return network.recurrent[0], None

    def for_users(self, network, users, dtype=None):
        weights = network.recurrent[0]
        return weights if dtype is None else weights.to(dtype)


class Deviation(PerUser):
    """Shared matrices plus a dense per-user deviation, ``R_u = R + D_u``."""

    kind = "deviation"
    has_deviation = True

    def recurrent_sets(self, n_users):
        return 1

    def extra_shapes(self, n_users):
        return {"deviation": (n_users, self.hidden_size,
                              self.n_blocks * self.hidden_size)}

    def row_indexed(self):
        return {"deviation": "user"}

    def n_users(self, network):
        return network.deviation.shape[0]

    def reset(self, network, generator, std):
        """Zero deviations: every user starts at the shared matrices."""
        network.deviation.zero_()

    def for_step(self, network, users, rows):
        deviation = rows.read("deviation", network.deviation, users)
        return network.recurrent[0] + deviation, deviation

    def _known(self, network, users, dtype):
        shared, deviation = network.recurrent[0], network.deviation.index_select(0, users)
        if dtype is not None:
            shared, deviation = shared.to(dtype), deviation.to(dtype)
        return shared + deviation

    def _mean(self, network, dtype):
        return (network.recurrent[0].to(dtype)
                + network.deviation.mean(dim=0, dtype=dtype))


class LowRank(PerUser):
    """Shared matrices plus a rank-``rank`` per-user term per gate block."""

    kind = "low_rank"
    has_deviation = True

    def __init__(self, n_blocks, hidden_size, rank=None):
        super().__init__(n_blocks, hidden_size)
        if rank is None or not 1 <= int(rank) <= hidden_size:
            raise ValueError(f"rank must be in [1, hidden_size={hidden_size}]; "
                             f"got {rank!r}.")
        self.rank = int(rank)

    def recurrent_sets(self, n_users):
        return 1

    def extra_shapes(self, n_users):
        shape = (n_users, self.n_blocks, self.hidden_size, self.rank)
        return {"low_rank_left": shape, "low_rank_right": shape}

    def row_indexed(self):
        return {"low_rank_left": "user", "low_rank_right": "user"}

    def n_users(self, network):
        return network.low_rank_left.shape[0]

    def reset(self, network, generator, std):
        """``U = 0`` (every user starts at the shared matrices), ``V`` drawn.

        ``V`` is drawn like the other weights, N(0, std), after them; ``U``
        starts at zero so that the start is the shared network's (the other
        weights are those of ``"shared"`` with the same seed), and ``V`` is
        not, so that ``U`` receives a gradient from the first step.
        """
        network.low_rank_left.zero_()
        draw = torch.randn(network.low_rank_right.shape, generator=generator,
                           dtype=network.low_rank_right.dtype)
        network.low_rank_right.copy_(draw.mul_(std))

    def for_step(self, network, users, rows):
        left = rows.read("low_rank_left", network.low_rank_left, users)
        right = rows.read("low_rank_right", network.low_rank_right, users)
        deviation = compose_low_rank(left, right)
        return network.recurrent[0] + deviation, deviation

    def _known(self, network, users, dtype):
        left = network.low_rank_left.index_select(0, users)
        right = network.low_rank_right.index_select(0, users)
        shared = network.recurrent[0]
        if dtype is not None:
            left, right, shared = left.to(dtype), right.to(dtype), shared.to(dtype)
        return shared + compose_low_rank(left, right)

    def _mean(self, network, dtype):
        return network.recurrent[0].to(dtype) + mean_low_rank(
            network.low_rank_left, network.low_rank_right, dtype)


class Basis(PerUser):
    """Shared matrices plus a per-user combination of ``rank`` shared directions."""

    kind = "basis"
    has_deviation = True

    def __init__(self, n_blocks, hidden_size, rank=None):
        super().__init__(n_blocks, hidden_size)
        most = n_blocks * hidden_size * hidden_size
        if rank is None or not 1 <= int(rank) <= most:
            raise ValueError(f"rank must be in [1, {most}] (the elements of the "
                             f"recurrent matrices); got {rank!r}.")
        self.rank = int(rank)

    def recurrent_sets(self, n_users):
        return 1

    def extra_shapes(self, n_users):
        size = self.hidden_size
        return {"basis_coefficients": (n_users, self.rank),
                "basis_directions": (self.rank, size, self.n_blocks * size)}

    def row_indexed(self):
        return {"basis_coefficients": "user"}

    def n_users(self, network):
        return network.basis_coefficients.shape[0]

    def reset(self, network, generator, std):
        """Zero coefficients (every user at the shared matrices), directions drawn.

        The directions are drawn after the other weights, from N(0, std^2 /
        rank): the start is the shared network's of the same seed, the
        coefficients receive a gradient (``<G_u, A_j>``) from the first step,
        and a step of RMSProp, which moves every coefficient by about the
        learning rate whatever its gradient's scale, moves a user's matrices
        by about as much whatever the number of directions (drawn with the
        other weights' ``std``, the users' first steps were ``sqrt(rank)``
        times larger, and the error on Foursquare worse; see the "Scaling
        out" page).
        """
        network.basis_coefficients.zero_()
        draw = torch.randn(network.basis_directions.shape, generator=generator,
                           dtype=network.basis_directions.dtype)
        network.basis_directions.copy_(draw.mul_(std / math.sqrt(self.rank)))

    def for_step(self, network, users, rows):
        coefficients = rows.read("basis_coefficients", network.basis_coefficients,
                                 users)
        deviation = compose_basis(coefficients, network.basis_directions)
        return network.recurrent[0] + deviation, deviation

    def _known(self, network, users, dtype):
        coefficients = network.basis_coefficients.index_select(0, users)
        directions, shared = network.basis_directions, network.recurrent[0]
        if dtype is not None:
            coefficients, directions, shared = (
                coefficients.to(dtype), directions.to(dtype), shared.to(dtype))
        return shared + compose_basis(coefficients, directions)

    def _mean(self, network, dtype):
        mean = network.basis_coefficients.mean(dim=0, dtype=dtype)
        return network.recurrent[0].to(dtype) + compose_basis(
            mean[None], network.basis_directions.to(dtype))[0]


def compose_basis(coefficients, directions):
    """The deviations ``sum_j c_uj A_j`` of a batch of users: one product.

    Parameters
    ----------
    coefficients : Tensor of shape (B, rank)
    directions : Tensor of shape (rank, H, k*H)

    Returns
    -------
    Tensor of shape (B, H, k*H)
    """
    rank, size, width = directions.shape
    flat = torch.matmul(coefficients, directions.reshape(rank, size * width))
    return flat.view(coefficients.shape[0], size, width)


def compose_low_rank(left, right):
    """The deviations ``[U^0 V^0.T | U^1 V^1.T | ...]`` of a batch of users.

    Parameters
    ----------
    left, right : Tensor of shape (B, k, H, rank)

    Returns
    -------
    Tensor of shape (B, H, k*H)
    """
    n_rows, n_blocks, size, _ = left.shape
    blocks = torch.matmul(left, right.transpose(-1, -2))  # (B, k, H, H)
    return blocks.transpose(1, 2).reshape(n_rows, size, n_blocks * size)


def mean_low_rank(left, right, dtype):
    """The mean over users of :func:`compose_low_rank`, shape (H, k*H).

    ``mean_u U_u V_u.T`` per block is one product of the users' factors
    stacked along the rank, without forming any user's matrices.
    """
    n_users, n_blocks, size, rank = left.shape
    stacked_left = left.to(dtype).permute(1, 2, 0, 3).reshape(n_blocks, size, -1)
    stacked_right = right.to(dtype).permute(1, 2, 0, 3).reshape(n_blocks, size, -1)
    blocks = torch.matmul(stacked_left, stacked_right.transpose(-1, -2)) / max(n_users, 1)
    return blocks.transpose(0, 1).reshape(size, n_blocks * size)


def best_low_rank(deviation, n_blocks, rank):
    """Factors ``(U, V)`` of the best rank-``rank`` approximation of a deviation.

    Per block, the truncated singular value decomposition ``A S B.T`` of the
    block gives ``U = A S`` and ``V = B`` (orthonormal columns: never zero,
    so that ``U`` keeps receiving gradients even when the deviation is zero).

    Parameters
    ----------
    deviation : Tensor of shape (H, k*H)
    n_blocks : int
    rank : int

    Returns
    -------
    left, right : Tensor of shape (k, H, rank), in ``deviation``'s type
    """
    size = deviation.shape[0]
    blocks = deviation.double().reshape(size, n_blocks, size).transpose(0, 1)
    u, s, vh = torch.linalg.svd(blocks)
    left = u[..., :rank] * s[:, None, :rank]
    right = vh[:, :rank].transpose(-1, -2)
    return left.to(deviation.dtype), right.to(deviation.dtype)


def make_weights(kind, n_blocks, hidden_size, rank=None):
    """The parameterisation named ``kind`` (one of :data:`KINDS`)."""
    classes = {"per_user": PerUser, "shared": Shared, "deviation": Deviation,
               "low_rank": LowRank, "basis": Basis}
    if kind not in classes:
        raise ValueError(f"recurrent weights must be one of {list(KINDS)}; got "
                         f"{kind!r}.")
    if kind not in ("low_rank", "basis") and rank is not None:
        raise ValueError(f"rank is only used by low-rank and basis weights, not "
                         f"{kind!r}; got rank={rank!r}.")
    return classes[kind](n_blocks, hidden_size, rank)
