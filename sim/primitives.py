"""Simulation models of the vendor primitives that board builds instantiate.

Verilator sees the same Verilog as a board build when a unit is elaborated
for a board's platform (see :func:`cosparse.hw.util.registered_product`);
these models stand in for the primitives there. Each models only the modes
the hardware library uses and stops the simulation on any other, so a test
cannot pass on a mode the model gets wrong.
"""

from __future__ import annotations

from cosparse.hw.util import is_ecp5

__all__ = ["MULT18X18D_MODEL", "models_for"]


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
