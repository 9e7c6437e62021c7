"""Shared markers of the benchmark tests."""

from __future__ import annotations

import os
import shutil

import pytest

# Locally a missing hey skips; under CI (which installs it) the test runs and fails without it.
needs_hey = pytest.mark.skipif(
    shutil.which("hey") is None and not os.environ.get("CI"),
    reason="hey is not installed (apt-get install hey); CI installs it",
)
