"""``ManualStepper``: gradient accumulation, reduction, clipping and stepping of the two optimizers.

TDM-R1 accumulates the fake-score, surrogate and generator gradients of an update locally (every role's
backward in one update), reduces them across processes once, then steps the critic and the generator.
``trainer.global_step`` counts generator updates only, so that ``max_steps``, logging and checkpoint
intervals count what a user expects. Public Lightning and torch API only: the strategy's
``block_backward_sync`` and ``reduce``, ``LightningModule.clip_gradients`` and ``Strategy.optimizer_step``.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.distributed.tensor import DTensor


class ManualStepper:
    """Steps a LightningModule's optimizers under manual optimization.

    Args:
        module: The module; its trainer's strategy reduces gradients across processes.
        gradient_clip: Clip of each optimizer's gradient norm (0 disables it).
    """

    def __init__(self, module: L.LightningModule, gradient_clip: float) -> None:
        self.module = module
        self.gradient_clip = gradient_clip

    @property
    def world_size(self) -> int:
        return self.module.trainer.world_size

    def accumulating(self) -> AbstractContextManager:
        """Backward passes inside do not synchronise gradients (DDP would reduce at every backward, and
        sees roles unused in each one); :meth:`step` reduces them once."""
        block = getattr(self.module.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else contextlib.nullcontext()

    def any_process(self, flag: bool) -> bool:
        """``flag`` or'ed over all processes (every process must skip a step together)."""
        if self.world_size == 1:
            return flag
        device = self.module.device
        return bool(self.module.trainer.strategy.reduce(torch.tensor(float(flag), device=device), reduce_op="sum") > 0)

    def reduce_gradients(self, params: list[Tensor]) -> None:
        """Average the gradients of ``params`` over processes (one flat collective).

        Sharded gradients (``DTensor``) were already averaged by FSDP2 in each backward pass.
        """
        if self.world_size == 1 or not params or any(isinstance(p.grad, DTensor) for p in params):
            return
        grads = [p.grad for p in params]
        flat = self.module.trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
        for g, synced in zip(grads, torch.split(flat, [g.numel() for g in grads])):
            g.copy_(synced.view_as(g))

    def step(self, optimizer: LightningOptimizer, counts_as_update: bool = True) -> Tensor:
        """Reduce, measure (the norm before clipping), clip and step ``optimizer``'s gradients, then zero them.

        ``counts_as_update=False`` steps through the strategy without advancing ``trainer.global_step``.
        Returns the gradient norm.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.reduce_gradients(params)
        norm = grad_norm(params)
        if self.gradient_clip > 0:
            self.module.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
        if counts_as_update:
            optimizer.step()
        else:
            self.module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)
        optimizer.zero_grad(set_to_none=True)
        return norm

    @staticmethod
    def skip(*optimizers) -> None:
        """Drop the accumulated gradients of ``optimizers`` (a skipped update)."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)


def grad_norm(params: list[Tensor]) -> Tensor:
    """The global L2 norm of the gradients of ``params`` (computed in fp32), detached."""
    if not params:
        return torch.zeros(())
    sharded = [p.grad for p in params if isinstance(p.grad, DTensor)]
    squares = torch.stack(
        [p.grad.float().square().sum() for p in params if not isinstance(p.grad, DTensor)]
        or [torch.zeros((), device=params[0].grad.device)]
    ).sum()
    if sharded:  # FSDP2: each element of a gradient lives on one process; sum the shards' squares, then all-reduce
        local = torch.stack([g.to_local().float().square().sum() for g in sharded]).sum()
        torch.distributed.all_reduce(local, group=sharded[0].device_mesh.get_group())
        squares = squares.to(local.device) + local
    return squares.sqrt().detach()
