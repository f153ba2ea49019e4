"""The suite's golden checkpoint library: known words by hand, shapes and dtypes, and every weight recomputed element by
element from the stored tensors with plain Python ints (independently of the library's packing helpers)."""

import math

import pytest
import torch

from fastvideo_quant.testing.conformance.golden_library import AWQ_ORDER, library, pack_awq, pack_natural, word

L = {g.name: g for g in library()}
AWQ32, AWQ_ALL = L["AutoAWQ GEMM int4, group 32"], L["AutoAWQ GEMM int4, group -1 (whole input)"]
FP8_DYN, FP8_STATIC = L["fp8 per-tensor, dynamic activations (AutoFP8 / vLLM)"], L[
    "fp8 per-tensor, static activations (AutoFP8 / vLLM)"]
FP8_BLOCK = L["fp8 block 128x128 (DeepSeek-V3 / transformers FineGrainedFP8 / vLLM)"]
CT_CHANNEL = L["compressed-tensors float-quantized fp8, channel weights, dynamic token activations"]
CT_TENSOR = L["compressed-tensors float-quantized fp8, tensor weights, dynamic token activations"]
CT_ACTORDER = L["compressed-tensors pack-quantized int4 W4A16, symmetric, activation order (weight_g_idx), group 32"]
CT_STATIC = L["compressed-tensors float-quantized fp8, tensor weights, static tensor activations (the FP8 preset)"]
CT_SYM, CT_ASYM = L["compressed-tensors pack-quantized int4 W4A16, symmetric, group 32"], L[
    "compressed-tensors pack-quantized int4 W4A16_ASYM, group 32"]
BNB = L["bitsandbytes LLM.int8() (row format)"]
BNB0 = L["bitsandbytes LLM.int8(), llm_int8_threshold 0 (row format)"]
POINTS = [(0, 0), (1, 7), (5, 31), (17, 32), (33, 100), (47, 129), (63, 255)]  # (out row n, input k)


def nibble(words: torch.Tensor, r: int, c: int, i: int) -> int:
    return (int(words[r, c]) & 0xFFFFFFFF) >> (4 * i) & 0xF


def e4m3(bits: int) -> float:
    """float8_e4m3fn by its definition: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal."""
    sign, e, m = -1.0 if bits & 0x80 else 1.0, (bits >> 3) & 0xF, bits & 7
    assert (bits & 0x7F) != 0x7F, "NaN"
    return sign * (m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))


def fp8_bits(t: torch.Tensor, n: int, k: int) -> int:
    return int(t.view(torch.uint8)[n, k])


def test_library_count_and_cached():
    assert len(library()) == 13 and library() is library()


def test_deterministic():
    fresh = library.__wrapped__()
    for a, b in zip(library(), fresh, strict=True):
        assert a.name == b.name and a.quantization_config == b.quantization_config
        for ma, mb in zip(a.modules, b.modules, strict=True):
            assert ma.tensors.keys() == mb.tensors.keys() and torch.equal(ma.weight, mb.weight)
            assert all(torch.equal(ma.tensors[k].view(torch.uint8) if ma.tensors[k].dtype == torch.float8_e4m3fn
                                   else ma.tensors[k], mb.tensors[k].view(torch.uint8)
                                   if mb.tensors[k].dtype == torch.float8_e4m3fn else mb.tensors[k]) for k in ma.tensors)


@pytest.mark.parametrize("golden", library(), ids=lambda g: g.name)
def test_three_different_modules_of_one_shape(golden):
    assert len(golden.modules) == 3 and golden.source
    out = 256 if golden is FP8_BLOCK else 64
    for m in golden.modules:
        assert m.weight.dtype == torch.float32 and tuple(m.weight.shape) == (out, 256) and m.weight.device.type == "cpu"
        assert all(t.device.type == "cpu" for t in m.tensors.values())
    a, b, c = (m.weight for m in golden.modules)
    assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, c)


def test_known_words():
    # AutoAWQ: output columns holding 0..7 -> nibble i holds column ORDER[i] = [0,2,4,6,1,3,5,7] -> 0x75316420.
    assert pack_awq([list(range(8))]).item() == 0x75316420
    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)
    # compressed-tensors natural order: input i in nibble i -> 0x76543210; 8..15 -> 0xFEDCBA98 as signed int32.
    assert pack_natural([list(range(8))]).item() == 0x76543210
    assert pack_natural([list(range(8, 16))]).item() == 0xFEDCBA98 - (1 << 32)
    # A zero point of 0: AutoAWQ stores it as nibble 0 (unsigned); compressed-tensors as 0 + 8 -> a word of 8s.
    assert pack_awq([[0] * 8]).item() == 0
    assert word([8] * 8) == 0x88888888 - (1 << 32) == -2004318072
    # float8_e4m3fn: 0x38 = 1.0, 0x7E = 448 (largest), 0x01 = 2^-9 (smallest subnormal), 0xB8 = -1.0.
    for bits, value in [(0x38, 1.0), (0x7E, 448.0), (0x01, 2.0**-9), (0xB8, -1.0), (0x08, 2.0**-6)]:
        assert e4m3(bits) == value == torch.tensor([bits], dtype=torch.uint8).view(torch.float8_e4m3fn).item()
    # bitsandbytes: weight_format 0 is "row".
    assert all(int(m.tensors["weight_format"]) == 0 and m.tensors["weight_format"].dim() == 0 for m in BNB.modules)


