"""python -m pipeline.explain --run RUN_ID: explain a trained image classifier (saliency, integrated gradients,
Grad-CAM on chosen test images), check the explanations (deletion test, weight-randomisation sanity check), print
the results, write them beside the figure and log both back to the run in MLflow."""
import argparse
import sys
from pathlib import Path

from pipeline.errors import ConfigError, DataError, first_line

NOT_EXPLAINED = "explain works on image classifiers (task=classify on image data: digits, mnist, fashion_mnist, cifar10)"


def load_run(client, run_id: str):
    """The run's recorded config and its logged model's weights in a model rebuilt from that config (a real
    nn.Module, whose layers Grad-CAM and re-initialisation need; the logged model may be a traced graph)."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from pipeline.resume import recorded_config

    try:
        client.get_run(run_id)
        cfg = recorded_config(client, run_id)
    except (MlflowException, OSError) as error:
        raise ConfigError(f"run {run_id} in {client.tracking_uri}: no such run or no recorded config "
                          f"({first_line(error)})") from None
    cfg.resume = None
    task = str(cfg.get("task", {}).get("_target_", "pipeline.tasks.classify.Classifier"))
    shape = cfg.data.get("input_shape")
    if not task.endswith(".Classifier"):
        raise ConfigError(f"run {run_id} trained task={task.split('.')[-2]}: {NOT_EXPLAINED}")
    if "vocab_size" in cfg.data or shape is None or len(shape) != 3:
        raise ConfigError(f"run {run_id} trained on data={cfg.data.name}, not images: {NOT_EXPLAINED}")
    try:
        logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    except (MlflowException, OSError) as error:
        raise ConfigError(f"run {run_id} has no loadable logged model: {first_line(error)}") from None
    return cfg, logged


def rebuilt_model(cfg, datamodule, logged):
    from pipeline.train import build_task

    model = build_task(cfg, datamodule).model
    model.load_state_dict(logged.state_dict())
    return model.eval()


def table(results: dict) -> str:
    methods = [key.removeprefix("sanity_spearman_") for key in results if key.startswith("sanity_spearman_")]
    lines = [f"test images {results['images']} (of {results['test_images']}); accuracy {results['accuracy']:.4f}; "
             f"masking a random {results['fraction']:.0%} of pixels: {results['accuracy_random_mask']:.4f}",
             f"{'method':<24}{'acc masked':>11}{'drop vs random':>16}{'re-init drop':>14}{'sanity rho':>12}"]
    lines += [f"{method:<24}{results[f'accuracy_masked_{method}']:>11.4f}{results[f'deletion_drop_{method}']:>+16.4f}"
              f"{results[f'deletion_drop_{method}_reinitialised']:>+14.4f}"
              f"{results[f'sanity_spearman_{method}']:>12.3f}" for method in methods]
    lines.append(f"{'control: brightest 10%':<24}{results['accuracy_masked_brightest']:>11.4f}"
                 f"{results['control_drop_brightest']:>+16.4f}  (masks the ink; asks nothing of the model)")
    lines.append("drop vs random: accuracy lost beyond random masking (higher: the maps point at what the model "
                 "needs); re-init drop: the same with a re-initialised model's maps; sanity rho: Spearman of trained "
                 "vs re-initialised maps (near 0 passes)")
    if isinstance(results.get("grad_cam"), str):
        lines.append(f"grad_cam: {results['grad_cam']}")
    if "views" in results:
        lines.append(f"explained: {results['views']}")
    return "\n".join(lines)


def log_back(client, run_id: str, results: dict, files: list[Path]) -> None:
    """Metrics explain/<name> and the files under explanations/ on the explained run."""
    from pipeline import tracking

    for key, value in results.items():
        if isinstance(value, float) and key != "fraction":
            client.log_metric(run_id, f"explain/{key}", value)
    tracking.log_files(run_id, files, "explanations", client)


def main(argv: list[str] | None = None) -> int:
    from pipeline.predict import tracking_uri

    parser = argparse.ArgumentParser(prog="python -m pipeline.explain", description=" ".join(__doc__.split()))
    parser.add_argument("--run", required=True, help="MLflow run id of an image classifier")
    parser.add_argument("--images", default="0,1,2,3", help="test image indices to draw (default 0,1,2,3)")
    parser.add_argument("--sample", type=int, default=2000,
                        help="test images (a seeded sample) for the deletion test (default 2000)")
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients' steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, random mask and re-init")
    parser.add_argument("--out", help="folder for the figure and JSON (default outputs/explanations/<run id>)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = parser.parse_args(argv)
    try:
        shown = [int(index) for index in args.images.split(",") if index.strip()]
    except ValueError:
        parser.error(f"--images={args.images}: give test image indices, e.g. 0,1,2,3")
    if args.sample < 1 or args.steps < 1:
        parser.error("--sample and --steps must be integers >= 1")
    try:
        import torch

        from pipeline import tracking
        from pipeline.train import build_data
        from pipeline.viz.explanations import explanation_files

        client = tracking.client(tracking_uri(args.tracking_uri))
        cfg, logged = load_run(client, args.run)
        if cfg.get("threads"):
            torch.set_num_threads(cfg.threads)
        datamodule = build_data(cfg)
        model = rebuilt_model(cfg, datamodule, logged)
        folder = Path(args.out or Path("outputs") / "explanations" / args.run)  # outputs/: git ignores it
        folder.mkdir(parents=True, exist_ok=True)
        results, files = explanation_files(model, datamodule, folder, shown, args.sample, args.steps, args.seed,
                                           cfg.viz.dpi if "viz" in cfg else 110)
        log_back(client, args.run, results, files)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"run {args.run}")
    print(table(results))
    print(f"wrote {', '.join(str(path) for path in files)}; logged to the run (metrics explain/*, "
          "artifacts explanations/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
