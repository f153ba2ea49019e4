"""L2 prefetch and programmatic dependent launch (PDL) helpers for the weight-streaming kernels.

Below a few hundred tokens a quantized linear is a stream over its weight, and Triton's software pipeline keeps
only ``num_stages - 1`` K steps of it in flight per program. :func:`prefetch_l2` issues a fire-and-forget
``prefetch.global.L2`` per 128-byte line (SASS ``CCTL.E.PF2``): no register, no shared memory, nothing to wait
on, so a program can ask for its weight a few steps further ahead than its pipeline holds, and before
``gdc_wait`` — while the kernel it depends on (the activation quantization) is still running.

``griddepcontrol`` (Hopper+): a kernel launched with ``launch_pdl=True`` may start once every program of the kernel
before it on the stream has called ``gdc_launch_dependents`` (or exited); its ``gdc_wait`` then blocks until that
kernel has finished and its writes are visible. Both are no-ops for a kernel launched without PDL.

GPU only: the Triton interpreter runs no inline PTX, so callers pass their prefetch distance as 0 there.
Imported lazily (CUDA, or tests under ``TRITON_INTERPRET=1``): CPU installs may lack triton.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Bytes one ``prefetch.global.L2`` brings in (an L2 line); a constexpr, so kernels can use it.
LINE = tl.constexpr(128)


@triton.jit
def prefetch_l2(ptrs):
    """Hint: bring the L2 lines holding ``ptrs`` (a tensor of global pointers) into L2. Returns nothing."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)
