"""The README's examples, run as written against a real Spool (the `<!-- example -->`
blocks), with only the address changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Tenancy

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- example -->\n```(sh|python)\n(.*?)```", re.DOTALL)
EXAMPLES = EXAMPLE.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_an_example_per_surface() -> None:
    text = "\n".join(code for _, code in EXAMPLES)
    for route in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/messages",
        ":streamGenerateContent",
        "/api/chat",
        "/v1/streams/",
    ):
        assert route in text
    for sdk in ("from openai import OpenAI", "import anthropic", "from google import genai"):
        assert sdk in text


@pytest.mark.parametrize(
    ("language", "code"), EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))]
)
def test_readme_example_runs(tenancy: Tenancy, language: str, code: str, tmp_path: Path) -> None:
    """Against API processes with authentication on, as `make run` has it."""
    _, secret = tenancy.new_key("readme")
    env = {**os.environ, "SPOOL_API_KEY": secret}
    code = code.replace("http://127.0.0.1:8000", tenancy.url)
    if language == "sh":
        assert shutil.which("curl"), "the README's shell examples need curl"
        # Fail on HTTP errors, except the one example that shows a 400 on purpose.
        code = re.sub(r"\bcurl (?!.*0-0)", "curl --fail-with-body -sS ", code)
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), "the example printed nothing"
