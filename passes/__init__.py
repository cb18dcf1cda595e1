"""Built-in passes, one module per family.

They are registered exactly like third-party plugins: by a lazy ``"module:Class"`` reference, so importing
onnxkit imports none of them, and a pass's heavy dependencies load only when that pass is used.
"""

BUILTIN_PASSES: dict[str, str] = {
    "cleanup": "onnxkit.passes.cleanup:CleanupPass",
    "bf16": "onnxkit.passes.precision:Bf16Pass",
    "export": "onnxkit.pytorch.export_pass:ExportPass",  # the torch boundary: see onnxkit/pytorch/
    "fp16": "onnxkit.passes.precision:Fp16Pass",
    "fuse": "onnxkit.passes.fuse:FusePass",
    "opset": "onnxkit.passes.opset:OpsetPass",
    "ort-optimize": "onnxkit.passes.ort_optimize:OrtOptimizePass",
    "shape-inference": "onnxkit.passes.shape_inference:ShapeInferencePass",
    "quantize": "onnxkit.passes.quantize:QuantizePass",
    "simplify": "onnxkit.passes.simplify:SimplifyPass",
}
