"""data=chars and the recurrent models on small names folders generated here in the real layout
(<root>/names/<Language>.txt): vocabulary and folding, stratified splits, packed batches, training each cell
type, the verified download, the predict command and bad input."""
import hashlib
import io
import random
import subprocess
import sys
import zipfile

import mlflow
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import ROOT, all_runs
from pipeline.data.chars import CharNamesDataModule
from pipeline.data.vocabulary import PAD, UNKNOWN, CharVocabulary, fold_to_ascii
from pipeline.errors import ConfigError, DataError
from pipeline.models.recurrent import RecurrentClassifier
from pipeline.train import run
from pipeline.models.building import build_network

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;'-"


def fake_names(language: str, count: int, rng: random.Random) -> list[str]:
    """Names a character model can tell apart: each language has its own ending."""
    ending = {"Alpha": "ov", "Beta": "ez", "Gamma": "aki", "Delta": "sson"}[language]
    stems = {"".join(rng.choice("bdfgklmnprstv") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
             for _ in range(count * 3)}
    return [stem.capitalize() + ending for stem in sorted(stems)[:count]]


def write_names(folder, counts=None, seed=0) -> dict[str, list[str]]:
    counts = counts or {"Alpha": 24, "Beta": 16, "Gamma": 8}
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for language, count in counts.items():
        written[language] = fake_names(language, count, rng)
        (folder / f"{language}.txt").write_text("\n".join(written[language]) + "\n", encoding="utf-8")
    return written


@pytest.fixture
def names_root(tmp_path):
    write_names(tmp_path / "data" / "names")
    return tmp_path / "data"


def chars_config(compose_config, root, *overrides):
    return compose_config("data=chars", f"data.root={root}", "data.download=false", *overrides)


# --- vocabulary -----------------------------------------------------------------------------------------
def test_folding_and_encoding_use_the_fixed_alphabet():
    assert fold_to_ascii("Dvořák Šťastný Núñez") == "Dvorak Stastny Nunez"
    vocabulary = CharVocabulary(ALPHABET, fold_ascii=True, max_length=6)
    assert vocabulary.size == len(ALPHABET) + 2
    assert vocabulary.encode("Ab") == [ALPHABET.index("A") + 2, ALPHABET.index("b") + 2]
    assert vocabulary.encode("Dvořák") == vocabulary.encode("Dvorak")
    assert vocabulary.encode("Aß") == [ALPHABET.index("A") + 2, UNKNOWN]  # ß has no ASCII letter inside
    rows = vocabulary.encode_all(["Ab", "Abcdefgh"])
    assert rows.dtype == torch.long and rows.shape == (2, 6)
    assert rows[0, 2:].eq(PAD).all() and rows[1].ne(PAD).all()  # padded; cut to max_length
    unfolded = CharVocabulary(ALPHABET, fold_ascii=False, max_length=6)
    assert unfolded.encode("Dvořák")[3] == UNKNOWN


def test_a_name_without_any_known_character_is_refused():
    vocabulary = CharVocabulary(ALPHABET)
    with pytest.raises(DataError, match="'日本' has no character of data.alphabet"):
        vocabulary.encode("日本")
    with pytest.raises(ValueError, match="repeated"):
        CharVocabulary("abca")


# --- the datamodule ----------------------------------------------------------------------------------------
def test_classes_are_the_files_and_the_split_is_stratified_and_seeded(names_root, compose_config):
    cfg = chars_config(compose_config, names_root, "data.val_fraction=0.25", "data.test_fraction=0.25")
    module = instantiate(cfg.data)
    module.setup()
    assert module.class_names == ["Alpha", "Beta", "Gamma"] and module.num_classes == 3
    counts = {split: torch.bincount(y, minlength=3).tolist() for split, (_, y) in module.splits.items()}
    assert counts == {"train": [12, 8, 4], "val": [6, 4, 2], "test": [6, 4, 2]}  # every class in proportion
    again = instantiate(cfg.data)
    again.setup()
    assert torch.equal(again.splits["test"][0], module.splits["test"][0])
    other_seed = instantiate(cfg.data, seed=1)
    other_seed.setup()
    assert not torch.equal(other_seed.splits["test"][0], module.splits["test"][0])


def test_repeated_lines_are_dropped_and_a_users_own_languages_work(tmp_path, compose_config):
    folder = tmp_path / "data" / "names"
    write_names(folder, {"Alpha": 6, "Delta": 6})
    with open(folder / "Alpha.txt", "a", encoding="utf-8") as handle:
        handle.write((folder / "Alpha.txt").read_text().splitlines()[0] + "\n\n")  # a repeat and a blank line
    cfg = chars_config(compose_config, tmp_path / "data", "data.val_fraction=0.25", "data.test_fraction=0.25")
    module = instantiate(cfg.data)
    module.setup()
    assert module.class_names == ["Alpha", "Delta"]
    assert sum(len(y) for _, y in module.splits.values()) == 12
    keep = instantiate(cfg.data, deduplicate=False)
    keep.setup()
    assert sum(len(y) for _, y in keep.splits.values()) == 13


def test_a_wrong_class_count_or_vocab_size_in_config_is_a_clear_error(names_root, compose_config):
    cfg = chars_config(compose_config, names_root)
    with pytest.raises(ConfigError, match=r"data.num_classes=18 but .* holds 3 languages \(Alpha, Beta, Gamma\)"):
        instantiate(cfg.data, num_classes=18).setup()
    with pytest.raises(InstantiationException, match="data.vocab_size=10 but data.alphabet has") as raised:
        instantiate(cfg.data, vocab_size=10)
    assert isinstance(raised.value.__cause__, ConfigError)  # what the command line turns into one line


# --- the models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_prediction(cell, bidirectional):
    torch.manual_seed(0)
    model = RecurrentClassifier([12], num_classes=4, vocab_size=60, cell=cell, hidden_size=16, num_layers=2,
                                bidirectional=bidirectional, dropout=0.2, batchnorm=True).eval()
    short = torch.tensor([[5, 6, 7, PAD], [8, 9, 10, 11]])
    long = torch.cat([short, torch.full((2, 8), PAD)], dim=1)
    alone = model(torch.tensor([[5, 6, 7]]))
    with torch.no_grad():
        assert torch.allclose(model(short), model(long), atol=1e-6)
        assert torch.allclose(model(short)[0], alone[0], atol=1e-6)  # the batch's longer name changes nothing
        reversed_order = model(short.flip(0))
        assert torch.allclose(reversed_order.flip(0), model(short), atol=1e-6)


def test_recurrent_models_refuse_image_inputs_clearly():
    with pytest.raises(ValueError, match="needs sequences of token ids"):
        RecurrentClassifier([1, 8, 8], num_classes=3, vocab_size=60)
    model = RecurrentClassifier([8], num_classes=3, vocab_size=60)
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(2, 8))


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_each_cell_type_overfits_a_tiny_names_set(model, names_root, compose_config):
    cfg = chars_config(compose_config, names_root, f"model={model}", "logger=none", "callbacks=none",
                       "trainer.max_epochs=40", "data.batch_size=16", "optimizer.lr=0.01", "threads=1",
                       "+trainer.enable_progress_bar=false")
    metrics = run(cfg, overrides=[])
    assert metrics["train/acc"] >= 0.95, metrics
    assert metrics["test/f1_macro"] == 1.0, metrics  # held-out names too: it learned the endings, not the names
    assert cfg.data.num_classes == 3 and cfg.data.vocab_size == len(ALPHABET) + 2  # filled from the data


