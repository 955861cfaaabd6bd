"""The overlay engine's products: weight words times input values, and bank addresses."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..util import bits, const_mul, is_ecp5, registered_product, replicate
from .common import register, word_layout

__all__ = ["Products"]


class Products(wiring.Component):
    """Stages W, B, C (and C2): the ``R x P`` products and where each one goes.

    W registers the op's flags while the weight words are read (and once more
    for a banked weight memory, W2). B registers the words (``b_data``: the
    block RAM's slow clock-to-out stays out of the multiplier and
    bank-address paths), reads each slot's kernel id to the bank row
    ``pass * K + id``, and multiplies each slot's weight by its entry's value
    (:func:`~cosparse.hw.util.registered_product`: the operand registers, then
    the product register, C). The registers every lane reads have a copy per
    ``lanes_per_copy`` lanes (:func:`~cosparse.hw.util.replicate`).

    Elaborated for an ECP5 platform, each product is one ``MULT18X18D``. A
    weight memory of one block's depth (``direct_weights``) feeds the block's
    input register A directly; a deeper one keeps its fabric register
    ``b_data`` and the block's register A is a stage of its own (D), so no
    block mixes a registered and an unregistered input. The value waits a
    cycle to match, and the product is a cycle later: it is C2's product
    (``split``), or the banks' read and write move a cycle later (the read in
    C, the write in C2).

    Parameters
    ----------
    entries, lanes_per_beat, kernels_per_overlay, passes : int
        ``R``, ``P``, ``K`` and ``L / P``.
    lanes_per_copy : int
        Lanes served by one copy of a register that all lanes read.
    banked_weights : bool
        The weight memory's data comes two cycles after its address (W2).
    direct_weights : bool
        The weight memory is one block deep (ECP5: straight into the DSP blocks).
    registers : bool
        The accumulator banks are registers, with no read port.
    split : bool
        The banks' read data is registered before the add (stage C2).

    Members
    -------
    issue, pass_index, buf, group, end, live, value : In
        The sequencer's op (see :class:`~.sequencer.Sequencer`).
    word : In(word_layout(P, bits(K))).array(R)
        The weight memory's words, ``1 + banked_weights`` cycles after ``issue``.
    read_valid, read_buf : Out(1).array(copies)
        A bank read of the accumulated sums, into buffer ``read_buf``, per
        lane group (memory banks only).
    read_addr : Out(range(passes * K)).array(R, P)
    write_live : Out(1).array(R, copies), write_buf : Out(1).array(copies)
        The write: per entry and lane group, product ``prod`` is added into
        row ``write_addr`` of bank buffer ``write_buf``.
    write_addr : Out(range(passes * K)).array(R, P)
    prod : Out(signed(weight_bits + value_bits)).array(R, P)
    group_done, group_buf, group_end : Out(1)
        A group's last op, in buffer ``group_buf``, the cycle before its write:
        a drain that starts on it reads the cycle after the write.
    """

    def __init__(self, entries: int, lanes_per_beat: int, kernels_per_overlay: int,
                 passes: int, *, lanes_per_copy: int, banked_weights: bool,
                 direct_weights: bool, registers: bool, split: bool, value_bits: int = 8,
                 weight_bits: int = 8, paired: bool = False):
        self.entries, self.lanes_per_beat = entries, lanes_per_beat
        self.value_bits, self.weight_bits = value_bits, weight_bits
        #: Signed bits of a product: a weight times a value.
        self.prod_bits = value_bits + weight_bits
        #: Lanes ``2j`` and ``2j + 1`` of a register copy share a multiplier.
        self.paired = paired
        self.kernels_per_overlay, self.passes = kernels_per_overlay, passes
        self.lanes_per_copy = lanes_per_copy
        self.copies = -(-lanes_per_beat // lanes_per_copy)
        self.banked_weights, self.direct_weights = banked_weights, direct_weights
        self.registers, self.split = registers, split
        self.id_bits = bits(kernels_per_overlay)
        R, P, c = entries, lanes_per_beat, self.copies
        rows = range(passes * kernels_per_overlay)
        super().__init__({
            "issue": In(1), "pass_index": In(bits(passes)), "buf": In(1), "group": In(1),
            "end": In(1), "live": In(1).array(R), "value": In(signed(value_bits)).array(R),
            "word": In(word_layout(P, self.id_bits, weight_bits)).array(R),
            "read_valid": Out(1).array(c), "read_buf": Out(1).array(c),
            "read_addr": Out(rows).array(R, P),
            "write_live": Out(1).array(R, c), "write_buf": Out(1).array(c),
            "write_addr": Out(rows).array(R, P), "prod": Out(signed(self.prod_bits)).array(R, P),
            "group_done": Out(1), "group_buf": Out(1), "group_end": Out(1),
        })

    def _multiplier_lanes(self) -> list[tuple[int, ...]]:
        """The lanes of each multiplier: pairs ``(2j, 2j + 1)`` within a register copy's
        lanes when :attr:`paired` (an odd lane out alone), else one lane each."""
        P, G = self.lanes_per_beat, self.lanes_per_copy
        if not self.paired:
            return [(k,) for k in range(P)]
        out = []
        for g in range(0, P, G):
            copy = list(range(g, min(g + G, P)))
            out += [tuple(copy[i:i + 2]) for i in range(0, len(copy), 2)]
        return out

    def _packed(self, m: Module, r: int, k: int, wdata, b_data, source: str) -> Value:
        """The operand ``w_k + (w_{k+1} << S)`` of lanes ``k, k + 1`` of entry ``r``, where
        the single weight's would be: from the words read (``"memory"``: into the
        multiplier's own operand register), from B's registers (``"b"``: the same), or
        a register of its own in B's place (``"register"``: it is the operand register)."""
        S, wb = self.prod_bits, self.weight_bits
        src = b_data if source == "b" else wdata
        # one bit more than the two weights: w0 < 0 below the most negative w1 << S
        packed = Signal(signed(S + wb + 1), name=f"b_pack_{r}_{k}", reset_less=True)
        value = src[k].weight + (src[k + 1].weight << S)
        if source == "register":
            m.d.sync += packed.eq(value)
        else:
            m.d.comb += packed.eq(value)
        return packed

    def elaborate(self, platform):
        m = Module()
        R, P, K, passes = self.entries, self.lanes_per_beat, self.kernels_per_overlay, self.passes
        G, copies, id_bits = self.lanes_per_copy, self.copies, self.id_bits
        banked, shallow, split = self.banked_weights, self.registers, self.split
        # With C2 the product is needed a cycle later. On ECP5 it is registered once more
        # after the DSP block; elsewhere the operands wait instead: yosys's ice40_dsp takes
        # a product register followed by a second one into SB_MAC16 but leaves the second
        # behind, undriven, and opt_dff then ties the product to 0 (yosys 0.70).
        dsp_registers = is_ecp5(platform)
        direct = dsp_registers and self.direct_weights
        a_stage = dsp_registers and not direct
        late_product = split and (not dsp_registers or a_stage)
        c_late = a_stage and not split
        wdata = self.word

        # ---------------- W: the op's flags while the weight words are read
        w_value = list(self.value)
        w_valid, w_pass, w_buf, w_group, w_end = (self.issue, self.pass_index, self.buf,
                                                  self.group, self.end)
        w_live = list(self.live)
        for stage in ("w", "w2")[:1 + banked]:
            w_valid, w_pass, w_buf, w_group, w_end, *w_live = [
                register(m, f"{stage}_{name}", v) for name, v in zip(
                    ("valid", "pass", "buf", "group", "end", *(f"live_{r}" for r in range(R))),
                    (w_valid, w_pass, w_buf, w_group, w_end, *w_live))]
        if banked:  # the values wait a cycle before their copies
            w_value = [register(m, f"w_value_{r}", v, reset_less=True)
                       for r, v in enumerate(w_value)]
        # Each entry's value, one copy per G lanes from W on (no enable, so no logic fans
        # out to the copies): W's copies, then the products' operand registers (ECP5: in
        # the DSP blocks). No register drives more than G multipliers.
        rw_value = [replicate(m, f"w_value_{r}_rep" if banked else f"w_value_{r}", w_value[r],
                              copies, reset_less=True)
                    for r in range(R)]

        # ---------------- B: registered weight words; products; bank reads
        b_valid = Signal()
        b_live = [Signal(name=f"b_live_{r}") for r in range(R)]
        # Datapath registers without reset (the valid flags carry it).
        b_data = [Signal(word_layout(P, id_bits, self.weight_bits), name=f"b_data_{r}", reset_less=True)
                  for r in range(R)]
        b_buf = Signal()
        b_group = Signal()
        b_end = Signal()
        m.d.sync += [b_valid.eq(w_valid), b_buf.eq(w_buf),
                     b_group.eq(w_group), b_end.eq(w_end)]
        for r in range(R):
            m.d.sync += [b_live[r].eq(w_live[r]), b_data[r].eq(wdata[r])]
        # (The pass's first bank row, pass * K, so one adder sits before a bank address.)
        rb_pass = (replicate(m, "b_pass", const_mul(w_pass, K), copies) if passes > 1
                   else [Const(0, 1)] * copies)  # one pass: no register to copy
        if not shallow and not c_late:  # the banks' read ports: B's address or the drain's
            rd_valid = replicate(m, "b_valid", w_valid, copies)
            rd_buf = replicate(m, "b_buf", w_buf, copies)
        rc_buf = replicate(m, "c_buf", b_buf, copies)
        if c_late and not shallow:  # the bank reads move to stage C
            rd_valid = replicate(m, "c_valid", b_valid, copies)
            rd_buf = rc_buf
        # The value's wait for register D (``a_stage``) or for C2 (off ECP5), per copy.
        rd_value = ([[register(m, f"b2_value_{r}_{g}", v, reset_less=True)
                      for g, v in enumerate(rw_value[r])] for r in range(R)]
                    if late_product or c_late else rw_value)
        rc_live = [replicate(m, f"c_live_{r}", b_valid & b_live[r], copies) for r in range(R)]
        c_addr = [[Signal(range(passes * K), name=f"c_addr_{r}_{k}") for k in range(P)]
                  for r in range(R)]
        c_prod = [[None] * P for _ in range(R)]
        for r in range(R):
            for k in range(P):
                slot = b_data[r][k]
                addr = Signal(range(passes * K), name=f"b_addr_{r}_{k}")
                m.d.comb += addr.eq(rb_pass[k // G] + slot.kernel_id)
                m.d.sync += c_addr[r][k].eq(addr)
                if not shallow:
                    m.d.comb += self.read_addr[r][k].eq(c_addr[r][k] if c_late else addr)
            for lanes in self._multiplier_lanes():
                # B's operand registers and C's product register (ECP5: in MULT18X18D).
                # The weight's operand register is b_data (ECP5: then the DSP's register
                # A, ``a_stage``), except that a weight memory of one block's depth feeds
                # the DSP block's own input register directly.
                k = lanes[0]
                if len(lanes) == 1:
                    weight = wdata[r][k].weight if direct else b_data[r][k].weight
                else:  # two weights in one operand: w0 + (w1 << S), S the product's width
                    source = "memory" if direct else ("b" if a_stage else "register")
                    weight = self._packed(m, r, k, wdata[r], b_data[r], source)
                if late_product and not a_stage:  # off ECP5 the weight waits in the fabric
                    weight = register(m, f"b2_weight_{r}_{k}", weight, reset_less=True)
                prod = registered_product(m, f"c_prod_{r}_{k}", weight, rd_value[r][k // G],
                                          platform, a_registered=not (direct or a_stage))
                if len(lanes) == 1:
                    c_prod[r][k] = prod
                else:  # the low product sign-extended; the high one plus its borrow
                    S = self.prod_bits
                    lo, hi = (Signal(signed(S), name=f"c_prod_{r}_{j}") for j in lanes)
                    m.d.comb += [lo.eq(prod[:S].as_signed()),
                                 hi.eq((prod >> S) + prod[S - 1])]
                    c_prod[r][lanes[0]], c_prod[r][lanes[1]] = lo, hi
        if not shallow:
            m.d.comb += [*(self.read_valid[g].eq(rd_valid[g]) for g in range(copies)),
                         *(self.read_buf[g].eq(rd_buf[g]) for g in range(copies))]

        # ---------------- C2: the write a cycle later (split: the bank's read data is
        # registered before the add; c_late: the product comes a cycle later)
        g_valid, g_group, g_buf, g_end = b_valid, b_group, b_buf, b_end
        write = [[(c_prod[r][k], c_addr[r][k]) for k in range(P)] for r in range(R)]
        if split or c_late:
            g_valid, g_group, g_buf, g_end = [register(m, f"c_{n}", v) for n, v in zip(
                ("valid", "group", "buf", "end"), (b_valid, b_group, b_buf, b_end))]
            rc_live = [[register(m, f"c2_live_{r}_{g}", v) for g, v in enumerate(row)]
                       for r, row in enumerate(rc_live)]
            rc_buf = [register(m, f"c2_buf_{g}", v) for g, v in enumerate(rc_buf)]
            write = [[(c_prod[r][k] if late_product or c_late else
                       register(m, f"c2_prod_{r}_{k}", c_prod[r][k], reset_less=True),
                       register(m, f"c2_addr_{r}_{k}", c_addr[r][k], reset_less=True))
                      for k in range(P)] for r in range(R)]
        for r in range(R):
            m.d.comb += [self.write_live[r][g].eq(rc_live[r][g]) for g in range(copies)]
            for k in range(P):
                m.d.comb += [self.prod[r][k].eq(write[r][k][0]),
                             self.write_addr[r][k].eq(write[r][k][1])]
        m.d.comb += [*(self.write_buf[g].eq(rc_buf[g]) for g in range(copies)),
                     self.group_done.eq(g_valid & g_group), self.group_buf.eq(g_buf),
                     self.group_end.eq(g_end)]
        return m
