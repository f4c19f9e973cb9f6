"""Speed of the shapes world's exact detector: seconds per image to detect, against seconds per image to render.

The detector scores every rollout of the shapes world, so it must stay a small share of a training
step; rendering the same scenes is the yardstick measured in the same run.

    python benchmarks/shapes_detector.py [--scenes 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, timeit  # noqa: E402

from tdmr1_lightning.shapes.detector import ShapesDetector  # noqa: E402
from tdmr1_lightning.shapes.scenes import random_scene, render_batch
from tdmr1_lightning.shapes.world import World


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    world = World()
    detector = ShapesDetector(world)
    rng = random.Random(0)
    scenes = [random_scene(rng, world) for _ in range(args.scenes)]
    images = render_batch(scenes, world=world)
    render_s, _ = timeit(lambda: render_batch(scenes, world=world), repeats=args.repeats)
    detect_s, _ = timeit(lambda: detector.detect(images), repeats=args.repeats)
    print(machine())
    print(f"scenes: {args.scenes}, median of {args.repeats} runs")
    print(f"render: {render_s / args.scenes * 1e3:.3f} ms an image")
    print(f"detect: {detect_s / args.scenes * 1e3:.3f} ms an image")
    print(f"ratio detect / render: {detect_s / render_s:.2f}")


if __name__ == "__main__":
    main()
