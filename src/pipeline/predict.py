"""python -m pipeline.predict [--run RUN_ID] NAME ...: classify names with a model logged by a data=chars run,
printing the top languages with their probabilities."""
import argparse
import os
import sys

from pipeline.errors import ConfigError, DataError, first_line


def tracking_uri(given: str | None) -> str:
    """The same store run.py writes to: --tracking-uri, MLFLOW_TRACKING_URI, or mlflow.db in the project root."""
    root = os.environ.get("PIPELINE_ROOT", ".")
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath(root)}/mlflow.db"


def latest_names_run(client) -> str:
    """The newest finished run trained on names (one with a vocabulary next to its model)."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, "attributes.status = 'FINISHED' and params.`data.name` = 'chars'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        raise ConfigError(f"no finished data=chars run in {client.tracking_uri}: train one first "
                          "(python run.py model=lstm data=chars) or give --run RUN_ID")
    return runs[0].info.run_id


def load(client, run_id: str):
    """The run's model (eval mode) and its data description (class names, vocabulary)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        description = mlflow.artifacts.load_dict(f"runs:/{run_id}/data/description.json")
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    except (MlflowException, OSError) as error:
        raise ConfigError(f"run {run_id} in {client.tracking_uri} has no usable model: "
                          f"{first_line(error)}") from None
    if "alphabet" not in description:
        raise ConfigError(f"run {run_id} was trained on data={description.get('data')}; predict classifies "
                          "names and needs a run trained on data=chars")
    return model.eval(), description


def top_classes(model, description: dict, names: list[str], k: int):
    """[(name, [(class name, probability), ...]), ...]: each name's k most likely classes."""
    import torch

    from pipeline.data.vocabulary import CharVocabulary

    vocabulary = CharVocabulary(description["alphabet"], description["fold_ascii"], description["max_length"])
    tokens = vocabulary.encode_all(names, [f"name {i + 1}" for i in range(len(names))])
    with torch.no_grad():
        probabilities = torch.softmax(model(tokens), dim=-1)
    best = probabilities.topk(min(k, probabilities.shape[1]), dim=-1)
    classes = description["class_names"]
    return [(name, [(classes[i], p) for p, i in zip(values.tolist(), indices.tolist())])
            for name, values, indices in zip(names, best.values, best.indices)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", help="names to classify, e.g. Dostoevsky Nakamura O'Neill")
    parser.add_argument("--run", help="MLflow run id of a data=chars run (default: the newest finished one)")
    parser.add_argument("--top", type=int, default=3, help="how many languages to show per name (default 3)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top={args.top}: must be an integer >= 1")
    try:
        from pipeline import tracking

        client = tracking.client(tracking_uri(args.tracking_uri))
        run_id = args.run or latest_names_run(client)
        model, description = load(client, run_id)
        results = top_classes(model, description, args.names, args.top)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"run {run_id}")
    width = max(len(name) for name in args.names)
    for name, ranked in results:
        print(f"{name:<{width}}  " + "  ".join(f"{language} {p:.1%}" for language, p in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
