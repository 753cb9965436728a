"""The report of a sweep or search, rebuilt from MLflow alone: its trials, the best one (or the Pareto front of a
multi-objective search) as a command line to paste, and plots; `pipeline.report` prints it for any sweep.

Everything is read back from the parent run and its children (tags `search.*`, params, metrics), so a report can be
made again at any time, also for a sweep whose process is gone.
"""
import json
import math
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import liveness, tracking

DONE = ("COMPLETE", "FINISHED")  # the states whose values count: an Optuna trial's, a grid child's run status
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "FINISHED", "FAILED", "KILLED", "RUNNING")
# A search child without a `search.state` tag (its sweeper was stopped first): its run status says what happened.
STATE_OF_STATUS = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "FAIL"}
DEFAULT_OBJECTIVE = ("val/acc_best", "maximize")


@dataclass
class Trial:
    """One child run as a trial: `params` maps override keys to values (lists as lists), `values` the objectives."""
    name: str
    run_id: str
    number: int
    state: str
    params: dict
    values: dict[str, float]
    tests: dict[str, float]
    error: str = ""


@dataclass
class Report:
    parent: object  # the parent mlflow Run
    strategy: str
    objectives: list[tuple[str, str]]  # (metric, maximize | minimize)
    trials: list[Trial]
    fixed: list[str] = field(default_factory=list)  # the command's overrides that the search does not vary
    space: str = ""  # search/space.yaml as logged, for searches


def collect(client, parent_run_id: str, children: list | None = None) -> Report:
    """Read a sweep's parent and children from MLflow (a parent without children gives a report without trials);
    `children`: the parent's child runs (parent_records.children_of), when already read."""
    from pipeline.search.parent_records import children_of

    parent = client.get_run(parent_run_id)
    tags = parent.data.tags
    children = children_of(client, parent_run_id) if children is None else children
    strategy = tags.get("search.strategy", "grid")
    if "search.objectives" in tags:
        objectives = [(metric, direction) for metric, direction in json.loads(tags["search.objectives"])]
    else:
        objectives = [grid_objective(children)]
    if "search.fixed_overrides" in tags:
        fixed = list(json.loads(tags["search.fixed_overrides"]))
    else:
        fixed = fixed_overrides(sweep_overrides(client, parent))
    metrics = [metric for metric, _ in objectives]
    trials = [trial(child, position, metrics, searched="search.strategy" in tags)
              for position, child in enumerate(children)]  # children come oldest first
    trials.sort(key=lambda t: t.number)
    space = read_artifact(client, parent_run_id, "search/space.yaml")
    return Report(parent, strategy, objectives, trials, fixed, space)


def trial(child, position: int, metrics: list[str], searched: bool) -> Trial:
    tags, data = child.data.tags, child.data.metrics
    if searched:
        number = int(tags.get("search.trial", position))
        state = tags.get("search.state") or STATE_OF_STATUS.get(child.info.status, child.info.status)
        params = json.loads(tags.get("search.params", "{}"))
    else:  # a grid child: its swept values are its run name, `key=value key2=value2`
        number, state, params = position, child.info.status, name_overrides(child.info.run_name or "")
    return Trial(child.info.run_name or child.info.run_id, child.info.run_id, number, state, params,
                 {metric: data.get(metric, math.nan) for metric in metrics},
                 {key: value for key, value in data.items() if key.startswith("test/") and key not in metrics},
                 tags.get(liveness.ERROR, ""))


def grid_objective(children) -> tuple[str, str]:
    """A grid sweep's objective is its task's declaration of best, which every child logged as params."""
    for child in children:
        params = child.data.params
        if "task.monitor" in params:
            return f"{params['task.monitor']}_best", "minimize" if params.get("task.mode") == "min" else "maximize"
    return DEFAULT_OBJECTIVE


def read_artifact(client, run_id: str, path: str) -> str:
    """A small text artifact of a run, or "" when it has none."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            return Path(client.download_artifacts(run_id, path, folder)).read_text()
        except (MlflowException, OSError):
            return ""


def sweep_overrides(client, parent) -> list[str]:
    """The sweep's command-line overrides: sweep/overrides.txt (one per line), else the `pipeline.sweep` tag."""
    text = read_artifact(client, parent.info.run_id, "sweep/overrides.txt")
    if text:
        return [line for line in text.splitlines() if line.strip()]
    sweep = parent.data.tags.get("pipeline.sweep", "defaults")
    return [] if sweep == "defaults" else sweep.split()


