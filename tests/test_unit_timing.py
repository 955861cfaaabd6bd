"""scripts/unit_timing.py: one small unit placed and routed alone, its Fmax and critical path."""

import json
import tempfile
from pathlib import Path

from amaranth.hdl import signed

from cosparse.hw.adapters import Narrow

from .helpers import load_script



def _script():
    return load_script("unit_timing")


def test_small_unit_fmax_and_critical_path(tmp_path):
    ut = _script()
    res = ut.place_and_route("narrow", lambda: Narrow(12, width_in=4, width_out=2,
                                                      elem_shape=signed(8)), tmp_path, 100)
    assert "error" not in res
    assert 50 < res["fmax_mhz"] < 1000 and res["luts"] > 0 and res["ffs"] > 4 * 8
    path = res["critical_path"]
    assert path["from"] and path["to"]
    # the reported path is the one that sets Fmax
    assert abs(1000 / res["fmax_mhz"] - path["ns"]) < 1.0


def test_unknown_unit_is_refused(capsys):
    assert _script().main(["--only", "no_such_unit"]) == 2
    assert "unknown unit(s) no_such_unit" in capsys.readouterr().err


def test_keep_builds_in_the_folder_and_no_temporary_one(tmp_path, monkeypatch):
    """--keep DIR builds in DIR (no temporary folder); without it, a temporary folder
    that is gone afterwards."""
    ut = _script()
    seen = []

    absorbs = []

    def fake(name, factory, workdir, mhz, router="router1", absorb=True):
        seen.append(Path(workdir))
        absorbs.append(absorb)
        return {"fmax_mhz": 50.0, "luts": 1, "ffs": 1, "seconds": 0, "critical_path": {}}

    made = []
    real_tmp = tempfile.TemporaryDirectory

    def tracked(*args, **kwargs):
        made.append(1)
        return real_tmp(*args, **kwargs)

    monkeypatch.setattr(ut, "place_and_route", fake)
    monkeypatch.setattr(ut.tempfile, "TemporaryDirectory", tracked)
    assert ut.main(["--only", "narrow", "-o", str(tmp_path / "o"),
                    "--keep", str(tmp_path / "k")]) == 0
    assert seen == [tmp_path / "k"] and not made
    assert ut.main(["--only", "narrow", "-o", str(tmp_path / "o")]) == 0
    assert made == [1] and not seen[1].exists()
    assert json.loads((tmp_path / "o" / "unit_timing.json").read_text())["narrow"]["fmax_mhz"] == 50
    # the board flow's pass on yosys's netlist unless --no-absorb
    assert ut.main(["--only", "narrow", "-o", str(tmp_path / "o"), "--no-absorb"]) == 0
    assert absorbs == [True, True, False]
