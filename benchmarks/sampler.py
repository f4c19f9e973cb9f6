"""The project's 4-step sampler against diffusers' ``StableDiffusion3Pipeline`` at 4 steps, prompts to images.

Both sides run the same random tiny SD3 (built big enough that the transformer dominates), the same
16 prompts in one batch of 16, float32, T5 ``max_sequence_length`` 64, the same resolution, and no
progress bars:

* ours: ``backbone.encode_prompts`` -> ``sample_trajectory`` with ``backbone.velocity("generator", ...)``
  with the generator's LoRA adapter merged into the weights (what ``TDMR1Module.generate`` runs for
  inference; training rollouts run it unmerged, also timed) ->
  ``backbone.decode`` (``uint8`` images);
* diffusers: ``pipe(prompts, num_inference_steps=4, guidance_scale=1.0, output_type="pt")`` (no
  classifier-free guidance at 1.0, so one transformer call per step, as ours).

Also shown, not in the ratio: ours with the ``teacher`` role (adapters disabled: the bare transformer).
Timed runs alternate between the sides; the median of the repeats is reported.

    python benchmarks/sampler.py [--repeats 7] [--prompts 16]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import BIG_TINY, MAX_SEQUENCE_LENGTH, OtherLoad, build_pipeline, describe, machine, quiet, sync, table  # noqa: E402

from tdmr1_lightning.backbones.base import GENERATOR, TEACHER  # noqa: E402
from tdmr1_lightning.backbones.sd3 import SD3Backbone  # noqa: E402
from tdmr1_lightning.sampler import sample_trajectory  # noqa: E402
from tdmr1_lightning.schedule import step_boundaries  # noqa: E402

PROMPTS = [
    "a red circle",
    "a blue square",
    "two green triangles",
    "a yellow circle left of a red square",
    "a cat on a mat",
    "three purple stars",
    "a small house by a lake",
    "an orange car at night",
    "a black dog in the snow",
    "a white boat on blue water",
    "a bowl of fruit",
    "a tall green tree",
    "a mountain under a pink sky",
    "two birds on a wire",
    "a bicycle against a wall",
    "a cup of hot tea",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=16, help="prompts, all in one batch")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    quiet()
    from diffusers import StableDiffusion3Pipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    res = BIG_TINY["resolution"]
    print(f"machine: {machine()}, device {device}")
    print(f"model:   tiny SD3, {describe(BIG_TINY)}, float32, T5 max_sequence_length {MAX_SEQUENCE_LENGTH}")
    other = OtherLoad()
    print(f"task:    {len(prompts)} prompts -> {len(prompts)} images {res}x{res} in one batch, {args.steps} steps")

    with tempfile.TemporaryDirectory(prefix="tdmr1-bench-") as tmp:
        model_dir = build_pipeline(Path(tmp) / "tiny-sd3", **BIG_TINY)

        backbone = SD3Backbone(
            str(model_dir),
            resolution=res,
            roles_as="lora",
            lora_rank=4,
            lora_alpha=8.0,
            dtype="float32",
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        backbone.build([GENERATOR])
        backbone.to(device)
        boundaries = step_boundaries(args.steps, 3.0)

        pipe = StableDiffusion3Pipeline.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
        pipe.set_progress_bar_config(disable=True)

        def ours(role: str, merge: bool):
            def run():
                with torch.no_grad():
                    cond = backbone.encode_prompts(prompts)
                    g = torch.Generator(device).manual_seed(0)
                    noise = torch.randn((len(prompts), *backbone.latent_shape), generator=g, device=device)
                    with backbone.roles.merged(role) if merge else contextlib.nullcontext():
                        traj = sample_trajectory(lambda x, s: backbone.velocity(role, x, s, cond), noise, boundaries)
                    return backbone.decode(traj[-1])

            return run

        def theirs():
            return pipe(
                prompt=prompts,
                num_inference_steps=args.steps,
                guidance_scale=1.0,
                height=res,
                width=res,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                output_type="pt",
                generator=torch.Generator(device).manual_seed(0),
            ).images

        sides = {
            "ours (generator, merged)": ours(GENERATOR, True),
            "diffusers SD3 pipeline": theirs,
            "ours (generator LoRA, unmerged)": ours(GENERATOR, False),
            "ours (teacher, no adapter)": ours(TEACHER, False),
        }
        # warm-up, and check that both sides do the same work: same output shape, same transformer calls
        calls = {"ours": 0, "diffusers": 0}
        hooks = [
            backbone.roles.base.register_forward_hook(lambda *_: calls.__setitem__("ours", calls["ours"] + 1)),
            pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__("diffusers", calls["diffusers"] + 1)),
        ]
        shapes = {name: tuple(fn().shape) for name, fn in sides.items()}
        for h in hooks:
            h.remove()
        assert len({s for s in shapes.values()}) == 1, shapes
        print(
            f"check:   images {shapes['diffusers SD3 pipeline']} on both sides; transformer calls per run: "
            f"ours {calls['ours'] // (len(sides) - 1)}, diffusers {calls['diffusers']}"
        )
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):  # alternate, so drift in the machine's load hits all sides alike
            for name, fn in sides.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)

        med = {name: statistics.median(t) for name, t in times.items()}
        best = {name: min(t) for name, t in times.items()}
        rows = [
            (
                name,
                f"{med[name] * 1e3:.1f}",
                f"{len(prompts) / med[name]:.2f}",
                f"{best[name] * 1e3:.1f}",
                " ".join(f"{t * 1e3:.0f}" for t in times[name]),
            )
            for name in sides
        ]
        print()
        print(table(rows, ("sampler", "median ms", "images/s", "fastest ms", "runs (ms)")))
        ours_ips = len(prompts) / med["ours (generator, merged)"]
        unmerged_ips = len(prompts) / med["ours (generator LoRA, unmerged)"]
        theirs_ips = len(prompts) / med["diffusers SD3 pipeline"]
        teacher_ips = len(prompts) / med["ours (teacher, no adapter)"]
        print()
        print(
            f"ratio ours/diffusers (images/s): {ours_ips / theirs_ips:.3f}"
            "   (target >= 1.0; TDMR1Module.generate merges the adapter)"
        )
        print(
            f"ratio of the fastest runs:       {best['diffusers SD3 pipeline'] / best['ours (generator, merged)']:.3f}"
            "   (less sensitive to other processes on a shared machine)"
        )
        print(
            f"ratio ours-unmerged/diffusers:   {unmerged_ips / theirs_ips:.3f}"
            "   (the training rollout: LoRA applied on the fly)"
        )
        print(
            f"ratio ours-teacher/diffusers:    {teacher_ips / theirs_ips:.3f}   (LoRA-free transformer, for reference)"
        )
        print(other.note())


if __name__ == "__main__":
    main()