def fixed_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps (`lr=0.1,0.01`, `range(...)`, `choice(...)`): every job had them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = []
    for override in overrides:
        try:
            if parser.parse_override(override).is_sweep_override():
                continue
        except Exception:  # text Hydra cannot parse any more: keep it as written
            pass
        fixed.append(override)
    return fixed


OVERRIDE = re.compile(r"(?:^|\s)([+~]*[\w./@-]+)=(.*?)(?=\s+[+~]*[\w./@-]+=|$)")


def name_overrides(name: str) -> dict:
    """`optimizer=sgd model.hidden=[64, 32]` -> {"optimizer": "sgd", "model.hidden": [64, 32]} (values as Hydra
    reads them; a value it cannot read stays text)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params = {}
    for match in OVERRIDE.finditer(name):
        key, text = match.group(1), match.group(2).strip()
        try:
            params[key] = parser.parse_override(f"{key}={text}").value()
        except Exception:
            params[key] = text
    return params


def is_done(trial: Trial) -> bool:
    return trial.state in DONE and all(math.isfinite(value) for value in trial.values.values())


def dominates(a: Trial, b: Trial, objectives) -> bool:
    """a is no worse than b in every objective and better in one."""
    signs = [1 if direction == "maximize" else -1 for _, direction in objectives]
    pairs = [(sign * a.values[metric], sign * b.values[metric]) for sign, (metric, _) in zip(signs, objectives)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(report: Report) -> list[Trial]:
    """The finished trials no other finished trial dominates, by trial number."""
    done = [t for t in report.trials if is_done(t)]
    return [t for t in done if not any(dominates(other, t, report.objectives) for other in done)]


def best(report: Report):
    """Single objective: the best finished trial (the earliest of equals), or None. Several: the Pareto front."""
    if len(report.objectives) > 1:
        return pareto_front(report)
    metric, direction = report.objectives[0]
    done = [t for t in report.trials if is_done(t)]
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda t: t.values[metric]) if done else None


def value_text(value) -> str:
    """A Python value as Hydra override text: [64,32], 0.01, true, null, sgd; strings quoted where Hydra would
    read them otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{value_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w./-]*", text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    # Quoted, Hydra reads backslashes literally except before a quote: those, and a quote itself, are escaped.
    escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped) + "'"


def shell_word(override: str) -> str:
    """Quote an override for the shell only where it needs it (spaces, quotes); `key=[64,32]` stays as it is."""
    if not re.search(r"[\s'\"$`\\!&|;<>()*?]", override):
        return override
    return f'"{override}"' if not re.search(r'["$`\\!]', override) else shlex.quote(override)


def command(report: Report, trial: Trial) -> str:
    """`python run.py <fixed overrides> <the trial's params>`: the trial's config as a single run."""
    keys = {key.lstrip("+~") for key in trial.params}
    fixed = [o for o in report.fixed if o.split("=", 1)[0].lstrip("+~") not in keys]
    overrides = fixed + [f"{key}={value_text(value)}" for key, value in trial.params.items()]
    return " ".join(["python run.py", *map(shell_word, overrides)])


