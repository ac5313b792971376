"""The TensorRT stand-ins of the tests may only provide what the real ``tensorrt`` module has.

TensorRT cannot be installed on the CPU-only test machines, so the engine builder and the ``.engine`` backend are
tested against stand-ins written here. A stand-in that invents a method would let the code call API that does not
exist; this test holds every public name a stand-in module, or a class on it, provides against NVIDIA's type stubs
(``tensorrt-stubs`` 10.13, installed by ``make setup`` into ``.venv/typings``). ``make test`` also type-checks the
code itself against the same stubs (basedpyright).
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import types
from functools import lru_cache
from pathlib import Path

import pytest

from test_backend_standins import FAKE_TRT, FakeCuda, fake_runtime_tensorrt
from test_tensorrt_build import FakeTensorRT

STUBS = Path(sys.prefix) / "typings"
BOOKKEEPING = {"calls"}
"""Module attributes of a stand-in that record what the code asked for; no code under test reads them."""


@lru_cache(maxsize=1)
def stub_api() -> tuple[set[str], dict[str, set[str]]]:
    """Module-level names of ``tensorrt`` and the members of each class, inherited ones included.

    Read with regular expressions: the generated stubs hold parameters named ``in``, so they do not parse as Python.
    """
    if not (STUBS / "tensorrt" / "__init__.pyi").is_file():
        pytest.skip(f"tensorrt-stubs not installed in {STUBS}: run make setup")
    package = (STUBS / "tensorrt" / "__init__.pyi").read_text(encoding="utf-8")
    names = set(re.findall(r"'(\w+)'", re.search(r"^__all__ = \[(.*)\]$", package, re.M).group(1)))
    names |= set(re.findall(r"^(\w+)\s*:", package, re.M))  # __version__: str = ...
    bindings = (STUBS / "tensorrt_bindings" / "tensorrt.pyi").read_text(encoding="utf-8")
    members: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    current = None
    for line in bindings.splitlines():
        if match := re.match(r"class (\w+)(?:\(([^)]*)\))?:", line):
            current = match.group(1)
            members[current] = set()
            bases[current] = re.findall(r"\w+", match.group(2) or "")
        elif current and (match := re.match(r" {4}(?:def (\w+)\(|(\w+)\s*:)", line)):
            members[current].add(match.group(1) or match.group(2))
    def with_bases(name: str) -> set[str]:
        return members.get(name, set()).union(*(with_bases(base) for base in bases.get(name, [])))
    return names, {name: with_bases(name) for name in members}


def provided(obj) -> set[str]:
    """Public names a stand-in class or namespace provides: class attributes and ``self.x = ...`` assignments."""
    names = {name for name in vars(obj) if not name.startswith("_")}
    if inspect.isclass(obj):
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError):  # built with type(): no source, only its class attributes
            source = ""
        names |= {name for name in re.findall(r"\bself\.(\w+)\s*=", source) if not name.startswith("_")}
    return names


def stand_ins() -> dict[str, types.ModuleType]:
    return {"builder (test_tensorrt_build.FakeTensorRT)": FakeTensorRT(),
            "runtime (test_segmenter.fake_runtime_tensorrt)": fake_runtime_tensorrt(FakeCuda()),
            "engine runner (test_segmenter.FAKE_TRT)": FAKE_TRT}


@pytest.mark.parametrize("label", list(stand_ins()))
def test_every_name_a_stand_in_provides_exists_in_tensorrt(label):
    module = stand_ins()[label]
    names, classes = stub_api()
    invented = []
    assert getattr(module, "__version__", "10") and "__version__" in names
    for name, value in vars(module).items():
        if name.startswith("_") or name in BOOKKEEPING:
            continue
        if name not in names:
            invented.append(f"tensorrt.{name}")
        elif inspect.isclass(value) or isinstance(value, types.SimpleNamespace):
            invented += [f"tensorrt.{name}.{member}" for member in sorted(provided(value) - classes[name])]
    assert not invented, f"{label} provides names that tensorrt 10.13 does not have: {', '.join(invented)}"


def test_the_check_catches_an_invented_name():
    names, classes = stub_api()
    assert "execute_async_v3" in classes["IExecutionContext"] and "execute_async_v2" not in classes["IExecutionContext"]
    assert {"num_io_tensors", "get_tensor_profile_shape"} <= classes["ICudaEngine"]
    assert "WARNING" in classes["Logger"] and "Builder" in names and "build_engine" not in classes["Builder"]

    class IExecutionContext:
        def execute_async_v2(self, stream):
            self.stream = stream

    assert provided(IExecutionContext) - classes["IExecutionContext"] == {"execute_async_v2", "stream"}
