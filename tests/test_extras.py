"""Each extra of pyproject.toml is enough, alone, to import its stage.

A fresh venv per extra would take minutes and the package registry; instead each stage is imported in a subprocess
that refuses every optional package its extra does not list, which is what a venv holding only that extra sees.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Import name of each optional distribution the project names (the base dependencies are always there).
IMPORT_NAMES = {"opencv-python-headless": "cv2", "onnxruntime": "onnxruntime", "torch": "torch",
                "matplotlib": "matplotlib", "onnx": "onnx", "onnxslim": "onnxslim", "starlette": "starlette",
                "uvicorn": "uvicorn", "python-multipart": "multipart", "httptools": "httptools", "uvloop": "uvloop",
                "tritonclient": "tritonclient", "nvidia-pytriton": "pytriton", "openvino": "openvino"}
STAGES = {
    "runtime": ["edgeseg.runtime.commands", "edgeseg.runtime.segmenter", "edgeseg.runtime.video",
                "edgeseg.runtime.bench", "edgeseg.runtime.evaluate", "edgeseg.runtime.datasets"],
    "train": ["edgeseg.training.commands", "edgeseg.training.trainer", "edgeseg.training.distill.distiller"],
    "export": ["edgeseg.export.commands", "edgeseg.export.onnx_export", "edgeseg.export.check",
               "edgeseg.export.precision", "edgeseg.export.triton", "edgeseg.export.deepstream"],
    "serve": ["edgeseg.runtime.serve.app", "edgeseg.runtime.serve.commands"],
    "openvino": ["edgeseg.runtime.backends.openvino_runtime", "edgeseg.runtime.commands"],
}
BLOCKER = """
import importlib, importlib.abc, sys
blocked = set(sys.argv[1].split(",")) - {""}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this extra)", name=name)
sys.meta_path.insert(0, Refuse())
for module in sys.argv[2:]:
    importlib.import_module(module)
"""


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def extra_packages(extras: dict[str, list[str]], extra: str) -> set[str]:
    """The import names an extra brings, following self-references such as ``edgeseg[runtime]``."""
    names = set()
    for requirement in extras[extra]:
        if _distribution(requirement) == "edgeseg":
            inner = re.search(r"\[(.*?)\]", requirement).group(1)
            for name in inner.split(","):
                names |= extra_packages(extras, name.strip())
        elif _distribution(requirement) in IMPORT_NAMES:
            names.add(IMPORT_NAMES[_distribution(requirement)])
    return names


EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("extra", sorted(STAGES))
def test_each_extra_alone_imports_its_stage(extra):
    refused = set(IMPORT_NAMES.values()) - extra_packages(EXTRAS, extra)
    result = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(sorted(refused)), *STAGES[extra]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"pip install edgeseg[{extra}] could not import its stage:\n{result.stderr[-800:]}"


def test_the_refusal_is_real():
    """Without OpenCV the runtime cannot segment: the check above would catch an extra that forgot it."""
    result = subprocess.run([sys.executable, "-c", BLOCKER, "cv2", "edgeseg.runtime.segmenter"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "cv2" in result.stderr


def test_the_runtime_leaf_modules_cost_no_opencv_or_onnxruntime():
    code = ("import sys, edgeseg.runtime.errors, edgeseg.runtime.atomic_files, edgeseg.runtime.classes; "
            "print(sorted(m for m in ('cv2', 'onnxruntime', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
