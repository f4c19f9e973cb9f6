"""``RewardScorer``: scores a step's rollout images now or in the background (``model.overlap_rewards``).

The fake-score and generator losses need no advantages, so the rewards may be scored while they are
computed. This module holds that plumbing (a worker thread with a CUDA stream of its own, or a worker
process with its own copy of the rewards) so that the training step reads as the algorithm.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

import torch
from torch import Tensor

from .registry import build_rewards
from .reward import RewardOutput, WeightedRewards

Overlap = bool | Literal["auto", "process"]


class RewardScorer:
    """Scores images with ``rewards``, overlapped with training as ``overlap`` says.

    ``overlap``: ``False`` scores at once; ``True`` in a worker thread (on a GPU with a CUDA stream of its
    own); ``"auto"`` a thread on a GPU and at once elsewhere; ``"process"`` in a worker process that
    builds its own rewards from ``entries`` (no Python lock shared with training).
    """

    def __init__(
        self, rewards: WeightedRewards, entries: list[dict[str, Any]] | None, overlap: Overlap = False
    ) -> None:
        self.rewards = rewards
        self.entries = entries
        self.overlap = overlap
        self._pool: Executor | None = None

    @property
    def active(self) -> bool:
        """Whether a worker thread or process is running (until :meth:`close`)."""
        return self._pool is not None

    def start(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Future:
        """Start scoring; the Future's result is the rewards' outputs and the seconds scoring took."""
        if self.overlap == "process":
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),  # CUDA cannot fork
                    initializer=_start_reward_worker,
                    initargs=(self.entries, str(images.device), torch.get_num_threads()),
                )
            return self._pool.submit(_score_in_worker, images.cpu(), prompts, metadata)
        rewards = self.rewards.to(images.device)
        if self.overlap is True or (self.overlap == "auto" and images.is_cuda):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdmr1-reward")
            if images.is_cuda:
                # Without a stream of its own the reward engine's kernels would queue behind the
                # training's on the shared default stream. It starts once the images are written.
                stream = torch.cuda.Stream(device=images.device)
                stream.wait_stream(torch.cuda.current_stream(images.device))
                images.record_stream(stream)  # the allocator must not reuse them while it reads
                scoring = self._pool.submit(_on_stream, stream, _timed, rewards, images, prompts, metadata)
                scoring.stream = stream  # finish() makes the training stream wait for it
                return scoring
            return self._pool.submit(_timed, rewards, images, prompts, metadata)
        done: Future = Future()
        done.set_result(_timed(rewards, images, prompts, metadata))
        return done

    @staticmethod
    def finish(scoring: Future) -> tuple[dict[str, tuple[RewardOutput, float]], float, float]:
        """Wait for ``scoring``: the rewards' outputs, the seconds scoring took and the seconds waited for it."""
        start = time.perf_counter()
        outputs, seconds = scoring.result()
        waited = time.perf_counter() - start
        stream = getattr(scoring, "stream", None)
        if stream is not None:
            torch.cuda.current_stream(stream.device).wait_stream(stream)
        return outputs, seconds, waited

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _timed(fn, *args):
    """``fn(*args)`` and the seconds it took."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _on_stream(stream: torch.cuda.Stream, fn, *args):
    """``fn(*args)`` with ``stream`` current in this (worker) thread."""
    with torch.cuda.stream(stream):
        return fn(*args)


_worker_rewards: WeightedRewards | None = None
"""The rewards of a reward worker process (``overlap_rewards: process``), built by its initializer."""


def _start_reward_worker(entries: list[dict[str, Any]], device: str, threads: int) -> None:
    global _worker_rewards
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    _worker_rewards = build_rewards(entries).to(device)


def _score_in_worker(images: Tensor, prompts: list[str], metadata: list[dict]):
    return _timed(_worker_rewards, images, prompts, metadata)
