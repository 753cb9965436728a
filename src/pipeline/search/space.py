"""The search space of `run.py -m search=...`: what a key may take, how a genome is drawn, mutated and crossed, and
how it travels through Optuna (flat, storable params) and back to Hydra (command-line overrides).

A genome is a plain dict {config key: value}; list values (an MLP's `model.hidden`) stay lists.
"""
import copy
import functools
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline.errors import ConfigError

SWEEP_FORMS = "choice(...), range(...), interval(...) or tag(log, interval(...))"


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __str__(self):
        return f"choice({', '.join(override_value(v) for v in self.values)})"


@dataclass(frozen=True)
class IntRange:
    """Integers low..high, both included, every `step`."""
    low: int
    high: int
    step: int = 1
    log: bool = False

    def __str__(self):
        step = f", {self.step}" if self.step != 1 else ""
        text = f"range({self.low}, {self.high + self.step}{step})"
        return f"tag(log, {text})" if self.log else text


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    log: bool = False

    def __str__(self):
        return f"tag(log, interval({self.low}, {self.high}))" if self.log else f"interval({self.low}, {self.high})"


@dataclass(frozen=True)
class ListOf:
    """A list-valued key (layer widths): its length and each item are searched."""
    item: Choice | IntRange
    min_length: int
    max_length: int

    def __str__(self):
        return f"a list of {self.min_length}..{self.max_length} items from {self.item}"


Dimension = Choice | IntRange | Interval | ListOf
Space = dict[str, Dimension]


# ---- parsing Hydra's sweep grammar

def parse_space(params: Mapping[str, str], lists: Mapping[str, Mapping] | None = None) -> Space:
    space = {key: _parse_sweep(key, expr) for key, expr in params.items()}
    for key, spec in (lists or {}).items():
        if key in space:
            raise ConfigError(f"search space key {key} is both a sweep and a list: give it in one place")
        space[key] = _parse_list(key, spec)
    return space


def _parse_sweep(key: str, expr) -> Choice | IntRange | Interval:
    written = f"{key}={expr}"
    try:
        override = OverridesParser.create().parse_overrides([written])[0]
    except OverrideParseException:
        raise ConfigError(f"search space key {written} does not parse as Hydra's sweep grammar: write {SWEEP_FORMS}, "
                          "e.g. choice(relu, tanh) or tag(log, interval(1e-4, 1e-1))") from None
    sweep = override.value()
    if not override.is_sweep_override() or not isinstance(sweep, (ChoiceSweep, RangeSweep, IntervalSweep)):
        raise ConfigError(f"search space key {written} is not a sweep: write {SWEEP_FORMS}")
    if sweep.tags - {"log"}:
        raise ConfigError(f"search space key {written} has tag {', '.join(sorted(sweep.tags - {'log'}))}: "
                          "only tag(log, ...) is understood")
    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ConfigError(f"search space key {written}: tag(log, ...) applies to range and interval, not choice")
        return _choice(written, sweep.list)
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
            raise ConfigError(f"search space key {written} needs finite bounds low < high"
                              + (" and low > 0 on a log scale" if log else ""))
        return Interval(low, high, log)
    return _range(written, sweep, log, override)


def _choice(written: str, values: list) -> Choice:
    if not values or any(isinstance(v, dict) for v in values):
        raise ConfigError(f"search space key {written}: choice values may be numbers, strings, bools or lists")
    keys = [_key(v) for v in values]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"search space key {written} lists a value twice")
    return Choice(tuple(values))


def _range(written: str, sweep: RangeSweep, log: bool, override) -> Choice | IntRange:
    if not all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        if log:
            raise ConfigError(f"search space key {written}: a log range needs integers; use tag(log, interval(...))")
        return _choice(written, list(override.sweep_iterator()))  # floats: exactly the values Hydra would run
    if sweep.step == 0:
        raise ConfigError(f"search space key {written} has step 0")
    r = range(sweep.start, sweep.stop, sweep.step)
    if not r:
        raise ConfigError(f"search space key {written} is empty: range's end is excluded, as in Python")
    low, high = min(r[0], r[-1]), max(r[0], r[-1])
    if log and (abs(sweep.step) != 1 or low < 1):
        raise ConfigError(f"search space key {written}: a log range needs step 1 and start >= 1")
    return IntRange(low, high, abs(sweep.step), log)


