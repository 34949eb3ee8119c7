"""The README's promises: its two set-up commands exist, and every Python example marked
`<!-- tested -->` runs as written (in one namespace, in order)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_setup_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_marked_examples_run():
    blocks = re.findall(r"<!-- tested -->\s*```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no tested example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
