"""cuda_rtc's programmatic dependent launch on a GPU of compute capability 9.0+: a kernel launched with it starts
while the kernel before it (which let it, ``griddepcontrol.launch_dependents``) still runs, and its
``griddepcontrol.wait`` returns only after that kernel has finished."""

import pytest
import torch

from fastvideo_quant.kernels import cuda_rtc

needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                                reason="programmatic dependent launch needs compute capability 9.0+")

STAMP = r"""
extern "C" __global__ void stamp(unsigned long long* t, int spin_ns) {
  unsigned long long t0, t1, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - t1 < (unsigned long long)spin_ns);
  t[0] = t0; t[1] = t1; t[2] = now;  // entered, past the wait, finished
}
"""


@needs_sm90
@pytest.mark.parametrize("pdl", [True, False])
def test_a_pdl_launch_starts_before_the_previous_kernel_ends_and_waits_for_it(pdl):
    index = torch.cuda.current_device()
    kernel = cuda_rtc.compile_kernel(STAMP, "stamp", index)
    launch = kernel.launcher("pi", (32, 1, 1), pdl=pdl)
    t = torch.zeros(2, 3, dtype=torch.int64, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(3):  # (the first round loads the module)
        launch((1, 1, 1), stream, t[0].data_ptr(), 50_000)  # 50 µs of spinning
        launch((1, 1, 1), stream, t[1].data_ptr(), 0)
        torch.cuda.synchronize()
    first, second = t.tolist()
    assert second[1] >= first[2]  # past the wait only once the first kernel has finished, with or without PDL
    if pdl:
        assert second[0] < first[2] - 10_000  # entered while the first one still spun
    else:
        assert second[0] >= first[2]