def test_class_weighting_weighs_rare_classes_up(names_root, compose_config):
    cfg = chars_config(compose_config, names_root, "data.class_weighting=balanced")
    module = instantiate(cfg.data)
    module.setup()
    counts = module.class_counts().float()
    assert counts.tolist() == [20.0, 12.0, 6.0]  # 48 names less 5 val, 5 test
    weights = module.class_weights()
    assert torch.allclose(weights * counts, (weights * counts)[:1].expand(3))  # 1/frequency: equal class totals
    assert weights.mean().item() == pytest.approx(1.0)
    sqrt = instantiate(cfg.data, class_weighting="sqrt")
    sqrt.setup()
    assert torch.allclose(sqrt.class_weights() * counts.sqrt(), (sqrt.class_weights() * counts.sqrt())[:1].expand(3))
    assert instantiate(cfg.data, class_weighting="none").class_weights() is None


def test_the_loss_uses_the_datas_class_weights(names_root, compose_config):
    import pytorch_lightning as pl

    cfg = chars_config(compose_config, names_root, "model=gru", "data.class_weighting=sqrt")
    module = instantiate(cfg.data)
    module.setup()
    cfg.model.num_classes, cfg.model.vocab_size = 3, 60
    task = instantiate(cfg.task, num_classes=3, model=build_network(cfg.model),
                       optimizer=instantiate(cfg.optimizer))
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=module)
    assert torch.allclose(task.class_weight, module.class_weights())  # the buffer _step's cross-entropy uses


