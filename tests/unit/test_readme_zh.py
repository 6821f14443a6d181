"""README.zh.md, the Chinese README, stays linked to README.md and in step with its commands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EN = (ROOT / "README.md").read_text(encoding="utf-8")
ZH_PATH = ROOT / "README.zh.md"


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.M | re.S)


def first_command(block: str) -> str:
    """The block's first line that is a command, its trailing comment removed (comments are translated)."""
    for line in block.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            return command
    raise AssertionError(f"a shell block without a command:\n{block}")


def test_the_two_readmes_link_to_each_other():
    assert ZH_PATH.is_file()
    zh = ZH_PATH.read_text(encoding="utf-8")
    assert "[English](README.md)" in "\n".join(zh.splitlines()[:5])
    assert "[中文](README.zh.md)" in "\n".join(EN.splitlines()[:5])


def test_chinese_readme_has_every_first_command_of_two_commands():
    zh = ZH_PATH.read_text(encoding="utf-8")
    blocks = shell_blocks(section(EN, "Two commands"))
    assert blocks, "README.md's Two commands section has no shell block"
    for block in blocks:
        command = first_command(block)
        assert command in zh, f"README.zh.md lacks `{command}` (README.md, Two commands)"


def test_chinese_readme_names_the_commit_it_translates():
    zh = ZH_PATH.read_text(encoding="utf-8")
    match = re.search(r"README\.md 的提交 `([0-9a-f]{7,40})`", zh)
    assert match, "README.zh.md should say which README.md commit it translates"
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-t", match.group(1)],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available to check the commit")
    if found.returncode != 0 and "not a git repository" in found.stderr:
        pytest.skip("not a git checkout")
    assert found.stdout.strip() == "commit", f"{match.group(1)} is not a commit of this repository"


def test_chinese_readme_covers_the_chinese_demo():
    zh = ZH_PATH.read_text(encoding="utf-8")
    assert "make demo-zh" in zh and "make demo-zh" in EN
    assert "简答：" in zh and "简答：" in EN
