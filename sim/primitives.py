"""Simulation models of the vendor primitives that board builds instantiate.

Verilator sees the same Verilog as a board build when a unit is elaborated
for a board's platform (see :func:`cosparse.hw.util.registered_product`);
these models stand in for the primitives there. Each models only the modes
the hardware library uses and stops the simulation on any other, so a test
cannot pass on a mode the model gets wrong.
"""

from __future__ import annotations

from cosparse.hw.util import is_ecp5

__all__ = ["MULT18X18D_MODEL", "DP16KD_MODEL", "models_for"]


def _mult18x18d() -> str:
    a = ", ".join(f"A{i}" for i in range(18))
    b = ", ".join(f"B{i}" for i in range(18))
    p = ", ".join(f"P{i}" for i in range(36))
    a_bus = "{" + ", ".join(f"A{i}" for i in reversed(range(18))) + "}"
    b_bus = "{" + ", ".join(f"B{i}" for i in reversed(range(18))) + "}"
    assigns = "\n".join(f"    assign P{i} = p_out[{i}];" for i in range(36))
    params = "\n".join(f'    parameter {n} = "{v}",' for n, v in [
        ("REG_INPUTA_CLK", "NONE"), ("REG_INPUTA_CE", "CE0"), ("REG_INPUTA_RST", "RST0"),
        ("REG_INPUTB_CLK", "NONE"), ("REG_INPUTB_CE", "CE0"), ("REG_INPUTB_RST", "RST0"),
        ("REG_INPUTC_CLK", "NONE"), ("REG_INPUTC_CE", "CE0"), ("REG_INPUTC_RST", "RST0"),
        ("REG_PIPELINE_CLK", "NONE"), ("REG_PIPELINE_CE", "CE0"), ("REG_PIPELINE_RST", "RST0"),
        ("REG_OUTPUT_CLK", "NONE"), ("REG_OUTPUT_CE", "CE0"), ("REG_OUTPUT_RST", "RST0"),
        ("CLK0_DIV", "ENABLED"), ("CLK1_DIV", "ENABLED"), ("CLK2_DIV", "ENABLED"),
        ("CLK3_DIV", "ENABLED"), ("HIGHSPEED_CLK", "NONE"), ("GSR", "ENABLED"),
        ("CAS_MATCH_REG", "FALSE"), ("SOURCEB_MODE", "B_SHIFT"), ("MULT_BYPASS", "DISABLED"),
        ("RESETMODE", "SYNC")])
    return f"""\
// MULT18X18D (Lattice ECP5 sysDSP), the modes cosparse instantiates:
// A and B from the fabric (SOURCEA = SOURCEB = 0), signed or unsigned per
// SIGNEDA/SIGNEDB, each of the input, pipeline and output registers either
// absent ("NONE") or clocked by CLK0 with enable CE0 and synchronous reset
// RST0. Any other setting stops the simulation.
module MULT18X18D #(
{params}
    parameter unused = 0
) (
    input {a},
    input {b},
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0,
    output {p}
);
    wire [17:0] a = {a_bus};
    wire [17:0] b = {b_bus};
    initial begin
        if ((REG_INPUTA_CLK != "NONE" && (REG_INPUTA_CLK != "CLK0" || REG_INPUTA_CE != "CE0"
                                          || REG_INPUTA_RST != "RST0"))
            || (REG_INPUTB_CLK != "NONE" && (REG_INPUTB_CLK != "CLK0" || REG_INPUTB_CE != "CE0"
                                             || REG_INPUTB_RST != "RST0"))
            || (REG_PIPELINE_CLK != "NONE" && (REG_PIPELINE_CLK != "CLK0"
                                               || REG_PIPELINE_CE != "CE0"
                                               || REG_PIPELINE_RST != "RST0"))
            || (REG_OUTPUT_CLK != "NONE" && (REG_OUTPUT_CLK != "CLK0" || REG_OUTPUT_CE != "CE0"
                                             || REG_OUTPUT_RST != "RST0"))
            || REG_INPUTC_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC"
            || CAS_MATCH_REG != "FALSE") begin
            $display("MULT18X18D model: unmodelled mode");
            $finish;
        end
    end
    always @(posedge CLK0) if (SOURCEA || SOURCEB) begin
        $display("MULT18X18D model: shift inputs (SOURCEA/SOURCEB) are not modelled");
        $finish;
    end
    reg [17:0] a_r, b_r;
    reg sa_r, sb_r;
    always @(posedge CLK0) if (RST0) begin a_r <= 0; sa_r <= 0; end
                            else if (CE0) begin a_r <= a; sa_r <= SIGNEDA; end
    always @(posedge CLK0) if (RST0) begin b_r <= 0; sb_r <= 0; end
                            else if (CE0) begin b_r <= b; sb_r <= SIGNEDB; end
    wire [17:0] a_in = REG_INPUTA_CLK == "NONE" ? a : a_r;
    wire [17:0] b_in = REG_INPUTB_CLK == "NONE" ? b : b_r;
    wire sa = REG_INPUTA_CLK == "NONE" ? SIGNEDA : sa_r;
    wire sb = REG_INPUTB_CLK == "NONE" ? SIGNEDB : sb_r;
    wire signed [18:0] a_x = {{sa & a_in[17], a_in}};
    wire signed [18:0] b_x = {{sb & b_in[17], b_in}};
    wire signed [37:0] prod = a_x * b_x;
    reg [35:0] pipe_r, out_r;
    always @(posedge CLK0) if (RST0) pipe_r <= 0; else if (CE0) pipe_r <= prod[35:0];
    wire [35:0] p_pipe = REG_PIPELINE_CLK == "NONE" ? prod[35:0] : pipe_r;
    always @(posedge CLK0) if (RST0) out_r <= 0; else if (CE0) out_r <= p_pipe;
    wire [35:0] p_out = REG_OUTPUT_CLK == "NONE" ? p_pipe : out_r;
{assigns}
endmodule
"""


