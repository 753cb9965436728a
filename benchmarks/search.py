"""Search strategies at an equal trial budget: regularized evolution, hill climbing, TPE and random search over the
same MLP architecture space (conf/search/nas_mlp.yaml), on the bundled digits and on an MNIST subset, over seeds.
Each search is the command a user runs, `python run.py -m search=nas_mlp hydra.sweeper.strategy=...`, in a fresh
folder of its own (its own MLflow store and Optuna study), one after another.

    PIPELINE_DATA_DIR=../shared/data python benchmarks/search.py [--datasets digits mnist] [--seeds 0 1 2]
        [--strategies evolution hill_climb tpe random] [--trials-digits 20] [--trials-mnist 12] [--epochs E]
        [--json results.json] [--oneshot]
    python benchmarks/search.py --tiny    # digits, 2 strategies, 1 seed, 3 trials of 1 epoch: checks it runs

Prints a table per dataset: per strategy the mean ± sd over seeds of the best trial's validation accuracy (the
objective), that trial's test accuracy and parameter count, the search's wall time, and the mean best-so-far
validation accuracy after N/4 and N/2 of its N trials; then each strategy's difference to random search.
Pruning is off (hydra.sweeper.pruner=none): every trial trains its whole budget, so equal trials = equal compute.
`--oneshot` adds the one-shot super-network search (search=oneshot_mlp) with its wall time and the Kendall tau
it logs on its parent run (oneshot/kendall_tau).

Published anchors: random search is a strong baseline that cleverer searches beat by small margins at best (Li &
Talwalkar 2019, "Random Search and Reproducibility for Neural Architecture Search"); regularized evolution reaches
good architectures earlier than random search at the same number of trials and ends at least as good (Real et al.
2019, "Regularized Evolution for Image Classifier Architecture Search", AAAI).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["evolution", "hill_climb", "tpe", "random"]
# What each dataset adds to the command, and its default budget (trials per search, epochs per trial).
DATASETS = {
    "digits": {"overrides": [], "trials": 20, "epochs": 10},
    "mnist": {"overrides": ["data=mnist", "++hydra.sweeper.budget.train_fraction=0.1"], "trials": 12, "epochs": 2},
}
TINY = {"datasets": ["digits"], "strategies": ["evolution", "random"], "seeds": [0], "trials": 3, "epochs": 1}


def run_search(overrides: list[str], folder: Path) -> tuple[float, subprocess.CompletedProcess]:
    """`python run.py -m <overrides>` in `folder`, with its MLflow store there; returns the wall time too."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", *overrides, "threads=1", "~callbacks.progress_bar",
               f"hydra.sweep.dir={folder}/sweep"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, result


def parent_runs(tracking_uri: str):
    from pipeline import tracking

    client = tracking.client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    return client, [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def read_search(folder: Path) -> dict:
    """The search's trials from its MLflow store: the best trial's values and the best-so-far curve."""
    from pipeline.search.report import best, collect, is_done

    client, parents = parent_runs(f"sqlite:///{folder}/mlflow.db")
    (parent,) = [run for run in parents if "search.strategy" in run.data.tags]
    report = collect(client, parent.info.run_id)
    metric, direction = report.objectives[0]
    pick = max if direction == "maximize" else min
    curve, so_far = [], None  # None until a trial finished
    for trial in report.trials:
        if is_done(trial):
            value = trial.values[metric]
            so_far = value if so_far is None else pick(so_far, value)
        curve.append(so_far)
    chosen = best(report)
    found = {"states": [trial.state for trial in report.trials], "best_so_far": curve,
             "errors": {trial.number: trial.error for trial in report.trials if not is_done(trial)}}
    if chosen is None:
        return {**found, "best_trial": None, "best_val": math.nan, "best_test": math.nan, "best_params": math.nan}
    metrics = client.get_run(chosen.run_id).data.metrics
    return {**found, "best_trial": chosen.number, "best_val": chosen.values[metric],
            "best_test": chosen.tests.get("test/acc", math.nan), "best_params": metrics.get("model/params", math.nan)}


def read_oneshot(folder: Path) -> dict:
    """The one-shot search's Kendall tau (logged on its parent), and its best candidate's values where it has
    trials of its own."""
    from pipeline.search.report import best, collect

    client, parents = parent_runs(f"sqlite:///{folder}/mlflow.db")
    found = {"kendall_tau": math.nan, "best_val": math.nan, "best_test": math.nan}
    for parent in parents:
        if "oneshot/kendall_tau" in parent.data.metrics:
            found["kendall_tau"] = parent.data.metrics["oneshot/kendall_tau"]
        if "search.strategy" in parent.data.tags:
            report = collect(client, parent.info.run_id)
            chosen = best(report) if report.trials and len(report.objectives) == 1 else None
            if chosen is not None:
                found["best_val"] = chosen.values[report.objectives[0][0]]
                found["best_test"] = chosen.tests.get("test/acc", math.nan)
    return found


def spread(values: list[float], digits: int = 4) -> str:
    """mean ± sd over seeds, of the values that exist."""
    values = [value for value in values if value is not None and not math.isnan(value)]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):,.{digits}f} ± {sd:,.{digits}f}"


