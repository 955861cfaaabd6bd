"""The overlay engine's read memories: the weight memory and the row table."""

from __future__ import annotations

from amaranth.hdl import Array, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..loader import LOADED_MEMORY_ATTRS, LoadPort
from .common import register

__all__ = ["ReadMemory", "SPRAM_WORDS"]

#: Words of a weight memory in iCE40 ``SB_SPRAM256KA`` blocks (one block deep).
SPRAM_WORDS = 16384


class ReadMemory(wiring.Component):
    """A memory every entry reads: ``reads`` synchronous read ports, the host loader's writes.

    Parameters
    ----------
    name : str
        The memory's name (``name``, or ``name_<bank>`` for banks).
    width : int
        Bits per word.
    image : sequence of int
        The contents; its length is the address range.
    reads : int
        Read ports, all enabled by ``en``.
    load : LoadPort or None
        A memory the host loader writes (kept as ``load_port``): the memory's
        depth and initial contents are then its ``hw_depth`` and ``hw_init()``,
        and the writes come through the ``load`` member.
    bank_words : int or None
        A memory deeper than this is banks of ``bank_words`` words, each
        bank's read data registered beside its block RAMs, then the bank
        multiplexer: two cycles from address to data instead of one.
    single_port : bool
        One address for reads and the loader's writes (the engine is idle
        while the host loads): the loader's address while it writes.
    spram : bool
        iCE40 ``SB_SPRAM256KA`` blocks instead of a memory (single port, no
        initial contents; ``load`` required, one read port).

    Attributes
    ----------
    memories : dict of str to Memory
        The memories, which the owner adds as its own submodules under these
        names: a memory's path in the design names its memory image and load
        target (``<unit>.weights``).
    banked : bool
        The memory is in banks (``latency`` 2).
    latency : int
        Cycles from ``addr``/``en`` to ``data``.

    Members
    -------
    addr : In(range(len(image))).array(reads)
    en : In(1)
        Read enable of every port; ``data`` holds between reads (banks: while
        ``addr`` holds, as the bank select follows it).
    data : Out(width).array(reads)
    load : In(LoadSignature(width))
        With ``load``: the loader's writes.

    Raises
    ------
    ValueError
        An SPRAM memory deeper than ``SPRAM_WORDS`` words.
    """

    def __init__(self, name: str, width: int, image, *, reads: int, load: LoadPort | None = None,
                 bank_words: int | None = None, single_port: bool = False, spram: bool = False):
        self.name, self.width, self.reads, self.load_port = name, width, reads, load
        self.words = max(len(image), 1)
        self.depth = load.hw_depth if load is not None else self.words
        self.spram = spram
        if spram and (load is None or reads != 1):
            raise ValueError(f"an SPRAM memory needs a load port and one read port, "
                             f"got load={load!r}, reads={reads!r}")
        if spram and self.words > SPRAM_WORDS:
            raise ValueError(f"an SPRAM weight memory holds at most {SPRAM_WORDS} words, "
                             f"got {self.words}")
        self.banked = not spram and bank_words is not None and self.depth > bank_words
        self.bank_words = bank_words
        self.single_port = single_port and not self.banked
        self.latency = 2 if self.banked else 1
        init = load.hw_init() if load is not None else image
        self.memories: dict[str, Memory] = {}
        self._ports = []  # per memory: (read ports, write port or None)
        step = bank_words if self.banked else self.depth
        for b in range(0 if spram else -(-self.depth // step)):
            mem = Memory(shape=unsigned(width), depth=min(step, self.depth - b * step),
                         init=init[b * step:(b + 1) * step] if self.banked else init,
                         attrs=LOADED_MEMORY_ATTRS if load is not None else None)
            self.memories[f"{name}_{b}" if self.banked else name] = mem
            self._ports.append(([mem.read_port() for _ in range(reads)],
                                mem.write_port() if load is not None else None))
        super().__init__({
            "addr": In(range(max(self.words, 2))).array(reads),
            "en": In(1),
            "data": Out(width).array(reads),
            **({"load": In(load.signature)} if load is not None else {}),
        })

    def elaborate(self, platform):
        m = Module()
        load = self.load if self.load_port is not None else None
        if self.spram:
            self._spram_blocks(m)
        elif not self.banked:
            (rports, wp), = self._ports
            for r, rp in enumerate(rports):
                m.d.comb += [rp.addr.eq(self.addr[r]), rp.en.eq(self.en), self.data[r].eq(rp.data)]
            if self.single_port:
                m.d.comb += rports[0].addr.eq(Mux(load.en, load.addr, self.addr[0]))
            if wp is not None:
                m.d.comb += [wp.addr.eq(load.addr), wp.data.eq(load.data), wp.en.eq(load.en)]
        else:
            # Every bank is read at each entry's low address bits; its read data is
            # registered, and the entry's bank, registered along, selects among them.
            lo = exact_log2(self.bank_words)
            q = [[] for _ in range(self.reads)]  # q[r][bank]: the bank's registered read data
            for b, (rports, wp) in enumerate(self._ports):
                for r, rp in enumerate(rports):
                    m.d.comb += [rp.addr.eq(self.addr[r][:lo]), rp.en.eq(self.en)]
                    q[r].append(register(m, f"wbank_{b}_{r}", rp.data, reset_less=True))
                if wp is not None:
                    m.d.comb += [wp.addr.eq(load.addr[:lo]), wp.data.eq(load.data),
                                 wp.en.eq(load.en & (load.addr[lo:] == b))]
            for r in range(self.reads):
                sel = register(m, f"wbank_sel_{r}",
                               register(m, f"w_bank_{r}", self.addr[r][lo:]))
                m.d.comb += self.data[r].eq(Array(q[r])[sel])
        return m

    def _spram_blocks(self, m: Module) -> None:
        """``SB_SPRAM256KA`` blocks, 16 bits each, side by side.

        Reads and the loader's writes share the address; the blocks are
        selected only on a read or a write, so the data output holds between
        reads like a read port's.
        """
        load = self.load
        addr = Signal(range(max(self.words, 2)), name="spram_addr")
        en = Signal(name="spram_en")
        m.d.comb += [addr.eq(Mux(load.en, load.addr, self.addr[0])), en.eq(self.en)]
        for c in range(-(-self.width // 16)):
            lo, hi = 16 * c, min(16 * c + 16, self.width)
            dout = Signal(16, name=f"spram{c}_dout")
            m.submodules[f"spram{c}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr,
                i_DATAIN=load.data[lo:hi], i_MASKWREN=Const(0b1111, 4), i_WREN=load.en,
                i_CHIPSELECT=en | load.en, i_CLOCK=ClockSignal(), i_STANDBY=Const(0),
                i_SLEEP=Const(0), i_POWEROFF=Const(1), o_DATAOUT=dout)
            m.d.comb += self.data[0][lo:hi].eq(dout[:hi - lo])
