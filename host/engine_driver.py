"""Driver for one MLP engine, over an abstract pipe of command/response beats.

The driver neither knows nor cares whether the pipe leads to a simulator or a
device: a pipe only moves integers (packed with :mod:`hw.mlp_isa`'s layouts).
The cocotb testbenches give it stream models; a device transport would give
it a DMA queue.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hw.mlp_isa import Opcode, Status

from .mlp_program import EngineError, EngineTarget, MLPProgram

__all__ = ["EnginePipe", "EngineDriver"]


class EnginePipe(Protocol):
    async def send(self, beats: list[int]) -> None:
        """Queue command beats, in order."""

    async def recv(self) -> int:
        """The next response beat."""


class EngineDriver:
    def __init__(self, pipe: EnginePipe, target: EngineTarget):
        self.pipe = pipe
        self.target = target

    async def read_frame(self) -> list[int]:
        """Response beats up to and including the next trailer."""
        beats = []
        while True:
            beats.append(await self.pipe.recv())
            if self.target.unpack_response(beats[-1])["last"]:
                return beats

    async def expect_status(self) -> tuple[Status, int]:
        frame = await self.read_frame()
        t = self.target.unpack_response(frame[-1])
        if len(frame) != 1:
            raise ValueError(f"expected a status beat, got a {len(frame)}-beat frame")
        return Status(t["status"]), t["info"]

    async def set_split(self, split) -> None:
        """(engine 0) Set the array's mode (a square split factor or a
        ``(rows, columns)`` mode, :meth:`hw.config.ArrayConfig.mode`); waits
        for the engines."""
        await self.pipe.send([self.target.pack(
            Opcode.SET_SPLIT, split={"index": self.target.config.mode_index(split)})])
        status, info = await self.expect_status()
        if status != Status.OK:
            raise EngineError(status, info)

    async def load(self, program: MLPProgram) -> None:
        await self.pipe.send(program.load_commands)

    async def run(self, program: MLPProgram, x: np.ndarray, *,
                  overlap: bool = False) -> tuple[np.ndarray, list[int]]:
        """Run a batch of any size (split into runs the buffers hold).

        With ``overlap`` the runs alternate between the two halves of the
        activation buffers and all their commands are sent at once: the
        engine takes a run's inputs while the run before computes, and
        computes it while the answer before leaves (:mod:`hw.mlp_isa`).
        Without, one run at a time, each from word 0.

        Returns the int8 outputs and the cycle count of each run.
        """
        x = np.asarray(x)
        half = self.target.config.act_words(self.target.engine) // 2
        step = program.max_rows_per_run(half if overlap else None)
        if step == 0:
            raise ValueError("overlap: a row of this MLP does not fit half of the "
                             "activation buffer")
        parts = [x[s:s + step] for s in range(0, x.shape[0], step)]
        outs, cycles = [], []

        async def answer(part):
            y, c = program.decode_run(await self.read_frame(), part.shape[0])
            outs.append(y)
            cycles.append(c)

        for i, part in enumerate(parts):
            base = (i % 2) * half if overlap else 0
            await self.pipe.send(program.input_commands(part, base)
                                 + [program.run_command(part.shape[0], base)])
            if not overlap:
                await answer(part)
        if overlap:
            for part in parts:
                await answer(part)
        return np.concatenate(outs), cycles