#: Verilog model of ECP5's ``MULT18X18D`` (the modes above).
MULT18X18D_MODEL = _mult18x18d()


def models_for(platform) -> dict[str, str]:
    """File name -> Verilog text of the primitive models a unit built for ``platform`` needs."""
    return {"mult18x18d_model.v": MULT18X18D_MODEL} if is_ecp5(platform) else {}


def _dp16kd_port(p: str, q: str) -> str:
    """One DP16KD port ``p`` (the other is ``q``): its word (x18; x36: the pair's low half)
    or byte (x9), its write and its output register. Port A may be the x36 pair's write
    (the high half from ``DIB`` and byte enables ``AD[3:2]``), port B its read (the high half
    on ``DOB``, the low one kept in ``low_b_r`` for ``DOA``)."""
    x, y = p.lower(), q.lower()
    return f"""\
    // port {p}
    wire [9:0] w_{x} = DATA_WIDTH_{p} == 36 ? {{ad{x}[13:5], 1'b0}} : ad{x}[13:4];
    wire [17:0] old_{x} = mem[w_{x}];
    wire [17:0] old1_{x} = mem[w_{x} | 10'd1];
    wire [1:0] be_{x} = DATA_WIDTH_{p} == 9 ? (ad{x}[3] ? 2'b10 : 2'b01) : ad{x}[1:0];
    wire [17:0] new_{x} = DATA_WIDTH_{p} == 9 ? {{di{x}[8:0], di{x}[8:0]}} : di{x};
    wire [17:0] merged_{x} = {{be_{x}[1] ? new_{x}[17:9] : old_{x}[17:9],
                             be_{x}[0] ? new_{x}[8:0] : old_{x}[8:0]}};
    wire [17:0] merged1_{x} = {{ad{x}[3] ? di{y}[17:9] : old1_{x}[17:9],
                              ad{x}[2] ? di{y}[8:0] : old1_{x}[8:0]}};
    wire [17:0] view_{x} = DATA_WIDTH_{p} == 9 ? {{9'd0, ad{x}[3] ? old_{x}[17:9] : old_{x}[8:0]}}
                       : DATA_WIDTH_{p} == 36 ? old1_{x} : old_{x};
    wire [17:0] view_new_{x} = DATA_WIDTH_{p} == 9 ? {{9'd0, di{x}[8:0]}} : merged_{x};
    // (a synchronous reset blocks the write, as yosys's mapping assumes; an asynchronous
    // one clears only the output)
    wire write_{x} = (RESETMODE == "ASYNC" || !RST{p}) && CE{p} && WE{p};
    // the read's output latch and (REGMODE OUTREG) the output register a cycle after
    // it, enabled by OCE; an asynchronous reset also clears them between clock edges
    wire async_rst_{x} = RESETMODE == "ASYNC" && RST{p};
    reg [17:0] do_{x}_r = 0, low_{x}_r = 0, out_{x}_r = 0, out_low_{x}_r = 0;
    always @(posedge CLK{p} or posedge async_rst_{x})
        if (RST{p}) begin
            {{do_{x}_r, low_{x}_r, out_{x}_r, out_low_{x}_r}} <= 0;
        end else begin
            if (OCE{p}) {{out_{x}_r, out_low_{x}_r}} <= {{do_{x}_r, low_{x}_r}};
            if (CE{p}) begin
                low_{x}_r <= old_{x};
                if (!WE{p} || WRITEMODE_{p} == "READBEFOREWRITE") do_{x}_r <= view_{x};
                else if (WRITEMODE_{p} == "WRITETHROUGH") do_{x}_r <= view_new_{x};
            end
        end
    always @(posedge CLK{p}) if (write_{x}) begin  // (no x36 write on B: stopped above)
        mem[w_{x}] <= merged_{x};
        if (DATA_WIDTH_{p} == 36) mem[w_{x} | 10'd1] <= merged1_{x};
    end
"""


