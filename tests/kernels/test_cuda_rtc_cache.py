"""The on-disk cache of NVRTC-compiled cubins (``cuda_rtc.cache_dir``): what is kept where, when it is reused, and
what happens to a damaged or unwritable cache. NVRTC itself is replaced by a stand-in on CPU; the GPU test loads a
real kernel from a damaged cache file."""

import pytest
import torch

from fastvideo_quant.kernels import cuda_rtc

SRC = 'extern "C" __global__ void k(int* p) { if (p) p[threadIdx.x] = FVQ_V; }'


@pytest.fixture
def fake_nvrtc(monkeypatch, tmp_path):
    calls = []

    def compile_cubin(source, name, arch, defines=(), options=()):
        calls.append((name, arch, dict(defines)))
        return b"\x7fELF" + repr((source, name, arch, sorted(dict(defines).items()))).encode()

    monkeypatch.setattr(cuda_rtc, "compile_cubin", compile_cubin)
    monkeypatch.setattr(cuda_rtc, "nvrtc_version", lambda: (13, 0))
    monkeypatch.setenv("FVQ_CACHE_DIR", str(tmp_path))
    cuda_rtc._compiled.cache_clear()
    yield calls
    cuda_rtc._compiled.cache_clear()


def _files(tmp_path):
    return sorted((tmp_path / "nvrtc").iterdir())


def test_a_new_process_loads_the_cubin_from_disk(fake_nvrtc, tmp_path):
    a = cuda_rtc._compiled(SRC, "k", "sm_90", (("FVQ_V", 1),))
    cuda_rtc._compiled.cache_clear()  # what a new process starts with
    assert cuda_rtc._compiled(SRC, "k", "sm_90", (("FVQ_V", 1),)) == a
    assert len(fake_nvrtc) == 1
    (f,) = _files(tmp_path)
    assert f.name.startswith("k-sm_90-") and f.read_bytes() == a


def test_everything_the_cubin_depends_on_gets_its_own_file(fake_nvrtc, monkeypatch, tmp_path):
    variants = [(SRC, "k", "sm_90", (("FVQ_V", 1),)), (SRC + " ", "k", "sm_90", (("FVQ_V", 1),)),
                (SRC, "k", "sm_80", (("FVQ_V", 1),)), (SRC, "k", "sm_90", (("FVQ_V", 2),)),
                (SRC, "k2", "sm_90", (("FVQ_V", 1),))]
    for v in variants:
        cuda_rtc._compiled(*v)
    monkeypatch.setattr(cuda_rtc, "nvrtc_version", lambda: (13, 1))  # a new toolchain
    cuda_rtc._compiled.cache_clear()
    cuda_rtc._compiled(*variants[0])
    assert len(fake_nvrtc) == 6 and len(_files(tmp_path)) == 6


def test_a_damaged_file_is_compiled_again_and_replaced(fake_nvrtc, tmp_path):
    good = cuda_rtc._compiled(SRC, "k", "sm_90", ())
    (f,) = _files(tmp_path)
    f.write_bytes(b"not a cubin")
    cuda_rtc._compiled.cache_clear()
    assert cuda_rtc._compiled(SRC, "k", "sm_90", ()) == good
    assert len(fake_nvrtc) == 2 and f.read_bytes() == good
    assert [p.name for p in _files(tmp_path)] == [f.name]  # no temporary files left behind


def test_fvq_cache_dir_0_keeps_none(fake_nvrtc, monkeypatch, tmp_path):
    monkeypatch.setenv("FVQ_CACHE_DIR", "0")
    assert cuda_rtc.cache_dir() is None
    cuda_rtc._compiled(SRC, "k", "sm_90", ())
    cuda_rtc._compiled.cache_clear()
    cuda_rtc._compiled(SRC, "k", "sm_90", ())
    assert len(fake_nvrtc) == 2 and not (tmp_path / "nvrtc").exists()


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FVQ_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cuda_rtc.cache_dir() == tmp_path / "fastvideo_quant" / "nvrtc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cuda_rtc.cache_dir() == tmp_path / ".cache" / "fastvideo_quant" / "nvrtc"


