"""The README's commands as a newcomer types them: every `python -m bagnet.run` line composes and validates
as written (placeholders for paths aside), and every `make` line names a target that make knows and that
expands to runner commands which compose. Running them end to end is what `.ci/run` and the pipeline tests
do; this catches a README that drifted from the configs."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bagnet.config import compose, validate

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
LINES = [ln.split("  #")[0].split(" # ")[0].strip() for b in BLOCKS for ln in b.replace("\\\n", " ").splitlines()]


def overrides_of(line: str) -> list[str]:
    words = shlex.split(line)
    start = words.index("bagnet.run") + 1
    # sweeps (-m) compose their first value (a list, logger=[csv,tensorboard], is one value); placeholder paths are
    # real enough for composing
    return [w.split(",")[0] if "=" in w and "[" not in w and not w.startswith("hydra") else w for w in words[start:]
            if w != "-m" and not w.startswith("hydra")]


RUNNER = [ln for ln in LINES if "bagnet.run" in ln and "hydra/launcher" not in ln]
MAKE = [ln for ln in LINES if ln.startswith("make ")]


def test_the_readme_has_commands_to_check():
    assert len(RUNNER) >= 3 and len(MAKE) >= 8


@pytest.mark.parametrize("line", RUNNER)
def test_runner_lines_compose_as_written(line):
    validate(compose(overrides_of(line)))


@pytest.mark.parametrize("line", MAKE)
def test_make_lines_name_known_targets_whose_commands_compose(line):
    words = [w for w in shlex.split(line) if not (w.startswith("[") or w.endswith("]"))]
    args = [w.replace("...", "/path") for w in words[1:]]
    dry = subprocess.run(["make", "-n", *args, "PY=python"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    runs = [ln for ln in dry.stdout.replace("\\\n", " ").splitlines() if "-m bagnet.run" in ln]
    for run in runs:
        if "for t in" in run:                       # make signatures' loop: one of its commands
            run = run.replace("task=$t", "task=scrambling").split("do ")[1].split(" ||")[0]
        validate(compose(overrides_of(run.replace("python -m bagnet.run", "bagnet.run"))))


def test_the_wheel_checks_runner_lines_compose():
    """.ci/check_wheel runs the installed `bagnet-run` outside the checkout, after the tests: a stale override there
    (signatures.* after the rename to experiments.*) failed only CI, 17 minutes in."""
    script = (REPO / ".ci" / "check_wheel").read_text().replace("\\\n", " ")
    small = shlex.split(re.search(r"small=\((.*?)\)", script, re.S).group(1))
    runs = [ln for ln in script.splitlines() if '/bagnet-run"' in ln]
    assert len(runs) >= 2
    for run in runs:
        words = shlex.split(run.replace('"${small[@]}"', " ".join(small)))[1:]
        validate(compose([w for w in words if "$" not in w]))
