"""Round-to-nearest inside Triton kernels.

On the GPU ``libdevice.rint`` rounds half to even, exactly like ``torch.round``
that bitsandbytes uses. Triton's CPU interpreter has no libdevice, so there the
kernels round half away from zero; the two differ only on exact ``.5`` ties.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def round_half(y, USE_RINT: tl.constexpr):
    if USE_RINT:
        r = libdevice.rint(y)
    else:
        # Round half away from zero without floor(y + 0.5): that sum rounds up in fp32 for
        # y just below k + 0.5 (e.g. 0.49999997 + 0.5 == 1.0). y - trunc(y) is exact for |y| < 2**23.
        t = tl.where(y >= 0, tl.floor(y), tl.ceil(y))
        d = y - t
        r = t + tl.where(d >= 0.5, 1.0, tl.where(d <= -0.5, -1.0, 0.0))
    return r


__all__ = ["round_half", "triton"]
