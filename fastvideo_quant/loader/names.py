"""FastVideo's ``param_names_mapping``: checkpoint tensor names (diffusers') → the model's, and parts merged into one.

A FastVideo DiT carries ``param_names_mapping``: regex pattern → replacement, applied to each checkpoint tensor
name by the first pattern that matches at its start (``re.match``, then ``re.sub``), as FastVideo's loader does. A
replacement may be a tuple ``(replacement, index, count)``: the tensor is part ``index`` of ``count`` that make the
model's tensor (HunyuanVideo's ``to_q`` / ``to_k`` / ``to_v`` → ``img_attn_qkv``). Into a fused layer with ``count``
shards (``QKVParallelLinear``, ``MergedColumnParallelLinear``) each part loads as that shard, through the layer's own
loader (per-shard scales included); into any other parameter the parts are concatenated along its output dim (a
parameter class's ``output_dim``, else 0 — FastVideo's ``torch.cat(dim=0)``), read lazily, only the rows a rank needs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.loader.files import SAFETENSORS_DTYPES

#: ``param_names_mapping``'s type: pattern → replacement, or ``(replacement, index, count)``.
NameMapping = dict[str, "str | tuple[str, int, int]"]


@dataclasses.dataclass(frozen=True)
class NameRule:
    pattern: re.Pattern[str]
    replacement: str
    index: int | None
    count: int | None


def names_mapping_and_source(model: torch.nn.Module, given: NameMapping | None) -> tuple[list[NameRule], str]:
    """The ``param_names_mapping`` rules in force (the argument, else the model's attribute, else none), checked, and
    where they came from (for messages)."""
    if given is not None:
        return compile_rules(given, "the param_names_mapping argument"), "the param_names_mapping argument"
    own = getattr(model, "param_names_mapping", None)
    source = f"{type(model).__name__}.param_names_mapping"
    return (compile_rules(own, source), source) if own else ([], "no param_names_mapping")


def compile_rules(mapping: Any, source: str) -> list[NameRule]:
    """``mapping``'s entries as :class:`NameRule`; a ConfigError naming the entry and ``source`` for a pattern that is
    not a regular expression or a replacement that is neither a string nor ``(string, index, count)`` with
    ``0 <= index < count``."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source} must be a dict of regex pattern → replacement, found {type(mapping).__name__}")
    rules = []
    for pattern, replacement in mapping.items():
        where = f"{source} entry {pattern!r}: {replacement!r}"
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}: the pattern is not a regular expression ({exc})") from exc
        index = count = None
        if isinstance(replacement, tuple):
            if (len(replacement) != 3 or not isinstance(replacement[0], str)
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in replacement[1:])
                    or not 0 <= replacement[1] < replacement[2]):
                raise ConfigError(f"{where}: a merged part is (replacement, index, count) with 0 <= index < count, "
                                  f"found {replacement!r}")
            replacement, index, count = replacement
        elif not isinstance(replacement, str):
            raise ConfigError(f"{where}: the replacement must be a string or (replacement, index, count), found "
                              f"{type(replacement).__name__}")
        rules.append(NameRule(compiled, replacement, index, count))
    return rules


def map_name(rules: list[NameRule], name: str) -> tuple[str, int | None, int | None]:
    """``name`` under the first rule whose pattern matches at its start: ``(new name, part index, part count)``;
    ``(name, None, None)`` when none matches."""
    for rule in rules:
        if rule.pattern.match(name):
            try:
                return rule.pattern.sub(rule.replacement, name, count=1), rule.index, rule.count
            except re.error as exc:
                raise ConfigError(f"param_names_mapping entry {rule.pattern.pattern!r}: {rule.replacement!r}: the "
                                  f"replacement does not apply to {name!r} ({exc})") from exc
    return name, None, None


@dataclasses.dataclass(frozen=True)
class Part:
    """One checkpoint tensor that is part ``index`` of a merged model tensor."""

    name: str
    index: int
    count: int
    handle: Any
    file: Path


