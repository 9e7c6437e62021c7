"""The client as a user gets it: `pip install ./client` into a fresh virtual environment, then
the README's five-line example against a real server, and the examples' printed output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.service.server import ROOT

README = ROOT / "README.md"
# Everything `pip install ./client` may bring: the client, httpx and what it needs, numpy.
ALLOWED = {
    "adapool-client",
    "anyio",
    "certifi",
    "h11",
    "httpcore",
    "httpx",
    "idna",
    "numpy",
    "pip",
    "setuptools",
    "sniffio",
    "typing-extensions",
    "typing_extensions",
}

pytestmark = pytest.mark.slow


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n### {title}\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def blocks(section: str) -> list[str]:
    """The fenced blocks of a README section, in order, without their fences."""
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def run(*command: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only `pip install ./client` in it (from the registry)."""
    folder = tmp_path_factory.mktemp("client-venv")
    venv.create(folder / "venv", with_pip=True)
    python = folder / "venv" / "bin" / "python"
    # A copy: building in place would leave client/build/ in the checkout.
    source = shutil.copytree(
        ROOT / "client", folder / "client", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    installed = run(
        python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", ROOT / "constraints.txt", source,
        cwd=folder,
    )  # fmt: skip
    if installed.returncode != 0:
        message = (
            f"pip install ./client failed:\n{installed.stdout[-2000:]}{installed.stderr[-2000:]}"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)  # no package registry here
    return python


def test_pip_install_brings_only_httpx_and_numpy_and_the_types(fresh_venv: Path) -> None:
    listed = run(fresh_venv, "-m", "pip", "list", "--format=json", cwd=fresh_venv.parent)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"adapool-client", "httpx", "numpy"} <= names
    assert names <= ALLOWED, names - ALLOWED
    where = run(
        fresh_venv,
        "-c",
        "import adapool_client; print(adapool_client.__file__)",
        cwd=fresh_venv.parent,
    )
    package = Path(where.stdout.strip()).parent
    assert (package / "py.typed").is_file()
    assert ROOT not in package.parents  # installed, not the source tree


def test_the_readmes_five_lines_run_in_the_fresh_venv_against_a_real_server(
    fresh_venv: Path, url: str, tmp_path: Path
) -> None:
    code, shown = blocks(readme_section("Python client"))[:2]
    assert len(code.strip().splitlines()) == 6 and code.count("\n\n") == 1  # 5 lines + a blank
    assert "http://127.0.0.1:8000" in code
    script = tmp_path / "five_lines.py"
    script.write_text(code.replace("http://127.0.0.1:8000", url))
    done = run(fresh_venv, script, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown


def test_the_example_is_type_clean_against_the_installed_package(
    fresh_venv: Path, tmp_path: Path
) -> None:
    """mypy --strict on examples/client.py, with the fresh venv's site-packages: the types come
    from the installed package's py.typed."""
    done = run(
        sys.executable, "-m", "mypy", "--strict", "--python-executable", fresh_venv,
        "--config-file", "", "--cache-dir", tmp_path / "cache", ROOT / "examples" / "client.py",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_examples_client_prints_what_the_readme_shows(url: str, tmp_path: Path) -> None:
    (shown,) = [b for b in blocks(readme_section("Python client")) if b.startswith("$ ")]
    command, _, output = shown.partition("\n")
    assert command == "$ .venv/bin/python examples/client.py"
    done = run(sys.executable, ROOT / "examples" / "client.py", url, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == output
