"""The search space of `run.py -m search=...` and the evolution and hill-climbing strategies, run in real Optuna
studies (in memory and in SQLite, reloaded as after a kill)."""
import json
import math
import random

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.samplers import GridSampler, NSGAIISampler, RandomSampler, TPESampler

from pipeline.errors import ConfigError
from pipeline.search.space import (Choice, Interval, IntRange, ListOf, crossover, distributions, from_params, grid,
                                   is_valid, mutate, override_value, overrides, parse_space, random_genome, to_params)
from pipeline.search.strategies import STRATEGIES, HillClimbingSampler, RegularizedEvolutionSampler, make_sampler

# every kind of dimension, as a search config would write it
SPACE = parse_space(
    {"model.activation": "relu,tanh,gelu",
     "model.head": "choice([64],[128,64])",
     "regularization.batchnorm": "choice(true, false)",
     "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
     "regularization.dropout": "interval(0.0, 0.5)",
     "data.batch_size": "tag(log, range(8, 257))",
     "trainer.max_epochs": "range(1, 11, 3)"},
    {"model.hidden": {"item": "choice(16, 32, 64, 128)", "min_length": 1, "max_length": 4},
     "model.channels": {"item": "range(8, 65, 8)", "min_length": 0, "max_length": 3}})


def one_line_error(call, *fragments):
    with pytest.raises(ConfigError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(f in message for f in fragments), message


# ---- parsing

@pytest.mark.parametrize("expr, dimension", [
    ("choice(relu, tanh)", Choice(("relu", "tanh"))),
    ("relu,tanh,gelu", Choice(("relu", "tanh", "gelu"))),
    ("choice([64],[128,64])", Choice(([64], [128, 64]))),
    ("choice(1, 2.5, true, 'a b')", Choice((1, 2.5, True, "a b"))),
    ("range(1,5)", IntRange(1, 4)),                       # Hydra's range excludes its end, as Python's does
    ("range(1, 10, 3)", IntRange(1, 7, 3)),
    ("range(5, 0, -2)", IntRange(1, 5, 2)),
    ("range(0, 1, 0.25)", Choice((0.0, 0.25, 0.5, 0.75))),  # a float range is the values Hydra would run
    ("interval(0.1, 1)", Interval(0.1, 1.0)),
    ("tag(log, interval(1e-4, 1e-1))", Interval(1e-4, 0.1, log=True)),
    ("tag(log, range(1, 9))", IntRange(1, 8, log=True)),
])
def test_parse_space_reads_each_form_of_hydras_sweep_grammar(expr, dimension):
    assert parse_space({"k": expr}) == {"k": dimension}


def test_parse_space_reads_lists_with_a_length_range():
    space = parse_space({}, {"model.hidden": {"item": "choice(64, 128)", "min_length": 1, "max_length": 3},
                             "model.channels": {"item": "range(8, 33, 8)", "min_length": 0, "max_length": 2}})
    assert space == {"model.hidden": ListOf(Choice((64, 128)), 1, 3),
                     "model.channels": ListOf(IntRange(8, 32, 8), 0, 2)}


@pytest.mark.parametrize("expr, fragment", [
    ("0.1", "is not a sweep: write choice(...)"),
    ("[64,32]", "is not a sweep"),
    ("glob(*)", "is not a sweep"),
    ("choice(a,", "does not parse"),
    ("range(5, 5)", "is empty"),
    ("interval(1, 0.5)", "low < high"),
    ("tag(log, interval(0, 1))", "low > 0 on a log scale"),
    ("tag(log, range(1, 10, 2))", "step 1"),
    ("tag(int, interval(0, 1))", "only tag(log, ...)"),
    ("tag(log, choice(1, 2))", "not choice"),
    ("choice(a, a)", "twice"),
])
def test_parse_space_refuses_what_is_not_a_sweep_in_one_line_naming_the_key(expr, fragment):
    one_line_error(lambda: parse_space({"optimizer.lr": expr}), f"optimizer.lr={expr}", fragment)


@pytest.mark.parametrize("spec, fragment", [
    ({"item": "choice(64, 128)", "min_length": 1}, "must be {item"),
    ({"item": "choice(64, 128)", "min_length": 3, "max_length": 2}, "must be {item"),
    ({"item": "choice(64, 128)", "min_length": "1", "max_length": 2}, "must be {item"),
    ({"item": "interval(1, 2)", "min_length": 1, "max_length": 2}, "must be {item"),
    ({"item": "64", "min_length": 1, "max_length": 2}, "model.hidden.item=64 is not a sweep"),
    ("choice(64, 128)", "must be {item"),
])
def test_parse_space_refuses_a_bad_list_spec_in_one_line_naming_the_key(spec, fragment):
    one_line_error(lambda: parse_space({}, {"model.hidden": spec}), "model.hidden", fragment)


def test_a_key_given_as_sweep_and_list_is_refused():
    one_line_error(lambda: parse_space({"model.hidden": "choice([64])"},
                                       {"model.hidden": {"item": "choice(64)", "min_length": 1, "max_length": 2}}),
                   "model.hidden", "both")


# ---- genomes

def test_random_genomes_are_valid_and_log_dimensions_are_log_uniform():
    rng = random.Random(0)
    genomes = [random_genome(SPACE, rng) for _ in range(2000)]
    assert all(is_valid(g, SPACE) for g in genomes)
    # log-uniform on [1e-4, 1e-1]: two thirds below 1e-2 (uniform would put 9% there)
    below = sum(g["optimizer.lr"] < 1e-2 for g in genomes) / len(genomes)
    assert 0.6 < below < 0.73
    assert {len(g["model.hidden"]) for g in genomes} == {1, 2, 3, 4}


def test_is_valid_rejects_what_the_space_does_not_allow():
    genome = random_genome(SPACE, random.Random(1))
    for key, bad in [("model.activation", "elu"), ("model.head", [64, 64]), ("regularization.batchnorm", 1),
                     ("optimizer.lr", 0.5), ("data.batch_size", 8.0), ("trainer.max_epochs", 2),
                     ("model.hidden", []), ("model.hidden", [16, 16, 16, 16, 16]), ("model.hidden", [48]),
                     ("model.channels", [12])]:
        assert not is_valid({**genome, key: bad}, SPACE), (key, bad)
    assert not is_valid({k: v for k, v in genome.items() if k != "optimizer.lr"}, SPACE)


def test_mutate_and_crossover_always_give_valid_genomes_and_mutate_changes_exactly_one_key():
    moves = set()
    for seed in range(500):
        rng = random.Random(seed)
        a, b = random_genome(SPACE, rng), random_genome(SPACE, rng)
        before = json.dumps(a, sort_keys=True)
        child = mutate(a, SPACE, rng)
        assert is_valid(child, SPACE), (seed, child)
        changed = [k for k in SPACE if json.dumps(child[k]) != json.dumps(a[k])]
        assert len(changed) == 1, (seed, a, child)
        if changed == ["model.hidden"]:
            moves.add({1: "add", -1: "remove", 0: "change"}[len(child["model.hidden"]) - len(a["model.hidden"])])
        if changed == ["trainer.max_epochs"]:
            assert abs(child["trainer.max_epochs"] - a["trainer.max_epochs"]) == 3  # a neighbour, not a jump

        mixed = crossover(a, b, SPACE, rng)
        assert is_valid(mixed, SPACE), (seed, mixed)
        assert json.dumps(a, sort_keys=True) == before  # parents are never changed in place
        for key, dim in SPACE.items():
            if isinstance(dim, ListOf):
                x, y = mixed[key], (a[key], b[key])
                assert any(x == p[:i] + q[j:] for p, q in (y, y[::-1])
                           for i in range(len(p) + 1) for j in range(len(q) + 1)), (seed, key, y, x)
            else:
                assert mixed[key] in (a[key], b[key])
    assert moves == {"add", "remove", "change"}


def test_mutate_leaves_a_space_with_one_value_per_key_alone():
    space = {"model.activation": Choice(("relu",)), "model.hidden": ListOf(Choice((64,)), 2, 2)}
    genome = {"model.activation": "relu", "model.hidden": [64, 64]}
    assert mutate(genome, space, random.Random(0)) == genome


# ---- Optuna encoding and Hydra overrides

def test_optuna_params_round_trip_and_every_encoded_value_is_accepted_by_its_distribution():
    dists = distributions(SPACE)
    assert {"model.hidden.length", "model.hidden.0", "model.hidden.3", "model.channels.length",
            "model.channels.2", "optimizer.lr"} <= set(dists)
    assert "model.hidden.4" not in dists and "model.hidden" not in dists
    assert dists["model.head"].choices == ("[64]", "[128, 64]")  # lists travel as JSON strings
    rng = random.Random(0)
    for _ in range(300):
        genome = random_genome(SPACE, rng)
        params = to_params(genome, SPACE)
        assert set(params) == set(dists)
        for name, value in params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value)), (name, value)
        assert from_params(params, SPACE) == genome


