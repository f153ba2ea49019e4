"""The packed 16-bit de-quantize PTX (``fvq_awq.kernels.common._packed_asm``) run through a small emulator on CPU.

The Triton interpreter cannot execute inline PTX, so CI checks the instructions themselves: every op the asm uses
(``mov``, ``prmt``, ``lop3``, ``shr``, packed ``fma``) is emulated bit for bit on uint32 lanes, and the outputs
must be ``q - z`` exactly for every code and zero point, in both words of a pair. On a GPU the same asm runs inside
``awq_gemm_t`` (``test_kernels.py``) and is compared with the float32 path there.
"""

import re

import pytest
import torch

pytest.importorskip("triton")

from fvq_awq.kernels.common import (  # noqa: E402
    PACKED_ASM_BF16,
    PACKED_ASM_BF16_4Z,
    PACKED_ASM_F16,
    PACKED_ASM_F16_4Z,
)

M32 = 0xFFFFFFFF


def _prmt(a: int, b: int, sel: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * k)) & 0x7] << (8 * k) for k in range(4))


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def _halves(v: int, dtype) -> torch.Tensor:
    return torch.tensor([v & 0xFFFF, v >> 16], dtype=torch.int32).to(torch.int16).view(dtype)


def _fma2(a: int, b: int, c: int, dtype) -> int:
    """Packed ``a * b + c``, each half rounded once to ``dtype`` (the inputs here make every product exact)."""
    r = (_halves(a, dtype).double() * _halves(b, dtype).double() + _halves(c, dtype).double()).to(dtype)
    lo, hi = (int(h) & 0xFFFF for h in r.view(torch.int16))
    return lo | (hi << 16)


def run_asm(asm: str, operands: dict[int, int]) -> dict[int, int]:
    """Execute the asm block on one pack: ``operands`` maps ``$n`` → uint32; returns every ``$n`` after the block."""
    regs = {f"${n}": v for n, v in operands.items()}
    dtype = {"bf16x2": torch.bfloat16, "f16x2": torch.float16}

    def val(tok: str) -> int:
        tok = tok.strip()
        return int(tok, 16) & M32 if tok.startswith("0x") else int(tok) if tok.isdigit() else regs[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [t.strip() for t in args.split(",")]
        if op == "mov.b32":
            regs[a[0]] = val(a[1])
        elif op == "prmt.b32":
            regs[a[0]] = _prmt(val(a[1]), val(a[2]), val(a[3]))
        elif op == "lop3.b32":
            regs[a[0]] = _lop3(val(a[1]), val(a[2]), val(a[3]), val(a[4]))
        elif op == "shr.b32":
            regs[a[0]] = val(a[1]) >> val(a[2])
        elif m := re.fullmatch(r"fma\.rn\.(bf16x2|f16x2)", op):
            regs[a[0]] = _fma2(val(a[1]), val(a[2]), val(a[3]), dtype[m.group(1)])
        else:
            raise AssertionError(f"the emulator does not know {op!r}: teach it before using the op")
    return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}


def _neg_zero(z: int, bf16: bool) -> int:  # fvq_awq.kernels.common.packed_neg_zero, in Python
    return ((z | (0xC300 if bf16 else 0xE400)) * 0x10001) & M32


@pytest.mark.parametrize("asm, dtype", [(PACKED_ASM_BF16.value, torch.bfloat16), (PACKED_ASM_F16.value, torch.float16)])
def test_packed_asm_gives_q_minus_z_exactly(asm, dtype):
    gen = torch.Generator().manual_seed(0)
    cases = [(q, z) for q in range(16) for z in range(16)]
    for q, z in cases:  # every code against every zero point, as both words, plus a random neighbour
        za, zb = z, int(torch.randint(0, 16, (1,), generator=gen))
        for nib in range(8):
            other = int(torch.randint(0, 2**32, (1,), generator=gen, dtype=torch.int64))
            wa = (q << (4 * nib)) | (other & ~(0xF << (4 * nib)) & M32)
            wb = int(torch.randint(0, 2**32, (1,), generator=gen, dtype=torch.int64))
            out = run_asm(asm, {8: wa, 9: wb, 10: _neg_zero(za, dtype is torch.bfloat16),
                                11: _neg_zero(zb, dtype is torch.bfloat16)})
            for i in range(8):
                got = _halves(out[i], dtype).float().tolist()
                want = [((wa >> (4 * i)) & 0xF) - za, ((wb >> (4 * i)) & 0xF) - zb]
                assert got == want, (f"nibble {i} of words ({wa:#010x}, {wb:#010x}), zeros ({za}, {zb}): "
                                     f"{got} != {want}")


@pytest.mark.parametrize("asm, dtype", [(PACKED_ASM_BF16_4Z.value, torch.bfloat16),
                                        (PACKED_ASM_F16_4Z.value, torch.float16)])
def test_packed_asm_with_a_zero_per_byte(asm, dtype):
    """The groups-of-32/64 variant: byte ``b`` (nibbles ``2b``, ``2b + 1``) subtracts the zero points in
    ``$(10 + 2b)`` / ``$(11 + 2b)`` (one per word of the pair) — every code against every zero, in every byte."""
    gen = torch.Generator().manual_seed(1)
    bf16 = dtype is torch.bfloat16
    for q in range(16):
        for z in range(16):
            wa, wb = (int(v) for v in torch.randint(0, 2**32, (2,), generator=gen, dtype=torch.int64))
            wa = (wa & ~(0xF << (4 * (q % 8))) & M32) | (q << (4 * (q % 8)))  # code q in nibble q % 8 of word a
            za = [z] + [int(v) for v in torch.randint(0, 16, (3,), generator=gen)]
            zb = [int(v) for v in torch.randint(0, 16, (4,), generator=gen)]
            za = za[-(q % 4):] + za[:-(q % 4)] if q % 4 else za  # z visits every byte
            ops = {8: wa, 9: wb}
            for b in range(4):
                ops[10 + 2 * b], ops[11 + 2 * b] = _neg_zero(za[b], bf16), _neg_zero(zb[b], bf16)
            out = run_asm(asm, ops)
            for i in range(8):
                got = _halves(out[i], dtype).float().tolist()
                want = [((wa >> (4 * i)) & 0xF) - za[i // 2], ((wb >> (4 * i)) & 0xF) - zb[i // 2]]
                assert got == want, f"nibble {i}, words ({wa:#010x}, {wb:#010x}), zeros {za} / {zb}: {got} != {want}"


def test_emulator_refuses_unknown_ops():
    with pytest.raises(AssertionError, match="does not know"):
        run_asm("{\nadd.u32 $0, $1, $2;\n}", {1: 1, 2: 2})
