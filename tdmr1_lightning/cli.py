"""The ``tdmr1`` command: Lightning's CLI over :class:`TDMR1Module` and :class:`PromptDataModule`.

``tdmr1 fit --config configs/sd35_ocr.yaml`` trains; ``tdmr1 fit --help`` lists every argument with
the help taken from the docstrings; ``--print_config`` shows the resolved configuration; ``tdmr1 rewards list``
shows the installed rewards; ``tdmr1 evaluate`` scores a prompt set through a checkpoint (see ``evaluation/``).
Every other command lives here too (:data:`COMMANDS`), so no library module is also a ``__main__``:
``tdmr1 assets`` (ship a pipeline or a LoRA), ``tdmr1 consolidate`` (a sharded checkpoint in one file),
``tdmr1 tiny DIR`` (a random tiny SD3), ``tdmr1 pretrain export`` (a teacher checkpoint to a pipeline),
``tdmr1 shapes prompts`` and ``tdmr1 shapes breakdown`` (the shapes world).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

from .data import PromptDataModule
from .module import TDMR1Module
from .paths import resolve_existing
from .registry import format_reward_table
from .settings import MOVED, flat_settings
from .sharding import check_launch_environment


class TDMR1CLI(LightningCLI):
    """LightningCLI over any LightningModule / DataModule, defaulting to TDM-R1's.

    A config without ``model.class_path`` configures :class:`TDMR1Module` (and :class:`PromptDataModule`);
    other modules of the project (e.g. the flow-matching pretraining of a teacher) are chosen with a
    ``class_path``. Optimizers are the modules' own ``OptimizerCallable`` arguments.
    """

    def parse_arguments(self, parser, args) -> None:
        # Settings of the flat layout (before the groups of settings.py) fail here, each with its new name,
        # instead of as jsonargparse's "Option 'num_steps' is not accepted".
        moved = flat_settings(sys.argv[1:] if args is None else list(args)) if not isinstance(args, dict) else []
        if moved:
            raise ValueError(
                "model settings are grouped as the algorithm's sections (docs/configuration.md):\n  "
                + "\n  ".join(moved)
            )
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        # Input paths written in a config resolve against its folder (paths.ConfigPath); existing ones are
        # made absolute, so the copy of the config saved with the run names the same files.
        resolve_existing(self.config)
        config = self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config
        self._regroup_checkpoint_settings(config)
        check_launch_environment(int(config.trainer.num_nodes or 1), dict(os.environ))

    @staticmethod
    def _regroup_checkpoint_settings(config) -> None:
        """``--ckpt_path`` applies the checkpoint's hyperparameters; one saved in the flat layout lands in
        ``dict_kwargs``: move each setting into its group (with a warning) so older checkpoints resume."""
        model = config.get("model") if config is not None else None
        extra = model.get("dict_kwargs") if model is not None else None
        moved = [key for key in (extra or {}) if key in MOVED]
        for key in moved:
            model.init_args[MOVED[key]] = extra.pop(key)
        if moved:
            warnings.warn(
                "the checkpoint's hyperparameters are in the flat layout of tdmr1-lightning 0.1; read as "
                + ", ".join(f"{key} -> {MOVED[key]}" for key in moved),
                FutureWarning,
            )

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(
            {
                "model": {"class_path": f"{TDMR1Module.__module__}.{TDMR1Module.__name__}"},
                "data": {"class_path": f"{PromptDataModule.__module__}.{PromptDataModule.__name__}"},
            }
        )


def build_cli(args: list[str] | None = None, run: bool = True) -> TDMR1CLI:
    """Parse ``args`` (default: the command line), instantiate, and run the subcommand unless ``run`` is False."""
    # Both describe the design: frozen parts stay in eval mode, and checkpoints hold post-update weights.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    return TDMR1CLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def rewards_command(args: list[str]) -> int:
    """``tdmr1 rewards list``: the installed rewards with their distribution, version and description."""
    parser = argparse.ArgumentParser(prog="tdmr1 rewards", description=rewards_command.__doc__)
    parser.add_argument("action", choices=["list"])
    parser.parse_args(args)
    print(format_reward_table())
    return 0


# ``tdmr1 <command>``: each is a ``main(argv)`` in the module named here, imported only when it runs.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("rewards",): ("tdmr1_lightning.cli", "rewards_command"),
    ("evaluate",): ("tdmr1_lightning.evaluation.command", "main"),
    ("consolidate",): ("tdmr1_lightning.sharding", "consolidate_command"),
    ("assets",): ("tdmr1_lightning.assets", "main"),
    ("tiny",): ("tdmr1_lightning.tiny", "main"),
    ("pretrain",): ("tdmr1_lightning.pretrain", "main"),
    ("shapes", "prompts"): ("tdmr1_lightning.shapes.command", "main"),
    ("shapes", "breakdown"): ("tdmr1_lightning.shapes.breakdown", "main"),
}


def main(args: list[str] | None = None) -> int | None:
    """Entry point of the ``tdmr1`` console script (and of ``python -m tdmr1_lightning``)."""
    import importlib

    argv = sys.argv[1:] if args is None else args
    for words, (module, function) in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            return getattr(importlib.import_module(module), function)(argv[len(words) :])
    if argv[:1] == ["shapes"]:
        sys.exit("tdmr1 shapes: expected 'prompts' or 'breakdown' (tdmr1 shapes prompts --help)")
    # From the console script, LightningCLI reads sys.argv itself; passing it again as ``args`` makes it warn.
    build_cli(args)
    return None


if __name__ == "__main__":
    main()
