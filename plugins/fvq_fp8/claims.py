"""Whether another plugin reads a compressed-tensors section fp8 cannot read (then fp8 leaves it to that plugin).

fp8 claims a compressed-tensors section of float weights it cannot read only to explain why (``Fp8Config.from_config``
names the field; one of integer weights it leaves unclaimed, ``Fp8Config.override_quantization_method``);
a plugin registering the name ``compressed-tensors``, or claiming the section through its own
``override_quantization_method``, reads it instead. Asking the others re-enters this hook when one of them asks the
same: a per-thread guard answers "not claimed" inside such a nested question.
"""

from __future__ import annotations

import threading
from typing import Any

from fvq_fp8.compressed_tensors import CT_METHOD

_asking = threading.local()


def claimed_elsewhere(own: type, section: dict[str, Any], user_quant: str | None) -> bool:
    """Whether a registered method other than ``own`` reads ``section``: by the name ``compressed-tensors``, or by
    claiming it in ``override_quantization_method``. False inside a nested call (a plugin asking the same)."""
    if getattr(_asking, "active", False):
        return False
    from fastvideo_quant.plugins import get_registry

    registry = get_registry()
    if CT_METHOD in registry.by_name or CT_METHOD in registry.conflicts:
        return True
    _asking.active = True
    try:
        return any(reg.config_cls.override_quantization_method(section, user_quant) is not None
                   for reg in registry.by_name.values() if reg.config_cls is not own)
    finally:
        _asking.active = False
