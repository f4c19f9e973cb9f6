"""Parameter memory of the TDM-R1 roles: LoRA adapters on one transformer vs a full copy per role.

For the default tiny SD3 (what ``configs/tiny.yaml`` builds) and a bigger one, builds an
``SD3Backbone`` with ``roles_as="lora"`` and with ``roles_as="full"`` and the roles generator, fake,
surrogate, generator_ema, surrogate_old (the teacher is the frozen base in both modes), and prints:

* base transformer: bytes of the transformer as loaded (before any adapter);
* roles total: ``unique_tensor_bytes(backbone.roles)`` (the base plus what the roles add; each storage once);
* roles extra: roles total minus the base, i.e. what the five roles cost on top of the teacher;
* the ratios full/lora of both.

LoRA rank 4, alpha 8 (``configs/tiny.yaml``), float32. Pure bookkeeping: no timing, a few seconds.

    python benchmarks/memory.py [--lora-rank 4]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIG_TINY, DEFAULT_TINY, build_pipeline, describe, machine, quiet, table  # noqa: E402

from tdmr1_lightning.backbones.base import (  # noqa: E402
    FAKE,
    GENERATOR,
    GENERATOR_EMA,
    SURROGATE,
    SURROGATE_OLD,
    unique_tensor_bytes,
)
from tdmr1_lightning.backbones.sd3 import SD3Backbone  # noqa: E402

ROLES = [GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD]


def mib(n: int) -> str:
    return f"{n / 2**20:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora-rank", type=int, default=4)
    args = parser.parse_args()
    quiet()
    from diffusers import SD3Transformer2DModel

    print(f"machine: {machine()}")
    print(f"roles:   {', '.join(ROLES)} (+ teacher = the frozen base); LoRA rank {args.lora_rank}, float32")
    rows, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="tdmr1-bench-") as tmp:
        for name, config in (("default tiny", DEFAULT_TINY), ("bigger tiny", BIG_TINY)):
            model_dir = build_pipeline(Path(tmp) / name.replace(" ", "-"), **config)
            base = unique_tensor_bytes(SD3Transformer2DModel.from_pretrained(str(model_dir / "transformer")))
            totals = {}
            for roles_as in ("lora", "full"):
                backbone = SD3Backbone(
                    str(model_dir),
                    resolution=config["resolution"],
                    roles_as=roles_as,
                    lora_rank=args.lora_rank,
                    lora_alpha=2.0 * args.lora_rank,
                    max_sequence_length=64,
                )
                backbone.build(ROLES)
                totals[roles_as] = unique_tensor_bytes(backbone.roles)
                rows.append(
                    (
                        name,
                        roles_as,
                        f"{base:,}",
                        f"{totals[roles_as]:,}",
                        f"{totals[roles_as] - base:,}",
                        mib(totals[roles_as]),
                        f"{totals[roles_as] / base:.2f}",
                    )
                )
                del backbone
                gc.collect()
            ratios.append(
                (
                    name,
                    describe(config),
                    totals["full"] / totals["lora"],
                    (totals["full"] - base) / max(totals["lora"] - base, 1),
                )
            )
    print()
    print(
        table(
            rows,
            ("model", "roles_as", "base bytes", "roles total bytes", "roles extra bytes", "roles MiB", "total / base"),
        )
    )
    print()
    for name, desc, total_ratio, extra_ratio in ratios:
        print(f"{name} ({desc}): full/lora total {total_ratio:.2f}x, extra {extra_ratio:.1f}x")


if __name__ == "__main__":
    main()
