"""Inverted dropout with masks from a given generator: reproducible, and cheap on a CPU."""

import torch


class Dropout:
    """Dropout whose masks come from a ``torch.Generator`` (identity at rate 0).

    Each mask entry is one 16-bit word of the generator's 64-bit draws
    (four entries per draw: the draws, not the arithmetic, are a CPU
    dropout's cost), kept when the word is at least the rate's quantile;
    the rate is thereby rounded to a multiple of ``2 ** -16``, and the kept
    values are scaled by one over the rounded keep probability, so that
    the expectation is exact.
    """

    def __init__(self, rate, generator):
        self.generator = generator
        dropped = round(float(rate) * 2 ** 16)
        self.rate = dropped / 2 ** 16
        self.threshold = dropped - 2 ** 15
        self.scale = 1.0 / (1.0 - self.rate) if self.rate < 1.0 else 0.0

    def __call__(self, values):
        if self.rate == 0.0:
            return values
        n_values = values.numel()
        words = torch.randint(-2 ** 63, 2 ** 63 - 1, (-(-n_values // 4),),
                              dtype=torch.int64, generator=self.generator,
                              device=values.device).view(torch.int16)
        # a float mask, multiplied: its backward is one product (a
        # torch.where's costs more than the draws)
        mask = (words[:n_values].view(values.shape) >= self.threshold).to(values.dtype)
        return values * mask.mul_(self.scale)
