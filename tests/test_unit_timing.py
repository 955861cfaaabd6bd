"""scripts/unit_timing.py: one small unit placed and routed alone, its Fmax and critical path."""

import importlib.util
from pathlib import Path

from amaranth.hdl import signed

from cosparse.hw.adapters import Narrow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "unit_timing.py"


def _script():
    spec = importlib.util.spec_from_file_location("unit_timing", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
