"""Peak host memory (RSS) of ``fvq quantize`` and ``load_checkpoint``: they stream, so the peak is an output shard (or
the model) plus a few tensors, never the source checkpoint again on top; and AWQ's ``quantize_weight`` needs a few
float32 copies of the weight, not int64 ones.

Measured in one child process (``/proc/self/status``), after importing torch and the package and loading the
plugins: before each operation its peak (``VmHWM``) is reset to its RSS, and the operation's peak is the growth
above that. RSS counts the pages of memory-mapped files that were read, so ``fvq quantize`` reads with ``pread``
(that peak is what it holds); ``load_checkpoint`` reads through the faster mapping, whose pages are page cache, so
its peak is measured as anonymous memory (``RssAnon``, sampled). ``benchmarks/memory_peak.py`` measures the same on a
2.4 GiB checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, random_state_dict

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads /proc/self (Linux)")
#: safetensors < 0.8 has no pread backend: reads go through a mapping of the file, as documented (the checkpoint's
#: size more), so the tests of what reading holds do not apply.
needs_pread = pytest.mark.skipif(tuple(int(p) for p in safetensors.__version__.split(".")[:2]) < (0, 8),
                                 reason=f"safetensors {safetensors.__version__} < 0.8 reads through mmap only")

# 6 blocks of 4 x 1024x1024 + 3 x 4096x1024 linears: ~190 MiB of bf16; the largest tensor is 16 MiB in float32.
CFG = DemoConfig(hidden_size=1024, num_heads=8, num_kv_heads=8, intermediate_size=4096, num_layers=6, in_channels=64)
MIB = 2**20
#: glibc serves allocations up to a threshold from its heap and raises that threshold (up to 32 MiB) as large blocks
#: are freed, so a run of 4-16 MiB tensors can leave 50-100 MiB of freed heap resident, varying run to run. A fixed
#: threshold takes the allocator's policy out of what is measured (and returns each freed tensor at once, so one
#: process measures the operations one after the other): these tests guard what the code holds.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": "1"}

CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from fastvideo_quant.demo.model import DemoConfig, DemoDiT
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config
    from fastvideo_quant.quantize import quantize_checkpoint
    from fvq_awq.quantizer import quantize_weight

    def rss(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def peak(fn):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        base = rss("VmRSS")
        size = fn()
        return rss("VmHWM") - base, size

    def peak_anon(fn):
        # RssAnon (memory the process holds, not pages of mapped files) has no high-water mark: sampled every 1 ms
        import threading, time
        base, top, done = rss("RssAnon"), [0], threading.Event()

        def sample():
            while not done.is_set():
                top[0] = max(top[0], rss("RssAnon"))
                time.sleep(0.001)

        thread = threading.Thread(target=sample)
        thread.start()
        try:
            size = fn()
        finally:
            done.set()
            thread.join()
        return max(top[0], rss("RssAnon")) - base, size

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    src, cfg, shard = Path(sys.argv[1]), DemoConfig(**json.loads(sys.argv[2])), int(sys.argv[3])
    resolve_quant_config("fp8")  # loads the plugins
    out = {}
    out["quantize"], out["output_bytes"] = peak(
        lambda: quantize_checkpoint(src, src.parent / "fp8", "fp8", max_shard_bytes=shard).bytes_out)
    w = (torch.randn(8192, 4096) * 0.02).to(torch.bfloat16)  # one weight as fvq quantize hands it to AWQ
    out["awq_weight"], _ = peak(lambda: nbytes(quantize_weight(w, group_size=128).values()))
    out["awq_weight_f32"] = w.numel() * 4
    w, x = w[:4096], torch.randn(16, 4096)  # with calibration activations: the clip search
    out["awq_calibrated"], _ = peak(lambda: nbytes(quantize_weight(w, x, group_size=128).values()))
    out["awq_calibrated_f32"] = w.numel() * 4
    del w
    from fvq_awq.layout import repack_to_kernel  # loading: AutoAWQ tensors -> the kernel layout, an 8192x4096 layer
    qweight = torch.randint(-2**31, 2**31 - 1, (4096, 1024), dtype=torch.int64).to(torch.int32)
    qzeros, scales = qweight[:32].clone(), torch.rand(32, 8192).half()
    out["awq_repack"], out["awq_repack_result"] = peak(lambda: nbytes(repack_to_kernel(qweight, qzeros, scales, 128)[:3]))
    del qweight, qzeros, scales

    def load():
        model = DemoDiT(cfg, torch.bfloat16)
        load_checkpoint(model, src)
        return nbytes(model.parameters())

    out["load"], out["model_bytes"] = peak_anon(load)  # (mapped checkpoint pages are page cache, not held)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict:
    src = tmp_path_factory.mktemp("mem") / "src"
    src.mkdir()
    sd = random_state_dict(CFG, seed=0)
    names = sorted(sd)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: sd[n] for n in part}, str(src / fname))
        weight_map |= dict.fromkeys(part, fname)
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (src / "config.json").write_text(json.dumps(CFG.to_dict()))
    found = {"checkpoint_bytes": sum(t.numel() * t.element_size() for t in sd.values()),
             "largest_f32": max(t.numel() for t in sd.values()) * 4, "shard": 32 * MIB}
    del sd
    cfg = json.dumps({k: v for k, v in CFG.to_dict().items() if k != "model_type"})
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), cfg, str(found["shard"])], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **CHILD_ENV})
    assert proc.returncode == 0, proc.stderr
    return found | json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


@needs_pread
def test_quantize_peak_is_a_shard_and_a_few_tensors_not_the_source(peaks):
    # Streaming needs one output shard (32 MiB here) and a float32 copy of the tensor being quantized with the
    # method's temporaries; the source checkpoint (192 MiB) is never held. Bound: the shard + 6x the largest tensor
    # in float32 (128 MiB). Measured: 73 MiB; 242 MiB when reads were views of a mapping kept open (the whole source).
    bound = peaks["shard"] + 6 * peaks["largest_f32"]
    assert peaks["quantize"] < bound, (
        f"fvq quantize of a {_mib(peaks['checkpoint_bytes'])} checkpoint peaked at {_mib(peaks['quantize'])} above "
        f"the baseline, more than {_mib(bound)} (one {_mib(peaks['shard'])} shard + 6x the largest tensor in "
        f"float32): the source is held in memory, or read through a mapping kept open. {peaks}")


def test_load_peak_is_the_model_and_a_few_tensors_not_the_checkpoint_again(peaks):
    # The model's own bf16 weights (192 MiB) are what a load must hold; a copy of the checkpoint on top would double
    # it. Measured as anonymous memory: the load reads through a mapping (fast), whose pages are the OS's page cache.
    # Bound: the model + 4x the largest tensor in float32 (256 MiB). Measured: ~195 MiB.
    bound = peaks["model_bytes"] + 4 * peaks["largest_f32"]
    assert peaks["load"] < bound, (
        f"load_checkpoint of a {_mib(peaks['checkpoint_bytes'])} checkpoint into a {_mib(peaks['model_bytes'])} model "
        f"peaked at {_mib(peaks['load'])} above the baseline, more than {_mib(bound)} (the model + 4x the largest "
        f"tensor in float32): the checkpoint is held in memory too, or read through a mapping kept open. {peaks}")


@needs_pread
def test_reading_a_tensor_leaves_no_mapped_file_pages(tmp_path):
    """What the two above measure, on one file: tensors read through the checkpoint reader are ordinary memory,
    freed with the tensor, not pages of a mapping of the file that stay resident while it is open."""
    from fastvideo_quant.lazy import materialize
    from fastvideo_quant.loader import lazy_slice, open_safetensors

    def rss_file() -> int:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("RssFile:"))

    path = tmp_path / "m.safetensors"
    save_file({f"t{i}": torch.ones(1024, 1024) for i in range(16)}, str(path))  # 64 MiB
    with open_safetensors(path, pread=True) as handle:
        before = rss_file()
        for name in handle.keys():
            assert float(materialize(lazy_slice(handle, name)).sum()) == 1024 * 1024
            assert float(handle.get_tensor(name).sum()) == 1024 * 1024
        grown = rss_file() - before
    assert grown < 16 * MIB, f"reading 64 MiB of tensors left {_mib(grown)} of the file mapped and resident"


def test_awq_quantize_weight_temporaries_are_a_few_float32_copies(peaks):
    # RTN on an 8192x4096 weight (128 MiB in float32): the float32 weight, its codes, and the packing's int64 chunks.
    # Measured: 3.1x; 7.3x when the codes were packed whole (three int64 [in, out] temporaries, 8 bytes a value).
    ratio = peaks["awq_weight"] / peaks["awq_weight_f32"]
    assert ratio < 5, (f"AWQ quantize_weight of an 8192x4096 weight peaked at {_mib(peaks['awq_weight'])} above the "
                       f"baseline, {ratio:.1f}x its float32 size (bound 5x). {peaks}")


def test_awq_clip_search_temporaries_are_a_few_float32_copies(peaks):
    # The same with calibration activations (a 4096x4096 weight, 64 MiB in float32): each clip ratio's candidate is
    # de-quantized in place. Measured: 3.4x (deterministic with the fixed malloc threshold); 5.3x when each candidate
    # took three float32 copies, 7.5x with the whole-matrix packing too.
    ratio = peaks["awq_calibrated"] / peaks["awq_calibrated_f32"]
    assert ratio < 4.4, (f"AWQ quantize_weight with activations of a 4096x4096 weight peaked at "
                       f"{_mib(peaks['awq_calibrated'])} above the baseline, {ratio:.1f}x its float32 size (bound 4.4x). "
                       f"{peaks}")


def test_awq_repack_on_load_needs_little_beyond_its_result(peaks):
    # Repacking AutoAWQ's words into the kernel layout went through int64 copies of every code of the layer at once:
    # 577 MiB for this 8192x4096 layer (1.5 GiB for a fused 22016x4096 gate_up); in chunks of output rows, ~100 MiB.
    extra = peaks["awq_repack"] - peaks["awq_repack_result"]
    assert extra < 200 * MIB, (f"repack_to_kernel of an 8192x4096 AWQ layer ({_mib(peaks['awq_repack_result'])} of "
                               f"results) peaked {_mib(extra)} above them (bound 200 MiB). {peaks}")


def test_safetensors_without_a_pread_backend_is_read_through_mmap(tmp_path, monkeypatch):
    """safetensors < 0.8 refuses ``backend=``: the files are opened the old way, and read the same."""
    from safetensors import safe_open

    from fastvideo_quant.loader import files

    def old_safe_open(path, framework, **kwargs):
        if kwargs:
            raise TypeError(f"safe_open() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return safe_open(path, framework)

    monkeypatch.setattr(files, "safe_open", old_safe_open)
    monkeypatch.setattr(files, "_PREAD", [])
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp_path / "m.safetensors"))
    for _ in range(2):  # the second open knows the answer
        with files.open_safetensors(tmp_path / "m.safetensors", pread=True) as handle:
            assert torch.equal(handle.get_tensor("w"), torch.arange(6.0).reshape(2, 3))
    assert files._PREAD == [False]
