"""GenEval-schema prompts of the world: drawing, enumerating and parsing them, and a scene for a prompt."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tdmr1_rewards.detectors import COLORS
from tdmr1_rewards.geneval import TAGS, metadata_problem
from tdmr1_rewards.geneval_prompts import NUMBERS, plural, with_article

from .scenes import Scene, _make_object
from .world import _RELATION_SIGN, SHAPES, World, _rng

# ----------------------------------------------------------------------------------- prompts / metadata


def _phrase(shape: str, color: str | None, count: int = 1, numbered: bool = False) -> str:
    """``a red circle``, ``an orange square``, ``two blue squares``, ``one circle`` (``numbered``)."""
    described = f"{color} {shape}" if color else shape
    if not numbered:
        return with_article(described)
    noun = shape if count == 1 else plural(shape)
    return f"{NUMBERS[count]} {color} {noun}" if color else f"{NUMBERS[count]} {noun}"


def _clause(shape: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict[str, Any]:
    clause: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        clause["color"] = color
    if position is not None:
        clause["position"] = list(position)
    return clause


def make_record(
    tag: str, shapes: Sequence[str], colors: Sequence[str | None] = (), count: int = 1, relation: str | None = None
) -> dict[str, Any]:
    """The GenEval record ``{"tag", "include", "exclude"?, "prompt"}`` of one prompt of this grammar.

    ``shapes`` (and ``colors``, None for no colour) are in the order the prompt names them: one for
    single_object / colors / counting, two for the others ("A and B", "A <relation> B").
    """
    colors = list(colors) + [None] * (len(shapes) - len(colors))
    if tag in ("single_object", "colors"):
        (a,), (ca,) = shapes, colors
        return {"tag": tag, "include": [_clause(a, 1, ca)], "prompt": f"a photo of {_phrase(a, ca)}"}
    if tag == "counting":
        (a,), (ca,) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(a, count, ca)],
            "exclude": [{"class": a, "count": count + 1}],
            "prompt": f"a photo of {_phrase(a, ca, count, numbered=True)}",
        }
    if tag in ("two_object", "color_attr"):
        (a, b), (ca, cb) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(a, 1, ca), _clause(b, 1, cb)],
            "prompt": f"a photo of {_phrase(a, ca)} and {_phrase(b, cb)}",
        }
    if tag == "position":
        (a, b), (ca, cb) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(b, 1, cb), _clause(a, 1, ca, [relation, 0])],
            "prompt": f"a photo of {_phrase(a, ca)} {relation} {_phrase(b, cb)}",
        }
    raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")


def sample_prompt(rng: random.Random | int | None, world: World = World(), tag: str | None = None) -> dict[str, Any]:
    """One random record ``{"tag", "include", "exclude"?, "prompt"}`` (tag uniform over ``world.tags``
    unless given); shapes of two-object prompts differ, as do the colours of color_attr prompts."""
    rng = _rng(rng)
    tag = rng.choice(world.tags) if tag is None else tag
    if tag not in world.tags:
        raise ValueError(f"tag {tag!r} is not in this world (tags: {', '.join(world.tags)})")
    colored = tag in ("colors", "color_attr") or tag in world.colored_tags
    if tag in ("single_object", "colors", "counting"):
        shape = rng.choice(world.shapes)
        color = rng.choice(world.colors) if colored else None
        count = rng.choice(world.counts) if tag == "counting" else 1
        return make_record(tag, [shape], [color], count)
    a, b = rng.sample(world.shapes, 2)
    if tag == "color_attr":
        colors: list[str | None] = rng.sample(world.colors, 2)
    elif colored:
        colors = [rng.choice(world.colors), rng.choice(world.colors)]
    else:
        colors = [None, None]
    relation = rng.choice(world.relations) if tag == "position" else None
    return make_record(tag, [a, b], colors, 1, relation)


def enumerate_prompts(world: World = World(), tags: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every distinct prompt :func:`sample_prompt` can draw, as records, tag by tag in a fixed order."""
    records = []
    for tag in world.tags if tags is None else tags:
        colored = tag in ("colors", "color_attr") or tag in world.colored_tags
        colors_or_none: list[str | None] = list(world.colors) if colored else [None]
        if tag in ("single_object", "colors"):
            records += [make_record(tag, [s], [c]) for s in world.shapes for c in colors_or_none]
        elif tag == "counting":
            records += [
                make_record(tag, [s], [c], n) for n in world.counts for s in world.shapes for c in colors_or_none
            ]
        else:
            relations: list[str | None] = list(world.relations) if tag == "position" else [None]
            for a in world.shapes:
                for b in world.shapes:
                    if a == b:
                        continue
                    for ca in colors_or_none:
                        for cb in colors_or_none:
                            if tag == "color_attr" and ca == cb:
                                continue
                            records += [make_record(tag, [a, b], [ca, cb], 1, r) for r in relations]
    return records


