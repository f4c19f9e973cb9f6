"""Reward plugins: any installed distribution adds rewards through the ``tdmr1.rewards`` entry points.

A distribution registers short names in its ``pyproject.toml``::

    [project.entry-points."tdmr1.rewards"]
    brightness = "my_package.rewards:Brightness"

Discovery reads distribution metadata and imports nothing; a reward is imported only when a config
names it, then checked to be a :class:`~tdmr1_lightning.reward.Reward` subclass. The built-in
rewards register the same way (from this project's own distribution). Setting
``TDMR1_DISABLE_PLUGIN_AUTOLOAD=1`` ignores every other distribution's entry points; rewards can then
still be named by ``class_path``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, distributions
from typing import Any

from .reward import Reward, WeightedRewards

ENTRY_POINT_GROUP = "tdmr1.rewards"
AUTOLOAD_ENV = "TDMR1_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "tdmr1-lightning"


class RewardRegistryError(ValueError):
    """A reward that cannot be found, is registered twice, or fails to load."""


@dataclass(frozen=True)
class RewardEntry:
    """One registered reward: its name and where it comes from (nothing imported yet)."""

    name: str
    value: str
    distribution: str
    version: str

    def load(self) -> type[Reward]:
        """Import the reward class, reporting a failure with the distribution that provided it."""
        try:
            obj = EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()
        except Exception as err:
            raise RewardRegistryError(
                f"reward {self.name!r} from distribution {self.distribution} {self.version} ({self.value}) "
                f"failed to import: {type(err).__name__}: {err}"
            ) from err
        return _check_reward_class(obj, f"reward {self.name!r} from distribution {self.distribution} ({self.value})")


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def discover() -> dict[str, list[RewardEntry]]:
    """All registered rewards by name; a name with several entries is a conflict. Imports nothing."""
    found: dict[str, list[RewardEntry]] = {}
    seen: set[tuple[str, str, str]] = set()
    only_own = autoload_disabled()
    for dist in distributions():
        dist_name = dist.metadata["Name"] or "?"
        if only_own and _normalise(dist_name) != OWN_DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            key = (ep.name, _normalise(dist_name), ep.value)
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            found.setdefault(ep.name, []).append(RewardEntry(ep.name, ep.value, dist_name, dist.version))
    return found


def get_entry(name: str) -> RewardEntry:
    """The entry registered as ``name``, or an error listing what is installed / naming both providers."""
    found = discover()
    entries = found.get(name)
    if not entries:
        hint = f" ({AUTOLOAD_ENV} is set: third-party plugins are not loaded)" if autoload_disabled() else ""
        raise RewardRegistryError(
            f"unknown reward {name!r}; installed rewards: {', '.join(sorted(found)) or 'none'}{hint}"
        )
    if len(entries) > 1:
        providers = " and ".join(f"{e.distribution} {e.version} ({e.value})" for e in entries)
        raise RewardRegistryError(f"reward {name!r} is registered by two distributions: {providers}; uninstall one")
    return entries[0]


def _check_reward_class(obj: Any, what: str) -> type[Reward]:
    if not (inspect.isclass(obj) and issubclass(obj, Reward)):
        raise RewardRegistryError(f"{what} is {obj!r}, not a subclass of tdmr1_lightning.reward.Reward")
    return obj


def import_class_path(class_path: str) -> type[Reward]:
    """Import ``package.module.Class`` and check it is a Reward subclass."""
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise RewardRegistryError(f"class_path {class_path!r} is not a dotted path (package.module.Class)")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RewardRegistryError(
            f"cannot import reward class_path {class_path!r}: {type(err).__name__}: {err}"
        ) from err
    return _check_reward_class(obj, f"class_path {class_path!r}")


@dataclass
class RewardSpec:
    """A reward chosen in a config: by registered ``name`` or by ``class_path``, with its arguments and weight.

    Args:
        name: A registered reward name (``tdmr1 rewards list`` shows them).
        class_path: Or a dotted path to a Reward subclass.
        init_args: Keyword arguments of the reward's constructor.
        weight: Weight of this reward in the combination.
    """

    name: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    @classmethod
    def from_config(cls, entry: Any, where: str = "rewards") -> RewardSpec:
        """A spec from a config entry: ``{name | class_path, init_args?, weight?}`` or just a name."""
        if isinstance(entry, RewardSpec):
            return entry
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise RewardRegistryError(f"{where}: expected a mapping with `name` or `class_path`, got {entry!r}")
        unknown = set(entry) - {"name", "class_path", "init_args", "weight"}
        if unknown:
            raise RewardRegistryError(
                f"{where}: unknown keys {sorted(unknown)}; allowed: name, class_path, init_args, weight"
            )
        return cls(**entry)

    @property
    def label(self) -> str:
        return self.name or (self.class_path or "?").rpartition(".")[2]

    def build(self) -> Reward:
        """Import and construct the reward; arguments are checked against its signature first."""
        if (self.name is None) == (self.class_path is None):
            raise RewardRegistryError(
                "a reward needs exactly one of `name` or `class_path`, "
                f"got name={self.name!r}, class_path={self.class_path!r}"
            )
        cls = get_entry(self.name).load() if self.name else import_class_path(self.class_path)
        try:
            inspect.signature(cls).bind(**self.init_args)
        except TypeError as err:
            raise RewardRegistryError(f"reward {self.label!r}: bad init_args {sorted(self.init_args)}: {err}") from None
        return cls(**self.init_args)


def build_rewards(entries: list[dict[str, Any]] | None, where: str = "model.rewards") -> WeightedRewards | None:
    """The weighted rewards of a config's list of reward entries (``None`` for none).

    ``where`` names the config key in errors."""
    if not entries:
        return None
    specs = [RewardSpec.from_config(e, f"{where}[{i}]") for i, e in enumerate(entries)]
    return WeightedRewards([(spec.label, spec.build(), spec.weight) for spec in specs])


def describe(entry: RewardEntry) -> str:
    """One line about a reward: the first line of its class docstring (imports the reward)."""
    try:
        cls = entry.load()
    except RewardRegistryError as err:
        return f"(cannot load: {err.__cause__ or err})"
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def format_reward_table() -> str:
    """The table printed by ``tdmr1 rewards list``."""
    rows = [("name", "distribution", "version", "description")]
    for name, entries in sorted(discover().items()):
        for entry in entries:
            note = "  [CONFLICT: registered by several distributions]" if len(entries) > 1 else ""
            rows.append((name, entry.distribution, entry.version, describe(entry) + note))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    if autoload_disabled():
        lines.append(f"({AUTOLOAD_ENV} is set: only {OWN_DISTRIBUTION}'s rewards are listed)")
    return "\n".join(lines)
