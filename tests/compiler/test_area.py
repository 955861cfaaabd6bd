"""The area model against yosys: each unit's LUT estimate and its measured count."""

import numpy as np
import pytest
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from cosparse.boards.bitstream import synth_unit
from cosparse.compiler import zoo
from cosparse.compiler.area import core_luts, unit_luts
from cosparse.compiler.folding import Folding, LayerFold
from cosparse.compiler.lower import lower
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.packer import engine_parameters, pack
from cosparse.hw.kwta import LocalKWTA
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.pool import MaxPool


@pytest.mark.parametrize("name, make", [
    ("engine", lambda: OverlayEngine(**engine_parameters(pack(zoo.complementary_weights(
        32, 200, 4, np.random.default_rng(0)), 4)), entries=2, lanes_per_beat=8)),
    ("kwta", lambda: LocalKWTA(32, 4, width=8, entries=4)),
    ("pool", lambda: MaxPool(8, 8, 16, width=8, elem_bits=18)),
])
def test_unit_estimate_against_yosys(tmp_path, name, make):
    got = synth_unit(make(), "ecp5", tmp_path, platform=ULX3S_85F_Platform(), name=name)["luts"]
    est = unit_luts(make())
    assert abs(est - got) <= 0.4 * got, (name, est, got)


def test_core_estimate_grows_with_the_fold():
    net = to_drain_order(zoo.gsc_cs(seed=0, reduced=True))
    small = core_luts(lower(net, Folding(1, {"conv1": LayerFold(1, 4)})))
    large = core_luts(lower(net, Folding(1, {"conv1": LayerFold(4, 8)})))
    logic = core_luts(lower(net, Folding(1, {"conv1": LayerFold(1, 16, None, "logic")})))
    assert small < large and small < logic
