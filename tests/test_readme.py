"""The README's launcher tables list every variable of each launcher with its real default."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
VARIABLE = re.compile(r'^: "\$\{(\w+):?=(.*?)\}"', re.MULTILINE)


def documented_launchers() -> list[str]:
    return re.findall(r"^#### `(scripts/[\w/.-]+\.sh)`", README, re.MULTILINE)


def readme_table(script: str) -> dict[str, str]:
    section = README.split(f"#### `{script}`", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(.*?)` \|", section, re.MULTILINE)
    return dict(rows)


def test_readme_opens_with_the_two_commands():
    head = README[: README.index("## Data flow")]
    assert "bash scripts/quickstart.sh" in head and "bash scripts/test.sh" in head
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_every_launcher_with_variables_is_documented():
    launchers = {
        str(p.relative_to(REPO))
        for p in (REPO / "scripts").glob("*.sh")
        if VARIABLE.search(p.read_text()) and p.name not in ("test.sh", "setup_env.sh")
    }
    assert launchers <= set(documented_launchers())


@pytest.mark.parametrize("script", documented_launchers())
def test_launcher_table_matches_the_script(script):
    in_script = dict(VARIABLE.findall((REPO / script).read_text()))
    assert readme_table(script) == in_script
