"""benchmarks/throughput.py runs, in its tiny mode, as the README's command would, so it cannot rot unseen."""
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "throughput.py"
LINE = re.compile(r"(\w+): plain (\S+) img/s \((\S+) s/epoch\), pipeline (\S+) img/s \((\S+) s/epoch\), "
                  r"ratio pipeline/plain (\S+)")
DIGITS_TRAIN = 1257  # 1797 digits less 360 test and 180 validation


def test_tiny_benchmark_prints_a_sane_ratio_per_case():
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {match[1]: [float(n) for n in match.groups()[1:]] for match in LINE.finditer(result.stdout)}
    assert set(rows) == {"digits_mlp", "digits_cnn"}, result.stdout
    for name, (plain_rate, plain_seconds, rate, seconds, ratio) in rows.items():
        assert all(math.isfinite(n) and n > 0 for n in (plain_rate, plain_seconds, rate, seconds, ratio)), name
        # images/s × s/epoch is one epoch's images, for both loops
        assert plain_rate * plain_seconds == pytest.approx(DIGITS_TRAIN, rel=0.02), name
        assert rate * seconds == pytest.approx(DIGITS_TRAIN, rel=0.02), name
        assert ratio == pytest.approx(rate / plain_rate, rel=0.05), name
