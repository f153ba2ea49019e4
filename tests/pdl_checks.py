"""A GPU check shared by the tests of kernels launched with programmatic dependent launch (PDL)."""

import torch


def assert_pdl_layers_match_plain(layer, x: torch.Tensor, depth: int = 6) -> torch.Tensor:
    """``layer(y, pdl)`` maps ``[M, K]`` to ``[M, K]``: ``depth`` layers feeding each other, launched with PDL, must
    equal the plain launches bit for bit — eagerly (three times) and as CUDA-graph replays on fresh inputs. A kernel
    that read its input (the previous kernel's output) or wrote before its wait would differ. Returns the plain
    output (for the caller's own bounds)."""

    def layers(pdl: bool) -> torch.Tensor:
        y = x
        for _ in range(depth):
            y = layer(y, pdl)
        return y

    plain = layers(False)
    for _ in range(3):
        assert torch.equal(layers(True), plain)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layers(True)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, layers(False))
    return plain
