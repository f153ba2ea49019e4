"""The plugin conformance suite: mixins a quantization plugin's tests subclass.

Usage in a plugin's tests (the way fsspec's and zarr's abstract suites work)::

    from fastvideo_quant.testing.conformance import ConformanceTests

    class TestMyMethod(ConformanceTests):
        method = "my_method"            # required: the registered name
        config = {"group_size": 128}    # optional: from_config(config)

or for one method by name, without writing a test: ``fvq check NAME``, i.e.
``pytest -p fastvideo_quant.testing.pytest_plugin --fvq-method NAME
--pyargs fastvideo_quant.testing.conformance``.

One module per contract area; each has plain ``check_*`` functions (raise
:class:`ConformanceFailure`) and a mixin class of tests calling them.
"""

from fastvideo_quant.testing.conformance.apply import (
    ApplyTests,
    check_apply,
    check_apply_before_processing,
    check_tolerance_declared,
)
from fastvideo_quant.testing.conformance.calibration import CalibrationTests, check_calibration_declared
from fastvideo_quant.testing.conformance.capabilities import CapabilityTests, check_cuda_device, check_torch_compile
from fastvideo_quant.testing.conformance.create_weights import CreateWeightsTests, check_create_weights
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.golden import GoldenCheckpoint, GoldenModule, GoldenTests, check_golden
from fastvideo_quant.testing.conformance.loading import (
    LoadingTests,
    check_per_shard_equals_fused,
    check_rejects_misshaped,
    check_weight_fidelity,
)
from fastvideo_quant.testing.conformance.module_state import (
    ModuleStateTests,
    check_deepcopy,
    check_state_dict_round_trip,
    check_tensors_registered,
)
from fastvideo_quant.testing.conformance.online import (
    OnlineQuantizationTests,
    check_online_quantization,
    check_reads_quantized_checkpoint,
)
from fastvideo_quant.testing.conformance.quantize_inputs import QuantizeWeightTests, check_quantize_weight_inputs
from fastvideo_quant.testing.conformance.registration import (
    RegistrationTests,
    check_config_round_trip,
    check_declarations,
    check_quant_method_registered,
    check_reachable,
    check_skip_list,
    check_weight_bar_declared,
)
from fastvideo_quant.testing.conformance.report import ConformanceFailure
from fastvideo_quant.testing.conformance.serialization import SerializationTests, check_serialization
from fastvideo_quant.testing.conformance.subject import FUSED_KINDS, LAYER_KINDS, PARALLEL_KINDS, Subject
from fastvideo_quant.testing.conformance.tensor_parallel import (
    TensorParallelTests,
    check_tp_layer,
    check_tp_pair,
    check_tp_replicated_kv,
)
from fastvideo_quant.testing.conformance.validation import ValidationTests, check_validate_loaded_weights


class ConformanceTests(
    RegistrationTests,
    CreateWeightsTests,
    LoadingTests,
    GoldenTests,
    OnlineQuantizationTests,
    CalibrationTests,
    QuantizeWeightTests,
    ValidationTests,
    ApplyTests,
    TensorParallelTests,
    SerializationTests,
    CapabilityTests,
    ModuleStateTests,
):
    """Every contract area; subclass it and set ``method``."""


__all__ = [
    "FUSED_KINDS",
    "LAYER_KINDS",
    "PARALLEL_KINDS",
    "ApplyTests",
    "CalibrationTests",
    "CapabilityTests",
    "ConformanceFailure",
    "ModuleStateTests",
    "check_tensors_registered",
    "check_deepcopy",
    "check_golden",
    "check_state_dict_round_trip",
    "ConformanceTests",
    "CreateWeightsTests",
    "GoldenCheckpoint",
    "GoldenModule",
    "GoldenTests",
    "LoadingTests",
    "MethodFixtures",
    "OnlineQuantizationTests",
    "QuantizeWeightTests",
    "RegistrationTests",
    "SerializationTests",
    "Subject",
    "TensorParallelTests",
    "ValidationTests",
    "check_apply",
    "check_apply_before_processing",
    "check_tolerance_declared",
    "check_calibration_declared",
    "check_config_round_trip",
    "check_create_weights",
    "check_cuda_device",
    "check_declarations",
    "check_online_quantization",
    "check_per_shard_equals_fused",
    "check_quant_method_registered",
    "check_quantize_weight_inputs",
    "check_reachable",
    "check_reads_quantized_checkpoint",
    "check_weight_bar_declared",
    "check_rejects_misshaped",
    "check_serialization",
    "check_skip_list",
    "check_torch_compile",
    "check_tp_layer",
    "check_tp_pair",
    "check_tp_replicated_kv",
    "check_validate_loaded_weights",
    "check_weight_fidelity",
]
