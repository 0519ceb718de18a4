"""Export to ONNX (issue 9, in progress): operators and graph pieces that run unchanged in ONNX runtimes.

- ``onnx_ops``: our RoIAlign and grouped NMS as operators that export to ONNX
  ``RoiAlign`` and ``NonMaxSuppression``, equal in ONNX Runtime and OpenVINO;
- ``preprocess``: the input transform (torchvision's resize rule) as dense
  tensor algebra over a padded batch, for any batch and image size;
- ``proposals``: the RPN's proposal selection over a whole batch with fixed
  sizes (-inf padding, one grouped NMS), equal to ``RPN.propose``.

Needs the ``deploy`` extra (onnx, onnxscript, onnx-ir, onnxruntime, openvino).
"""
