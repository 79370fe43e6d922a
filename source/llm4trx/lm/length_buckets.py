"""Length-bucketed batches over our MDS shards: no compute on padding, one client per sample.

The text collator pads a batch to its longest row; batches of random clients (p50 ~530, up to max_seq_len
tokens) are then ~40 % padding. Here each dataloader worker reads its share of the epoch from
mosaicml-streaming as usual (the same samples, the same partition over ranks and workers), collects a
window of `window` batches, sorts the window's full batches by length, and yields those batches in a
shuffled order (seeded by shuffle_seed, epoch, worker and window). A batch then holds clients of similar
length and is padded only to its longest. The window's trailing partial batch (end of the worker's stream)
keeps its samples and its place, so `drop_last` drops exactly what it drops without bucketing: every epoch
trains on the same multiset of samples.

Resumption (Composer autoresume): Composer saves streaming's state with the global sample count S of the
epoch. On resume the dataset asks streaming for the work from the last window boundary at or before S,
rebuilds those windows in the same order, and the loader drops the batches the checkpointed run already
trained (BucketedLoader).
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
from llmfoundry.data.text_data import StreamingTextDataset
from torch.utils.data import DataLoader


def window_order(lengths: Sequence[int], batch: int, rng: Optional[np.random.Generator]) -> np.ndarray:
    """Positions of one window in bucketed order: full batches of similar length (in a shuffled order when
    `rng` is given, else shortest first), then the trailing partial batch as it came."""
    full = len(lengths) // batch * batch
    groups = np.argsort(np.asarray(lengths[:full], dtype=np.int64), kind="stable").reshape(-1, batch)
    if rng is not None:
        groups = groups[rng.permutation(len(groups))]
    return np.concatenate([groups.ravel(), np.arange(full, len(lengths))]).astype(np.int64)


def bucketed(
    samples: Iterable[Any],
    batch: int,
    window: int,
    skip_batches: int = 0,
    seed: Optional[Sequence[int]] = None,
    first_window: int = 0,
) -> Iterator[Any]:
    """`samples` (sized items) reordered window by window (`window` batches of `batch`); the first
    `skip_batches` batches of the result are dropped (a resumed run). seed None: no shuffle of the batches;
    else window i is shuffled by the generator of (*seed, first_window + i)."""
    skip = skip_batches * batch
    buffer: list[Any] = []

    def emit(index: int) -> Iterator[Any]:
        nonlocal skip
        rng = None if seed is None else np.random.default_rng([*seed, index])
        for pos in window_order([len(s) for s in buffer], batch, rng):
            if skip:
                skip -= 1
                continue
            yield buffer[pos]

    index = first_window
    for sample in samples:
        buffer.append(sample)
        if len(buffer) == batch * window:
            yield from emit(index)
            buffer, index = [], index + 1
    if buffer:
        yield from emit(index)


class BucketedTextDataset(StreamingTextDataset):
    """llm-foundry's StreamingTextDataset whose per-worker sample stream comes in length-bucketed batches
    (iterate it through BucketedLoader, which completes a resumption)."""

    def __init__(self, *args: Any, bucket_window: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_size, int) or self.batch_size < 1 or bucket_window < 1:
            raise ValueError(
                f"length bucketing needs a batch size and a window >= 1 batch "
                f"(batch_size={self.batch_size}, bucket_window={bucket_window})"
            )
        self.bucket_window = int(bucket_window)
        self._windows_done = (0, 0)  # (epoch, windows of each worker before the point the epoch restarts at)
        self._resumed_at: Optional[int] = None  # global sample of the epoch a checkpoint was taken at

    def _unit(self, workers_per_rank: int) -> tuple[int, int]:
        """(global samples per batch of every rank, global samples per window of every worker of every rank)."""
        per_round = self.batch_size * self._parallel_rank_world.num_ranks
        return per_round, per_round * max(1, workers_per_rank) * self.bucket_window

    def _resume_incr_epoch(self) -> tuple[int, int]:
        # Called in each worker by StreamingDataset.__iter__ before it asks for the worker's work: restart the
        # epoch at the window boundary (in global samples) at or before the checkpoint.
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        _, unit = self._unit(self._parallel_worker_world.workers_per_rank)
        self._windows_done = (epoch, sample_in_epoch // unit)
        return epoch, sample_in_epoch // unit * unit

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resumed_at = int(obj["sample_in_epoch"])

    def take_resume_skip(self, workers: int) -> int:
        """Batches of this rank between the window boundary the epoch restarts at and the checkpoint (once)."""
        if self._resumed_at is None:
            return 0
        per_round, unit = self._unit(workers)
        skip, self._resumed_at = (self._resumed_at % unit) // per_round, None
        return skip

    def __iter__(self) -> Iterator[Any]:
        samples = super().__iter__()
        first = next(samples, None)  # runs _resume_incr_epoch
        if first is None:
            return
        epoch, windows_done = self._windows_done
        world = self._parallel_worker_world
        seed = [int(self.shuffle_seed), int(epoch), int(world.worker)] if self.shuffle else None
        yield from bucketed(chain([first], samples), self.batch_size, self.bucket_window, 0, seed, windows_done)


class BucketedLoader(DataLoader):
    """A DataLoader over BucketedTextDataset. After a resumption it drops the batches the checkpointed run
    trained past the restart point: from a window boundary the batches come in the same order as in the
    first run (the DataLoader takes them from its workers in turn, starting with worker 0 again), so
    dropping them here is exact; dropping them inside each worker would not be when the checkpoint falls
    between two workers' turns. The dropped batches are read, never trained."""

    def __iter__(self):
        batches = super().__iter__()
        for _ in range(self.dataset.take_resume_skip(self.num_workers)):
            next(batches, None)
        return batches
