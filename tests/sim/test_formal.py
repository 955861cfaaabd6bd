"""sim.formal and scripts/formal.py: stream-contract proofs with SymbiYosys and z3."""

import json
import shutil

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cosparse.hw.adapters import StreamFIFO
from cosparse.hw.streams import dense_layout
from cosparse.sim.formal import StreamHarness, prove

from ..helpers import load_script

pytestmark = pytest.mark.skipif(shutil.which("z3") is None or shutil.which("yowasp-sby") is None,
                                reason="needs z3 (pip install z3-solver) and yowasp-sby")



def _script():
    return load_script("formal")


class Impatient(wiring.Component):
    """A register stage that drops a beat its consumer was not ready for after one cycle
    (breaks the stream contract on purpose)."""

    def __init__(self):
        self.layout = dense_layout(1, signed(4))
        super().__init__({"i": In(stream.Signature(self.layout)),
                          "o": Out(stream.Signature(self.layout))})

    def elaborate(self, platform):
        m = Module()
        waited = Signal()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                         waited.eq(0)]
        with m.Elif(waited):
            m.d.sync += self.o.valid.eq(0)  # gives up on the beat
        with m.Else():
            m.d.sync += waited.eq(1)
        return m


def test_fifo_is_proven_and_a_wrong_capacity_is_caught(tmp_path):
    ok = prove("fifo", StreamHarness(StreamFIFO(dense_layout(2, signed(4)), 2),
                                     one_to_one=True, capacity=2), tmp_path, depth=10)
    assert ok.passed, ok.log_tail
    bad = prove("fifo_1", StreamHarness(StreamFIFO(dense_layout(2, signed(4)), 2),
                                        one_to_one=True, capacity=1), tmp_path, depth=10)
    assert not bad.passed and bad.trace is not None and bad.trace.exists()


def test_a_unit_that_drops_a_waiting_beat_fails_its_proof(tmp_path):
    r = prove("impatient", StreamHarness(Impatient(), one_to_one=True, capacity=1), tmp_path,
              depth=8)
    assert not r.passed and r.trace is not None
    # the beat-local properties alone, by induction, catch it too (a real fault, not an
    # unreachable state: its base case fails)
    local = prove("impatient_local", StreamHarness(Impatient(), local_only=True), tmp_path,
                  mode="prove", depth=8)
    assert not local.passed and "basecase: FAIL" in local.log_tail
    cover = prove("impatient_cover", StreamHarness(Impatient()), tmp_path, mode="cover", depth=8)
    assert cover.passed and cover.cover_steps  # a beat does get through