def layout(golden):
    return {k: (tuple(t.shape), t.dtype) for k, t in golden.modules[0].tensors.items()}


def test_shapes_and_dtypes():
    i32, f8 = torch.int32, torch.float8_e4m3fn
    assert layout(AWQ32) == {"qweight": ((256, 8), i32), "qzeros": ((8, 8), i32), "scales": ((8, 64), torch.float16)}
    assert layout(AWQ_ALL) == {"qweight": ((256, 8), i32), "qzeros": ((1, 8), i32), "scales": ((1, 64), torch.float16)}
    assert layout(FP8_DYN) == {"weight": ((64, 256), f8), "weight_scale": ((), torch.float32)}
    assert layout(FP8_STATIC) == {**layout(FP8_DYN), "input_scale": ((), torch.float32)}
    assert layout(FP8_BLOCK) == {"weight": ((256, 256), f8), "weight_scale_inv": ((2, 2), torch.float32)}
    assert layout(CT_CHANNEL) == {"weight": ((64, 256), f8), "weight_scale": ((64, 1), torch.bfloat16)}
    assert layout(CT_TENSOR) == {"weight": ((64, 256), f8), "weight_scale": ((1,), torch.bfloat16)}
    assert layout(CT_STATIC) == {**layout(CT_TENSOR), "input_scale": ((1,), torch.bfloat16)}
    assert layout(CT_SYM) == {"weight_packed": ((64, 32), i32), "weight_scale": ((64, 8), torch.bfloat16),
                              "weight_shape": ((2,), torch.int64)}
    assert layout(CT_ASYM) == {"weight_packed": ((64, 32), i32), "weight_scale": ((64, 8), torch.float16),
                               "weight_shape": ((2,), torch.int64), "weight_zero_point": ((8, 8), i32)}
    assert layout(CT_ACTORDER) == {**layout(CT_SYM), "weight_g_idx": ((256,), i32)}
    assert layout(BNB) == {"weight": ((64, 256), torch.int8), "SCB": ((64,), torch.float32),
                           "weight_format": ((), torch.uint8)}
    assert all(m.tensors["weight_shape"].tolist() == [64, 256] for g in (CT_SYM, CT_ASYM) for m in g.modules)


