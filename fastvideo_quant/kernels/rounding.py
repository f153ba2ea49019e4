"""Round-to-nearest inside Triton kernels, the same on the GPU and under the CPU interpreter.

``round_half``: to the nearest integer, ties to even, exactly like ``torch.round`` (what bitsandbytes uses). On the
GPU ``libdevice.rint``; Triton's CPU interpreter has no libdevice, so there by hand — the same result, ties included
(until the fifteenth session the interpreter rounded ties away from zero, so an interpreted kernel could put an int8
code one step off the GPU's and bitsandbytes' at an exact ``.5``).

``round_e4m3``: to the nearest float8 e4m3 value (the GPU cast does this; the interpreter's cast
does not carry a mantissa overflow into the exponent, so interpreted kernels round by hand first).

Shared by the core kernels and the plugins' kernels.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def round_half(y, USE_RINT: tl.constexpr):
    if USE_RINT:
        r = libdevice.rint(y)
    else:
        # Half to even without floor(y + 0.5): that sum rounds up in fp32 for y just below k + 0.5
        # (0.49999997 + 0.5 == 1.0). y - floor(y) is exact for |y| < 2**23 (and 0 above, where y is an integer).
        f = tl.floor(y)
        d = y - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        r = f + tl.where((d > 0.5) | ((d == 0.5) & odd), 1.0, 0.0)
    return r


@triton.jit
def round_e4m3(v):
    """Round fp32 ``v`` (already clamped to ±448) to the nearest float8_e4m3fn value, ties to even.

    The cast that follows is then exact. Done by hand because Triton 3.9's interpreter
    casts fp32→fp8 without carrying a mantissa overflow into the exponent (31→16, 127→64),
    so the CPU-tested kernel would not be the GPU one otherwise. e4m3: 3 mantissa bits,
    normals from 2^-6, subnormal spacing 2^-9 (OCP FP8 spec).
    """
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)
    up = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)  # 2^(3-e): one fp8 ulp becomes 1.0
    down = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    t = a * up  # exact (a power-of-two scaling)
    # Not floor(t + 0.5): that sum rounds up in fp32 for t just below k + 0.5 (0.49999997 + 0.5 == 1.0).
    f = tl.floor(t)
    d = t - f  # exact
    f_odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    r = tl.where((d > 0.5) | ((d == 0.5) & f_odd), f + 1.0, f) * down
    # the sign bit, not v < 0: -0.0 and small negatives stay -0.0, as torch's cast keeps them
    return tl.where(v.to(tl.int32, bitcast=True) < 0, -r, r)