def test_from_params_ignores_slots_beyond_the_length_and_tells_true_from_one():
    space = {"model.hidden": ListOf(Choice((16, 32)), 1, 3), "x": Choice((1, True))}
    dist = distributions(space)["x"]
    stored = dist.to_external_repr(dist.to_internal_repr(to_params({"model.hidden": [16], "x": True}, space)["x"]))
    params = {"model.hidden.length": 1, "model.hidden.0": 32, "model.hidden.1": 16, "model.hidden.2": 16, "x": stored}
    assert from_params(params, space) == {"model.hidden": [32], "x": True}
    assert from_params(params, space)["x"] is True  # Optuna stores a choice by index, and (1, True).index(True) is 0


def test_grid_lists_every_finite_value_and_refuses_continuous_or_list_keys():
    space = parse_space({"model.head": "choice([64],[128,64])", "trainer.max_epochs": "range(1, 10, 4)"})
    assert grid(space) == {"model.head": ["[64]", "[128, 64]"], "trainer.max_epochs": [1, 5, 9]}
    one_line_error(lambda: grid(SPACE), "strategy grid needs finite choices", "optimizer.lr=tag(log, interval(")
    one_line_error(lambda: grid({"model.hidden": SPACE["model.hidden"]}), "model.hidden=a list of 1..4 items")

    sampler = make_sampler("grid", space, seed=0)
    study = optuna.create_study(sampler=sampler)
    genomes = [ask_and_tell(study, space, lambda g: 0.0) for _ in range(6)]  # the last tell must not raise
    assert sampler.is_exhausted(study)
    assert sorted(overrides(g) for g in genomes) == sorted(
        [f"model.head={h}", f"trainer.max_epochs={e}"] for h in ("[64]", "[128,64]") for e in (1, 5, 9))


