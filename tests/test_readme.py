"""The README's promises that code can check: its Python API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section):
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks("Python API")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert "float test accuracy" in out and "instructions/step in QEMU" in out
    assert (tmp_path / "runs/api/m4/tflm/model.tflite").is_file()
