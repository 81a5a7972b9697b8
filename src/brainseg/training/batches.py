"""Training batches: drawn over the cases in the training loop, or ahead of it by worker processes.

In the loop (``workers=0``, the default) an epoch's batches come one after another from one generator
seeded by ``(training.seed, epoch)``. :class:`BatchWorkers` (``brainseg train --workers N``) are
processes forked after the cases are loaded that draw the next batches while the network trains on
the current one; each step's batch then comes from its own generator, seeded by ``(training.seed,
epoch, step)``, so the batches do not depend on how many workers draw them or in which order they
finish (the same for any N >= 1; drawn from the same distribution as, but not equal to, the loop's).
Either way a resumed run draws what an uninterrupted one would. On a GPU the drawing (patch extraction
and augmentation, numpy and scipy on one CPU core) took as long as the network's step: about 27 ms of
the default model's 64 ms per batch of 256 patches, 50 ms of MixNet's 128 ms per 24 crops (H200,
2026-12-04; ``docs/mixnet.md``).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from brainseg.config import TrainingConfig
from brainseg.errors import InputError
from brainseg.training.data import TrainingCase

__all__ = ["BatchWorkers", "draw_batch", "epoch_batches", "step_generator"]

#: Batches drawn ahead per worker.
AHEAD = 2

# The cases and settings the forked workers draw from (inherited at fork, never pickled).
_WORKER_STATE: tuple[Sequence[TrainingCase], TrainingConfig] | None = None


def draw_batch(
    cases: Sequence[TrainingCase], n: int, rng: np.random.Generator, tc: TrainingConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Draw ``n`` examples over the cases (each example's case drawn uniformly).

    Parameters
    ----------
    cases : sequence of TrainingCase
        Loaded training cases, each with its family's sampler.
    n : int
        Examples in the batch.
    rng : numpy.random.Generator
        The source of every random choice (cases, positions, augmentation).
    tc : TrainingConfig
        Sampling and augmentation settings.

    Returns
    -------
    batch : dict of str to Tensor
        The family's network inputs, each with ``n`` rows (grouped by case).
    targets : Tensor of int64, shape (n,) or (n, ...)
        Class indices of the examples, in the rows' order.
    """
    which = rng.integers(len(cases), size=n)
    inputs: dict[str, list[np.ndarray]] = {}
    targets = []
    for k in np.unique(which):
        values, classes = cases[k].sampler.draw(int((which == k).sum()), rng, tc)
        for name, value in values.items():
            inputs.setdefault(name, []).append(value)
        targets.append(classes)
    batch = {name: torch.from_numpy(np.concatenate(values)) for name, values in inputs.items()}
    return batch, torch.from_numpy(np.concatenate(targets).astype(np.int64))


def step_generator(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one training step's batch, seeded by ``(seed, epoch, step)`` (0-based).

    Parameters
    ----------
    seed : int
        ``training.seed``.
    epoch : int
        0-based epoch.
    step : int
        0-based step within the epoch.

    Returns
    -------
    numpy.random.Generator
        ``numpy.random.default_rng([seed, epoch, step])``: the same stream whichever worker draws the step.
    """
    return np.random.default_rng([seed, epoch, step])


def _draw_step(key: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    # In a worker: one step's batch as numpy arrays (plain pickles back to the training loop).
    assert _WORKER_STATE is not None, "BatchWorkers sets the cases before forking"
    cases, tc = _WORKER_STATE
    batch, targets = draw_batch(cases, tc.batch_size, step_generator(*key), tc)
    return {name: value.numpy() for name, value in batch.items()}, targets.numpy()


def _start_worker() -> None:
    torch.set_num_threads(1)  # a worker draws with numpy and scipy; torch's thread pool would only compete


class BatchWorkers:
    """Worker processes that draw the training batches ahead of the training step.

    A context manager: the processes are forked on entry, so they share the loaded cases with the
    training loop without copying them (Linux's fork start method), and stopped on exit.

    Parameters
    ----------
    cases : sequence of TrainingCase
    tc : TrainingConfig
    workers : int
        Processes (>= 1).

    Raises
    ------
    InputError
        If ``workers`` < 1 or this platform cannot fork processes (use ``--workers 0``).
    """

    def __init__(self, cases: Sequence[TrainingCase], tc: TrainingConfig, workers: int) -> None:
        if workers < 1:
            raise InputError(f"--workers {workers}: give a number of processes >= 1, or 0 to draw in the loop")
        try:
            self._context = multiprocessing.get_context("fork")
        except ValueError:
            raise InputError("--workers needs the 'fork' start method (Linux); train with --workers 0") from None
        self.cases, self.tc, self.workers = cases, tc, int(workers)
        self._pool = None

    def __enter__(self) -> BatchWorkers:
        global _WORKER_STATE
        _WORKER_STATE = (self.cases, self.tc)
        self._pool = self._context.Pool(self.workers, initializer=_start_worker)
        return self

    def __exit__(self, *exc: object) -> None:
        global _WORKER_STATE
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
        self._pool, _WORKER_STATE = None, None

    def batches(self, keys: Sequence[tuple[int, int, int]]) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """The batches of ``keys`` (``(seed, epoch, step)``), in order, at most :data:`AHEAD` per worker in flight.

        Parameters
        ----------
        keys : sequence of (int, int, int)
            ``(seed, epoch, step)`` of each batch; each is drawn by :func:`draw_batch` with
            ``training.batch_size`` examples from :func:`step_generator` of its key.

        Yields
        ------
        batch : dict of str to Tensor
            The family's network inputs, ``training.batch_size`` rows each.
        targets : Tensor of int64, shape (batch_size,) or (batch_size, ...)
            Class indices of the examples, in the rows' order.

        Raises
        ------
        RuntimeError
            If used outside the ``with`` block (raised on the first ``next``, as this is a generator).
        """
        if self._pool is None:
            raise RuntimeError("BatchWorkers used outside its with block")
        keys = iter(keys)
        pending = collections.deque(
            self._pool.apply_async(_draw_step, (key,)) for key in itertools.islice(keys, AHEAD * self.workers)
        )
        while pending:
            values, targets = pending.popleft().get()
            key = next(keys, None)
            if key is not None:
                pending.append(self._pool.apply_async(_draw_step, (key,)))
            yield {name: torch.from_numpy(value) for name, value in values.items()}, torch.from_numpy(targets)


def epoch_batches(
    cases: Sequence[TrainingCase], tc: TrainingConfig, epoch: int, steps: int, workers: BatchWorkers | None = None
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """One epoch's ``steps`` batches (0-based ``epoch``), drawn in the loop or by ``workers``.

    Parameters
    ----------
    cases : sequence of TrainingCase
        Loaded training cases, each with its family's sampler (unused with ``workers``, which hold their own).
    tc : TrainingConfig
        ``seed``, ``batch_size`` and the sampling and augmentation settings.
    epoch : int
        0-based epoch.
    steps : int
        Batches in the epoch.
    workers : BatchWorkers, optional
        Entered worker processes to draw the batches; None: drawn lazily in the loop.

    Returns
    -------
    iterator of (dict of str to Tensor, Tensor)
        :func:`draw_batch`'s output for each step: from one generator seeded by ``(seed, epoch)``
        in the loop, from :func:`step_generator` per step with ``workers``.
    """
    if workers is not None:
        return workers.batches([(tc.seed, epoch, step) for step in range(steps)])
    rng = np.random.default_rng([tc.seed, epoch])
    return (draw_batch(cases, tc.batch_size, rng, tc) for _ in range(steps))
