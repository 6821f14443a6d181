"""--group_by_prefix: a training order whose batches hold rows that start with the same tokens.

The engine runs the tokens all rows of a batch start with once per batch (``--shared_prefix``). In a
dataset that mixes instructions a random batch shares little beyond the chat template; grouping rows
by their leading tokens lets a batch share the instruction too. The order stays random at the scale
of the epoch: shuffle, sort windows of ``window`` batches by token ids (rows with a common prefix end
up next to each other), cut them into batches and shuffle the batches (as Hugging Face's
``group_by_length`` does with lengths).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class PrefixGroupedSampler(Sampler[int]):
    """Row indices, batch by batch, for a ``DataLoader(batch_size=batch_size)``: each run of ``batch_size``
    indices is one batch of rows sorted together by their token ids.

    Epoch ``e`` draws its order from ``torch.Generator().manual_seed(seed + e)`` alone: the same seed gives
    the same order, and a resumed run that replays the epochs gets the interrupted run's. A short last batch
    (rows not filling ``batch_size``) stays last, so no batch straddles two groups.
    """

    def __init__(self, rows: Sequence[Sequence[int]], batch_size: int, seed: int, window: int = 64):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be at least 1, got {batch_size} and {window}")
        self.keys = [tuple(int(t) for t in row) for row in rows]
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws (Accelerate calls this before each pass over its loader)."""
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s batches of row indices, in order."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.keys), generator=g).tolist()
        span = self.window * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.keys.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()] + short

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for batch in self.batches(epoch):
            yield from batch
