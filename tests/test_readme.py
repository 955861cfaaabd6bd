"""The README's promises: its commands and its Python API example run as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CI = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_ci_runs_the_readme_test_command():
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S).group(1).splitlines()
    test_cmd = first[1].split("#")[0].strip()
    assert "pytest" in test_cmd and test_cmd in CI.read_text()
    assert "cosparse demo" in first[0]


def test_the_api_example_runs(tmp_path):
    """Every line of the example but the bitstream build (about 8 minutes; the board tests
    build bitstreams through the same ``Accelerator.build``)."""
    text = README.read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    lines = block.splitlines()
    build = [ln for ln in lines if "acc.build()" in ln]
    assert len(build) == 1
    code = "\n".join(ln for ln in lines if ln not in build)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "accuracy" in run.stdout and "cycles per inference" in run.stdout
    assert (tmp_path / "digits-ulx3s" / "manifest.json").exists()