_ARTICLES = ("a", "an")
_PREFIX = ("a", "photo", "of")


def parse_prompt(text: str, world: World = World()) -> dict[str, Any]:
    """The record ``{"tag", "include", "exclude"?, "prompt"}`` of a prompt of this world's grammar (the
    grammar :func:`sample_prompt` writes; case, a trailing full stop and "a" / "an" are forgiven, and
    ``prompt`` is the canonical text, so ``parse_prompt(r["prompt"]) == r`` for every record ``r``).

    Raises ``ValueError`` naming the words outside the world's vocabulary (and the vocabulary), or
    saying why a prompt of known words does not parse.
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    prompt = text.strip()
    tokens = prompt.lower().rstrip(".").split()
    plurals = {plural(s): s for s in world.shapes}
    numbers = world.number_words() if "counting" in world.tags else {}
    relation_words = {w for r in world.relations for w in r.split()} if "position" in world.tags else set()
    known = set(_PREFIX) | set(_ARTICLES) | {"and", "of"} | set(world.shapes) | set(plurals) | set(world.colors)
    known |= set(numbers) | relation_words
    unknown = list(dict.fromkeys(t for t in tokens if t not in known))
    if unknown:
        notes = []
        for word in unknown:
            if word in COLORS:
                notes.append(f"{word!r} (a colour outside this world)")
            elif word in SHAPES or word in {plural(s) for s in SHAPES}:
                notes.append(f"{word!r} (a shape outside this world)")
            elif word in NUMBERS:
                notes.append(f"{word!r} (a count outside this world)")
            else:
                notes.append(repr(word))
        raise ValueError(
            f"prompt {text!r}: unknown word(s) {', '.join(notes)}; this world's vocabulary is {world.vocabulary()}"
        )

    def fail(why: str) -> ValueError:
        return ValueError(
            f"prompt {text!r} is not in this world's grammar ({why}); expected e.g. 'a photo of a red circle', "
            "'a photo of two blue squares', 'a photo of a circle and a square', "
            "'a photo of a red circle left of a blue square'"
        )

    if tuple(tokens[:3]) != _PREFIX:
        raise fail("it must start with 'a photo of'")
    pos = 3
    numbered = False

    def phrase() -> tuple[str, str | None, int]:
        nonlocal pos, numbered
        if pos >= len(tokens):
            raise fail("an object is missing")
        first = tokens[pos]
        if first in _ARTICLES:
            count = 1
        elif first in numbers:
            count = numbers[first]
            numbered = True
        else:
            raise fail(f"expected 'a', 'an' or a number before an object, got {first!r}")
        pos += 1
        color = None
        if pos < len(tokens) and tokens[pos] in world.colors:
            color = tokens[pos]
            pos += 1
        if pos >= len(tokens):
            raise fail("a shape is missing")
        noun = tokens[pos]
        pos += 1
        if count == 1 and noun in world.shapes:
            return noun, color, 1
        if count > 1 and noun in plurals:
            return plurals[noun], color, count
        raise fail(f"{noun!r} after {first!r}")

    shape_a, color_a, count_a = phrase()
    if pos == len(tokens):
        if numbered:
            if "counting" not in world.tags:
                raise fail("counting prompts are not in this world")
            return make_record("counting", [shape_a], [color_a], count_a)
        tag = "colors" if color_a else "single_object"
        if tag not in world.tags:
            raise fail(f"{tag} prompts are not in this world")
        return make_record(tag, [shape_a], [color_a])
    if numbered:
        raise fail("only single objects ('a ...') can be combined")
    joiner = tokens[pos]
    relation = None
    if joiner == "and":
        pos += 1
    else:
        for rel in world.relations:
            words = rel.split()
            if tuple(tokens[pos : pos + len(words)]) == tuple(words):
                relation = rel
                pos += len(words)
                break
        else:
            raise fail(f"expected 'and' or a relation after the first object, got {joiner!r}")
    shape_b, color_b, count_b = phrase()
    if pos != len(tokens):
        raise fail(f"unexpected words after the second object: {' '.join(tokens[pos:])!r}")
    if numbered:
        raise fail("only single objects ('a ...') can be combined")
    if shape_a == shape_b:
        raise fail("the two objects must be different shapes (GenEval cannot tell two clauses of one class apart)")
    if relation is not None:
        tag = "position"
        if (color_a is None) != (color_b is None):
            raise fail("name the colours of both objects or of neither")
    else:
        if (color_a is None) != (color_b is None):
            raise fail("name the colours of both objects or of neither")
        tag = "color_attr" if color_a else "two_object"
    if tag not in world.tags:
        raise fail(f"{tag} prompts are not in this world")
    return make_record(tag, [shape_a, shape_b], [color_a, color_b], 1, relation)


# ------------------------------------------------------------------------------------- scene for a prompt


def _check_metadata(metadata: Mapping[str, Any], world: World) -> None:
    problem = metadata_problem(dict(metadata) if isinstance(metadata, Mapping) else metadata, world.shapes)
    if problem is not None:
        raise ValueError(f"metadata {metadata!r}: {problem} (shapes of this world: {', '.join(world.shapes)})")
    include = metadata["include"]
    classes = [req.get("class") for req in include]
    for req in include:
        if req.get("class") not in world.shapes:
            raise ValueError(f"class {req.get('class')!r} is not a shape of this world ({', '.join(world.shapes)})")
        if "color" in req and req["color"] not in world.colors:
            raise ValueError(f"colour {req['color']!r} is not in this world ({', '.join(world.colors)})")
        if "position" in req and req["position"][0] not in _RELATION_SIGN:
            raise ValueError(f"unknown relation {req['position'][0]!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"include names a class twice ({classes}); GenEval cannot tell such clauses apart")
    total = sum(int(req["count"]) for req in include)
    if total > world.max_objects:
        raise ValueError(f"metadata asks for {total} objects; this world has at most {world.max_objects}")
    for req in metadata.get("exclude", []) or []:
        wanted = sum(int(r["count"]) for r in include if r["class"] == req["class"])
        if wanted >= int(req["count"]):
            raise ValueError(f"metadata asks for {wanted} {req['class']} but excludes {req['count']} or more")


def _cells_ok(groups: list[list[tuple[int, int]]], include: list[dict]) -> bool:
    """Every object of a clause with position ``[rel, t]`` is in line with, and on the right side of,
    every object of clause ``t`` (same row for left/right, same column for above/below)."""
    for j, req in enumerate(include):
        if "position" not in req:
            continue
        relation, target = req["position"][0], int(req["position"][1])
        drow, dcol = _RELATION_SIGN[relation]
        for ra, ca in groups[j]:
            for rb, cb in groups[target]:
                if drow == 0 and not (ra == rb and (ca - cb) * dcol > 0):
                    return False
                if dcol == 0 and not (ca == cb and (ra - rb) * drow > 0):
                    return False
    return True


def scene_for(
    metadata: Mapping[str, Any],
    rng: random.Random | int | None,
    world: World = World(),
    avoid: Iterable[tuple[str, str]] = (),
    max_tries: int = 10_000,
) -> Scene:
    """A random scene that satisfies GenEval ``metadata`` exactly: the included objects and nothing else.

    Clauses with a colour get it; the others a random colour (never a ``(colour, shape)`` pair in
    ``avoid``, e.g. the held-out pairs). Position clauses put their objects in line with the target's
    (same row for left / right of, same column for above / below), on the named side. Raises
    ``ValueError`` for metadata outside the world or that no scene of the world can satisfy.
    """
    rng = _rng(rng)
    _check_metadata(metadata, world)
    include = list(metadata["include"])
    avoid = set(avoid)
    sizes = [int(req["count"]) for req in include]
    total = sum(sizes)
    cells = world.grid**2
    for _ in range(max_tries):
        flat = rng.sample(range(cells), total)
        groups, start = [], 0
        for n in sizes:
            groups.append([(c // world.grid, c % world.grid) for c in flat[start : start + n]])
            start += n
        if _cells_ok(groups, include):
            break
    else:
        raise ValueError(f"no scene of this world satisfies {dict(metadata)!r}")
    objects = []
    for req, group in zip(include, groups):
        shape = req["class"]
        palette = [c for c in world.colors if (c, shape) not in avoid] or list(world.colors)
        for row, col in group:
            color = req.get("color") or rng.choice(palette)
            objects.append(_make_object(rng, world, shape, color, row, col))
    return tuple(objects)