@pytest.mark.parametrize("value, written", [
    ([64, 32], "[64,32]"), (None, "null"), (True, "true"), (0.001, "0.001"), (1e-05, "1e-05"), (64, "64"),
    ("relu", "relu"), ("true", "'true'"), ("64", "'64'"), ("", "''"), ("a,b", "'a,b'"), ("it's", "'it\\'s'"),
])
def test_override_value_writes_what_hydra_reads_back(value, written):
    assert override_value(value) == written
    assert OverridesParser.create().parse_overrides([f"k={written}"])[0].value() == value


def test_overrides_of_any_genome_read_back_as_the_genome():
    parser = OverridesParser.create()
    rng = random.Random(0)
    for _ in range(50):
        genome = random_genome(SPACE, rng)
        genome["odd"] = ["back\\slash\\", "quo'te", "x=y", "[z]", "null", 2.5]
        parsed = parser.parse_overrides(overrides(genome))
        assert {o.key_or_group: o.value() for o in parsed} == genome


# ---- the strategies in real studies

TOY = parse_space({"model.activation": "relu,tanh,gelu", "optimizer.lr": "tag(log, interval(1e-4, 1e-1))"},
                  {"model.hidden": {"item": "choice(16, 32, 64, 128)", "min_length": 1, "max_length": 4}})


