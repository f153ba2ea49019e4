"""The loader's hints, by concern; :mod:`fastvideo_quant.loader.diagnose` is where the loader imports them from.

* :mod:`.tensor_names`: a tensor whose name matches nothing (a layer's prefix, a name prefix one side lacks, KV-cache
  scales, a non-persistent buffer, a plain tensor attribute).
* :mod:`.fused`: a fused layer's missing ``packed_modules_mapping`` entry, and a refused tensor's whole shape.
* :mod:`.undeclared`: why the layers were not built with the checkpoint's method, and the fixes' wording.
* :mod:`.probe`: what the loaded methods store, probed on meta layers.
* :mod:`.quantized`: tensors stored quantized where the layers were built otherwise (and bool tensors: corrupt).
* :mod:`.unquantized`: modules stored unquantized where the layers were built quantized.
* :mod:`.config`: a checkpoint of the layers' method that does not fit their config (other settings, float weights,
  what ``stored_tensor_hints`` reads off the tensors).
"""
