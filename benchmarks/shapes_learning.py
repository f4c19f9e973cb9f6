"""Does TDM-R1 learn on the embedded default? Two epochs from the shipped TDM student on a fixed prompt set.

The main config (configs/shapes/tdmr1.yaml) on the first ``--num-prompts`` distinct training prompts
(all six tags), ``--epochs`` epochs of ``--prompts-per-step`` prompts a step; the mean soft GenEval
score of the generator EMA on those prompts (4 images each, the same noise) is measured before and
after training (``EvaluateOnFit``). Prints one line a seed and the mean gain; extra arguments go to
the config parser (e.g. ``--model.beta=5``), so settings can be compared in one run of this script.

    python benchmarks/shapes_learning.py --seeds 0 1 2
    python benchmarks/shapes_learning.py --seeds 0 1 -- --model.cfg_weight=0

This is the measurement behind the planned learning test (a gain with a margin chosen from repeated
runs); docs/shapes.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes" / "tdmr1.yaml"


def fixed_prompts(path: Path, n: int) -> Path:
    """The first ``n`` distinct prompts of the shipped training file (it cycles through the six tags)."""
    records = [json.loads(line) for line in (ROOT / "configs/prompts/shapes/train.jsonl").read_text().splitlines()]
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(record["prompt"], record)
        if len(seen) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in seen.values()))
    return path


def run(workdir: Path, seed: int, num_prompts: int, prompts_per_step: int, epochs: int, extra: list[str]) -> tuple[float, float]:
    """``(mean soft score before, after)`` of one seeded run."""
    from tdmr1_lightning.cli import build_cli
    from tdmr1_lightning.evaluate import EvaluateOnFit

    prompts = fixed_prompts(workdir / "prompts.jsonl", num_prompts)
    evaluation = EvaluateOnFit(str(prompts), rewards=[{"name": "shapes_geneval", "init_args": {"mode": "soft"}}],
                               images_per_prompt=4, teacher_steps=None, out_dir=str(workdir / "eval"))
    cli = build_cli([
        "--config", str(CONFIG), f"--seed_everything={seed}", f"--model.seed={seed}",
        f"--data.train_prompts={prompts}", f"--data.prompts_per_step={prompts_per_step}",
        f"--trainer.max_epochs={epochs}", "--trainer.max_steps=-1", "--trainer.callbacks=null",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={workdir}",
        "--model.log_images_every_n_steps=0", *extra,
    ], run=False)
    cli.trainer.callbacks.append(evaluation)
    cli.trainer.fit(cli.model, cli.datamodule)
    start, end = (row["summary"]["rewards"]["shapes_geneval"]["overall"]["mean"] for row in evaluation.results.values())
    return start, end


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    gains = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            start, end = run(Path(tmp), seed, args.num_prompts, args.prompts_per_step, args.epochs, extra)
        gains.append(end - start)
        print(f"seed {seed}: mean soft score {start:.4f} -> {end:.4f}, gain {end - start:+.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    spread = f" (sd {statistics.stdev(gains):.4f})" if len(gains) > 1 else ""
    print(f"mean gain over {len(gains)} seeds: {statistics.fmean(gains):+.4f}{spread}; overrides: {extra or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