class MergedSlice:
    """A safetensors slice look-alike over parts concatenated along ``dim``: ``get_shape`` / ``get_dtype`` without
    reading, and indexing that reads from each part only the rows the index covers."""

    def __init__(self, parts: list[Any], dim: int) -> None:
        self.parts = parts  # the parts' safetensors slices, in index order
        self.dim = dim
        shapes = [list(s.get_shape()) for s in self.parts]
        self.sizes = [s[dim] for s in shapes]
        self.shape = shapes[0][:dim] + [sum(self.sizes)] + shapes[0][dim + 1:]
        self.dtype = self.parts[0].get_dtype()

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_dtype(self) -> str:
        return self.dtype

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        want = index[self.dim]
        pieces, offset = [], 0
        for part, size in zip(self.parts, self.sizes, strict=True):
            lo, hi = max(want.start, offset), min(want.stop, offset + size)
            if lo < hi:
                sub = list(index)
                sub[self.dim] = slice(lo - offset, hi - offset)
                pieces.append(part[tuple(sub)])
            offset += size
        return torch.cat(pieces, dim=self.dim) if len(pieces) > 1 else pieces[0]


class MergedHandle:
    """An open-file look-alike holding one merged tensor (``name``: the parts' names joined by `` + ``), for the
    loader's plan: ``lazy_slice(handle, name)`` reads it like any checkpoint tensor."""

    def __init__(self, name: str, merged: MergedSlice) -> None:
        self.name, self.merged = name, merged

    def keys(self) -> list[str]:
        return [self.name]

    def get_slice(self, name: str) -> MergedSlice:
        return self.merged


def merge_problems(target: str, parts: list[Part]) -> list[str]:
    """Why ``parts`` cannot make ``target``: the parts disagree on their count, an index is missing or repeated, or
    their dtypes or shapes (off the merge dim) differ; empty when they fit."""
    named = ", ".join(f"{p.name!r} (part {p.index} of {p.count})" for p in parts)
    counts = {p.count for p in parts}
    if len(counts) > 1:
        return [f"parameter {target!r} is merged from checkpoint tensors that disagree on how many parts make it: "
                f"{named} (param_names_mapping gives each part (replacement, index, count) with one count)"]
    count = counts.pop()
    indices = [p.index for p in parts]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        return [f"parameter {target!r}: part(s) {repeated} of {count} come from more than one checkpoint tensor: {named}"]
    absent = [i for i in range(count) if i not in indices]
    if absent:
        return [f"parameter {target!r} is merged from {count} checkpoint tensors by param_names_mapping, but part(s) "
                f"{absent} are missing (found: {named})"]
    return []


def merged_entry(target: str, parts: list[Part], dim: int) -> tuple[str, MergedHandle, Path] | str:
    """``(name, handle, file)`` of the merged tensor (parts in index order), or a problem line when their dtypes or
    shapes off ``dim`` differ."""
    parts = sorted(parts, key=lambda p: p.index)
    slices = [p.handle.get_slice(p.name) for p in parts]
    dtypes = {s.get_dtype() for s in slices}
    shapes = [tuple(s.get_shape()) for s in slices]
    listed = ", ".join(f"{p.name!r} {SAFETENSORS_DTYPES.get(s.get_dtype(), s.get_dtype())} {tuple(s.get_shape())}"
                       for p, s in zip(parts, slices, strict=True))
    if len(dtypes) > 1:
        return f"parameter {target!r} is merged from checkpoint tensors of different dtypes: {listed}"
    if any(len(s) != len(shapes[0]) or len(s) <= dim or s[:dim] + s[dim + 1:] != shapes[0][:dim] + shapes[0][dim + 1:]
           for s in shapes):
        return (f"parameter {target!r} is merged along dim {dim} from checkpoint tensors whose other dims differ (or "
                f"that have no dim {dim}): {listed}")
    name = " + ".join(p.name for p in parts)
    return name, MergedHandle(name, MergedSlice(slices, dim)), parts[0].file

