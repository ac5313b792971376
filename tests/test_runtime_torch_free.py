"""The runtime must import and run where torch is not installed (Jetson images, slim serving containers).

Each check runs in a fresh interpreter whose import system refuses torch and records every attempt to load it, so
a stray ``import torch`` anywhere on the runtime's import path fails the test even if the attempt is caught.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys

    attempts = []

    class RefuseTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError(f"{name} is blocked: the runtime must not need torch")
            return None

    sys.meta_path.insert(0, RefuseTorch())

    def assert_torch_free():
        assert not attempts, f"torch import attempted: {attempts}"
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch is loaded"
""")


def run_without_torch(body: str, *args: str) -> subprocess.CompletedProcess:
    script = BLOCK_TORCH + textwrap.dedent(body) + "\nassert_torch_free()\nprint('TORCH_FREE_OK')\n"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)


def check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.strip().endswith("TORCH_FREE_OK")


def test_blocker_catches_a_torch_import():
    done = run_without_torch("""
        try:
            import torch
        except ImportError:
            pass
    """)
    assert done.returncode != 0 and "torch import attempted" in done.stderr


def test_segmenter_runs_without_torch(tiny_onnx):
    check(run_without_torch("""
        import numpy as np
        import edgeseg.runtime
        from edgeseg.runtime import ClassSpec, ConfusionMatrix, ModelMeta, Segmenter, open_dataset

        image = np.zeros((64, 64, 3), np.uint8)
        image[:, :32] = (255, 0, 0)
        for path in sys.argv[1:]:
            with Segmenter.load(path) as segmenter:
                class_map = segmenter.segment(image)
                assert class_map.shape == (64, 64)
                assert (class_map[:, :32] == 0).all() and (class_map[:, 32:] == 3).all(), path
                segmenter.overlay(image, class_map, legend=True)
    """, str(tiny_onnx.static), str(tiny_onnx.fused)))


def test_cli_commands_without_torch(tiny_onnx):
    check(run_without_torch("""
        import contextlib
        import io
        import json

        from edgeseg.cli import main

        for command in ("bench", "eval", "video", "serve", "compare"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main([command, "--help"])
                except SystemExit as stop:
                    assert stop.code == 0, (command, stop.code)
            assert "usage: edgeseg " + command in out.getvalue()

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["bench", sys.argv[1], "--iters", "2", "--warmup", "0", "--camera-size", "48x64", "--json"])
        assert code == 0
        assert json.loads(out.getvalue().strip().splitlines()[-1])["size"] == [64, 64]
    """, str(tiny_onnx.static)))


def test_existing_onnx_becomes_a_triton_repository_without_torch(tiny_onnx, tmp_path):
    """A Jetson image has onnx but no torch: turning an exported .onnx into deployment artefacts must still work.

    (DeepStream configs start from the checkpoint, because the exporter folds nvinfer's normalisation into the
    graph.)
    """
    check(run_without_torch("""
        import sys
        from pathlib import Path
        from edgeseg.cli import main

        model, out = sys.argv[1], Path(sys.argv[2])
        assert main(["export", model, "--format", "triton", "--out", str(out / "repo")]) == 0
        assert list((out / "repo").rglob("config.pbtxt"))
        # TensorRT is missing here: a clear one-line error (exit 1), not a crash on a torch import
        assert main(["export", model, "--format", "engine", "--out", str(out / "m.engine")]) == 1
    """, str(tiny_onnx.static), str(tmp_path)))


def test_onnx_served_by_the_bundled_triton_without_torch(tiny_onnx, tmp_path):
    """A CPU host without torch exports an .onnx for Triton's Python backend, starts the local server and uses it."""
    check(run_without_torch("""
        import sys
        from pathlib import Path
        import numpy as np
        from edgeseg.cli import main
        from edgeseg.runtime import Segmenter
        from edgeseg.runtime.backends.triton_server import TritonServer

        model, repo = sys.argv[1], Path(sys.argv[2]) / "repo"
        assert main(["export", model, "--format", "triton", "--out", str(repo), "--name", "tiny",
                     "--triton-backend", "python", "--instance-kind", "cpu"]) == 0
        image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        with TritonServer(repo) as server, Segmenter.load(server.uri("tiny")) as remote, Segmenter.load(model) as here:
            assert np.array_equal(remote.segment(image), here.segment(image))
    """, str(tiny_onnx.fused), str(tmp_path)))
