"""Which training pairs each optimiser step uses, derived from (seed, step) only.

The batch of any step can be recomputed without replaying the run, so a resumed cell sees exactly
the data an uninterrupted one would, and the pairs a run will visit are known before step 1 (the
training reference is scored for those only).
"""

from __future__ import annotations

import torch

from ablate.data.pairs import TokenizedExamples, TokenizedPairs

# Pairs sorted together when batches are grouped by length, in batches: transformers'
# LengthGroupedSampler uses 50. Larger groups pad less but order the run by length for longer.
MEGA_BATCH = 50


def pair_lengths(data: TokenizedPairs | TokenizedExamples) -> list[int]:
    """Padded width a pair asks of its batch: prompt + its longer completion (chosen and rejected
    share one forward, so the longer one sets the width); an unpaired example: prompt + completion."""
    if isinstance(data, TokenizedExamples):
        return [len(p) + len(c) for p, c in zip(data.prompt_ids, data.completion_ids, strict=True)]
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(data.prompt_ids, data.chosen_ids, data.rejected_ids,
                                                             strict=True)]


class DataOrder:
    """A fresh permutation of the n pairs per epoch, seeded by (seed, epoch); step s takes the next
    batch_size positions, crossing into the next epoch's permutation when one ends.

    With `lengths` (trainer.group_by_length), each epoch's permutation is cut into mega-batches of
    MEGA_BATCH x batch_size positions and each mega-batch is sorted by pair length, longest first:
    the same pairs in each mega-batch and epoch, so still every pair once per epoch, but batches of
    similar lengths (less padding). Still a function of (seed, step) only.
    """

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} pairs")
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                size = MEGA_BATCH * self.batch_size
                # sorted() is stable: equal lengths keep their random order
                perm = [i for start in range(0, self.n, size)
                        for i in sorted(perm[start : start + size], key=lambda i: -self.lengths[i])]
            self._perms[epoch] = perm
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        positions = range((step - 1) * self.batch_size, step * self.batch_size)
        return [self._perm(p // self.n)[p % self.n] for p in positions]

    def visited(self, max_steps: int) -> list[int]:
        """Every pair steps 1..max_steps use, each once, in first-visit order."""
        return list(dict.fromkeys(i for step in range(1, max_steps + 1) for i in self.batch(step)))