def toy_objective(genome: dict) -> float:
    """Wide layers pay, each layer costs, gelu helps, the learning rate is best at 1e-2. The best is 412."""
    hidden = genome["model.hidden"]
    return (sum(hidden) - 30 * len(hidden) + 20 * (genome["model.activation"] == "gelu")
            - 20 * abs(math.log10(genome["optimizer.lr"]) + 2))


def ask_and_tell(study, space, objective) -> dict:
    """One trial as the sweeper runs it: ask for the whole flat space, decode, evaluate, tell."""
    trial = study.ask(fixed_distributions=distributions(space))
    genome = from_params(trial.params, space)
    study.tell(trial, objective(genome))
    return genome


def run_study(sampler, trials: int, space=TOY, objective=toy_objective, study=None) -> list[dict]:
    study = study or optuna.create_study(sampler=sampler, direction="maximize")
    return [ask_and_tell(study, space, objective) for _ in range(trials)]


def samplers(seed):
    return {"evolution": RegularizedEvolutionSampler(TOY, population_size=10, seed=seed),
            "hill_climb": HillClimbingSampler(TOY, seed=seed)}


@pytest.mark.parametrize("name", ["evolution", "hill_climb"])
def test_each_strategy_improves_on_random_genomes_and_is_deterministic_by_seed(name):
    genomes = run_study(samplers(7)[name], 60)
    values = [toy_objective(g) for g in genomes]
    assert all(is_valid(g, TOY) for g in genomes)
    assert max(values) > sum(values[:10]) / 10
    assert max(values) > max(values[:10])  # the search itself found better than its random start
    assert run_study(samplers(7)[name], 60) == genomes
    assert run_study(samplers(8)[name], 60) != genomes


def test_hill_climbing_tries_a_neighbour_of_the_best_so_far():
    genomes = run_study(HillClimbingSampler(TOY, seed=3), 40)
    for n in range(1, len(genomes)):
        best = max(genomes[:n], key=toy_objective)
        assert sum(genomes[n][k] != best[k] for k in TOY) == 1, n


def test_evolution_maximises_or_minimises_as_the_study_asks():
    minimised = optuna.create_study(sampler=RegularizedEvolutionSampler(TOY, population_size=5, seed=0))
    values = [toy_objective(ask_and_tell(minimised, TOY, toy_objective)) for _ in range(50)]
    assert min(values[5:]) < min(values[:5])
    assert sum(values[-10:]) < sum(values[:5]) / 5 * 10


def test_evolution_breeds_from_the_newest_trials_only_however_good_the_old_ones_were():
    rng = random.Random(0)
    old = [{"model.activation": "gelu", "optimizer.lr": 0.01, "model.hidden": [128] * 4} for _ in range(10)]
    young = [{"model.activation": "relu", "optimizer.lr": 10 ** rng.uniform(-4, -1), "model.hidden": [16]}
             for _ in range(5)]
    for seed in range(10):
        sampler = RegularizedEvolutionSampler(TOY, population_size=5, crossover_probability=0, seed=seed)
        study = optuna.create_study(sampler=sampler, direction="maximize")
        for genome in old + young:
            study.add_trial(optuna.trial.create_trial(params=to_params(genome, TOY), distributions=distributions(TOY),
                                                      value=toy_objective(genome)))
        child = from_params(study.ask(fixed_distributions=distributions(TOY)).params, TOY)
        assert min(sum(child[k] != parent[k] for k in TOY) for parent in young) == 1, child