def test_formal_script_proves_units_and_reports(tmp_path, capsys):
    fm = _script()
    out = tmp_path / "formal.json"
    assert fm.main(["--units", "requantizer,kwta_local,sparse_flatten,widen,narrow", "--depth",
                    "14", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["failed"] == [] and [u["unit"] for u in res["units"]] == \
        ["requantizer", "kwta_local", "sparse_flatten", "widen", "narrow"]
    for u in res["units"]:
        assert u["passed"] and u["first_output_step"] is not None
        if u["mode"] == "bmc":
            assert u["first_output_step"] < u["depth"]
    assert [u["mode"] for u in res["units"]] == \
        ["bmc"] * 3 + ["induction", "bmc, beat-local properties by induction"]
    printed = capsys.readouterr().out
    assert "5 of 5 units proven to depth 14, 1 of them for every depth (induction)" in printed
    assert "proven (held beats and end marks for every depth)" in printed


def test_formal_script_names_a_failure_and_its_trace(tmp_path, capsys, monkeypatch):
    fm = _script()
    monkeypatch.setitem(fm.UNITS, "impatient", (
        lambda: StreamHarness(Impatient(), one_to_one=True, capacity=1), "drops beats"))
    assert fm.main(["--units", "impatient", "--depth", "8", "--workdir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: counterexample trace" in out and ".vcd" in out
    assert "0 of 1 units proven" in out


def test_host_link_proof_catches_a_framer_with_the_wrong_crc(tmp_path, monkeypatch):
    """The host-link proof checks the framer against a CRC of its own: the link passes it;
    a framer computing CRC-16/XMODEM (same polynomial, initial value 0) starts an
    inference on a frame whose CRC-16/CCITT-FALSE is wrong, and the proof says so."""
    from amaranth.lib.crc import catalog

    from cosparse.hw import hostlink_parts

    fm = _script()
    ok = prove("link", fm.host_link_harness(in_group_size=1), tmp_path, depth=12)
    assert ok.passed, ok.log_tail
    monkeypatch.setattr(hostlink_parts, "CRC16", catalog.CRC16_XMODEM(data_width=8))
    r = prove("link_xmodem", fm.host_link_harness(in_group_size=1), tmp_path, depth=12)
    assert not r.passed and r.trace is not None and r.trace.exists()


def test_engine_sums_proof_catches_an_accumulator_too_narrow(tmp_path, monkeypatch):
    """The overlay engine's exact-sum property holds for the engine as sized, and fails
    for one whose accumulators were sized for a worst case below its layer's."""
    from cosparse.hw import overlay

    fm = _script()
    good = fm.small_engine()
    ok = prove("sums", fm.engine_sums_harness(good), tmp_path, depth=16)
    assert ok.passed, ok.log_tail
    monkeypatch.setattr(overlay, "worst_case_sum", lambda *args: 3)
    narrow = overlay.OverlayEngine(good.weights, good.kernel_ids, good.row_start,
                                   good.kernel_map, entries=good.entries, value_bits=3,
                                   weight_bits=2)
    assert narrow.acc_bits < good.acc_bits
    r = prove("narrow_sums", fm.engine_sums_harness(narrow), tmp_path, depth=16)
    assert not r.passed and r.trace is not None


def test_induction_proves_the_fifo_for_every_depth_given_its_invariant(tmp_path):
    """k-induction: the FIFO's contract holds at every depth with its invariant (level ==
    beats in flight); without it the induction step fails (unreachable states), and a
    capacity below the FIFO's is refuted."""
    fm = _script()
    make, _ = fm.UNITS["fifo"]
    ok = prove("fifo_ind", make(), tmp_path, mode="prove", depth=fm.INDUCTION["fifo"])
    assert ok.passed, ok.log_tail
    bare = StreamHarness(StreamFIFO(make().dut.layout, 2), one_to_one=True, capacity=2)
    r = prove("fifo_bare", bare, tmp_path, mode="prove", depth=fm.INDUCTION["fifo"])
    assert not r.passed and "induction" in r.log_tail
    small = StreamHarness(StreamFIFO(make().dut.layout, 2), one_to_one=True, capacity=1,
                          extra=fm.fifo_level)
    assert not prove("fifo_small", small, tmp_path, mode="prove", depth=4).passed


def test_histogram_global_kwta_proof_catches_more_winners_than_asserted(tmp_path):
    """The histogram build (1-bit digits: four radix passes) is proven to give at most k
    winners; asked for at most 1 where its threshold rule allows 2 (ties), the proof finds
    the frame."""
    from cosparse.hw.kwta import GlobalKWTA

    fm = _script()
    make, _ = fm.UNITS["kwta_global"]
    depth = fm.MIN_DEPTH["kwta_global"]
    assert prove("hist", make(), tmp_path, depth=depth).passed
    ties = StreamHarness(
        GlobalKWTA(2, 1, width=1, entries=1, value_bits=4, key_range=(-8, 7), digit_bits=1,
                   max_winners=2),
        framing={"i": (2, 1), "o": (None, 1)}, sparse_groups={"o": 2},
        extra=fm.winners_bound(1, "end"))
    r = prove("hist_ties", ties, tmp_path, depth=depth)
    assert not r.passed and r.trace is not None


def test_uart_loop_proof_catches_a_receiver_at_another_baud(tmp_path):
    """Bytes through the UARTs are proven to arrive unchanged at one baud; a receiver at 5
    cycles a bit against a transmitter at 4 garbles them, and the proof finds it."""
    fm = _script()
    depth = fm.MIN_DEPTH["uart_loop"]
    assert prove("loop", fm.uart_loop_harness(), tmp_path, depth=depth).passed
    r = prove("loop_baud", fm.uart_loop_harness(rx_divisor=5), tmp_path, depth=depth)
    assert not r.passed and r.trace is not None


def test_local_only_harness_refuses_an_extra(tmp_path):
    """``extra`` may tie ports off as well as assert: a beat-local harness takes none."""
    fm = _script()
    make, _ = fm.UNITS["widen"]
    h = make()
    h.local_only = True
    with pytest.raises(ValueError, match="local_only harnesses take no extra"):
        prove("widen_local", h, tmp_path, mode="prove", depth=4)
