"""The CPU and GPU Dockerfiles, statically: hadolint, their shape, their build context, and the
GPU image's install steps kept equal to the CPU image's. tests/deploy/test_image.py builds and
runs the CPU image for real; the GPU image cannot be built here (its CUDA base image cannot be
made from Debian's packages, and no registry can be reached)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import tools

ROOT = tools.ROOT
DOCKERFILES = {"docker/Dockerfile": "serve", "docker/Dockerfile.gpu": "gpu"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments), continuation lines joined

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(" ".join(pending.split()))
        pending = ""
    arg_defaults: dict[str, str] = {}
    out: list[Stage] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            out.append(Stage(name.strip(), base.strip(), []))
        elif out:
            out[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            key, _, value = rest.partition("=")
            arg_defaults[key] = value
    return arg_defaults, out


def pip_install(command: str) -> list[str]:
    """The arguments after ``pip install``, without flags that change only output or mode."""
    words = shlex.split(command)
    start = next(i for i in range(len(words) - 1) if words[i : i + 2] == ["pip", "install"])
    return [w for w in words[start + 2 :] if w not in ("--quiet", "-e")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run(
        [tools.executable("hadolint"), "--no-color", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("dockerfile", "extra"), DOCKERFILES.items())
def test_multi_stage_non_root_runtime_without_build_tools(dockerfile: str, extra: str) -> None:
    args, (build, runtime) = stages(ROOT / dockerfile)
    assert (build.name, runtime.name) == ("build", "runtime")
    assert build.base == runtime.base  # the venv's interpreter is the runtime's
    if extra == "gpu":
        cuda = args["CUDA_IMAGE"]
        assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-cudnn-runtime-ubuntu22\.04", cuda), cuda
    else:
        assert args["PYTHON_IMAGE"].startswith("python:3.11-")
    run = " ".join(runtime.args("RUN"))
    assert "pip" not in run
    for tool in ("gcc", "build-essential", "g++", "make", "torch", "curl"):
        assert not re.search(rf"\b{re.escape(tool)}\b", run), tool
    assert "--from=build /opt/venv /opt/venv" in runtime.args("COPY")
    assert "model_repository/ /models/" in runtime.args("COPY")
    (user,) = runtime.args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    env = " ".join(runtime.args("ENV"))
    assert "ADAPOOL_HOST=0.0.0.0" in env and "ADAPOOL_MODEL_REPOSITORY=/models" in env
    assert f"ADAPOOL_DEVICE={'cuda' if extra == 'gpu' else 'cpu'}" in env
    (healthcheck,) = runtime.args("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "/opt/adapool/healthcheck.py"]')
    assert runtime.args("ENTRYPOINT") == ['["python", "-m", "service"]']


@pytest.mark.parametrize(("dockerfile", "extra"), DOCKERFILES.items())
def test_install_is_the_makefiles(dockerfile: str, extra: str) -> None:
    """The image installs with `make run`'s command (constraints, extra), non-editable."""
    makefile = (ROOT / "Makefile").read_text()
    (make_line,) = re.findall(r"^\t\$\(PIP\) install .*'\.\[serve\]'$", makefile, re.M)
    make_args = pip_install(
        make_line.replace("$(PIP)", "pip").replace("$(CONSTRAINTS)", "constraints.txt")
    )
    assert make_args == ["-c", "constraints.txt", ".[serve]"]
    _, (build, _) = stages(ROOT / dockerfile)
    (install,) = [r for r in build.args("RUN") if "-c constraints.txt" in r]
    assert pip_install(install) == ["-c", "constraints.txt", f".[{extra}]"]


def _match(parts: list[str], pattern: list[str]) -> bool:
    """Path components against pattern components (``*`` within one, ``**`` across any)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(parts[1:], pattern[1:])
    )


def included(path: str, patterns: list[str]) -> bool:
    """Whether the build context holds ``path``: .dockerignore rules, the last match decides,
    and a rule matching a folder covers everything in it."""
    parts = path.split("/")
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        rule = pattern.lstrip("!").strip("/").split("/")
        if any(_match(parts[:n], rule) for n in range(1, len(parts) + 1)):
            keep = negate
    return keep


def test_build_context_holds_what_the_images_copy_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for dockerfile in DOCKERFILES:
        for stage in stages(ROOT / dockerfile)[1]:
            for copy in stage.args("COPY"):
                if copy.startswith("--from"):
                    continue
                for source in copy.split()[:-1]:
                    for path in [ROOT / source, *(ROOT / source).rglob("*")]:
                        relative = path.relative_to(ROOT).as_posix()
                        if path.is_file() and "checkpoint" not in relative:
                            assert included(relative, patterns), relative
    for kept in ("service/app.py", "model_repository/knn-avg/1/model.onnx", "README.md"):
        assert included(kept, patterns), kept
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "models/train.py",
        "export/__init__.py",
        "runs/x/model.safetensors",
        "tests/__init__.py",
        "model_repository/knn-avg/1/checkpoint/model.safetensors",
        "service/__pycache__/app.cpython-311.pyc",
    ):
        assert not included(left_out, patterns), left_out


def comparable(stage: Stage, gpu: bool) -> list[tuple[str, str]]:
    """A stage's instructions with what the GPU image must do differently taken out: installing
    Python 3.11 with apt (the CUDA image has none; ``python3.11`` then names it), DEBIAN_FRONTEND
    for apt, the gpu extra, ADAPOOL_DEVICE=cuda and a longer start period (CUDA sessions)."""
    out = []
    for keyword, args in stage.instructions:
        if gpu:
            args = args.replace("DEBIAN_FRONTEND=noninteractive", "").strip()
            if keyword == "ENV" and not args:
                continue
            if keyword == "RUN" and args.startswith("apt-get update"):
                _, found, rest = args.partition("&& groupadd")
                if not found:
                    continue  # the build stage's python3.11 and python3.11-venv
                args = "groupadd" + rest
            for cpu_side, gpu_side in (
                ("python -m venv", "python3.11 -m venv"),
                ("'.[serve]'", "'.[gpu]'"),
                ("ADAPOOL_DEVICE=cpu", "ADAPOOL_DEVICE=cuda"),
                ("--start-period=60s", "--start-period=120s"),
            ):
                args = args.replace(gpu_side, cpu_side)
        out.append((keyword, " ".join(args.split())))
    return out


def test_gpu_image_installs_as_the_cpu_image_does() -> None:
    """Every instruction of both stages is the same in both Dockerfiles but for the GPU
    image's own (``comparable``): the wheelhouse, pip, the install line, the user, the copies,
    the settings, the health check and the entrypoint."""
    _, cpu = stages(ROOT / "docker" / "Dockerfile")
    _, gpu = stages(ROOT / "docker" / "Dockerfile.gpu")
    for cpu_stage, gpu_stage in zip(cpu, gpu, strict=True):
        assert comparable(gpu_stage, gpu=True) == comparable(cpu_stage, gpu=False), gpu_stage.name
    # What `comparable` takes out is really there (the comparison is not vacuous).
    assert any("python3.11 python3.11-venv" in r for r in gpu[0].args("RUN"))
    assert ("COPY", "docker/wheelhouse/ /wheelhouse/") in comparable(cpu[0], gpu=False)