def _parse_list(key: str, spec) -> ListOf:
    allowed = "{item: choice(...) or range(...), min_length: int >= 0, max_length: int >= max(1, min_length)}"
    if not isinstance(spec, Mapping) or set(spec) != {"item", "min_length", "max_length"}:
        raise ConfigError(f"search space list {key}={spec!r} must be {allowed}")
    item = _parse_sweep(f"{key}.item", spec["item"])
    lo, hi = spec["min_length"], spec["max_length"]
    if isinstance(item, Interval) or not all(type(n) is int for n in (lo, hi)) or not 0 <= lo <= hi or hi < 1:
        raise ConfigError(f"search space list {key}={dict(spec)!r} must be {allowed}")
    return ListOf(item, lo, hi)


# ---- genomes: draw, mutate, cross, check

def random_genome(space: Space, rng: random.Random) -> dict:
    return {key: _random_value(dim, rng) for key, dim in space.items()}


def _random_value(dim: Dimension, rng: random.Random):
    if isinstance(dim, Choice):
        return copy.deepcopy(rng.choice(dim.values))
    if isinstance(dim, IntRange):
        if dim.log:  # as Optuna does: log-uniform over [low - 0.5, high + 0.5], rounded
            value = round(math.exp(rng.uniform(math.log(dim.low - 0.5), math.log(dim.high + 0.5))))
            return min(max(value, dim.low), dim.high)
        return dim.low + dim.step * rng.randrange((dim.high - dim.low) // dim.step + 1)
    if isinstance(dim, Interval):
        if dim.log:
            return min(max(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))), dim.low), dim.high)
        return rng.uniform(dim.low, dim.high)
    return [_random_value(dim.item, rng) for _ in range(rng.randint(dim.min_length, dim.max_length))]


def _variable(dim: Dimension) -> bool:
    """Whether the dimension has more than one value, i.e. a mutation can change it."""
    if isinstance(dim, Choice):
        return len(dim.values) > 1
    if isinstance(dim, IntRange):
        return dim.high - dim.low >= dim.step
    if isinstance(dim, Interval):
        return dim.high > dim.low
    return dim.min_length < dim.max_length or _variable(dim.item)


def mutate(genome: dict, space: Space, rng: random.Random) -> dict:
    """One small step: exactly one key changes (add, remove or change a layer; nudge a number; swap a choice)."""
    child = copy.deepcopy(genome)
    keys = [key for key, dim in space.items() if _variable(dim)]
    if keys:
        key = rng.choice(keys)
        child[key] = _mutate_value(space[key], child[key], rng)
    return child


def _mutate_value(dim: Dimension, value, rng: random.Random):
    if isinstance(dim, Choice):
        return copy.deepcopy(rng.choice([v for v in dim.values if _key(v) != _key(value)]))
    if isinstance(dim, IntRange):
        size = max(1, round(value * 0.25)) if dim.log else dim.step  # log: a step proportional to the value
        return rng.choice([v for v in {max(value - size, dim.low), min(value + size, dim.high)} if v != value])
    if isinstance(dim, Interval):
        return _perturb(dim, value, rng)
    moves = [m for m, ok in (("add", len(value) < dim.max_length), ("remove", len(value) > dim.min_length),
                             ("change", _variable(dim.item) and len(value) > 0)) if ok]
    move, items = rng.choice(moves), list(value)
    if move == "add":
        items.insert(rng.randint(0, len(items)), _random_value(dim.item, rng))
    elif move == "remove":
        del items[rng.randrange(len(items))]
    else:
        i = rng.randrange(len(items))
        items[i] = _mutate_value(dim.item, items[i], rng)
    return items


def _perturb(dim: Interval, value: float, rng: random.Random) -> float:
    """A Gaussian step of a tenth of the range (of its logarithm on a log scale), reflected back inside."""
    to, back = (math.log, math.exp) if dim.log else (float, float)
    lo, hi, x = to(dim.low), to(dim.high), to(value)
    new = value
    while new == value:
        delta = rng.gauss(0, 0.1 * (hi - lo))
        new = min(max(back(x + delta if lo <= x + delta <= hi else x - delta), dim.low), dim.high)
    return new


def crossover(a: dict, b: dict, space: Space, rng: random.Random) -> dict:
    """Each key from either parent; a list is a prefix of one parent's list joined to a suffix of the other's."""
    child = {}
    for key, dim in space.items():
        first, second = (a[key], b[key]) if rng.random() < 0.5 else (b[key], a[key])
        if isinstance(dim, ListOf):
            child[key] = copy.deepcopy(_splice(first, second, dim, rng))
        else:
            child[key] = copy.deepcopy(first)
    return child


