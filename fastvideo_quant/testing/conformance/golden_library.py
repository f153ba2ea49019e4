"""The conformance suite's golden checkpoints: tiny checkpoints of the formats in the field, written from each format's
published definition with plain Python/torch code and nothing from the plugins (a plugin whose writer and reader share a
wrong convention passes its own round trips, and must fail here).

Integers are packed into words by explicit per-element Python-int loops from the format text, and each module's
``weight`` is computed in float64 from the integer codes / float8 values and scales *before* packing, by the format's
de-quantization formula. Each ``source`` names the code (repository, file, function) that states the facts used; the
comments say what each fact is. Checked against: AutoAWQ 88e4c76 (May 2025), compressed-tensors 52792be (0.12.2+,
Oct 2025), AutoFP8 505a7ed, bitsandbytes 95f9af3, and vLLM, transformers and DeepSeek-V3 files as named.
"""

from __future__ import annotations

import functools

import torch

from fastvideo_quant.testing.conformance.golden import GoldenCheckpoint, GoldenModule

#: fp8 block-scaled goldens have out 256: every part of a q/k/v (or merged) layer stays 128-row aligned at TP=1 and
#: TP=2 (out 128 would split into 64 rows per rank, which no reader can shard at block 128).
IN, OUT, OUT_BLOCK = 256, 64, 256
#: AutoAWQ GEMM: nibble i of a word holds output column 8c + AWQ_ORDER[i] (awq/modules/linear/gemm.py, from_linear's
#: order_map; awq/utils/packing_utils.py AWQ_ORDER).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
FP8 = torch.float8_e4m3fn


def word(nibbles: list[int]) -> int:
    """Eight 4-bit values, nibble i in bits 4i..4i+3, as the signed int32 a safetensors file holds."""
    assert len(nibbles) == 8 and all(0 <= v <= 15 for v in nibbles), nibbles
    w = 0
    for i, v in enumerate(nibbles):
        w |= v << (4 * i)
    return w - (1 << 32) if w >= 1 << 31 else w


