"""Search strategies as Optuna samplers: Optuna's own (grid, random, TPE, NSGA-II) and two architecture searches,
regularized evolution and hill climbing, that propose whole genomes by mutating and crossing finished trials.

The two keep no state of their own: parents are read from the study's COMPLETE trials each time, and each trial's
random draws are seeded by (seed, trial number), so a study reloaded after a kill goes on where it stopped.
"""
import json
import random

from optuna.samplers import BaseSampler, GridSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from pipeline.errors import ConfigError
from pipeline.search.space import (Space, crossover, distributions, from_params, grid, is_valid, mutate,
                                   random_genome, to_params)

STRATEGIES = ("grid", "random", "tpe", "nsga2", "evolution", "hill_climb", "oneshot")
EVOLUTION_OPTIONS = ("population_size", "tournament_size", "crossover_probability")
ATTEMPTS = 25  # mutations tried before a proposal already run is given up on


class GenomeSampler(BaseSampler):
    """What both architecture searches share: the flat search space, finished genomes, seeded draws."""

    def __init__(self, space: Space, seed: int | None = None):
        self.space, self._seed = space, seed
        self._rng = random.Random(seed)
        self._independent = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._seed, self._rng = None, random.Random()
        self._independent.reseed_rng()

    def infer_relative_search_space(self, study, trial):
        return distributions(self.space)

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        rng = self._rng if self._seed is None else random.Random(f"{self._seed}/{trial.number}")
        child = self.propose(study, rng, self.tried(study, trial))
        return {name: value for name, value in to_params(child, self.space).items() if name in search_space}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def propose(self, study, rng: random.Random, tried: set[str]) -> dict:
        raise NotImplementedError

    def finished(self, study) -> list[tuple[float, dict]]:
        """(value, genome) of every COMPLETE trial of this space, oldest first."""
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        pairs = ((t.value, self.genome(t.params)) for t in trials)
        return [(value, genome) for value, genome in pairs if genome is not None]

    def tried(self, study, trial) -> set[str]:
        """Every genome already proposed, finished or not, so that none is run twice."""
        genomes = (self.genome(t.params) for t in study.get_trials(deepcopy=False) if t.number != trial.number)
        return {_key(genome) for genome in genomes if genome is not None}

    def genome(self, params) -> dict | None:
        try:
            genome = from_params(params, self.space)
        except (KeyError, TypeError, ValueError):  # a trial of another space, or one that never got its params
            return None
        return genome if is_valid(genome, self.space) else None

    def fresh(self, rng: random.Random, tried: set[str]) -> dict:
        genome = random_genome(self.space, rng)
        for _ in range(ATTEMPTS):
            if _key(genome) not in tried:
                break
            genome = random_genome(self.space, rng)
        return genome


class RegularizedEvolutionSampler(GenomeSampler):
    """Aging evolution (Real et al. 2019): tournament parents from the last `population_size` finished trials."""

    def __init__(self, space: Space, population_size: int = 10, tournament_size: int = 3,
                 crossover_probability: float = 0.5, seed: int | None = None):
        _check("population_size", population_size, _integer(population_size) and population_size >= 2,
               "an integer >= 2")
        _check("tournament_size", tournament_size, _integer(tournament_size) and
               1 <= tournament_size <= population_size, f"an integer in [1, population_size={population_size}]")
        _check("crossover_probability", crossover_probability, isinstance(crossover_probability, (int, float))
               and not isinstance(crossover_probability, bool) and 0 <= crossover_probability <= 1,
               "a number in [0, 1]")
        super().__init__(space, seed)
        self.population_size, self.tournament_size = population_size, tournament_size
        self.crossover_probability = crossover_probability

    def propose(self, study, rng, tried):
        finished = self.finished(study)
        if len(finished) < self.population_size:
            return self.fresh(rng, tried)
        population = finished[-self.population_size:]  # the oldest die, however good
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        parents = [pick(rng.sample(population, self.tournament_size), key=lambda p: p[0])[1] for _ in range(2)]
        child = parents[0]
        if rng.random() < self.crossover_probability:
            child = crossover(parents[0], parents[1], self.space, rng)
        child = mutate(child, self.space, rng)
        for _ in range(ATTEMPTS):
            if _key(child) not in tried:
                break
            child = mutate(child, self.space, rng)
        return child


class HillClimbingSampler(GenomeSampler):
    """A neighbour of the best finished trial; a random genome first and once every neighbour tried has been run."""

    def propose(self, study, rng, tried):
        finished = self.finished(study)
        if not finished:
            return self.fresh(rng, tried)
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        best = pick(finished, key=lambda p: p[0])[1]
        for _ in range(ATTEMPTS):
            child = mutate(best, self.space, rng)
            if _key(child) not in tried:
                return child
        return self.fresh(rng, tried)


class AskTellGridSampler(GridSampler):
    """Optuna's grid sampler for an ask/tell loop, which stops by asking `is_exhausted(study)`: Optuna's own calls
    study.stop() after the last point, and that raises outside study.optimize."""

    def after_trial(self, study, trial, state, values):
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as error:
            if "Study.stop" not in str(error):
                raise


def make_sampler(strategy: str, space: Space, seed: int | None, directions: int = 1, **options) -> BaseSampler:
    if strategy not in STRATEGIES:
        raise ConfigError(f"search strategy {strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
    unknown = sorted(set(options) - set(EVOLUTION_OPTIONS))
    if unknown:
        raise ConfigError(f"search option {unknown[0]} is unknown: use {', '.join(EVOLUTION_OPTIONS)} "
                          "(they tune strategy evolution)")
    if strategy in ("evolution", "hill_climb", "oneshot") and directions > 1:
        raise ConfigError(f"search strategy {strategy} optimises one objective, not {directions}: "
                          "use nsga2, tpe or random for several")
    if strategy == "grid":
        return AskTellGridSampler(grid(space), seed=seed)
    if strategy == "evolution":
        return RegularizedEvolutionSampler(space, seed=seed, **options)
    if strategy == "hill_climb":
        return HillClimbingSampler(space, seed=seed)
    if strategy in ("random", "oneshot"):  # oneshot enqueues the architectures its supernet ranked best
        return RandomSampler(seed=seed)
    return {"tpe": TPESampler, "nsga2": NSGAIISampler}[strategy](seed=seed)


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"search option {name}={value!r} is invalid: must be {allowed}")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key(genome: dict) -> str:
    return json.dumps(genome, sort_keys=True)
