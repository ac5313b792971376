"""``model.py`` of an edgeseg model served by Triton's Python backend: ``model.onnx`` beside it, run by ONNX Runtime.

``edgeseg export --format triton --triton-backend python`` copies this file verbatim into the model's version
folder; it runs in Triton's Python stub, never inside edgeseg, so it imports only numpy, onnxruntime and Triton's
``triton_python_backend_utils``. The graph is run as exported (pre/post-processing fused or not), with the tensor
names of config.pbtxt. Requests the dynamic batcher hands over together are concatenated along the batch axis and run
as one batch, which is what makes dynamic batching pay; requests of different shapes (a graph with free H/W) run in
separate batches.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        providers = ["CPUExecutionProvider"]
        if args["model_instance_kind"] == "GPU" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)

    def execute(self, requests):
        groups = {}
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs]
            key = tuple((a.shape[1:], a.dtype.str) for a in arrays) if self.batched else index
            groups.setdefault(key, []).append((index, arrays))
        responses = [None] * len(requests)
        for members in groups.values():
            feed = {name: np.concatenate([arrays[i] for _, arrays in members]) if self.batched else members[0][1][i]
                    for i, name in enumerate(self.inputs)}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception as err:  # a bad request fails alone, with ONNX Runtime's reason on one line
                error = pb_utils.TritonError(f"{self.name}: " + " ".join(str(err).split()))
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for index, arrays in members:
                stop = start + len(arrays[0]) if self.batched else None
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:stop]))
                           for name, result in zip(self.outputs, results)]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses
