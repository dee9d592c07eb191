"""The command line as a user runs it: every command through `cli.main`, bad
input as one `error:` line and exit status 2, never a traceback."""
import json
import os

import numpy as np
import pytest

from maml_jax import cli
from maml_jax.commands import COMMANDS

NAMES = [c.replace("_", "-") for c in COMMANDS]


def test_every_command_is_reachable_through_build_parser():
  sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
  assert sorted(sub.choices) == sorted(NAMES)
  for name, parser in sub.choices.items():
    assert parser.get_default("func") is not None, f"{name} dispatches nowhere"


@pytest.mark.parametrize("name", NAMES)
def test_every_command_answers_help_through_main(name, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([name, "--help"])
  assert e.value.code == 0
  assert f"usage: run.py {name}" in capsys.readouterr().out


def _error(argv, capsys) -> str:
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
  return err.splitlines()[-1]


@pytest.mark.parametrize("argv, says", [
    (["--shots", "0"], "shots=0 must be >= 1"),
    (["--model", "resnet"], "model='resnet' is not one of"),
    (["--dataset", "imagenet"], "dataset='imagenet': 'imagenet' is not one of"),
    (["--dataset", "omniglot", "--data-dir", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
    (["--time-budget", "-1"], "time_budget=-1.0 must be a finite number of minutes >= 0"),
    (["--precision", "fp8"], "precision='fp8' is not one of float32, bfloat16"),
])
def test_meta_train_bad_input_is_one_error_line(argv, says, tmp_path, capsys):
  err = _error(["meta-train", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--no-progress"] + argv, capsys)
  assert says in err
  assert not (tmp_path / "w" / "config.json").exists()   # the corrected command is not refused


def test_evaluate_bad_input_is_one_error_line(tmp_path, capsys):
  assert "no meta-train run there" in _error(["evaluate", "--workdir", str(tmp_path / "nowhere")], capsys)


def test_check_backbone_missing_zip_is_one_error_line(tmp_path, capsys):
  assert "no such file" in _error(["check-backbone", "--zip", str(tmp_path / "x.zip")], capsys)


def test_evaluate_and_adapt_meta_test_give_identical_accuracies(tmp_path, capsys):
  """`evaluate` and `adapt --dataset meta-test` share one evaluator: on the same
  episodes (the run's meta-test seed and query count) every accuracy is equal."""
  from maml_jax.evaluate import TEST_SEED
  from maml_jax.train import evaluate_workdir
  w = str(tmp_path / "run")
  assert cli.main(["meta-train", "--preset", "tiny", "--workdir", w, "--no-progress"]) == 0
  cfg = json.load(open(os.path.join(w, "config.json")))
  via_evaluate = evaluate_workdir(w, episodes=10, progress=False)
  out = str(tmp_path / "adapt")
  assert cli.main(["adapt", "--workdir", w, "--dataset", "meta-test", "--trials", "10", "--seed", str(TEST_SEED),
                   "--queries", str(cfg["eval_queries"]), "--out", out]) == 0
  via_adapt = json.load(open(os.path.join(out, "metrics.json")))["accuracy"]
  np.testing.assert_array_equal(via_adapt["per_episode"], via_evaluate["per_episode"])
  assert via_adapt["mean"] == via_evaluate["test_accuracy"] and via_adapt["ci95"] == via_evaluate["test_ci95"]
  assert len(via_evaluate["per_episode"]) == 10 and np.isfinite(via_evaluate["test_ci95"])


@pytest.fixture
def a_file(tmp_path):
  f = tmp_path / "F"
  f.write_text("a user's file\n")
  return f


@pytest.mark.parametrize("argv, option", [
    (["meta-train", "--workdir", "{F}"], "--workdir"),
    (["meta-train", "--workdir", "{F}/sub"], "--workdir"),
    (["prepare-smi", "--images", "{d}", "--labels", "{d}/l.csv", "--out", "{F}"], "--out"),
    (["prepare-smi", "--images", "{d}", "--labels", "{d}/l.csv", "--out", "{d}/o", "--preview", "{F}"],
     "--preview"),
    (["experiment", "--table", "3", "--out", "{F}"], "--out"),
    (["experiment", "--table", "3", "--out", "{F}/sub"], "--out"),
    (["classify", "--support", "{d}", "--query", "{d}", "--out", "{F}"], "--out"),
    (["predict", "--model", "{d}/m", "--image", "{d}/x.png", "--csv", "{F}"], "--csv"),
    (["predict", "--model", "{d}/m", "--image", "{d}/x.png", "--csv", "{F}/sub.csv"], "--csv"),
    (["adapt", "--workdir", "{d}", "--out", "{F}"], "--out"),
    (["meta-train", "--workdir", "/sys/maml_jax_run"], "--workdir"),
])
def test_an_output_path_that_is_a_file_or_unwritable_is_refused_and_the_file_kept(argv, option, a_file, tmp_path,
                                                                                   capsys):
  argv = [a.format(F=a_file, d=tmp_path) for a in argv]
  before = sorted(os.listdir(tmp_path))
  line = _error(argv, capsys)
  assert line.startswith(f"error: {option} ") and ("file" in line or "cannot write" in line), line
  assert a_file.read_text() == "a user's file\n" and sorted(os.listdir(tmp_path)) == before


def test_output_folders_that_hold_files_are_refused_without_overwrite(tmp_path):
  from maml_jax import io as files
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "notes.txt").write_text("x")
  with pytest.raises(files.OutputExistsError, match="not empty .pass --overwrite"):
    files.check_output_dir(str(tmp_path / "full"), "--save")
  files.check_output_dir(str(tmp_path / "full"), "--save", overwrite=True)
  files.check_output_dir(str(tmp_path / "full"), "--out", ours=("notes.txt",))   # its own earlier output
  with pytest.raises(files.OutputExistsError, match="the file exists .pass --overwrite"):
    files.check_output_file(str(tmp_path / "full" / "notes.txt"), "--csv")
  with pytest.raises(files.OutputPathError, match="is a folder"):
    files.check_output_file(str(tmp_path / "full"), "--csv", overwrite=True)
  files.check_output_dir(str(tmp_path / "new" / "deeper"), "--out")   # missing folders are made later
