"""benchmarks/search.py runs, in its tiny mode, as the README's command would: real searches in subprocesses, their
table printed and their raw results saved."""
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "search.py"


def test_tiny_search_benchmark_prints_both_strategies_and_saves_monotone_curves(tmp_path):
    saved = tmp_path / "r.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(saved)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("digits: 3 trials of 1 epoch(s) per search", 1)[1]
    lines = table.splitlines()[1:]  # after the title: the header, a row per strategy, the differences
    assert lines[0].split()[:3] == ["strategy", "best", "val"], table
    rows = {line.split()[0]: line for line in lines[1:] if line.count("±") == 6}
    assert set(rows) == {"evolution", "random"}, result.stdout
    assert "evolution - random: best val" in table

    searches = json.loads(saved.read_text())["searches"]
    assert {(row["dataset"], row["strategy"], row["seed"]) for row in searches} == {
        ("digits", "evolution", 0), ("digits", "random", 0)}
    for row in searches:
        curve = row["best_so_far"]
        assert len(curve) == 3 == len(row["states"])  # one value per trial, in trial order
        values = [value for value in curve if value is not None]  # None: no trial had finished yet
        assert values and all(later >= earlier for earlier, later in zip(values, values[1:])), curve
        assert 0.0 <= row["best_val"] <= 1.0 and row["best_val"] == values[-1]
        assert 0.0 <= row["best_test"] <= 1.0 and row["best_params"] > 0 and row["wall_s"] > 0
