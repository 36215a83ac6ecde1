"""tools/sass_loops.py: finding the loops of a SASS listing and their instruction mix."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import sass_loops  # noqa: E402

LISTING = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
        /*0020*/              @!P0 IMAD.WIDE.U32 R2, R0, 0x4, R2 ;         /* 0x0000000400029825 */
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;            /* 0x0000000402047981 */
        /*0040*/                   FADD R4, R4, 1 ;                        /* 0x3f80000004047421 */
        /*0050*/                   STG.E desc[UR4][R2.64], R4 ;            /* 0x0000000402007986 */
        /*0060*/               @P1 BRA 0x20 ;                              /* 0xfffffffc00f01947 */
        /*0070*/                   BRA 0x90 ;                              /* 0x0000000000047947 */
        /*0080*/                   NOP ;                                   /* 0x0000000000007918 */
        /*0090*/                   EXIT ;                                  /* 0x000000000000794d */
"""


def test_backward_branches_are_the_loops():
    loops = sass_loops.loops(LISTING)
    assert [(start, end) for start, end, _ in loops] == [(0x20, 0x60)]  # the forward BRA is not
    body = loops[0][2]
    assert [sass_loops.opcode(t) for t in body] == ["IMAD", "LDG", "FADD", "STG", "BRA"]