# --- download ----------------------------------------------------------------------------------------------
def names_archive(served, names) -> dict[str, str]:
    buffer = io.BytesIO()
    md5s = {}
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/eng-fra.txt", "unrelated\n")
        for language, lines in names.items():
            content = ("\n".join(lines) + "\n").encode()
            archive.writestr(f"data/names/{language}.txt", content)
            md5s[f"{language}.txt"] = hashlib.md5(content).hexdigest()
    (served / "data.zip").write_bytes(buffer.getvalue())
    return md5s


def test_download_checks_every_names_file_and_moves_the_folder_in_at_once(http_folder, tmp_path, compose_config):
    served, url = http_folder
    staging = write_names(tmp_path / "staging")
    md5s = names_archive(served, staging)
    cfg = compose_config("data=chars", f"data.root={tmp_path}/data", f"data.url={url}data.zip")

    cfg.data.files = {**md5s, "Beta.txt": "0" * 32}  # assigned, not merged: only the three generated files
    bad = instantiate(cfg.data)
    with pytest.raises(DataError, match="checksum mismatch for Beta.txt.*nothing was written"):
        bad.prepare_data()
    assert not (tmp_path / "data" / "names").exists() and not list((tmp_path / "data").iterdir())

    cfg.data.files = md5s
    module = instantiate(cfg.data)
    module.prepare_data()
    module.setup()
    assert sorted(p.name for p in (tmp_path / "data" / "names").iterdir()) == ["Alpha.txt", "Beta.txt", "Gamma.txt"]
    assert module.class_names == ["Alpha", "Beta", "Gamma"]


def test_offline_without_the_folder_says_where_to_put_it(tmp_path, compose_config):
    cfg = compose_config("data=chars", f"data.root={tmp_path}/data", "data.url=http://127.0.0.1:9/data.zip")
    with pytest.raises(DataError, match=r"no <Language>.txt files in .*names and the download failed.*"
                                        "PIPELINE_DATA_DIR"):
        instantiate(cfg.data).prepare_data()


# --- bad input through the command line ---------------------------------------------------------------------
def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    return lines[-1]


def test_empty_folder_non_utf8_file_and_unknown_characters_are_one_line_errors(tmp_path, run_py):
    folder = tmp_path / "data" / "names"
    folder.mkdir(parents=True)
    args = ["model=gru", "data=chars", f"data.root={tmp_path}/data", "data.download=false", "trainer=debug"]
    assert "holds 0 <Language>.txt file(s)" in one_line_error(run_py(*args))

    write_names(folder)
    (folder / "Beta.txt").write_bytes("Núñez\n".encode("latin-1"))
    assert "Beta.txt: line 1 is not UTF-8 (byte 0xfa)" in one_line_error(run_py(*args))

    (folder / "Beta.txt").write_text("Perez\n日本\nLopez\nGomez\n", encoding="utf-8")
    message = one_line_error(run_py(*args))
    assert "Beta.txt:2 '日本' has no character of data.alphabet" in message


def test_recurrent_model_on_image_data_is_a_clear_error(run_py):
    message = one_line_error(run_py("model=lstm", "data=digits", "trainer=debug"))
    assert "model.vocab_size=${data.vocab_size} but data=digits declares no data.vocab_size" in message
    assert "token ids" in message


# --- predict ---------------------------------------------------------------------------------------------
def predict(*args, tracking_uri):
    return subprocess.run([sys.executable, "-m", "pipeline.predict", *args], capture_output=True, text=True,
                          env={"MLFLOW_TRACKING_URI": tracking_uri, "PATH": "/usr/bin:/bin"}, cwd=ROOT,
                          timeout=120)


