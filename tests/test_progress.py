"""Progress output: plain summary lines when stderr is not a terminal."""
import io

from maml_jax.data import progress as pg


def test_a_log_gets_a_few_lines_not_a_bar(monkeypatch):
  monkeypatch.setattr(pg, "is_terminal", lambda: False)
  bar = pg.progress(total=100, desc="meta-train", unit="step")
  assert isinstance(bar, pg.LogProgress)
  buf = io.StringIO()
  bar.stream = buf
  for i in range(100):
    bar.update(1)
    bar.set_postfix({"loss": f"{1 / (i + 1):.3f}"})
  bar.close()
  lines = buf.getvalue().splitlines()
  assert 3 <= len(lines) <= 5 and "\r" not in buf.getvalue()   # quarters and the end, no carriage returns
  assert lines[-1].startswith("meta-train: 100/100 step in") and lines[-1].endswith("loss=0.010 (done)")


def test_iterating_and_disabling(monkeypatch, capsys):
  monkeypatch.setattr(pg, "is_terminal", lambda: False)
  assert list(pg.progress(range(8), desc="episodes")) == list(range(8))
  err = capsys.readouterr().err
  assert err.splitlines()[0] == "episodes: started (8 it)" and "8/8 it" in err.splitlines()[-1]
  assert list(pg.progress(range(3), disable=True)) == [0, 1, 2]
  assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
  monkeypatch.setattr(pg, "is_terminal", lambda: True)
  bar = pg.progress(total=3, desc="x")
  assert type(bar).__name__ == "tqdm"
  bar.close()


def test_the_tqdm_calls_the_project_makes_work_on_log_lines(monkeypatch, capsys):
  monkeypatch.setattr(pg, "is_terminal", lambda: False)
  bar = pg.progress(total=4, desc="grid", unit="cell")
  bar.set_postfix_str("meta/scratch 5-shot #0")
  bar.set_description("grid [SYNTHETIC data]")
  bar.update(4)
  bar.write("a note")
  bar.close()
  err = capsys.readouterr().err.splitlines()
  assert err[-2] == "a note" and err[-1].startswith("grid [SYNTHETIC data]: 4/4 cell in")
  assert err[-1].endswith("meta/scratch 5-shot #0 (done)")