def number(value: float) -> str:
    if math.isnan(value):
        return ""
    if value.is_integer() and abs(value) < 1e15 and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Report) -> str:
    """The summary: what was searched, counts by state, the trial table, the best config as a command line."""
    counts = {}
    for t in report.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    states = sorted(counts, key=lambda s: (STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER), s))
    objectives = ", ".join(f"{metric} ({direction})" for metric, direction in report.objectives)
    sweep = report.parent.data.tags.get("pipeline.sweep", report.parent.info.run_name)
    lines = ["# Sweep summary", "", f"Sweep: `python run.py -m {sweep}` (parent run {report.parent.info.run_id})",
             f"Strategy: {report.strategy}; objective{'s' if len(report.objectives) > 1 else ''}: {objectives}",
             f"Trials: {len(report.trials)}" + (" (" + ", ".join(f"{counts[s]} {s}" for s in states) + ")"
                                                if states else ""), ""]
    if report.space:
        lines += ["Search space:", "", "```yaml", report.space.rstrip(), "```", ""]

    chosen = best(report)
    front = chosen if isinstance(chosen, list) else [chosen] if chosen else []
    marked = {t.run_id for t in front}
    mark = " (pareto)" if len(report.objectives) > 1 else " (best)"
    metrics = [metric for metric, _ in report.objectives]
    params = list(dict.fromkeys(key for t in report.trials for key in t.params))
    tests = sorted({key for t in report.trials for key in t.tests})
    header = ["#", "run", "state", *metrics, *params, *tests, "run_id", "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in report.trials:
        row = [t.number, t.name + (mark if t.run_id in marked else ""), t.state,
               *(number(t.values[m]) for m in metrics),
               *(value_text(t.params[k]) if k in t.params else "" for k in params),
               *(number(t.tests.get(k, math.nan)) for k in tests), t.run_id, t.error]
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")

    failed = [t for t in report.trials if t.state in ("FAIL", "FAILED", "KILLED")]
    if failed:
        lines += ["", f"Failed jobs ({len(failed)}):", ""]
        lines += [f"- {t.name}: {t.error or t.state}" for t in failed]
    lines.append("")
    if not front:
        lines.append("No trial finished with a value of every objective: there is no best config yet.")
    else:
        title = (f"Pareto front ({len(front)} trials), each as a single run:" if len(report.objectives) > 1
                 else f"Best trial #{front[0].number} ({front[0].name}), as a single run:")
        lines += [title, "", "```bash"]
        for t in front:
            values = ", ".join(f"{m} {number(t.values[m])}" for m in metrics)
            lines += [f"# trial {t.number}: {values}", command(report, t)]
        lines.append("```")
    return "\n".join(lines) + "\n"


def plots(report: Report, folder: Path) -> list[Path]:
    """The plots that apply: history always, importance with enough trials, the Pareto front for 2 objectives."""
    from pipeline.viz.search_plots import plot_history, plot_importance, plot_pareto

    made = [plot_history(report, folder / "history.png"), plot_importance(report, folder / "importance.png"),
            plot_pareto(report, folder / "pareto.png")]
    return [path for path in made if path is not None]


REGIONS = "evaluation/decision_regions.npz"  # what a classifier on 2-D inputs logs (tasks/classify.py)
MAX_PANELS = 16


def decision_region_panels(client, report: Report, folder: Path) -> list[tuple[str, dict]]:
    """(child name, its decision regions) of the first MAX_PANELS finished children that logged them (classifiers
    on the 2-D toy sets); none for any other sweep."""
    panels = []
    for t in report.trials:
        if len(panels) == MAX_PANELS:
            break
        if t.state not in DONE or REGIONS not in {a.path for a in client.list_artifacts(t.run_id, "evaluation")}:
            continue
        from pipeline.viz.decision_regions import load_regions  # here: it imports torch (~2 s), seldom needed

        panels.append((t.name, load_regions(client.download_artifacts(t.run_id, REGIONS, str(folder)))))
    return panels


def decision_region_plot(client, report: Report, folder: Path) -> list[Path]:
    """sweep/decision_regions.png: every child's decision regions side by side, when they logged them."""
    with tempfile.TemporaryDirectory() as downloads:
        panels = decision_region_panels(client, report, Path(downloads))
    if not panels:
        return []
    from pipeline.viz.decision_regions import plot_region_panels

    finished = sum(t.state in DONE for t in report.trials)
    shown = f" (the first {MAX_PANELS} of {finished})" if len(panels) == MAX_PANELS < finished else ""
    return [plot_region_panels(panels, folder / "decision_regions.png", f"decision regions of the sweep's runs{shown}")]


def log_report(client, parent_run_id: str, report: Report | None = None) -> str:
    """Write sweep/summary.md and the plots on the parent run; return the summary. `report`: the parent's, when
    already collected."""
    report = report or collect(client, parent_run_id)
    text = markdown(report)
    client.log_text(parent_run_id, text, "sweep/summary.md")
    tracking.log_generated_files(
        parent_run_id, "sweep", lambda folder: plots(report, folder) + decision_region_plot(client, report, folder),
        client)
    return text
