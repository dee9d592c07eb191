"""The README's Python API example runs as printed."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_example_runs(capsys):
  text = README.read_text()
  block = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S).group(1)
  assert len([l for l in block.splitlines() if l.strip()]) <= 10
  exec(compile(block, "README.md", "exec"), {})
  out = capsys.readouterr().out.splitlines()
  assert 0.0 <= float(out[0]) <= 1.0
  assert out[1].startswith("accuracy ") and 0.0 <= float(out[1].split()[1]) <= 1.0