@pytest.mark.parametrize("make", [
    lambda s: RegularizedEvolutionSampler(s, population_size=2, tournament_size=2, seed=0),
    lambda s: HillClimbingSampler(s, seed=0)])
def test_no_genome_is_run_twice_while_an_untried_one_is_left(make):
    small = parse_space({"a": "choice(1, 2, 3)", "b": "choice(x, y)"})
    genomes = run_study(make(small), 7, space=small, objective=lambda g: g["a"] + (g["b"] == "y"))
    assert len({json.dumps(g, sort_keys=True) for g in genomes[:6]}) == 6  # all six, then a repeat is unavoidable


def test_failed_and_pruned_trials_are_never_parents():
    study = optuna.create_study(sampler=HillClimbingSampler(TOY, seed=0), direction="maximize")
    ask_and_tell(study, TOY, toy_objective)
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
        study.tell(study.ask(fixed_distributions=distributions(TOY)), state=state)
    first = from_params(study.trials[0].params, TOY)
    child = from_params(study.ask(fixed_distributions=distributions(TOY)).params, TOY)
    assert sum(child[k] != first[k] for k in TOY) == 1


def test_evolution_resumes_from_a_study_reloaded_from_sqlite(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    optuna.create_study(study_name="search", storage=storage, direction="maximize")

    def reload():  # a new process after a kill: a new sampler object, the study read back from the file
        sampler = RegularizedEvolutionSampler(TOY, population_size=5, seed=11)
        return optuna.load_study(study_name="search", storage=storage, sampler=sampler)

    before = run_study(None, 20, study=reload())
    after = run_study(None, 10, study=reload())
    study = reload()
    assert [t.number for t in study.trials] == list(range(30))
    uninterrupted = run_study(RegularizedEvolutionSampler(TOY, population_size=5, seed=11), 30)
    assert before + after == uninterrupted  # the children after the kill are bred from the stored population


# ---- the factory

@pytest.mark.parametrize("strategy, cls", [
    ("grid", GridSampler), ("random", RandomSampler), ("tpe", TPESampler), ("nsga2", NSGAIISampler),
    ("evolution", RegularizedEvolutionSampler), ("hill_climb", HillClimbingSampler), ("oneshot", RandomSampler)])
def test_make_sampler_builds_each_strategy(strategy, cls):
    space = parse_space({"model.activation": "relu,tanh", "trainer.max_epochs": "range(1, 4)"})
    assert isinstance(make_sampler(strategy, space, seed=0), cls)
    assert set(STRATEGIES) == {"grid", "random", "tpe", "nsga2", "evolution", "hill_climb", "oneshot"}


def test_make_sampler_passes_evolution_options_and_refuses_bad_ones():
    sampler = make_sampler("evolution", TOY, seed=0, population_size=4, tournament_size=2, crossover_probability=0)
    assert (sampler.population_size, sampler.tournament_size, sampler.crossover_probability) == (4, 2, 0)
    one_line_error(lambda: make_sampler("evolution", TOY, 0, population_size=1), "population_size=1", ">= 2")
    one_line_error(lambda: make_sampler("evolution", TOY, 0, tournament_size=20), "tournament_size=20")
    one_line_error(lambda: make_sampler("evolution", TOY, 0, mutation_rate=0.1), "mutation_rate", "population_size")


def test_make_sampler_refuses_an_unknown_strategy_and_one_objective_strategies_with_two():
    one_line_error(lambda: make_sampler("annealing", TOY, 0), "'annealing'", ", ".join(STRATEGIES))
    one_line_error(lambda: make_sampler("evolution", TOY, 0, directions=2), "evolution", "nsga2")
    one_line_error(lambda: make_sampler("hill_climb", TOY, 0, directions=2), "hill_climb")
    assert type(make_sampler("nsga2", TOY, 0, directions=2)) is NSGAIISampler
