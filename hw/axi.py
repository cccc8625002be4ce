"""AXI4 interface signatures (the read half, for the embedding channels).

Members are named as in the AXI4 specification (``araddr``, ``arvalid``,
``rdata``, ...), so that a port ``m0`` of this signature becomes the Verilog
ports ``m0__araddr``, ``m0__arvalid``, ``m0__rdata``, ... and drops in beside
an FPGA's HBM or DDR controller after a rename. Only incrementing bursts of
full-width beats are issued (``arburst = INCR``, ``arsize = log2(bytes)``).
"""

from amaranth.hdl import unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Burst", "Resp", "AXI4ReadSignature"]


class Burst(enum.Enum, shape=2):
    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.Enum, shape=2):
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


class AXI4ReadSignature(wiring.Signature):
    """The AR and R channels of an AXI4 manager (master).

    Parameters
    ----------
    addr_width, data_width, id_width : int
    """

    def __init__(self, *, addr_width: int, data_width: int, id_width: int):
        if data_width % 8 or data_width & (data_width - 1):
            raise ValueError(f"data_width must be a power of two of at least 8, "
                             f"not {data_width!r}")
        self.addr_width = addr_width
        self.data_width = data_width
        self.id_width = id_width
        super().__init__({
            "araddr": Out(unsigned(addr_width)),
            "arlen": Out(unsigned(8)),
            "arsize": Out(unsigned(3)),
            "arburst": Out(Burst),
            "arid": Out(unsigned(id_width)),
            "arvalid": Out(1),
            "arready": In(1),
            "rdata": In(unsigned(data_width)),
            "rid": In(unsigned(id_width)),
            "rresp": In(Resp),
            "rlast": In(1),
            "rvalid": In(1),
            "rready": Out(1),
        })

    def __eq__(self, other):
        return (isinstance(other, AXI4ReadSignature)
                and (self.addr_width, self.data_width, self.id_width)
                == (other.addr_width, other.data_width, other.id_width))

    def __repr__(self):
        return (f"AXI4ReadSignature(addr_width={self.addr_width}, "
                f"data_width={self.data_width}, id_width={self.id_width})")