def _splice(first: list, second: list, dim: ListOf, rng: random.Random) -> list:
    """first[:i] + second[j:], with the cut j chosen so that the length stays within the dimension's bounds."""
    i = rng.randint(0, len(first))
    lowest, highest = max(0, i + len(second) - dim.max_length), min(len(second), i + len(second) - dim.min_length)
    return first[:i] + second[rng.randint(lowest, highest):]


def is_valid(genome: Mapping, space: Space) -> bool:
    return set(genome) == set(space) and all(_contains(dim, genome[key]) for key, dim in space.items())


def _contains(dim: Dimension, value) -> bool:
    if isinstance(dim, Choice):
        return _key(value) in {_key(v) for v in dim.values}
    if isinstance(dim, IntRange):
        return (isinstance(value, int) and not isinstance(value, bool) and dim.low <= value <= dim.high
                and (value - dim.low) % dim.step == 0)
    if isinstance(dim, Interval):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high
    return (isinstance(value, list) and dim.min_length <= len(value) <= dim.max_length
            and all(_contains(dim.item, v) for v in value))


def _key(value) -> str:
    """A value's identity: JSON tells 1 from 1.0 and True, and lists compare by content."""
    return json.dumps(value, sort_keys=True)


# ---- Optuna: flat names, storable values

def distributions(space: Space) -> dict[str, BaseDistribution]:
    flat = {}
    for key, dim in space.items():
        if isinstance(dim, ListOf):
            flat[f"{key}.length"] = IntDistribution(dim.min_length, dim.max_length)
            flat.update({f"{key}.{i}": _distribution(dim.item) for i in range(dim.max_length)})
        else:
            flat[key] = _distribution(dim)
    return flat


def _distribution(dim: Choice | IntRange | Interval) -> BaseDistribution:
    if isinstance(dim, Choice):
        return CategoricalDistribution([_encode(dim, v) for v in dim.values])
    if isinstance(dim, IntRange):
        return IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return FloatDistribution(dim.low, dim.high, log=dim.log)


def _storable(dim: Choice) -> bool:
    """Optuna stores a choice by its index in the list: its values must be plain and tell apart (True == 1)."""
    plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in dim.values)
    return plain and len(set(dim.values)) == len(dim.values)


def _encode(dim, value):
    return value if not isinstance(dim, Choice) or _storable(dim) else json.dumps(value)


def _decode(dim, value):
    return value if not isinstance(dim, Choice) or _storable(dim) else json.loads(value)


def to_params(genome: Mapping, space: Space) -> dict:
    params = {}
    for key, dim in space.items():
        if isinstance(dim, ListOf):
            value, filler = genome[key], dim.item.values[0] if isinstance(dim.item, Choice) else dim.item.low
            params[f"{key}.length"] = len(value)
            params.update({f"{key}.{i}": _encode(dim.item, value[i] if i < len(value) else filler)
                           for i in range(dim.max_length)})
        else:
            params[key] = _encode(dim, genome[key])
    return params


def from_params(params: Mapping, space: Space) -> dict:
    genome = {}
    for key, dim in space.items():
        if isinstance(dim, ListOf):
            genome[key] = [_decode(dim.item, params[f"{key}.{i}"]) for i in range(params[f"{key}.length"])]
        else:
            genome[key] = _decode(dim, params[key])
    return genome


def grid(space: Space) -> dict[str, list]:
    """Every value per flat name, for Optuna's GridSampler."""
    values = {}
    for key, dim in space.items():
        if isinstance(dim, (Interval, ListOf)):
            raise ConfigError(f"strategy grid needs finite choices: {key}={dim} is not; write choice(...) or "
                              "range(...), or pick strategy random, tpe, evolution or hill_climb")
        values[key] = list(_distribution(dim).choices if isinstance(dim, Choice) else
                           range(dim.low, dim.high + 1, dim.step))
    return values


# ---- back to Hydra

def override_value(value) -> str:
    """A value as Hydra's command line reads it back: null, true, 0.001, [64,32], relu, 'needs quotes'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if _reads_back(value) else _quote(value)
    raise TypeError(f"no Hydra override for {value!r}")


def overrides(genome: Mapping) -> list[str]:
    return [f"{key}={override_value(value)}" for key, value in genome.items()]


@functools.lru_cache(maxsize=1024)
def _reads_back(text: str) -> bool:
    """Whether a string needs no quotes: Hydra reads it unquoted as itself, alone and inside a list."""
    try:
        alone, listed = OverridesParser.create().parse_overrides([f"k={text}", f"k=[{text}]"])
        return alone.value() == text and listed.value() == [text]
    except OverrideParseException:
        return False


def _quote(text: str) -> str:
    """Single quotes; Hydra escapes backslashes only before a quote or at the end."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"