def test_predict_prints_the_top_three_languages_of_names(names_root, compose_config, tracking_uri):
    cfg = chars_config(compose_config, names_root, "model=lstm", "callbacks=none", "trainer.max_epochs=40",
                       "data.batch_size=16", "optimizer.lr=0.01", "threads=1", "+trainer.enable_progress_bar=false")
    metrics = run(cfg, overrides=["model=lstm"])
    assert metrics["train/acc"] >= 0.95
    (trained,) = all_runs(tracking_uri)[1]

    result = predict("Bakarov", "Lomez", "Dvořáki", tracking_uri=tracking_uri)  # the newest chars run
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Downloading artifacts" not in result.stderr  # no progress bars around the answer
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"run {trained.info.run_id}"
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["Bakarov"][0] == "Alpha" and rows["Lomez"][0] == "Beta" and rows["Dvořáki"][0] == "Gamma"
    for ranked in rows.values():
        assert len(ranked) == 6 and sorted(ranked[0::2]) == ["Alpha", "Beta", "Gamma"]
        probabilities = [float(p.rstrip("%")) for p in ranked[1::2]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(100, abs=0.2)

    explicit = predict("--run", trained.info.run_id, "--top", "1", "Bakarov", tracking_uri=tracking_uri)
    assert explicit.stdout.strip().splitlines()[1].split()[:2] == ["Bakarov", "Alpha"]

    unknown = predict("--run", trained.info.run_id, "日本", tracking_uri=tracking_uri)
    assert unknown.returncode == 2 and "'日本' has no character of data.alphabet" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_predict_without_a_names_run_says_what_to_do(tracking_uri, compose_config):
    result = predict("Smith", tracking_uri=tracking_uri)
    assert result.returncode == 2 and "no finished data=chars run" in result.stderr
    run(compose_config("trainer=debug", "callbacks=none"), overrides=[])  # a digits run: not for names
    (digits,) = all_runs(tracking_uri)[1]
    result = predict("--run", digits.info.run_id, "Smith", tracking_uri=tracking_uri)
    assert result.returncode == 2 and "trained on data=digits" in result.stderr


# --- the default sweep -------------------------------------------------------------------------------------
def test_recurrent_recipe_is_a_default_the_command_line_overrides(compose_config, names_root):
    cfg = chars_config(compose_config, names_root, "model=gru")
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.regularization.dropout > 0
    assert cfg.callbacks.model_checkpoint.monitor == "val/f1_macro" and cfg.task.monitor == "val/f1_macro"
    own = chars_config(compose_config, names_root, "model=gru", "regularization=none", "trainer.gradient_clip_val=null")
    assert own.regularization.dropout == 0 and own.trainer.gradient_clip_val is None
    assert compose_config("model=mlp").trainer.gradient_clip_val is None  # the recipe is the recurrent models' only


def test_model_lstm_data_chars_multirun_runs_the_declared_sweep(names_root, run_py, tracking_uri):
    result = run_py("-m", "model=lstm", "data=chars", f"data.root={names_root}", "data.download=false",
                    "trainer.max_epochs=5", "threads=1", "callbacks.progress_bar=null")
    assert result.returncode == 0, result.stderr[-3000:]

    client, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {c.info.run_name for c in children} == {
        f"model.hidden_size={h} model.num_layers={n}" for h in (64, 128) for n in (1, 2)}
    for child in children:
        assert child.info.status == "FINISHED"
        metrics = child.data.metrics
        assert metrics["test/f1_macro"] >= 0.6, metrics  # each size tells the endings apart (chance: about 1/3)
        assert metrics["val/f1_macro_best"] >= metrics["val/f1_macro"]  # the best epoch, at least the last
        assert "plots/confusion_matrix.png" in [a.path for a in client.list_artifacts(child.info.run_id, "plots")]
    (best,) = [c for c in children if c.info.run_id == parent.data.tags["best_run_id"]]
    assert best.data.metrics["val/f1_macro_best"] == max(c.data.metrics["val/f1_macro_best"] for c in children)
    assert parent.data.metrics["best/test/f1_macro"] == pytest.approx(best.data.metrics["test/f1_macro"])
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")
    # The table ranks by the recipe's objective, then lists the swept values and the test metrics.
    assert ("| # | run | state | val/f1_macro_best | model.hidden_size | model.num_layers | test/acc | test/f1_macro "
            "| test/loss |") in summary
