"""The ``tdmr1`` command: Lightning's CLI over :class:`TDMR1Module` and :class:`PromptDataModule`.

``tdmr1 fit --config configs/sd35_ocr.yaml`` trains; ``tdmr1 fit --help`` lists every argument with
the help taken from the docstrings; ``--print_config`` shows the resolved configuration; ``tdmr1 rewards list``
shows the installed rewards; ``tdmr1 evaluate`` scores a prompt set through a checkpoint (see ``evaluation/``).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

from .data import PromptDataModule
from .module import TDMR1Module
from .paths import resolve_existing
from .registry import format_reward_table


class TDMR1CLI(LightningCLI):
    """LightningCLI over any LightningModule / DataModule, defaulting to TDM-R1's.

    A config without ``model.class_path`` configures :class:`TDMR1Module` (and :class:`PromptDataModule`);
    other modules of the project (e.g. the flow-matching pretraining of a teacher) are chosen with a
    ``class_path``. Optimizers are the modules' own ``OptimizerCallable`` arguments.
    """

    def before_instantiate_classes(self) -> None:
        # Input paths written in a config resolve against its folder (paths.ConfigPath); existing ones are
        # made absolute, so the copy of the config saved with the run names the same files.
        resolve_existing(self.config)

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


def main(args: list[str] | None = None) -> int | None:
    """Entry point of the ``tdmr1`` console script."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["rewards"]:
        return rewards_command(argv[1:])
    if argv[:1] == ["evaluate"]:
        from .evaluation import main as evaluate_main

        return evaluate_main(argv[1:])
    # From the console script, LightningCLI reads sys.argv itself; passing it again as ``args`` makes it warn.
    build_cli(args)
    return None


if __name__ == "__main__":
    main()