def _dp16kd() -> str:
    def pins(prefix: str, n: int) -> str:
        return ", ".join(f"{prefix}{i}" for i in reversed(range(n)))

    inits = "\n".join(f"    parameter INITVAL_{i:02X} = 320'h0," for i in range(64))
    load = "\n".join(f"        for (i = 0; i < 16; i = i + 1) mem[{16 * i0} + i] = "
                     f"INITVAL_{i0:02X}[20 * i +: 18];" for i0 in range(64))
    return f"""\
// DP16KD (Lattice ECP5 sysMEM, 18 Kbit), the modes yosys's block-RAM mapping
// uses: 1,024 words of 18 bits (INITVAL_xx holds 16 words at a 20-bit
// stride), ports of 9 or 18 bits or, as the pseudo-dual-port x36 pair, a
// 36-bit write on A ({{DIB, DIA}}) and a 36-bit read on B ({{DOB, DOA}});
// byte enables on AD[1:0] (x18) or AD[3:0] (x36); NOREG or OUTREG outputs
// (the x36 pair: both REGMODEs alike, the register on CLKB and OCEB), a write
// mode per port, a reset (sync: clears the output and blocks the write;
// async: clears the output), chip select "0b000". Any other setting stops the
// simulation. Both ports see the words of the previous cycle.
module DP16KD #(
{inits}
    parameter DATA_WIDTH_A = 18,
    parameter DATA_WIDTH_B = 18,
    parameter REGMODE_A = "NOREG",
    parameter REGMODE_B = "NOREG",
    parameter RESETMODE = "SYNC",
    parameter ASYNC_RESET_RELEASE = "SYNC",
    parameter CSDECODE_A = "0b000",
    parameter CSDECODE_B = "0b000",
    parameter WRITEMODE_A = "NORMAL",
    parameter WRITEMODE_B = "NORMAL",
    parameter CLKAMUX = "CLKA",
    parameter CLKBMUX = "CLKB",
    parameter GSR = "ENABLED",
    parameter unused = 0
) (
    input {pins("DIA", 18)},
    input {pins("ADA", 14)},
    input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
    output {pins("DOA", 18)},
    input {pins("DIB", 18)},
    input {pins("ADB", 14)},
    input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
    output {pins("DOB", 18)}
);
    wire [17:0] dia = {{{pins("DIA", 18)}}};
    wire [17:0] dib = {{{pins("DIB", 18)}}};
    wire [13:0] ada = {{{pins("ADA", 14)}}};
    wire [13:0] adb = {{{pins("ADB", 14)}}};
    reg [17:0] mem [0:1023];
    integer i;
    initial begin
        if (!(DATA_WIDTH_A == 9 || DATA_WIDTH_A == 18 || DATA_WIDTH_A == 36)
            || !(DATA_WIDTH_B == 9 || DATA_WIDTH_B == 18 || DATA_WIDTH_B == 36)
            || (DATA_WIDTH_B == 36 && DATA_WIDTH_A != 36)
            || (WRITEMODE_A != "NORMAL" && WRITEMODE_A != "WRITETHROUGH"
                && WRITEMODE_A != "READBEFOREWRITE")
            || (WRITEMODE_B != "NORMAL" && WRITEMODE_B != "WRITETHROUGH"
                && WRITEMODE_B != "READBEFOREWRITE")
            || (REGMODE_A != "NOREG" && REGMODE_A != "OUTREG")
            || (REGMODE_B != "NOREG" && REGMODE_B != "OUTREG")
            || (DATA_WIDTH_B == 36 && REGMODE_A != REGMODE_B)
            || CSDECODE_A != "0b000" || CSDECODE_B != "0b000"
            || CLKAMUX != "CLKA" || CLKBMUX != "CLKB"
            || (RESETMODE != "SYNC" && RESETMODE != "ASYNC")) begin
            $display("DP16KD model: unmodelled mode");
            $finish;
        end
{load}
    end
    always @(posedge CLKA) if ({{CSA2, CSA1, CSA0}} != 0 || (DATA_WIDTH_A == 36 && WEB)
                               || (DATA_WIDTH_B == 36 && WEB)) begin
        $display("DP16KD model: chip select or a write on B of the x36 pair is not modelled");
        $finish;
    end
    always @(posedge CLKB) if ({{CSB2, CSB1, CSB0}} != 0) begin
        $display("DP16KD model: chip select is not modelled");
        $finish;
    end

{_dp16kd_port("A", "B")}
{_dp16kd_port("B", "A")}
    // the x36 read (port B) puts its low half on DOA
    // (on the x36 pair both halves are port B's, in its output register with OUTREG)
    assign {{{pins("DOA", 18)}}} = DATA_WIDTH_B == 36
        ? (REGMODE_B == "OUTREG" ? out_low_b_r : low_b_r)
        : (REGMODE_A == "OUTREG" ? out_a_r : do_a_r);
    assign {{{pins("DOB", 18)}}} = REGMODE_B == "OUTREG" ? out_b_r : do_b_r;
endmodule
"""


#: Verilog model of ECP5's ``DP16KD`` (the modes above).
DP16KD_MODEL = _dp16kd()
