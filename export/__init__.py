"""The export stage: checkpoint -> ONNX (FP32/FP16/INT8, optionally fused) -> TensorRT, Triton or DeepStream.

Modules (nothing is imported here, so ``edgeseg export --help`` starts without torch):

- :mod:`.api`: :func:`~.api.export_checkpoint`, the library entry point (options, parity check, result).
- :mod:`.formats`: the format table behind ``--help``, option validation, the README and each format's runner.
- :mod:`.onnx_export`: :func:`~.onnx_export.export_onnx`, the fused deploy wrapper, ONNX metadata read/write.
- :mod:`.precision`: the FP16 pass and INT8 Q/DQ quantisation with a runtime-identical calibration reader.
- :mod:`.check`: parity of an export with its PyTorch network on real images.
- :mod:`.tensorrt_build`: strongly typed engine build, profile shapes, trtexec equivalent.
- :mod:`.triton`, :mod:`.deepstream`: serving configs written from the real graph.
- :mod:`.commands`: ``edgeseg export``.
"""
