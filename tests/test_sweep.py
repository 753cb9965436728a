"""`python run.py -m ...`: one MLflow parent run per sweep, one child per job, a summary on the parent."""
import mlflow
import pytest

from conftest import all_runs

SWEEP = ["-m", "optimizer=sgd,adam", "regularization=none,dropout", "trainer.max_epochs=2"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_makes_a_parent_with_four_named_children_and_a_summary(run_py, tracking_uri, launcher):
    # joblib runs jobs in parallel processes on a brand-new database: the schema must be created once first.
    result = run_py(*SWEEP, f"hydra/launcher={launcher}")
    assert result.returncode == 0, result.stderr[-3000:]

    client, runs = all_runs(tracking_uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.info.run_name for c in children} == {
        f"optimizer={o} regularization={r}" for o in ("sgd", "adam") for r in ("none", "dropout")}

    best = max(children, key=lambda c: c.data.metrics["val/acc_best"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/acc_best"] == pytest.approx(best.data.metrics["val/acc_best"])
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")
    for child in children:
        assert child.info.run_name in summary and child.info.run_id in summary
    assert f"{best.info.run_name} (best)" in summary
    # the convergence comparison: one PNG with every child's validation curves
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]
    assert "sweep/curves.png" in artifacts
    png = client.download_artifacts(parent.info.run_id, "sweep/curves.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