def test_configs():
    assert AWQ32.quantization_config == {"quant_method": "awq", "zero_point": True, "group_size": 32, "bits": 4,
                                         "version": "gemm", "modules_to_not_convert": None}
    assert AWQ_ALL.quantization_config["group_size"] == -1
    assert FP8_DYN.quantization_config == {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": []}
    assert FP8_STATIC.quantization_config["activation_scheme"] == "static"
    assert FP8_BLOCK.quantization_config["weight_block_size"] == [128, 128]
    for g, fmt in [(CT_CHANNEL, "float-quantized"), (CT_TENSOR, "float-quantized"), (CT_SYM, "pack-quantized"),
                   (CT_ASYM, "pack-quantized")]:
        c = g.quantization_config
        assert c["quant_method"] == "compressed-tensors" and c["format"] == fmt and c["ignore"] == []
        assert c["quantization_status"] == "compressed" and list(c["config_groups"]) == ["group_0"]
        assert c["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert CT_ASYM.quantization_config["config_groups"]["group_0"]["weights"]["symmetric"] is False
    assert CT_CHANNEL.quantization_config["config_groups"]["group_0"]["input_activations"]["strategy"] == "token"
    assert CT_ACTORDER.quantization_config["config_groups"]["group_0"]["weights"]["actorder"] == "group"
    for m in CT_ACTORDER.modules:  # every group takes 32 inputs, in one order for the three modules (one input)
        assert torch.equal(m.tensors["weight_g_idx"], CT_ACTORDER.modules[0].tensors["weight_g_idx"])
        assert torch.bincount(m.tensors["weight_g_idx"].long()).tolist() == [32] * 8
    static = CT_STATIC.quantization_config["config_groups"]["group_0"]["input_activations"]
    assert static["strategy"] == "tensor" and static["dynamic"] is False and static["observer"] == "minmax"
    assert BNB.quantization_config["load_in_8bit"] is True and BNB.quantization_config["quant_method"] == "bitsandbytes"
    # (the one difference of the threshold-0 golden: the config's threshold; other tensors, same layout)
    assert BNB.quantization_config["llm_int8_threshold"] == 6.0 and BNB0.quantization_config["llm_int8_threshold"] == 0
    assert {k: v for k, v in BNB0.quantization_config.items() if k != "llm_int8_threshold"} == \
        {k: v for k, v in BNB.quantization_config.items() if k != "llm_int8_threshold"}
    assert set(BNB0.modules[0].tensors) == set(BNB.modules[0].tensors)
    assert not torch.equal(BNB0.modules[0].tensors["weight"], BNB.modules[0].tensors["weight"])  # (its own values)


def test_value_ranges():
    for g in (AWQ32, AWQ_ALL):  # codes and zero points over the full 0..15 range, realistic scales
        nibs = {nibble(m.tensors["qweight"], r, c, i) for m in g.modules for r in range(0, 256, 3) for c in range(8)
                for i in range(8)}
        assert nibs == set(range(16))
        assert all(0.0049 <= float(m.tensors["scales"].min()) and float(m.tensors["scales"].max()) <= 0.0201
                   for m in g.modules)
    for g in (FP8_DYN, FP8_BLOCK, CT_CHANNEL):  # fp8 values over the e4m3 range, no NaN
        q = g.modules[0].tensors["weight"].float()
        assert not q.isnan().any() and float(q.abs().max()) == 448.0 and float(q.abs()[q != 0].min()) == 2.0**-9
    scales = [float(m.tensors["weight_scale"]) for m in FP8_DYN.modules]
    assert len(set(scales)) == 3
    assert [float(m.tensors["input_scale"]) * 448 for m in FP8_STATIC.modules] == pytest.approx([5.0, 6.0, 7.0])
    for m in BNB.modules:  # SCB is each row's absmax: |weight| reaches 127 in every row; -128 never written
        w = m.tensors["weight"].to(torch.int64)
        assert (w.abs().amax(1) == 127).all() and int(w.min()) >= -127
        assert torch.equal(m.weight.abs().amax(1), m.tensors["SCB"])


def awq_value(m, k, n, group):
    t = m.tensors
    q, z = nibble(t["qweight"], k, n // 8, AWQ_ORDER.index(n % 8)), nibble(t["qzeros"], k // group, n // 8,
                                                                           AWQ_ORDER.index(n % 8))
    return (q - z) * float(t["scales"][k // group, n])


def ct_int4_value(m, n, k):
    t = m.tensors
    q = nibble(t["weight_packed"], n, k // 8, k % 8) - 8
    z = nibble(t["weight_zero_point"], n // 8, k // 32, n % 8) - 8 if "weight_zero_point" in t else 0
    return (q - z) * float(t["weight_scale"][n, k // 32])


def value(golden, m, n, k):
    t = m.tensors
    if golden in (AWQ32, AWQ_ALL):
        return awq_value(m, k, n, 32 if golden is AWQ32 else 256)
    if golden in (CT_SYM, CT_ASYM):
        return ct_int4_value(m, n, k)
    if golden is CT_ACTORDER:  # the scale of input k's group, weight_g_idx[k]
        return (nibble(t["weight_packed"], n, k // 8, k % 8) - 8) * float(t["weight_scale"][n, int(t["weight_g_idx"][k])])
    if golden in (BNB, BNB0):
        return int(t["weight"][n, k]) * float(t["SCB"][n]) / 127
    q = e4m3(fp8_bits(t["weight"], n, k))
    if golden is FP8_BLOCK:
        return q * float(t["weight_scale_inv"][n // 128, k // 128])
    s = t["weight_scale"]
    return q * float(s[n, 0] if s.dim() == 2 else s.reshape(()))


@pytest.mark.parametrize("golden", library(), ids=lambda g: g.name)
def test_weight_equals_elementwise_recomputation(golden):
    points = POINTS + ([(127, 255), (128, 127), (200, 130), (255, 0)] if golden is FP8_BLOCK else [])
    for m in golden.modules:
        for n, k in points:
            expect = value(golden, m, n, k)
            assert math.isclose(float(m.weight[n, k]), expect, rel_tol=1e-6, abs_tol=1e-12), (golden.name, n, k)


def test_asymmetric_zero_points_pack_along_output_rows():
    m = CT_ASYM.modules[0]
    zp = m.tensors["weight_zero_point"]
    # recompute one group's zero points from the weight: (q - z) * s = W  =>  z = q - W / s
    for n in (0, 9, 63):
        q = nibble(m.tensors["weight_packed"], n, 0, 0) - 8
        z = q - round(float(m.weight[n, 0]) / float(m.tensors["weight_scale"][n, 0]))
        assert nibble(zp, n // 8, 0, n % 8) == z + 8
