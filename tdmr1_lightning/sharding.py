"""Sharded training (FSDP2): Lightning's ``ModelParallelStrategy`` with every denoiser block sharded.

``--trainer.strategy fsdp2`` (registered here) is :class:`FSDP2Strategy`: Lightning's
``ModelParallelStrategy`` used for data parallelism only. Lightning's ``FSDPStrategy`` (FSDP1) does not
support manual optimization; FSDP2 does. ``TDMR1Module.configure_model`` builds the roles, then shards
each denoiser block by block over one mesh of every process (``fully_shard``): the frozen base weights
and every role's adapters are sharded together, and each block's parameters are gathered for its
forward and backward only. Gradients are reduce-scattered (averaged) by FSDP2 in each backward pass, so
``stepping.ManualStepper`` does not reduce them again. The text encoders and the VAE are frozen and
small beside the denoiser: each process keeps a full copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism over every process (``--trainer.strategy fsdp2``).

    Lightning's ``ModelParallelStrategy`` with its defaults (a mesh of nodes x devices a node); TDM-R1
    shards over all processes as one data-parallel mesh, and each process draws its own share of the
    prompts (the data module's sampler), as under DDP.

    Args:
        save_distributed_checkpoint: Each process saves its shard (a checkpoint folder), or rank 0
            assembles one file.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint, process_group_backend=process_group_backend
        )

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every process is a data-parallel replica (the parent's are the nodes only, for tensor parallelism).
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a sharded checkpoint that holds the trained roles only (the frozen base is not saved).

        The parent loads a sharded checkpoint into every key of the model; this loads the keys the
        checkpoint holds, refuses one that lacks a trained role's weights (naming the first missing key),
        and loads the optimizer states. The distributed checkpoint format re-shards on load.
        """
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():  # a single-file checkpoint (save_distributed_checkpoint=False)
            return super().load_checkpoint(path, weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        # what the module saves (TDMR1Module: its roles, not the frozen base); any other module: every key
        saved_key = getattr(self.lightning_module, "is_checkpointed_key", lambda key: True)
        model_state = {k: v for k, v in get_model_state_dict(self.model).items() if saved_key(k)}
        missing = [k for k in model_state if f"state_dict.{k}" not in saved]
        if missing:
            raise ValueError(
                f"{path}: the sharded checkpoint has no {missing[0]!r} ({len(missing)} of the {len(model_state)} "
                "trained-role tensors missing): it was saved by another model or roles configuration"
            )
        state = {"state_dict": model_state}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(self.model, state["state_dict"], options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optimizer_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optimizer_state, checkpoint_id=str(path))
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optimizer_state[key])
        return torch.load(path / "meta.pt", weights_only=weights_only)  # loops, callbacks, hyperparameters


def register_strategies() -> None:
    """Register ``fsdp2`` as a ``--trainer.strategy`` name (once)."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 over every process (TDM-R1)")


def is_sharded(trainer: L.Trainer | None) -> bool:
    """Whether ``trainer`` trains with FSDP2 (Lightning's ``ModelParallelStrategy`` or :class:`FSDP2Strategy`)."""
    return isinstance(getattr(trainer, "strategy", None), ModelParallelStrategy)


def data_parallel_mesh(device: torch.device, world_size: int):
    """A one-dimensional device mesh over every process: FSDP2 shards each block across all of them."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,), mesh_dim_names=("data_parallel",))


def mixed_precision():
    """FSDP2's policy: parameters gathered as stored, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(reduce_dtype=torch.float32)


register_strategies()


def check_launch_environment(num_nodes: int, environ: dict[str, str]) -> None:
    """Refuse a multi-node run whose processes could not find each other (they would wait until the timeout).

    Under SLURM (``srun``) and ``torchrun`` the launcher sets the rendezvous; a node started by hand needs
    ``MASTER_ADDR`` (node 0's address), ``MASTER_PORT`` and its ``NODE_RANK``.
    """
    if num_nodes <= 1 or "SLURM_NTASKS" in environ or "TORCHELASTIC_RUN_ID" in environ:
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in environ]
    if missing:
        raise ValueError(
            f"--trainer.num_nodes={num_nodes}: set {', '.join(missing)} on every node (node 0's address, a free "
            "port, this node's index), or launch with srun or torchrun (docs/scale.md)"
        )


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder in the distributed checkpoint format (saved under ``fsdp2``)."""
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint folder read into one process, as a single-file Lightning checkpoint reads:
    ``state_dict`` (the roles' full tensors) and the metadata (``global_step``, hyperparameters, ...).

    The optimizer states are left out: they are keyed by parameter name, not in Lightning's single-file
    layout, so the result serves evaluation and as a starting LoRA, not to resume (resume from the folder).
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise ValueError(f"{path}: not a sharded checkpoint folder (no .metadata file)")
    with tempfile.TemporaryDirectory() as folder:
        whole = Path(folder) / "whole.pt"
        dcp_to_torch_save(str(path), str(whole))
        tensors = torch.load(whole, map_location="cpu", weights_only=True)
    checkpoint = (
        torch.load(path / "meta.pt", map_location="cpu", weights_only=True) if (path / "meta.pt").is_file() else {}
    )
    checkpoint["state_dict"] = tensors["state_dict"]
    return checkpoint


def consolidate_command(args: list[str]) -> int:
    """``tdmr1 consolidate FOLDER OUT``: a sharded checkpoint folder as one checkpoint file.

    The file holds the trained roles' full tensors and the run's metadata, like the ``last.ckpt`` of a
    run on one process: ``tdmr1 evaluate --ckpt OUT`` reads it, and so does ``generator_checkpoint``
    (the run's generator EMA as a starting LoRA). It holds no optimizer states: resume from the folder.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="tdmr1 consolidate", description=consolidate_command.__doc__)
    parser.add_argument("folder", type=Path, help="a checkpoint folder saved under --trainer.strategy fsdp2")
    parser.add_argument("out", type=Path, help="the checkpoint file to write (e.g. last_consolidated.ckpt)")
    options = parser.parse_args(args)
    if not is_sharded_checkpoint(options.folder):
        parser.error(f"{options.folder}: not a sharded checkpoint folder (no .metadata file)")
    if options.out.exists():
        parser.error(f"{options.out}: exists; give a new file name")
    checkpoint = read_checkpoint(options.folder)
    partial = options.out.with_name(options.out.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(options.out)  # a file under the final name is always complete
    print(f"{options.out}: {len(checkpoint['state_dict'])} tensors, step {checkpoint.get('global_step')}")
    return 0
