"""The export stage: checkpoint -> ONNX (FP32/FP16/INT8, optionally fused) -> TensorRT, Triton or DeepStream.

Modules (nothing is imported here, so ``edgeseg export --help`` starts without torch):

- :mod:`.formats`: the format table behind ``--help``, option validation and the README.
- :mod:`.onnx_export`: :func:`~.onnx_export.export_onnx`, the fused deploy wrapper, ONNX metadata read/write.
- :mod:`.precision`: the FP16 pass and INT8 Q/DQ quantisation with a runtime-identical calibration reader.
- :mod:`.check`: parity of an export with its PyTorch network on real images.
- :mod:`.tensorrt_build`: strongly typed engine build, profile shapes, sidecar, trtexec equivalent.
- :mod:`.triton`, :mod:`.deepstream`: serving configs written from the real graph.
- :mod:`.commands`: ``edgeseg export``.
"""
