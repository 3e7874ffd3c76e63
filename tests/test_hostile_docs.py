"""The README points only to files that are in the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.mark.skipif(not README.is_file(), reason="no README.md beside the tests")
def test_files_named_in_the_readme_exist():
    named = re.findall(r"`([^`\s]+\.(?:md|rst|txt|sh|py|toml))`", README.read_text())
    assert named, "the pattern finds no file name in README.md"
    assert [name for name in named if not (ROOT / name).is_file()] == []
