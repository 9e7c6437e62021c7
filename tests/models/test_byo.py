"""README, "Bring your own embeddings": its Python block and its three commands, run as written
in an empty folder, give an exported model that passes export.verify, and the real server then
serves it: labels, probabilities and contributions."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench import process

ROOT = Path(__file__).parents[2]


def section_blocks(heading: str) -> tuple[str, list[str]]:
    """The section's first Python block and the command lines of its first bash block."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    bash = re.search(r"```bash\n(.*?)```", section, re.S)
    assert python and bash, f"README section {heading!r} lost its code blocks"
    commands = [line for line in bash.group(1).splitlines() if line and not line.startswith("#")]
    return python.group(1), commands


@pytest.mark.slow
def test_the_documented_commands_train_export_and_verify(tmp_path: Path) -> None:
    code, commands = section_blocks("Bring your own embeddings")
    assert len(commands) == 3 and all(c.startswith(".venv/bin/python -m ") for c in commands)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "my_sets.npz").exists()
    outputs = []
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    assert "test accuracy" in outputs[0] and "exported my-model/1" in outputs[1]
    assert "1 of 1 model versions passed" in outputs[2]
    manifest = json.loads((tmp_path / "model_repository/my-model/1/manifest.json").read_text())
    assert manifest["task"] == {"kind": "classification", "classes": ["no", "yes"]}
    assert [o["name"] for o in manifest["outputs"]] == [
        "pooled",
        "weights",
        "logits",
        "contributions",
    ]
    assert manifest["input_dim"] == 64 and manifest["metrics"]["num_test"] == 40

    # Served as make run serves a repository: python -m service on it, then one request.
    repository = tmp_path / "model_repository"
    x = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    flags = ["--default-model", "my-model"]
    with process.running_server(repository, flags) as (url, _):
        answer = httpx.post(
            f"{url}/pool?contributions=true", json={"embeddings": x.tolist()}
        ).json()
    assert all(label in ("no", "yes") for label in answer["label"])
    np.testing.assert_allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-6)
    assert np.asarray(answer["contributions"]).shape == (2, 5, 2)
