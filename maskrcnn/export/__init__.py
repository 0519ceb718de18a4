"""Export to ONNX: the whole model in one file, run by ONNX Runtime or OpenVINO.

- ``graph``: ``ExportableMaskRCNN``, the detector's forward written for an
  exported graph (uint8 pixels in, flat detections with pasted masks out; any
  batch and image size; no per-image lists);
- ``preprocess``: the input transform (both peers' resize rules) as dense
  tensor algebra with exact size arithmetic;
- ``proposals``: the RPN's proposal selection over a whole batch with fixed sizes;
- ``onnx_ops``, ``keypoints``: our RoIAlign, grouped NMS and keypoint decoding
  as operators that become ONNX ``RoiAlign``, ``NonMaxSuppression`` and a ``Loop``;
- ``onnx_file``: ``export_onnx`` (``maskrcnn export``) and the config in the
  file's metadata;
- ``runtime``: ``load_onnx``, a predictor backed by ONNX Runtime or OpenVINO.

Needs the ``deploy`` extra (onnx, onnxscript, onnx-ir, onnxruntime, openvino).
"""
