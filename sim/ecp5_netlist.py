"""A pass over yosys's ECP5 netlist (its JSON): block RAM output registers.

yosys maps a memory's synchronous read port to a ``DP16KD`` with its output
register off (``REGMODE_x = "NOREG"``); a register the design puts after the
read data stays in the fabric. The block's clock-to-out without its register
is several nanoseconds (the routed gsc-cs build: a weight bank's read data
reached its register 10.7 ns after the clock), with it well under one, so a
fabric register that only samples a read port's data is better in the block.

:func:`absorb_output_registers` moves such registers into their block: a read
port qualifies when each of its data outputs that is used drives one
``TRELLIS_FF`` and nothing else, all those flip-flops on the port's clock
(same edge), one clock enable (or none), no set/reset and reset value 0, and
the port's own reset tied off. The port's ``REGMODE`` becomes ``OUTREG``,
its ``OCE`` the flip-flops' enable, and its outputs take the flip-flops'
nets. The output register samples the read data one cycle after the read, as
the fabric register did: the design's behaviour is unchanged. On the x36
pair (the pseudo-dual-port mode: port B reads 36 bits, the low half on
``DOA``) both halves are port B's, clocked by ``CLKB`` and enabled by
``OCEB``, and both ``REGMODE`` change together.
"""

from __future__ import annotations

import collections

__all__ = ["absorb_output_registers"]


def _param(cell: dict, name: str, default: str = "") -> str:
    """A cell parameter as a string (yosys pads string parameters with spaces)."""
    value = cell["parameters"].get(name, default)
    return value.strip() if isinstance(value, str) else str(value)


def _width(cell: dict, side: str) -> int:
    value = _param(cell, f"DATA_WIDTH_{side}", "0")
    return int(value, 2) if set(value) <= {"0", "1"} and len(value) > 2 else int(value)


def _sinks(module: dict) -> dict[int, list[tuple[str, str]]]:
    """Net bit -> the (cell, port) inputs it drives; a module port counts as a sink."""
    sinks = collections.defaultdict(list)
    for name, cell in module["cells"].items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if dirs.get(port) != "output":
                for b in bits:
                    if isinstance(b, int):
                        sinks[b].append((name, port))
    for pname, port in module.get("ports", {}).items():
        for b in port["bits"]:
            if isinstance(b, int):
                sinks[b].append(("", pname))
    return sinks


def _register_of(module: dict, sinks, bit, clock):
    """The flip-flop that is the only sink of ``bit`` and may move into the block (on
    ``clock``): ``(cell name, its enable)``, the enable a net bit or ``"1"``; else None."""
    users = sinks.get(bit, [])
    if len(users) != 1 or users[0][1] != "DI":
        return None
    name = users[0][0]
    ff = module["cells"].get(name)
    if ff is None or ff["type"] != "TRELLIS_FF" or ff.get("attributes", {}).get("keep"):
        return None
    conn = ff["connections"]
    no_reset = conn.get("LSR", ["0"]) == ["0"] or _param(ff, "LSRMUX", "LSR") == "0"
    if (conn.get("CLK") != clock or _param(ff, "CLKMUX", "CLK") != "CLK" or not no_reset
            or _param(ff, "REGSET", "RESET") != "RESET"):
        return None
    mux = _param(ff, "CEMUX", "CE")
    if mux == "1":
        return name, "1"
    if mux == "CE" and len(conn.get("CE", [])) == 1:
        return name, conn["CE"][0]
    return None


def absorb_output_registers(netlist: dict) -> dict[str, int]:
    """Move fabric registers behind ``DP16KD`` read ports into the blocks (see the
    module's doc), in place. Returns ``{"ports": n, "flip_flops": m}`` moved."""
    moved = collections.Counter()
    for module in netlist.get("modules", {}).values():
        cells = module.get("cells", {})
        rams = [c for c in cells.values() if c["type"] == "DP16KD"]
        if not rams:
            continue
        sinks = _sinks(module)
        for ram in rams:
            pair = _width(ram, "B") == 36
            for outputs, side in ([(("A", "B"), "B")] if pair else [(("A",), "A"), (("B",), "B")]):
                conn = ram["connections"]
                clock = conn.get(f"CLK{side}")
                if (clock is None or conn.get(f"RST{side}", ["0"]) != ["0"]
                        or _param(ram, f"CLK{side}MUX", f"CLK{side}") != f"CLK{side}"
                        or any(_param(ram, f"REGMODE_{s}", "NOREG") != "NOREG" for s in outputs)):
                    continue
                regs, enables = [], set()
                for s in outputs:
                    for i in range(18):
                        bits = conn.get(f"DO{s}{i}")
                        if not bits or not isinstance(bits[0], int) or not sinks.get(bits[0]):
                            continue  # unused output
                        found = _register_of(module, sinks, bits[0], clock)
                        if found is None:
                            regs = None
                            break
                        regs.append((f"DO{s}{i}", found[0]))
                        enables.add(found[1])
                    if regs is None:
                        break
                if not regs or len(enables) != 1:
                    continue
                (enable,) = enables
                for s in outputs:
                    ram["parameters"][f"REGMODE_{s}"] = "OUTREG"
                conn[f"OCE{side}"] = [enable]
                for pin, name in regs:
                    conn[pin] = cells.pop(name)["connections"]["Q"]
                moved["ports"] += 1
                moved["flip_flops"] += len(regs)
    return {"ports": moved["ports"], "flip_flops": moved["flip_flops"]}
