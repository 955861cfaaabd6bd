"""The installed package holds every subpackage of the source tree."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    # (tomllib is Python 3.11+; the project supports 3.10: read the two settings plainly)
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(ast.literal_eval(re.search(r"^packages = (\[.*?\])", text, re.S | re.M).group(1)))
    dirs = re.search(r"^package-dir = \{(.*?)\}", text, re.M).group(1)
    package_dir = dict(re.findall(r'"([\w.]+)" = "(\w+)"', dirs))
    assert package_dir and listed
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed, f"in the tree, not in pyproject: {sorted(found - listed)}; " \
                            f"listed, not in the tree: {sorted(listed - found)}"