def mean(values: list[float]) -> float:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.mean(values) if values else math.nan


def at(curve: list, trials: int) -> float | None:
    """The best-so-far value after `trials` trials."""
    return curve[min(trials, len(curve)) - 1] if curve else None


def print_table(dataset: str, trials: int, epochs: int, seeds: list[int], rows: list[dict]) -> None:
    quarter, half = max(1, trials // 4), max(1, trials // 2)
    print(f"\n{dataset}: {trials} trials of {epochs} epoch(s) per search, seeds {' '.join(map(str, seeds))} "
          "(mean ± sd over seeds)")
    header = ["strategy", "best val acc", "test acc of best", "params of best", "wall s",
              f"best val @{quarter}", f"best val @{half}"]
    widths = [10, 16, 16, 18, 12, 16, 16]
    print("  ".join(text.ljust(width) for text, width in zip(header, widths)))
    means = {}
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        mine = [row for row in rows if row["strategy"] == strategy]
        columns = {"best_val": [r["best_val"] for r in mine], "best_test": [r["best_test"] for r in mine],
                   "best_params": [r["best_params"] for r in mine], "wall_s": [r["wall_s"] for r in mine],
                   "quarter": [at(r["best_so_far"], quarter) for r in mine],
                   "half": [at(r["best_so_far"], half) for r in mine]}
        means[strategy] = {key: mean(values) for key, values in columns.items()}
        digits = {"best_params": 0, "wall_s": 0}
        cells = [strategy, *(spread(values, digits.get(key, 4)) for key, values in columns.items())]
        print("  ".join(text.ljust(width) for text, width in zip(cells, widths)))
    if "random" in means:
        for strategy, values in means.items():
            if strategy != "random":
                print(f"{strategy} - random: best val {values['best_val'] - means['random']['best_val']:+.4f}, "
                      f"@{quarter} {values['quarter'] - means['random']['quarter']:+.4f}, "
                      f"@{half} {values['half'] - means['random']['half']:+.4f}; test of best "
                      f"{values['best_test'] - means['random']['best_test']:+.4f}; wall time ratio "
                      f"{values['wall_s'] / means['random']['wall_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials-digits", type=int, default=DATASETS["digits"]["trials"])
    parser.add_argument("--trials-mnist", type=int, default=DATASETS["mnist"]["trials"])
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per trial on every dataset (default: digits 10, mnist 2)")
    parser.add_argument("--json", type=Path, default=None, help="save the raw results here")
    parser.add_argument("--oneshot", action="store_true", help="add the one-shot search (search=oneshot_mlp)")
    parser.add_argument("--tiny", action="store_true", help="digits, 2 strategies, 1 seed, 3 trials of 1 epoch")
    args = parser.parse_args()
    if args.tiny:
        args.datasets, args.strategies, args.seeds = TINY["datasets"], TINY["strategies"], TINY["seeds"]
        args.trials_digits, args.epochs = TINY["trials"], TINY["epochs"]
    budgets = {name: {"trials": {"digits": args.trials_digits, "mnist": args.trials_mnist}[name],
                      "epochs": args.epochs or DATASETS[name]["epochs"]} for name in args.datasets}
    print(f"{os.cpu_count()} cores, load average {open('/proc/loadavg').read().split()[0]}; each search: "
          "python run.py -m search=nas_mlp <dataset> hydra.sweeper.strategy=S hydra.sweeper.n_trials=N "
          "hydra.sweeper.budget.epochs=E hydra.sweeper.seed=K seed=K hydra.sweeper.pruner=none threads=1", flush=True)
    results = {"budgets": budgets, "searches": [], "oneshot": []}
    for dataset in args.datasets:
        trials, epochs = budgets[dataset]["trials"], budgets[dataset]["epochs"]
        for seed in args.seeds:
            for strategy in args.strategies:
                overrides = ["search=nas_mlp", *DATASETS[dataset]["overrides"], f"hydra.sweeper.strategy={strategy}",
                             f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.budget.epochs={epochs}",
                             f"hydra.sweeper.seed={seed}", f"seed={seed}", "hydra.sweeper.pruner=none"]
                with tempfile.TemporaryDirectory(prefix="search-bench-") as folder:
                    seconds, result = run_search(overrides, Path(folder))
                    if result.returncode != 0:
                        raise SystemExit(f"{dataset} {strategy} seed {seed} failed:\n{result.stderr[-3000:]}")
                    found = read_search(Path(folder))
                row = {"dataset": dataset, "strategy": strategy, "seed": seed, "trials": trials, "epochs": epochs,
                       "wall_s": seconds, **found}
                results["searches"].append(row)
                print(f"{dataset} {strategy} seed {seed}: best val {row['best_val']:.4f} (trial {row['best_trial']}), "
                      f"test {row['best_test']:.4f}, {row['best_params']:,.0f} params, {seconds:.0f} s", flush=True)
                for number, error in row["errors"].items():  # fewer trials than the others: say why
                    print(f"  trial {number} did not finish: {error or 'no error recorded'}")
        if args.oneshot:
            if not (ROOT / "conf/search/oneshot_mlp.yaml").exists():
                print(f"{dataset} oneshot: skipped (conf/search/oneshot_mlp.yaml does not exist yet)")
            else:
                for seed in args.seeds:
                    # Its own budget (super-network epochs, candidates ranked) is its config's; only data and seed.
                    overrides = ["search=oneshot_mlp", *DATASETS[dataset]["overrides"], f"hydra.sweeper.seed={seed}",
                                 f"seed={seed}"]
                    with tempfile.TemporaryDirectory(prefix="search-bench-") as folder:
                        seconds, result = run_search(overrides, Path(folder))
                        if result.returncode != 0:  # a search being written: say so, and go on with the rest
                            print(f"{dataset} oneshot seed {seed} failed:\n{result.stderr[-2000:]}")
                            continue
                        found = read_oneshot(Path(folder))
                    results["oneshot"].append({"dataset": dataset, "seed": seed, "wall_s": seconds, **found})
                    print(f"{dataset} oneshot seed {seed}: Kendall tau {found['kendall_tau']:.3f}, best val "
                          f"{found['best_val']:.4f}, test {found['best_test']:.4f}, {seconds:.0f} s", flush=True)
        rows = [row for row in results["searches"] if row["dataset"] == dataset]
        print_table(dataset, trials, epochs, args.seeds, rows)
        oneshot = [row for row in results["oneshot"] if row["dataset"] == dataset]
        if oneshot:
            print(f"oneshot: Kendall tau {spread([r['kendall_tau'] for r in oneshot])}, best val "
                  f"{spread([r['best_val'] for r in oneshot])}, test {spread([r['best_test'] for r in oneshot])}, "
                  f"wall s {spread([r['wall_s'] for r in oneshot], 0)}")
        print(flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
