"""Does TDM-R1 learn on the embedded default? Seeded runs from the shipped TDM student on a fixed prompt set.

The main config (configs/shapes/tdmr1.yaml) on the first ``--num-prompts`` distinct training prompts
(all six tags), ``--epochs`` epochs of ``--prompts-per-step`` prompts a step; the mean soft GenEval
score of the generator EMA on those prompts (``--images-per-prompt`` images each, the same noise) is
measured before and after training (:func:`tdmr1_lightning.shapes.learning.reward_before_and_after`).
Prints one line a seed and the mean gain with its spread; extra arguments go to the config parser
(e.g. ``--model.surrogate_loss.beta=5``), so settings can be compared in one run of this script.

    python benchmarks/shapes_learning.py --seeds 0 1 2
    python benchmarks/shapes_learning.py --seeds 0 1 2 -- --model.generator_loss.reward_weight=0

The defaults are the learning test's settings (tests/shapes/test_learning.py: one seed, a margin chosen
from these runs; docs/experiments/shapes.md has the figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tdmr1_lightning.shapes.learning import CONFIG, reward_before_and_after

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-prompts", type=int, default=160)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIG,
        help="a TDM-R1 config with a shapes_geneval reward (default: configs/shapes/tdmr1.yaml)",
    )
    parser.add_argument("--tags", nargs="+", default=[], help="only prompts of these tags (default: every tag)")
    args = parser.parse_args(argv)
    gains = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            start, end = reward_before_and_after(
                Path(tmp),
                seed,
                args.num_prompts,
                args.prompts_per_step,
                args.epochs,
                args.images_per_prompt,
                extra,
                args.config,
                tuple(args.tags),
            )
        gains.append(end - start)
        print(
            f"seed {seed}: mean soft score {start:.4f} -> {end:.4f}, gain {end - start:+.4f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    spread = f" (sd {statistics.stdev(gains):.4f})" if len(gains) > 1 else ""
    print(f"mean gain over {len(gains)} seeds: {statistics.fmean(gains):+.4f}{spread}; overrides: {extra or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
