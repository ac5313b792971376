"""Checks, at the end of ``docker build``, that an edgeseg image holds what its Dockerfile promises.

Neither image can be run on a GPU while it is being built, and the usual failure modes are silent until the first
real run on the target: a CPU-only onnxruntime wheel that shadows the GPU one, a pip OpenCV without GStreamer that
shadows JetPack's, torch sneaking into the Jetson image through a dependency, a console script that does not start.
Every check here works without a GPU or a CUDA driver (nothing loads libcuda or TensorRT), so a build fails loudly
instead of shipping such an image.

Usage (inside the image): ``python3 verify_image.py x86`` or ``python3 verify_image.py jetson``; exits 1 when any
check fails, after printing one line per check.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

# The subcommands each image must be able to start; `--help` imports the module that implements the command.
CLI_COMMANDS = {
    "x86": ("train", "export", "eval", "bench", "video", "serve"),
    "jetson": ("export", "eval", "bench", "video", "serve"),
}


def module_present(name: str) -> bool:
    """Whether ``name`` can be imported, found without executing it (TensorRT would try to load CUDA)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
        return False


def check_onnxruntime_gpu() -> str:
    """The CUDA provider is compiled into the installed onnxruntime (a CPU wheel would run silently on the CPU)."""
    onnxruntime = importlib.import_module("onnxruntime")
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise AssertionError(f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider: {providers}")
    return f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}"


def check_tensorrt_bindings() -> str:
    if not module_present("tensorrt"):
        raise AssertionError("the tensorrt Python module is missing")
    return "tensorrt module found"


def check_cuda_python() -> str:
    """cuda-python exposes the runtime API as ``cuda.bindings.runtime`` from 12.6 on and as ``cuda.cudart`` before."""
    if not (module_present("cuda.bindings.runtime") or module_present("cuda.cudart")):
        raise AssertionError("cuda-python is missing (neither cuda.bindings.runtime nor cuda.cudart)")
    return "cuda-python found"


def check_torch_present() -> str:
    torch = importlib.import_module("torch")
    return f"torch {torch.__version__}"


def check_torch_absent() -> str:
    """The Jetson image is the torch-free runtime; torch there means a dependency pulled in the training stack."""
    if module_present("torch"):
        raise AssertionError("torch is importable, but this image must stay torch-free")
    return "torch absent"


def check_opencv_gstreamer() -> str:
    """csi:// cameras and hardware-decoded RTSP need an OpenCV built with GStreamer (pip's wheels are not)."""
    cv2 = importlib.import_module("cv2")
    if not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
        raise AssertionError(f"OpenCV {cv2.__version__} at {cv2.__file__} is built without GStreamer")
    return f"OpenCV {cv2.__version__} with GStreamer"


def check_cli(commands: tuple[str, ...]) -> str:
    """The ``edgeseg`` console script is on PATH and every subcommand's module imports."""
    executable = shutil.which("edgeseg")
    if executable is None:
        raise AssertionError("the edgeseg console script is not on PATH")
    for command in ("--version", *commands):
        argv = [executable, command] if command.startswith("-") else [executable, command, "--help"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise AssertionError(f"'{' '.join(argv[1:])}' exited {result.returncode}: {last_line}")
    return f"edgeseg {', '.join(commands)} start"


def checks_for(profile: str) -> list[tuple[str, Callable[[], str]]]:
    common = [
        ("onnxruntime-gpu", check_onnxruntime_gpu),
        ("tensorrt", check_tensorrt_bindings),
        ("cuda-python", check_cuda_python),
        ("cli", lambda: check_cli(CLI_COMMANDS[profile])),
    ]
    if profile == "x86":
        return [("torch", check_torch_present), *common]
    return [("torch-free", check_torch_absent), ("opencv", check_opencv_gstreamer), *common]


def run_checks(profile: str) -> list[tuple[str, bool, str]]:
    """Runs every check of the profile, never stopping at the first failure, so one build log shows them all."""
    results = []
    for name, check in checks_for(profile):
        try:
            results.append((name, True, check()))
        except Exception as err:  # noqa: BLE001 - any failure of a check is reported, not raised
            results.append((name, False, f"{type(err).__name__}: {err}"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=sorted(CLI_COMMANDS), help="which image is being checked")
    args = parser.parse_args(argv)
    results = run_checks(args.profile)
    for name, passed, detail in results:
        print(f"{'ok  ' if passed else 'FAIL'} {name:16s} {detail}")
    return 0 if all(passed for _, passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
