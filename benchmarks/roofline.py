"""The machine's limits measured in the same run as the models, and where each model sits under them.

A roofline (Williams et al., 2009) bounds a kernel's speed by ``min(peak, intensity x bandwidth)``, intensity being
FLOP per byte moved. Both limits are measured here with ONNX Runtime on the benchmark's threads: the dense peak as
an N x N x N MatMul, the bandwidth as an element-wise Add over arrays far larger than any cache. A model whose
intensity times the bandwidth is below the peak is memory-bound: its share of the peak can never be high, and the
share of its own bound says how much of the machine it still leaves unused.
"""

from __future__ import annotations

from time import perf_counter

import numpy as np


def _session(graph, threads: int):
    import onnxruntime
    from onnx import helper

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), sess_options=options,
                                        providers=["CPUExecutionProvider"])


def _median_seconds(session, feed: dict, iters: int) -> float:
    samples = []
    for index in range(iters + 2):  # two untimed calls: allocation and thread start-up
        start = perf_counter()
        session.run(None, feed)
        if index >= 2:
            samples.append(perf_counter() - start)
    return float(np.median(samples))


GEMM_SIZE = 1024
"""N of the N x N x N MatMul that measures the dense peak."""
STREAM_MB = 256
"""Megabytes per array of the stream Add: far beyond any CPU cache."""


def _binary_op_seconds(op: str, feed: dict[str, np.ndarray], threads: int, iters: int) -> float:
    """Median seconds of ONNX Runtime's ``c = op(a, b)`` on the FP32 arrays ``feed`` gives for ``a`` and ``b``."""
    from onnx import TensorProto, helper

    shape = list(feed["a"].shape)
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], op.lower(),
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)])
    return _median_seconds(_session(graph, threads), feed, iters)


def gemm_limit(n: int, threads: int, iters: int) -> float:
    """Dense FP32 GFLOP/s of an ONNX Runtime N x N x N MatMul on ``threads`` threads (median of ``iters``)."""
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((n, n), dtype=np.float32) for name in "ab"}
    return 2.0 * n ** 3 / _binary_op_seconds("MatMul", feed, threads, iters) / 1e9


def bandwidth_limit(megabytes: int, threads: int, iters: int) -> float:
    """Memory bandwidth in GB/s: an ONNX Runtime Add of two ``megabytes`` FP32 arrays into a third (3 arrays moved)."""
    feed = {name: np.ones(megabytes * 1_000_000 // 4, dtype=np.float32) for name in "ab"}
    return 3 * megabytes * 1e6 / _binary_op_seconds("Add", feed, threads, iters) / 1e9


def place(gflop: float, traffic_mb: float, seconds: float, peak_gflops: float, bandwidth_gbs: float) -> dict:
    """Where one measured call sits: achieved GFLOP/s, FLOP per byte, which limit binds, and the shares of the peak
    and of that binding limit (above 100% of a memory bound means the tensors stayed in cache)."""
    achieved = gflop / seconds
    intensity = gflop / (traffic_mb / 1e3)  # GFLOP per GB = FLOP per byte
    attainable = min(peak_gflops, intensity * bandwidth_gbs)
    return {"gflops_per_s": achieved, "intensity": intensity,
            "bound": "compute" if intensity * bandwidth_gbs >= peak_gflops else "memory",
            "share_of_peak": achieved / peak_gflops, "share_of_bound": achieved / attainable}
