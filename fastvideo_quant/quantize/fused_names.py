"""A name the checkpoint lacks that looks like a fused module of names it has (``to_qkv`` beside ``to_q``, ``to_k``,
``to_v``): what a calibration file keyed by the model's layers, or a ``--skip`` copied from the model, gives when the
model fuses modules ``fvq quantize`` was not told of. The fix is ``--fuse``, not the closest single name (``to_v``),
as ``load_checkpoint`` suggests a ``packed_modules_mapping`` entry for the same names."""

from __future__ import annotations

from collections.abc import Iterable


def fused_from(leaf: str, siblings: Iterable[str]) -> list[str] | None:
    """The ``siblings`` (module names under the same parent) that ``leaf`` looks fused from, in the order its name
    gives them: two or more sharing a prefix and a suffix with it whose middles, joined (``qkv``) or joined by '_'
    (``gate_up``), are its middle — ``to_qkv`` of ``to_q``, ``to_k``, ``to_v``; ``qkv_proj`` of ``q_proj``,
    ``k_proj``, ``v_proj``; ``gate_up_proj`` of ``gate_proj``, ``up_proj``. None when no such siblings make it up."""
    siblings = sorted(set(siblings) - {leaf})
    for start in range(len(leaf)):
        for end in range(len(leaf), start, -1):
            prefix, middle, suffix = leaf[:start], leaf[start:end], leaf[end:]
            middles = {s[start:len(s) - len(suffix)]: s for s in siblings
                       if s.startswith(prefix) and s.endswith(suffix) and len(s) > start + len(suffix)}
            found = sorted((m for m in middles if m in middle), key=middle.find)
            if len(found) >= 2 and middle in ("".join(found), "_".join(found)):
                return [middles[m] for m in found]
    return None


def fuse_flag(leaf: str, parts: list[str]) -> str:
    """``--fuse to_qkv=to_q,to_k,to_v``, and the ``quantize_checkpoint`` argument that says the same."""
    return f"--fuse {leaf}={','.join(parts)} (quantize_checkpoint's packed_modules_mapping={{{leaf!r}: {parts!r}}})"
