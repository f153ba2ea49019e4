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
        r = tl.where(y >= 0, tl.floor(y + 0.5), tl.ceil(y - 0.5))
    return r


__all__ = ["round_half", "triton"]
