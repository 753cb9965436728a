"""The plots of a search report: how the objective went trial after trial, which parameters mattered, and the
trade-off of a two-objective search. Each returns its path, or None when the report has too little to show."""
import json
import math
from itertools import accumulate
from pathlib import Path

from pipeline.search.report import Report, is_done, pareto_front
from pipeline.viz import pyplot, save

COLOURS = {"COMPLETE": "tab:green", "FINISHED": "tab:green", "PRUNED": "tab:orange", "FAIL": "tab:red",
           "FAILED": "tab:red", "KILLED": "tab:purple"}


def finite(trial, metric: str) -> bool:
    return math.isfinite(trial.values.get(metric, math.nan))


def plot_history(report: Report, path: Path) -> Path | None:
    """Each objective per trial number, dots coloured by state, and the best finished value so far."""
    if not any(finite(t, metric) for t in report.trials for metric, _ in report.objectives):
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(report.objectives), figsize=(6 * len(report.objectives), 4.5), squeeze=False)
    last = max(t.number for t in report.trials)
    for axis, (metric, direction) in zip(axes[0], report.objectives):
        for state in dict.fromkeys(t.state for t in report.trials):
            points = [(t.number, t.values[metric]) for t in report.trials if t.state == state and finite(t, metric)]
            if points:
                axis.scatter(*zip(*points), color=COLOURS.get(state, "tab:gray"), label=state, s=28, zorder=3)
        done = [(t.number, t.values[metric]) for t in report.trials if is_done(t)]
        if done:
            numbers, values = zip(*done)
            so_far = list(accumulate(values, max if direction == "maximize" else min))
            axis.step([*numbers, last], [*so_far, so_far[-1]], where="post", color="black", label="best so far")
        axis.set_title(f"{metric} ({direction})")
        axis.set_xlabel("trial")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # no finite value at all: nothing to name
            axis.legend(fontsize=8)
    return save(figure, path)


def choice(value) -> str:
    """A parameter value as a categorical choice: lists (layer sizes) become JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def importances(report: Report) -> dict[str, dict[str, float]]:
    """objective -> parameter -> importance (fANOVA over the finished trials, every parameter categorical over its
    observed values); objectives whose values do not vary are left out. Nothing when fewer than two parameters
    vary: one parameter's importance is 1 by definition (and optuna's fANOVA costs ~2 s of imports)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    done = [t for t in report.trials if is_done(t) and t.params]
    choices = {}
    for t in done:
        for key, value in t.params.items():
            choices.setdefault(key, set()).add(choice(value))
    if len(done) < 2 or sum(len(values) >= 2 for values in choices.values()) < 2:
        return {}
    distributions = {key: CategoricalDistribution(sorted(values)) for key, values in choices.items()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory" on every report
    try:
        study = optuna.create_study(directions=[direction for _, direction in report.objectives])
        for t in done:
            study.add_trial(optuna.trial.create_trial(
                params={key: choice(value) for key, value in t.params.items()},
                distributions={key: distributions[key] for key in t.params},
                values=[t.values[metric] for metric, _ in report.objectives]))
        result = {}
        for index, (metric, _) in enumerate(report.objectives):
            try:
                result[metric] = optuna.importance.get_param_importances(
                    study, target=lambda frozen, index=index: frozen.values[index],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            except RuntimeError:  # every trial scored the same: nothing to attribute
                continue
        return {metric: values for metric, values in result.items() if values}
    finally:
        optuna.logging.set_verbosity(verbosity)


def plot_importance(report: Report, path: Path) -> Path | None:
    """Horizontal bars of each parameter's importance, one panel per objective (needs 2 finished trials that
    differ in some parameter)."""
    found = importances(report)
    if not found:
        return None
    plt = pyplot()
    height = 2 + 0.4 * max(len(values) for values in found.values())
    figure, axes = plt.subplots(1, len(found), figsize=(6 * len(found), height), squeeze=False)
    for axis, (metric, values) in zip(axes[0], found.items()):
        ranked = sorted(values.items(), key=lambda item: item[1])  # the most important on top
        axis.barh([key for key, _ in ranked], [float(value) for _, value in ranked], color="tab:blue")
        axis.set_title(f"importance for {metric}")
        axis.set_xlabel("fANOVA importance")
        axis.set_xlim(0, 1)
        axis.grid(alpha=0.3, axis="x")
    return save(figure, path)


def plot_pareto(report: Report, path: Path) -> Path | None:
    """Two objectives against each other: every trial, the Pareto front highlighted and connected."""
    if len(report.objectives) != 2:
        return None
    (x_metric, x_direction), (y_metric, y_direction) = report.objectives
    front = sorted(pareto_front(report), key=lambda t: t.values[x_metric])
    if not front:
        return None
    on_front = {t.run_id for t in front}
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 5))
    for state in dict.fromkeys(t.state for t in report.trials):
        points = [(t.values[x_metric], t.values[y_metric]) for t in report.trials
                  if t.state == state and t.run_id not in on_front and finite(t, x_metric) and finite(t, y_metric)]
        if points:
            axis.scatter(*zip(*points), color=COLOURS.get(state, "tab:gray"), alpha=0.6, s=28, label=state)
    xs, ys = [t.values[x_metric] for t in front], [t.values[y_metric] for t in front]
    axis.plot(xs, ys, color="black", marker="o", markerfacecolor="tab:red", markersize=8, label="Pareto front",
              zorder=3)
    for t, x, y in zip(front, xs, ys):
        axis.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel(f"{x_metric} ({x_direction})")
    axis.set_ylabel(f"{y_metric} ({y_direction})")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)
