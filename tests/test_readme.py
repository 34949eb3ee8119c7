"""The docs' promises: the README's two set-up commands exist, and every Python block of
README.md and docs/*.md runs on its own, as a reader copies it: in a fresh namespace, in a
folder holding what a finished `make demo` leaves (runs/default). A block that cannot run
alone says why on the line above it, `<!-- not run: REASON -->`, and is skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks() -> list:
    params = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start("code")].count("\n")  # the fence's line, 1-based
            name = f"{page.relative_to(ROOT)}:{line}"
            params.append(pytest.param(page, line, match["code"], match["why"], id=name))
    return params


BLOCKS = python_blocks()


def test_setup_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_python_block_is_found():
    """Every ```python fence is one of BLOCKS (a marker the pattern missed would hide a block)."""
    fences = sum(page.read_text().count("```python\n") for page in PAGES)
    assert len(BLOCKS) == fences and any(p.values[0].name == "README.md" for p in BLOCKS)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with runs/default as make demo leaves it (checkpoints, the exported trunk),
    from two steps of the default config."""
    from seer.config import load_config
    from seer.train import train

    folder = tmp_path_factory.mktemp("demo")
    overrides = [f"run_dir={folder / 'runs' / 'default'}", "train.max_steps=2", "train.batch_size=16"]
    train(load_config(ROOT / "configs" / "default.yaml", [*overrides, "train.progress=false"]))
    return folder


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page, line, code, why", BLOCKS)
def test_python_block_runs_alone(page, line, code, why, demo_folder, monkeypatch):
    if why:
        pytest.skip(f"marked not to run alone: {why}")
    monkeypatch.chdir(demo_folder)
    # Line numbers of a failure point into the page.
    source = "\n" * line + code
    exec(compile(source, str(page), "exec"), {"__name__": "__main__"})
