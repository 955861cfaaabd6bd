"""scripts/routed_nets.py: a routed build's longest nets, per unit."""

import json

import pytest

from .helpers import load_script


def _report(tmp_path, nets):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"fmax": {}, "detailed_net_timings": nets}))
    return path


def _net(name, driver, *delays):
    return {"net": name, "driver": driver, "port": "Q", "event": "posedge clk", "sources": [],
            "endpoints": [{"cell": f"sink{i}", "port": "D", "event": "posedge clk",
                           "delay": [d / 2, d]} for i, d in enumerate(delays)]}


def test_longest_nets_per_unit(tmp_path, capsys):
    rn = load_script("routed_nets")
    nets = [_net("a", "link.core.s8_overlayengine.banks.x_LUT4_Z", 1.0, 4.5),
            _net("b", "link.core.s8_overlayengine.drain.y", 3.5),
            _net("c", "link.core.s0_densewindow.z", 2.0, 0.5),
            _net("d", "top_level_cell", 6.0),
            _net("unrouted", "link.core.s0_densewindow.w")]
    path = _report(tmp_path, nets)
    assert sorted(rn.net_arrivals(json.loads(path.read_text()))) == [
        (2.0, "c", "link.core.s0_densewindow.z", 2),
        (3.5, "b", "link.core.s8_overlayengine.drain.y", 1),
        (4.5, "a", "link.core.s8_overlayengine.banks.x_LUT4_Z", 2),
        (6.0, "d", "top_level_cell", 1)]
    assert rn.unit_of("link.core.s8_overlayengine.banks.x", 3) == "link.core.s8_overlayengine"
    assert rn.unit_of("link.core.cell", 3) == "link.core" and rn.unit_of("cell", 3) == "(top)"
    assert rn.main([str(path), "--over", "3", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 nets; 3 with a sink over 3.0 ns" in out
    assert "     2  link.core.s8_overlayengine\n" in out and "     1  (top)\n" in out
    longest = out.split("the 2 longest:")[1].split("\n")[1:3]
    assert "6.00 ns" in longest[0] and " d" in longest[0] and "4.50 ns" in longest[1]


def test_a_report_without_net_timings_is_refused(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"fmax": {}}))
    with pytest.raises(SystemExit) as e:
        load_script("routed_nets").main([str(path)])
    assert e.value.code == 2 and "--detailed-timing-report" in capsys.readouterr().err
