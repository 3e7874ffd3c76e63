"""Two compact per-user forms tried for issue 27, not shipped: Foursquare runs.

Each patches :class:`skcrnn._rnn.weights.LowRank` in this process only, then
runs ``benchmarks/rnn_foursquare.py``'s "low rank r=1" model at the given
rank (the paper's protocol, BK settings, own early stopping):

``shared-left``
    ``R_u[:, block b] = R[:, block b] + U^b V_u^b.T``: the left factors
    shared (zero at the start), only ``V_u`` (random at the start) per
    user: ``k H r`` floats a user.
``whole-matrix``
    ``R_u = R + U_u V_u.T`` with ``U_u`` of shape ``H x r`` and ``V_u`` of
    shape ``k H x r``: one rank-``r`` term over all gate blocks per user,
    ``(1 + k) H r`` floats (256 at ``H = 64``, ``r = 1``, for the GRU).

Run (see docs/scaling.rst for the figures)::

    nice python benchmarks/compact_experiments.py shared-left 2 --threads 1 --verbose 0
    nice python benchmarks/compact_experiments.py whole-matrix 1 --threads 1 --verbose 0
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import skcrnn._rnn.weights as weights  # noqa: E402


def shared_left():
    def extra_shapes(self, n_users):
        return {"low_rank_left": (1, self.n_blocks, self.hidden_size, self.rank),
                "low_rank_right": (n_users, self.n_blocks, self.hidden_size,
                                   self.rank)}

    def row_indexed(self):
        return {"low_rank_right": "user"}

    def n_users(self, network):
        return network.low_rank_right.shape[0]

    def for_step(self, network, users, rows):
        right = rows.read("low_rank_right", network.low_rank_right, users)
        left = network.low_rank_left.expand(right.shape[0], -1, -1, -1)
        deviation = weights.compose_low_rank(left, right)
        return network.recurrent[0] + deviation, deviation

    def _known(self, network, users, dtype):
        right = network.low_rank_right.index_select(0, users).to(dtype)
        left = network.low_rank_left.expand(right.shape[0], -1, -1, -1).to(dtype)
        return network.recurrent[0].to(dtype) + weights.compose_low_rank(left, right)

    def _mean(self, network, dtype):
        right = network.low_rank_right.to(dtype).mean(dim=0, keepdim=True)
        return network.recurrent[0].to(dtype) + weights.compose_low_rank(
            network.low_rank_left.to(dtype), right)[0]
    return [extra_shapes, row_indexed, n_users, for_step, _known, _mean]


def whole_matrix():
    def compose(left, right):
        return torch.matmul(left, right.transpose(-1, -2))

    def extra_shapes(self, n_users):
        return {"low_rank_left": (n_users, self.hidden_size, self.rank),
                "low_rank_right": (n_users, self.n_blocks * self.hidden_size,
                                   self.rank)}

    def for_step(self, network, users, rows):
        left = rows.read("low_rank_left", network.low_rank_left, users)
        right = rows.read("low_rank_right", network.low_rank_right, users)
        deviation = compose(left, right)
        return network.recurrent[0] + deviation, deviation

    def _known(self, network, users, dtype):
        left = network.low_rank_left.index_select(0, users).to(dtype)
        right = network.low_rank_right.index_select(0, users).to(dtype)
        return network.recurrent[0].to(dtype) + compose(left, right)

    def _mean(self, network, dtype):
        return network.recurrent[0].to(dtype) + compose(
            network.low_rank_left.to(dtype), network.low_rank_right.to(dtype)).mean(dim=0)
    return [extra_shapes, for_step, _known, _mean]


FORMS = {"shared-left": shared_left, "whole-matrix": whole_matrix}


def main():
    form, rank = sys.argv[1], int(sys.argv[2])
    for method in FORMS[form]():
        setattr(weights.LowRank, method.__name__, method)
    import rnn_foursquare
    rnn_foursquare.VARIANTS["low rank r=1"]["rank"] = rank
    sys.argv = [sys.argv[0], "--models", "low rank r=1"] + sys.argv[3:]
    print(f"{form} low rank, rank {rank}")
    rnn_foursquare.main()


if __name__ == "__main__":
    main()
