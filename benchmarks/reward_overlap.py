"""Rewards scored concurrently with training against one after the other, on the tiny config with OCR.

``TDMR1Module`` scores the rollouts in a background thread while it computes the fake-score and
generator losses (which need no advantages), then the surrogate losses. This runs the tiny config
with the ``ocr`` reward (real EasyOCR) and OCR prompts, once with ``overlap_rewards`` on and once off,
and prints the median step time of each and their ratio (target: overlapped <= 0.8 x sequential).
On a CPU the reward and the training compete for the same cores, which is why ``overlap_rewards:
auto`` overlaps only on GPUs; ``--threads 1`` shows the CPU case where each side gets a core.

    python benchmarks/reward_overlap.py [--steps 6] [--resolution 64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, OtherLoad, build_pipeline, machine, quiet, table  # noqa: E402

import lightning as L  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not timed)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    quiet()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    os.chdir(REPO)
    from tdmr1_lightning.cli import build_cli
    from tdmr1_rewards.ocr_prompts import generate_ocr_prompts, write_prompts

    print(f"machine: {machine()}")
    other = OtherLoad()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tdmr1-bench-") as tmp:
        tmp = Path(tmp)
        model = build_pipeline(tmp / "tiny", resolution=args.resolution, num_layers=2, attention_head_dim=16, num_attention_heads=2, text_dim=32, patch_size=2)
        prompts = tmp / "ocr.jsonl"
        write_prompts(generate_ocr_prompts(64, seed=0), prompts)
        for overlap in ("false", "true", "false", "true"):  # alternate, so drift hits both alike
            timer = StepTimer()
            cli = build_cli([
                "--config", "configs/tiny.yaml", f"--model.backbone.init_args.directory={model}",
                f"--model.backbone.init_args.resolution={args.resolution}",
                f"--data.train_prompts={prompts}", "--data.val_prompts=null",
                "--model.rewards=[{name: ocr}]", f"--model.overlap_rewards={overlap}",
                f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
                "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp / 'run'}",
            ], run=False)
            cli.trainer.callbacks.append(timer)
            cli.trainer.fit(cli.model, cli.datamodule)
            results.setdefault(overlap, []).extend(timer.times[1:])
    med = {k: statistics.median(v) for k, v in results.items()}
    rows = [(f"overlap_rewards={k}", f"{med[k]:.2f}", " ".join(f"{t:.2f}" for t in results[k])) for k in ("false", "true")]
    print(f"task:    configs/tiny.yaml at {args.resolution} px, 4 prompts x 4 samples a step, ocr reward, {args.steps - 1} timed steps x 2 runs each")
    print()
    print(table(rows, ("run", "median step s", "steps (s)")))
    print()
    print(f"ratio overlapped / sequential step time: {med['true'] / med['false']:.3f}   (target <= 0.8)")
    print(other.note())


if __name__ == "__main__":
    main()
