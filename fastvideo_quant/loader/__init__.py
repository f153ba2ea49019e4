"""Load safetensors checkpoints into models built from our layers.

Modules: :mod:`.files` (which files, lazy reads), :mod:`.targets` (names → parameters, missing, two sources),
:mod:`.checks` (refusals up front), :mod:`.diagnose` (hints in the errors; by concern in :mod:`.hints`),
:mod:`.rehearse` (loads into meta twins, overflow of a narrowing cast, the loader call), :mod:`.agreement` (every rank
of a sharded model loads, or none), :mod:`.load` (:func:`load_checkpoint`, :class:`LoadReport`).

* Files (:func:`checkpoint_files`): with an index, ``<base>.safetensors.index.json`` (``model`` as ``transformers``
  writes it, ``diffusion_pytorch_model`` as ``diffusers`` does), only the files it names; else ``model.safetensors`` or
  ``diffusion_pytorch_model.safetensors`` alone (other ``*.safetensors`` beside it are named in a warning, not read);
  else every ``*.safetensors`` in the directory. Never pickle. Two indexes, or both single files, are an error; a
  tensor name held by two files is an error naming both (a stale copy would win silently).
* Targets: a checkpoint tensor loads into the parameter of its name, or into a persistent buffer of its name (checked
  like a parameter); a non-persistent buffer takes none (it is not in the model's state_dict), and a buffer no
  tensor provides is not missing (models compute them).
* Names: a checkpoint tensor ``...q_proj.weight`` goes to ``...qkv_proj.weight`` with
  shard id ``'q'`` through ``packed_modules_mapping`` (``gate_proj/up_proj`` → ``gate_up_proj``
  with 0/1); the shard id comes from the layer (:meth:`LinearBase.checkpoint_shard_id`).
* Up front, each in one error: a checkpoint declaring a quantization method (config.json, a method
  file) that the model's layers were not built with; a ``packed_modules_mapping`` entry with another
  number of parts than its fused layer has shards; a quantized layer whose ``prefix`` (what
  ``modules_to_not_convert`` matches) is not its module path (what names are matched by).
* Validation first: two sources for one parameter (or one fused shard), missing and unexpected
  names are found before anything is copied, and every load is rehearsed on ``meta`` tensors
  (shapes only), so a mis-shaped tensor is reported, with the others, before the model is touched;
  a float tensor cast to a narrower float parameter is read, and a value overflowing to inf reported.
* Under tensor parallelism every rank of the model's group must call :func:`load_checkpoint`: the ranks agree
  once their checks are done (one all-reduce), and write all or none (a PeerLoadError where another rank failed).
* Each TP rank reads only its slices: loaders get a :class:`~fastvideo_quant.lazy.LazyTensor` (the overflow check
  of a narrowing float cast reads such a tensor whole, in chunks).
* Finally :func:`~fastvideo_quant.processing.process_weights_after_loading` (re-exported here): every
  layer's ``validate_loaded_weights`` first (all failures in one error, no layer processed), then each
  layer's ``process_weights_after_loading``.
* A later load that would write into a processed layer is refused (its parameters are in the kernel
  format); one writing only into layers not processed yet (left incomplete by a ``strict=False`` load)
  is allowed, and processes them. A model is never left silently half-loaded or half-processed: the rare
  failure past the checks (an I/O error while writing, a method raising while processing)
  names what was already written or processed.
"""

from fastvideo_quant.loader.files import (
    SAFETENSORS_DTYPES,
    SINGLE_FILE_NAMES,
    checkpoint_files,
    lazy_slice,
    open_safetensors,
    read_tensor,
)
from fastvideo_quant.loader.load import LoadReport, load_checkpoint
from fastvideo_quant.loader.rehearse import OVERFLOW_CHUNK_NUMEL, REHEARSE_WITH_DATA_NUMEL, default_weight_loader
from fastvideo_quant.loader.targets import shard_ids
from fastvideo_quant.processing import process_weights_after_loading
from fastvideo_quant.quantization.base import DEFAULT_PACKED_MODULES_MAPPING

__all__ = [
    "DEFAULT_PACKED_MODULES_MAPPING",
    "OVERFLOW_CHUNK_NUMEL",
    "REHEARSE_WITH_DATA_NUMEL",
    "SAFETENSORS_DTYPES",
    "SINGLE_FILE_NAMES",
    "LoadReport",
    "checkpoint_files",
    "default_weight_loader",
    "lazy_slice",
    "load_checkpoint",
    "open_safetensors",
    "process_weights_after_loading",
    "read_tensor",
    "shard_ids",
]
