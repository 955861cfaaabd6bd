"""scripts/fuzz.py: random networks, golden model against Verilator under random stalls."""

import json

import numpy as np

from cosparse.compiler import ir

from .helpers import load_script



def _script():
    return load_script("fuzz")


def test_generator_draws_every_kind_of_network():
    fz = _script()
    seen = {"modes": set(), "boards": set(), "layers": set(), "threshold": 0, "logic": 0,
            "no_k": 0, "strided": 0}
    for seed in range(20):
        case = fz.build_case(seed)
        net = case["net"]
        net.specs()  # valid
        assert case["x"].shape[1:] == net.input.shape and 0 <= case["stall"] <= 0.5
        again = fz.build_case(seed)  # a seed is the whole case
        assert again["spec"] == case["spec"] and np.array_equal(again["x"], case["x"])
        seen["modes"].add(case["mode"])
        seen["boards"].add(case["board"])
        seen["layers"] |= {type(layer).__name__ for layer in net.layers}
        seen["threshold"] += len(case["threshold"])
        specs = net.specs()
        for i, layer in enumerate(net.layers):  # the threshold rule's bound, 2k
            if layer.name in case["threshold"]:
                n = specs[i].shape[-1] if isinstance(layer, ir.LocalKWTA) else \
                    int(np.prod(specs[i].shape))
                assert layer.max_winners == min(n, 2 * layer.k)
        seen["logic"] += any(f.in_logic for f in case["folding"].layers.values())
        seen["no_k"] += any(item[0] in ("conv", "linear") and item[-1] is None
                            if item[0] == "linear" else item[0] == "conv" and item[3] is None
                            for item in case["spec"])
        seen["strided"] += any(item[0] == "conv" and item[4] != (1, 1) for item in case["spec"])
    assert seen["modes"] == {"sparse-sparse", "sparse-weights", "dense"}
    assert seen["boards"] == {None, "icebreaker", "ulx3s-85f"}
    assert {"OverlayConv", "OverlayLinear", "MaxPool", "LocalKWTA", "GlobalKWTA", "Flatten",
            "ZeroSkip", "Densify"} <= seen["layers"]
    assert min(seen["threshold"], seen["logic"], seen["no_k"], seen["strided"]) > 0, seen


def test_short_fuzz_run_is_bit_exact(tmp_path, capsys):
    fz = _script()
    out = tmp_path / "fuzz.json"
    assert fz.main(["--networks", "1", "--seed", "1000", "--json", str(out),
                    "--build-root", str(tmp_path / "build")]) == 0
    res = json.loads(out.read_text())
    assert res["failures"] == [] and len(res["cases"]) == 1
    assert all(c["exact"] and c["mismatches"] == 0 for c in res["cases"])
    assert "1 networks, 0 failed" in capsys.readouterr().out


def test_a_failure_names_its_seed_and_exits_1(tmp_path, capsys, monkeypatch):
    fz = _script()

    def wrong(case, root):  # a simulator that got one output wrong
        return {"exact": False, "mismatches": 1, "predicted_interval": 0.0}

    monkeypatch.setattr(fz, "run_case", wrong)
    assert fz.main(["--networks", "1", "--seed", "7"]) == 1
    out = capsys.readouterr().out
    assert "reproduce: python3 scripts/fuzz.py --networks 1 --seed 7" in out
    assert "1 networks, 1 failed (seeds 7)" in out