def pack_awq(codes: list[list[int]]) -> torch.Tensor:
    """AutoAWQ GEMM packing of ``[rows, cols]`` unsigned codes along dim 1: word c of a row holds columns 8c..8c+7,
    nibble i = column 8c + AWQ_ORDER[i]."""
    return torch.tensor([[word([row[8 * c + o] for o in AWQ_ORDER]) for c in range(len(row) // 8)] for row in codes],
                        dtype=torch.int32)


def pack_natural(codes: list[list[int]]) -> torch.Tensor:
    """compressed-tensors packing along dim 1 (``pack_to_int32``, packed_dim=1): word j holds columns 8j..8j+7 in
    natural order, column 8j+i in nibble i."""
    return torch.tensor([[word(row[8 * j:8 * j + 8]) for j in range(len(row) // 8)] for row in codes], dtype=torch.int32)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _fp8_values(gen: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
    """float8_e4m3fn values spread over the whole range (every bit pattern but NaN: subnormals, ±0, up to ±448)."""
    bits = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    bits[(bits & 0x7F) == 0x7F] -= 1  # S.1111.111 is NaN in e4m3fn; S.1111.110 = ±448
    return bits.view(FP8)


# --- AutoAWQ GEMM --------------------------------------------------------------------------------------------------
AWQ_SOURCE = ("AutoAWQ awq/modules/linear/gemm.py WQLinear_GEMM.__init__ (qweight int32 [in, out/8], qzeros int32 "
              "[in/G, out/8], scales fp16 [in/G, out]; group_size -1 = in_features) and from_linear (order_map "
              "[0,2,4,6,1,3,5,7], qweight[:, c] |= col[8c+order_map[i]] << 4i); awq/utils/packing_utils.py "
              "dequantize_gemm ((iweight - izeros) * scales); awq/models/_config.py AwqConfig.to_transformers_dict "
              "(the config keys)")


def _awq_module(gen: torch.Generator, group: int) -> GoldenModule:
    g = IN if group == -1 else group
    q = torch.randint(0, 16, (IN, OUT), generator=gen)          # unsigned codes 0..15, [in, out]
    z = torch.randint(0, 16, (IN // g, OUT), generator=gen)     # unsigned zero points, stored as is
    s = _uniform(gen, (IN // g, OUT), 0.005, 0.02).half()
    grp = torch.arange(IN) // g
    w = (q - z[grp]).double() * s.double()[grp]                 # W[k, n] = (q[k, n] - z[k//G, n]) * s[k//G, n]
    return GoldenModule({"qweight": pack_awq(q.tolist()), "qzeros": pack_awq(z.tolist()), "scales": s},
                        w.T.float().contiguous())


def _awq(group: int, seed: int) -> GoldenCheckpoint:
    gen = torch.Generator().manual_seed(seed)
    config = {"quant_method": "awq", "zero_point": True, "group_size": group, "bits": 4, "version": "gemm",
              "modules_to_not_convert": None}
    name = f"AutoAWQ GEMM int4, group {group}" + (" (whole input)" if group == -1 else "")
    return GoldenCheckpoint(name, config, tuple(_awq_module(gen, group) for _ in range(3)), AWQ_SOURCE)


# --- fp8, quant_method "fp8" (AutoFP8 / vLLM / transformers FineGrainedFP8 / DeepSeek-V3) ----------------------------
FP8_TENSOR_SOURCE = ("AutoFP8 auto_fp8/quantize.py per_tensor_quantize (weight float8_e4m3fn [out, in], weight_scale = "
                     "reciprocal of 448/amax: a 0-d float32 dequantization multiplier; input_scale likewise 0-d) and "
                     "save_quantized_model (config {quant_method: fp8, activation_scheme, ignored_layers}); vLLM "
                     "quantization/fp8.py Fp8Config.from_config, Fp8LinearMethod.create_weights (per-tensor "
                     "weight_scale/input_scale float32, W = weight * weight_scale); vLLM model_executor/parameter.py "
                     "PerTensorScaleParameter._load_into_shard_id ('AutoFP8 scales do not have a shape, "
                     "compressed-tensors scales do': 0-d here, [1] in compressed-tensors)")
FP8_BLOCK_SOURCE = ("DeepSeek-V3 inference/kernel.py weight_dequant_kernel (y = x * s, s[n // 128, k // 128]: "
                    "weight_scale_inv is the dequantization multiplier) and fp8_cast_bf16.py (<name>_scale_inv); vLLM "
                    "quantization/fp8.py create_weights (weight_scale_inv float32 [ceil(out/bn), ceil(in/bk)]); config as "
                    "DeepSeek-V3's / Qwen3-FP8's config.json (hub files, seen through copies in public repositories)")


def _fp8_tensor(static: bool, seed: int) -> GoldenCheckpoint:
    gen = torch.Generator().manual_seed(seed)
    modules = []
    for i in range(3):
        q = _fp8_values(gen, (OUT, IN))
        scale = torch.tensor(float(_uniform(gen, (), 0.05, 0.2)) / 448, dtype=torch.float32)  # 0-d, as AutoFP8
        tensors = {"weight": q, "weight_scale": scale}
        if static:  # activations clip at 448 * input_scale = 5, 6, 7: N(0, 1) inputs almost never do
            tensors["input_scale"] = torch.tensor((5.0 + i) / 448, dtype=torch.float32)
        modules.append(GoldenModule(tensors, (q.double() * scale.double()).float()))
    scheme = "static" if static else "dynamic"
    config = {"quant_method": "fp8", "activation_scheme": scheme, "ignored_layers": []}
    return GoldenCheckpoint(f"fp8 per-tensor, {scheme} activations (AutoFP8 / vLLM)", config, tuple(modules),
                            FP8_TENSOR_SOURCE)


def _fp8_block(seed: int) -> GoldenCheckpoint:
    gen = torch.Generator().manual_seed(seed)
    modules = []
    rows, cols = torch.arange(OUT_BLOCK) // 128, torch.arange(IN) // 128
    for _ in range(3):
        q = _fp8_values(gen, (OUT_BLOCK, IN))
        s = (_uniform(gen, (-(-OUT_BLOCK // 128), -(-IN // 128)), 0.05, 0.2) / 448).float()
        w = q.double() * s.double()[rows][:, cols]  # W[n, k] = weight[n, k] * weight_scale_inv[n // 128, k // 128]
        modules.append(GoldenModule({"weight": q, "weight_scale_inv": s}, w.float()))
    config = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    return GoldenCheckpoint("fp8 block 128x128 (DeepSeek-V3 / transformers FineGrainedFP8 / vLLM)", config,
                            tuple(modules), FP8_BLOCK_SOURCE)


# --- compressed-tensors ------------------------------------------------------------------------------------------
CT_CONFIG_SOURCE = ("compressed-tensors compressors/model_compressors/model_compressor.py update_config (version, "
                    "quant_method, sparsity_config, transform_config + QuantizationConfig.model_dump), "
                    "quantization/quant_config.py, quant_scheme.py (presets), quant_args.py (fields; observer minmax "
                    "for static, None for dynamic), config/format.py (per-group format)")


def _ct_args(num_bits: int, kind: str, strategy: str, *, symmetric: bool = True, group_size: int | None = None,
             dynamic: bool = False) -> dict:
    return {"num_bits": num_bits, "type": kind, "symmetric": symmetric, "group_size": group_size, "strategy": strategy,
            "block_structure": None, "dynamic": dynamic, "actorder": None, "observer": None if dynamic else "minmax",
            "observer_kwargs": {}}


def _ct_config(fmt: str, weights: dict, inputs: dict | None) -> dict:
    group = {"targets": ["Linear"], "weights": weights, "input_activations": inputs, "output_activations": None,
             "format": fmt}
    return {"version": "0.12.2", "quant_method": "compressed-tensors", "sparsity_config": {}, "transform_config": {},
            "config_groups": {"group_0": group}, "kv_cache_scheme": None, "format": fmt,
            "quantization_status": "compressed", "global_compression_ratio": None, "ignore": []}


def _ct_fp8(strategy: str, seed: int, static: bool = False) -> GoldenCheckpoint:
    gen = torch.Generator().manual_seed(seed)
    modules = []
    for i in range(3):
        q = _fp8_values(gen, (OUT, IN))
        shape = (OUT, 1) if strategy == "channel" else (1,)  # initialize.py initialize_qparams expected_shape
        s = (_uniform(gen, shape, 0.05, 0.2) / 448).to(torch.bfloat16)  # scale dtype = the weight's (bf16 model)
        tensors = {"weight": q, "weight_scale": s}
        if static:  # a tensor-strategy input scale, [1] in the weight's dtype; N(0, 1) inputs clip at 5, 6, 7
            tensors["input_scale"] = torch.tensor([(5.0 + i) / 448], dtype=torch.bfloat16)
        modules.append(GoldenModule(tensors, (q.double() * s.double()).float()))
    inputs = _ct_args(8, "float", "tensor") if static else _ct_args(8, "float", "token", dynamic=True)
    config = _ct_config("float-quantized", _ct_args(8, "float", strategy), inputs)
    source = ("compressed-tensors compressors/quantized_compressors/naive_quantized.py FloatQuantizationCompressor "
              "(weight = float8_e4m3fn codes), quantization/lifecycle/initialize.py initialize_qparams (weight_scale "
              "[out, 1] for channel, [1] for tensor, in the weight's dtype), lifecycle/forward.py _dequantize "
              "(W = weight * scale), quant_scheme.py FP8_DYNAMIC and FP8 (tensor weights, static tensor input_scale); "
              + CT_CONFIG_SOURCE)
    acts = "static tensor activations (the FP8 preset)" if static else "dynamic token activations"
    return GoldenCheckpoint(f"compressed-tensors float-quantized fp8, {strategy} weights, {acts}", config,
                            tuple(modules), source)


def _ct_int4(symmetric: bool, seed: int, actorder: bool = False) -> GoldenCheckpoint:
    gen, group = torch.Generator().manual_seed(seed), 32
    scale_dtype = torch.bfloat16 if symmetric else torch.float16  # the model's dtype: a bf16 and an fp16 model
    grp = torch.arange(IN) // group
    modules = []
    if actorder:  # GPTQ's activation order: inputs quantized in a permuted order, the j-th of them in group j // 32;
        perm = torch.randperm(IN, generator=gen)  # the weight stays in input order, weight_g_idx[k] = k's group. One
        grp = torch.empty(IN, dtype=torch.int64)  # order for every module: modules of one input (q, k, v) share it, as
        grp[perm] = torch.arange(IN) // group  # GPTQ sorts the inputs by their activations
    for _ in range(3):
        q = torch.randint(-8, 8, (OUT, IN), generator=gen)  # signed codes: calculate_range [-2^(b-1), 2^(b-1) - 1]
        z = torch.zeros(OUT, IN // group, dtype=torch.int64) if symmetric else torch.randint(-8, 8, (OUT, IN // group),
                                                                                              generator=gen)
        s = _uniform(gen, (OUT, IN // group), 0.005, 0.02).to(scale_dtype)
        w = (q - z[:, grp]).double() * s.double()[:, grp]  # W = (q - z) * s, signed q and z
        tensors = {"weight_packed": pack_natural((q + 8).tolist()),  # stored nibble = signed code + 8
                   "weight_scale": s, "weight_shape": torch.tensor([OUT, IN])}  # torch.tensor(weight.shape): int64
        if not symmetric:  # zero points + 8, packed along the output dim: word r of column g holds rows 8r..8r+7
            zu = (z + 8).tolist()
            tensors["weight_zero_point"] = torch.tensor(
                [[word([zu[8 * r + i][g] for i in range(8)]) for g in range(IN // group)] for r in range(OUT // 8)],
                dtype=torch.int32)
        if actorder:
            tensors["weight_g_idx"] = grp.to(torch.int32)
        modules.append(GoldenModule(tensors, w.float()))
    config = _ct_config("pack-quantized", _ct_args(4, "int", "group", symmetric=symmetric, group_size=group), None)
    if actorder:
        config["config_groups"]["group_0"]["weights"]["actorder"] = "group"
    source = ("compressed-tensors compressors/quantized_compressors/pack_quantized.py compress_weight, pack_to_int32 "
              "(value + 2^(b-1), 8 per int32 in natural order along dim 1; zero points packed_dim=0), "
              "unpack_from_int32, compression_param_info; quantized_compressors/base.py _skip_zp (symmetric: no "
              "weight_zero_point); quantization/utils/helpers.py calculate_range; lifecycle/forward.py _dequantize "
              "((q - z) * s); quant_scheme.py W4A16 / W4A16_ASYM (here group 32); " + CT_CONFIG_SOURCE)
    if actorder:
        source += ("; activation order: quant_args.py ActivationOrdering ('group': weight_g_idx int32 [in], stored by "
                   "lifecycle/initialize.py; forward.py _dequantize takes scale[:, g_idx]), vLLM "
                   "compressed_tensors_wNa16.py (has_g_idx)")
    name = ("W4A16, symmetric" if symmetric else "W4A16_ASYM") + (", activation order (weight_g_idx)" if actorder else "")
    return GoldenCheckpoint(f"compressed-tensors pack-quantized int4 {name}, group 32", config, tuple(modules), source)


# --- bitsandbytes LLM.int8() ---------------------------------------------------------------------------------------
BNB_SOURCE = ("bitsandbytes nn/modules.py Linear8bitLt._save_to_state_dict (weight int8 [out, in], SCB, weight_format "
              "= torch.tensor(0, dtype=torch.uint8)) and maybe_rearrange_weight; utils.py "
              "LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING (row = 0); backends/default/ops.py int8_vectorwise_quant (SCB = row "
              "absmax float32, round(w * 127 / SCB)); _ops.py int8_vectorwise_dequant (A * stats / 127); transformers "
              "utils/quantization_config.py BitsAndBytesConfig.to_dict (the config keys)")


def _bnb(seed: int, threshold: float = 6.0) -> GoldenCheckpoint:
    """LLM.int8() as transformers saves it; ``threshold`` is the config's ``llm_int8_threshold`` (6.0, transformers'
    default, or 0.0: no outlier decomposition, what int8's Triton backend runs), which changes no stored tensor."""
    gen = torch.Generator().manual_seed(seed)
    modules = []
    for _ in range(3):
        q = torch.randint(-127, 128, (OUT, IN), generator=gen)  # int8_vectorwise_quant never writes -128
        peak = torch.randint(0, IN, (OUT,), generator=gen)
        q[torch.arange(OUT), peak] = 127 * (1 - 2 * torch.randint(0, 2, (OUT,), generator=gen))  # |q| = 127 at absmax
        scb = _uniform(gen, (OUT,), 0.02, 0.1).float()
        w = q.double() * scb.double()[:, None] / 127  # so each row's absmax is SCB, as bitsandbytes writes it
        modules.append(GoldenModule({"weight": q.to(torch.int8), "SCB": scb,
                                     "weight_format": torch.tensor(0, dtype=torch.uint8)}, w.float()))
    config = {"_load_in_4bit": False, "_load_in_8bit": True, "bnb_4bit_compute_dtype": "float32",
              "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
              "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
              "llm_int8_threshold": threshold, "load_in_4bit": False, "load_in_8bit": True,
              "quant_method": "bitsandbytes"}
    name = "bitsandbytes LLM.int8() (row format)" if threshold == 6.0 else \
        f"bitsandbytes LLM.int8(), llm_int8_threshold {threshold:g} (row format)"
    return GoldenCheckpoint(name, config, tuple(modules), BNB_SOURCE)


@functools.cache
def library() -> tuple[GoldenCheckpoint, ...]:
    """Every golden checkpoint of the library (deterministic, CPU tensors; each built once per process)."""
    return (
        _awq(32, seed=101),
        _awq(-1, seed=102),
        _fp8_tensor(static=False, seed=201),
        _fp8_tensor(static=True, seed=202),
        _fp8_block(seed=203),
        _ct_fp8("channel", seed=301),
        _ct_fp8("tensor", seed=302),
        _ct_fp8("tensor", seed=303, static=True),
        _ct_int4(symmetric=True, seed=401),
        _ct_int4(symmetric=False, seed=402),
        _ct_int4(symmetric=True, seed=403, actorder=True),
        _bnb(seed=501),
        _bnb(seed=502, threshold=0.0),
    )
