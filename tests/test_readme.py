"""The README a newcomer reads first: the two commands at its top, each section once."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_starts_with_the_two_commands_a_newcomer_needs():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]


def test_every_section_of_the_readme_appears_once():
    headings = Counter(re.findall(r"^#{2,4} .+$", README, flags=re.MULTILINE))
    assert [heading for heading, count in headings.items() if count > 1] == []