def test_an_unwritable_folder_warns_once_and_still_compiles(fake_nvrtc, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FVQ_CACHE_DIR", str(blocker))  # its nvrtc/ folder cannot be made
    cuda_rtc._warn_unwritable.cache_clear()
    with pytest.warns(UserWarning, match="cannot write compiled CUDA kernels to .*a-file.*FVQ_CACHE_DIR"):
        out = cuda_rtc._compiled(SRC, "k", "sm_90", ())
    assert out.startswith(b"\x7fELF")
    cuda_rtc._warn_unwritable.cache_clear()


@pytest.fixture
def fake_driver(fake_nvrtc, monkeypatch):
    """``compile_kernel`` on CPU: capability 9.0, and a loader that refuses cubins whose bytes say so."""
    loads = []

    def loaded(cubin, name, device_index):
        loads.append(cubin)
        if b"refuse" in cubin:
            raise cuda_rtc.CudaRtcError(f"loading the cubin of {name!r}: CUDA_ERROR_INVALID_IMAGE")
        return cubin

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(cuda_rtc, "_loaded", loaded)
    monkeypatch.setattr(cuda_rtc, "_FROM_DISK", set())
    monkeypatch.setattr(cuda_rtc, "_REBUILT", {})
    return loads


def test_a_refused_cubin_from_disk_is_rebuilt_once_and_other_kernels_stay_cached(fake_driver, fake_nvrtc, tmp_path):
    cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 1})
    other = cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 2})
    target = next(f for f in _files(tmp_path) if f.read_bytes() != other)
    good = target.read_bytes()
    target.write_bytes(b"\x7fELF refuse")  # an ELF file the driver will not load
    cuda_rtc._compiled.cache_clear()  # a new process
    assert cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 2}) == other  # (read from disk: no compile)
    assert len(fake_nvrtc) == 2
    assert cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 1}) == good  # refused, compiled again, file replaced
    assert len(fake_nvrtc) == 3 and target.read_bytes() == good
    assert cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 1}) == good  # the rebuilt cubin from now on
    assert cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 2}) == other and len(fake_nvrtc) == 3


def test_a_refused_fresh_compile_is_an_error_not_a_retry(fake_driver, fake_nvrtc, monkeypatch):
    monkeypatch.setattr(cuda_rtc, "compile_cubin", lambda *a, **k: fake_nvrtc.append(a) or b"\x7fELF refuse")
    with pytest.raises(cuda_rtc.CudaRtcError, match="INVALID_IMAGE"):
        cuda_rtc.compile_kernel(SRC, "k", 0, {"FVQ_V": 3})
    assert len(fake_nvrtc) == 1 and len(fake_driver) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cached_cubin_the_driver_refuses_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("FVQ_CACHE_DIR", str(tmp_path))
    src = SRC.replace("FVQ_V", "FVQ_V + 7")  # a source no other test compiled in this process
    cuda_rtc.compile_kernel(src, "k", 0, {"FVQ_V": 3})
    (f,) = _files(tmp_path)
    f.write_bytes(b"\x7fELF" + bytes(200))  # an ELF header and nothing the driver can load
    cuda_rtc._compiled.cache_clear()
    cuda_rtc._loaded.cache_clear()
    kernel = cuda_rtc.compile_kernel(src, "k", 0, {"FVQ_V": 3})
    out = torch.zeros(32, dtype=torch.int32, device="cuda")
    kernel.launcher("p", (32, 1, 1))((1, 1, 1), torch.cuda.current_stream().cuda_stream, out.data_ptr())
    assert out.tolist() == [10] * 32
    assert f.read_bytes()[4:] != bytes(200)  # replaced by the fresh cubin


def test_launch_structures_have_the_driver_api_layout():
    """``cuLaunchKernelEx`` reads these by offset (cuda.h, CUDA 12+): a 72-byte attribute (id, padding, a 64-byte
    value union) and a 56-byte config with the stream at offset 32 and the attribute pointer at 40."""
    import ctypes

    assert ctypes.sizeof(cuda_rtc.LaunchAttribute) == 72 and cuda_rtc.LaunchAttribute.value.offset == 8
    assert ctypes.sizeof(cuda_rtc.LaunchConfig) == 56
    attr = cuda_rtc.LaunchAttribute(id=cuda_rtc.PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1  # (as the launcher sets it: the bytes the driver reads, not a copy)
    assert bytes(attr)[:12] == (6).to_bytes(4, "little") + bytes(4) + (1).to_bytes(4, "little")
    assert (cuda_rtc.LaunchConfig.stream.offset, cuda_rtc.LaunchConfig.attrs.offset,
            cuda_rtc.LaunchConfig.num_attrs.offset) == (32, 40, 48)


def test_fvq_pdl_0_or_an_old_driver_turns_programmatic_dependent_launch_off(monkeypatch):
    import types

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    monkeypatch.setattr(cuda_rtc, "_libcuda", lambda: types.SimpleNamespace(cuLaunchKernelEx=None))
    cuda_rtc.supports_pdl.cache_clear()
    try:
        assert cuda_rtc.supports_pdl(0)
        monkeypatch.setattr(cuda_rtc, "_libcuda", lambda: types.SimpleNamespace())  # (a CUDA 11 driver)
        cuda_rtc.supports_pdl.cache_clear()
        assert not cuda_rtc.supports_pdl(0)
        monkeypatch.setattr(cuda_rtc, "_libcuda", lambda: types.SimpleNamespace(cuLaunchKernelEx=None))
        monkeypatch.setattr(cuda_rtc, "PDL_ENABLED", False)
        cuda_rtc.supports_pdl.cache_clear()
        assert not cuda_rtc.supports_pdl(0)
    finally:
        cuda_rtc.supports_pdl.cache_clear()  # (the real device's answer next time)
