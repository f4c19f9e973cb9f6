"""Can a model tell which colour goes with which shape from the text embeddings alone? A probe.

SD3's joint attention sees the prompt's token vectors (``prompt_embeds``: CLIP tokens then T5 tokens)
without positions of its own: what it can learn about word order is only what the frozen text encoders
put into each token. This script trains a small probe that reads the token vectors as a set (attention
pooling with learnt queries, then an MLP) on two tasks over the shapes world's prompts:

* ``binding``: prompts naming two objects of different colours and shapes ("a red circle and a blue
  square", also position prompts); the label is whether the alphabetically first shape has the
  alphabetically first colour. The bag of words is the same for both labels.
* ``order``: position prompts with two different objects; the label is whether the object named first
  sorts before the other. Again both labels share every bag of words.

A probe that reads a bag of words scores 0.5; one that sees which word stands next to which scores
more. Accuracy is on held-out prompts (30% of each task, 10 random splits).

    python benchmarks/text_binding.py        # builds the teacher's random encoders twice: T5 bias default, and std 5
    python benchmarks/text_binding.py shipped=tdmr1_lightning/shapes/assets/teacher mine=DIR   # pipeline folders
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = ROOT / "configs" / "shapes" / "teacher.yaml"


def build_encoders(directory: Path) -> list[str]:
    """``NAME=DIR`` of two tiny pipelines with the shapes teacher's tokenizers and random text encoders
    (its config's ``words`` and ``clip_max_length``, seed 0): T5 position bias as transformers
    initialises it, and with std 5 (the sharp-bias setting of docs/experiments/shapes.md, "Text that binds")."""
    import yaml

    from tdmr1_lightning.tiny import build_tiny_sd3

    backbone = yaml.safe_load(TEACHER_CONFIG.read_text())["model"]["init_args"]["backbone"]["init_args"]
    common = dict(words=backbone["words"], clip_max_length=backbone["clip_max_length"], num_layers=1, pixel_space=True)
    out = []
    for name, std in (("T5 bias default", None), ("T5 bias std 5", 5.0)):
        path = build_tiny_sd3(directory / name.replace(" ", "_"), t5_position_bias_std=std, **common)
        out.append(f"{name}={path}")
    return out


def tasks() -> dict[str, list[tuple[str, int]]]:
    """``{task: [(prompt, label)]}`` over every prompt of the default world."""
    from tdmr1_lightning.shapes import World, enumerate_prompts

    out: dict[str, list[tuple[str, int]]] = {"binding": [], "order": []}
    for record in enumerate_prompts(World()):
        include = record["include"]
        if record["tag"] not in ("color_attr", "position") or len(include) != 2:
            continue
        (c1, s1), (c2, s2) = [(q["color"], q["class"]) for q in include]
        if c1 != c2 and s1 != s2:
            colour_of_first_shape = c1 if min(s1, s2) == s1 else c2
            out["binding"].append((record["prompt"], int(colour_of_first_shape == min(c1, c2))))
        if record["tag"] == "position" and (c1, s1) != (c2, s2):
            named_first = next((q["color"], q["class"]) for q in include if "position" in q)  # GenEval: A carries it
            other = (c2, s2) if named_first == (c1, s1) else (c1, s1)
            out["order"].append((record["prompt"], int(named_first < other)))
    return out


def load_text_pipeline(path: Path):
    """A pipeline folder's tokenizers and text encoders (no transformer, no VAE)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(path), vae=None, transformer=None, local_files_only=True)


def embed(pipe, prompts: list[str], max_sequence_length: int = 16) -> torch.Tensor:
    """``prompt_embeds`` of the pipeline's text encoders, ``(n, tokens, dim)``."""
    with torch.no_grad():
        embeds, _, _, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
        )
    return embeds.float()


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int = 400, test_fraction: float = 0.3) -> float:
    """Held-out accuracy of a set probe (4 learnt queries attending over the tokens, then an MLP)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    torch.manual_seed(seed)
    width, queries = 64, 4
    key, value = torch.nn.Linear(x.shape[-1], width), torch.nn.Linear(x.shape[-1], width)
    query = torch.nn.Parameter(0.1 * torch.randn(queries, width))
    head = torch.nn.Sequential(torch.nn.Linear(queries * width, width), torch.nn.GELU(), torch.nn.Linear(width, 2))
    params = [*key.parameters(), *value.parameters(), query, *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)

    def logits(index: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(torch.einsum("qd,btd->bqt", query, key(x[index])) / width**0.5, dim=-1)
        return head(torch.einsum("bqt,btd->bqd", weights, value(x[index])).flatten(1))

    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(logits(train), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (logits(test).argmax(-1) == y[test]).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pipelines",
        nargs="*",
        metavar="[NAME=]DIR",
        help="pipeline folders (default: the teacher's random encoders built twice, T5 bias default and std 5)",
    )
    parser.add_argument("--splits", type=int, default=10, help="random train/test splits a task (default: 10)")
    parser.add_argument("--steps", type=int, default=400, help="probe training steps (default: 400)")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(1)
    data = tasks()
    scratch = tempfile.TemporaryDirectory()
    pipelines = args.pipelines or build_encoders(Path(scratch.name))
    print("| text encoders | " + " | ".join(f"{t} ({len(v)} prompts)" for t, v in data.items()) + " |")
    print("|:--|" + "--:|" * len(data))
    for text in pipelines:
        name, sep, path = text.partition("=")
        name, path = (name, path) if sep else (Path(text).name, text)
        pipe = load_text_pipeline(Path(path))
        cells = []
        for items in data.values():
            x = embed(pipe, [p for p, _ in items])
            y = torch.tensor([label for _, label in items])
            accs = [probe_accuracy(x, y, seed, args.steps) for seed in range(args.splits)]
            cells.append(f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nheld-out accuracy of the probe, mean ± sd over {args.splits} splits; 0.5 = a bag of words")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
