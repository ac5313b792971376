"""A description of the machine a benchmark ran on, stored with every result.

Latency numbers mean little without the hardware, library versions and, on Jetson, the power mode and clock state
(a Jetson in a 15 W mode with dynamic clocks can be several times slower than with MAXN and ``jetson_clocks``).
Every probe is optional and bounded by a timeout: a missing tool or a permission error leaves its field out, it
never fails the benchmark. Nothing here changes the machine's state; the Jetson tools are only queried.
"""

from __future__ import annotations

import os
import platform
import select
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

PROBE_TIMEOUT_S = 3.0

_GPU_QUERY = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "power.limit",
              "persistence_mode")


def _command_output(command: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """stdout of a read-only query tool, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name; ARM boards have none in /proc/cpuinfo, so the board model stands in."""
    cpuinfo = _read_text("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware") and value.strip():
            return value.strip()
    return _read_text("/proc/device-tree/model") or platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (taskset/cgroup aware), which is what bounds CPU inference."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2 ** 20, 1)
    return None


def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide inference speed, read from the installed distributions.

    Distributions are queried instead of imported so that recording TensorRT's version does not load TensorRT.
    """
    versions = {}
    for label, distributions in (("numpy", ("numpy",)), ("onnxruntime", ("onnxruntime-gpu", "onnxruntime")),
                                 ("opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python")),
                                 ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")),
                                 ("edgeseg", ("edgeseg",))):
        for distribution in distributions:
            try:
                versions[label] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def nvidia_gpus() -> list[dict[str, str]]:
    """One entry per GPU from ``nvidia-smi`` (name, driver, memory, current and max SM clock, power limit)."""
    output = _command_output(["nvidia-smi", f"--query-gpu={','.join(_GPU_QUERY)}", "--format=csv,noheader"])
    if not output:
        return []
    return [dict(zip(_GPU_QUERY, (v.strip() for v in line.split(",")))) for line in output.splitlines()]


def is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists() or "jetson" in (_read_text("/proc/device-tree/model") or "").lower()


def _one_tegrastats_line(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """A single tegrastats sample: the tool streams forever, so read one line and stop it."""
    if shutil.which("tegrastats") is None:
        return None
    try:
        process = subprocess.Popen(["tegrastats", "--interval", "200"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None
    try:
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not ready:
            return None
        return process.stdout.readline().strip() or None
    finally:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def jetson_state() -> dict[str, str]:
    """Board, L4T release, power mode and clock state of a Jetson, as far as the query tools allow."""
    release = _read_text("/etc/nv_tegra_release")
    state = {
        "board": _read_text("/proc/device-tree/model"),
        "l4t": release.splitlines()[0] if release else None,
        "power_mode": _command_output(["nvpmodel", "-q"]),
        "jetson_clocks": _command_output(["jetson_clocks", "--show"]),
        "tegrastats": _one_tegrastats_line(),
    }
    return {key: value for key, value in state.items() if value}


def describe_machine() -> dict:
    """Everything a reader needs to compare two benchmark results; JSON-ready."""
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "gpus": nvidia_gpus(),
    }
    if is_jetson():
        info["jetson"] = jetson_state()
    return info


def format_machine(info: dict) -> str:
    """A two- or three-line human summary of :func:`describe_machine`."""
    lines = [f"CPU: {info['cpu']} ({info['cpu_cores_usable']}/{info['cpu_cores']} cores usable), "
             f"{info.get('memory_gib') or '?'} GiB RAM, {info['os']}"]
    for gpu in info.get("gpus", []):
        lines.append(f"GPU: {gpu.get('name')} (driver {gpu.get('driver_version')}, {gpu.get('memory.total')}, "
                     f"SM clock {gpu.get('clocks.sm')} of {gpu.get('clocks.max.sm')})")
    jetson = info.get("jetson")
    if jetson:
        lines.append(f"Jetson: {jetson.get('board', '?')}, power mode: "
                     f"{(jetson.get('power_mode') or 'unknown').splitlines()[0]}")
    packages = ", ".join(f"{name} {version}" for name, version in info.get("packages", {}).items())
    lines.append(f"Python {info['python']}; {packages}")
    return "\n".join(lines)
