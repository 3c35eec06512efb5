"""The README's examples, run as a new user would, print what the README shows.

* A ```python block is run as a script in a fresh folder; when a ```text
  block follows it, its standard output must be that text.
* A ```console block is a shell session: each ``$ `` line is a command, the
  lines after it until the next ``$ `` are what it prints (standard output
  and error), run one after the other in one shell.
* In both, ``…`` in the expected text stands for any text (ids, times), and
  runs of blanks compare equal. Every root path ``/tmp/ddmq…`` of a block is
  replaced by a fresh folder of this test, so blocks never see each other's
  queues (as they do not when run in order: each uses its own root).
* A block right after ``<!-- not run … -->`` is skipped (it needs a cluster);
  plain ``` blocks (install commands, diagrams) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
README = os.path.join(REPO, "README.md")
ROOT_PATH = re.compile(r"/tmp/ddmq[\w.-]*")


def blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, text, expected output) of every block to run."""
    lines = open(README, encoding="utf-8").read().split("\n")
    found = []
    i = 0
    skip_next = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- not run"):
            skip_next = True
        elif line.startswith("```"):
            lang = line[3:].strip()
            start = i
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            expected = None
            j = i + 1
            if j < len(lines) and lines[j].strip() == "```text":
                out = []
                j += 1
                while not lines[j].startswith("```"):
                    out.append(lines[j])
                    j += 1
                expected = "\n".join(out)
                i = j
            if lang in ("python", "console") and not skip_next:
                found.append((start + 1, lang, "\n".join(body), expected))
            skip_next = False
        i += 1
    return found


def matches(expected: str, actual: str) -> bool:
    """Line by line; ``…`` is any text; runs of blanks are one blank."""
    want = [re.sub(r"\s+", " ", line).strip() for line in expected.strip("\n").split("\n")]
    got = [re.sub(r"\s+", " ", line).strip() for line in actual.strip("\n").split("\n")]
    if len(want) != len(got):
        return False
    for pattern, line in zip(want, got):
        regex = ".*".join(re.escape(part) for part in pattern.split("…"))
        if not re.fullmatch(regex, line):
            return False
    return True


def with_roots(text: str, folder) -> str:
    return ROOT_PATH.sub(lambda m: str(folder / m.group(0).rsplit("/", 1)[1]), text)


def environment() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)  # where `ddmq` and `python3` of this install are
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": REPO}


@pytest.mark.parametrize("line, lang, text, expected", blocks(), ids=lambda v: str(v)[:12])
def test_readme_block(tmp_path, line, lang, text, expected):
    text = with_roots(text, tmp_path)
    if lang == "python":
        done = subprocess.run([sys.executable, "-"], input=text, capture_output=True, text=True,
                              cwd=tmp_path, timeout=300, env=environment())
        assert done.returncode == 0, f"README line {line}: {done.stderr}"
        if expected is not None:
            assert matches(expected, done.stdout), (
                f"README line {line} prints\n{done.stdout}\nnot\n{expected}")
        return
    commands: list[tuple[str, list[str]]] = []
    for row in text.split("\n"):
        if row.startswith("$ "):
            commands.append((row[2:], []))
        elif commands:
            commands[-1][1].append(row)
    marker = "@@ddmq-readme-next@@"
    script = "\n".join(f"echo {marker}\n{command} 2>&1" for command, _ in commands)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env=environment())
    outputs = done.stdout.split(marker + "\n")[1:]
    assert len(outputs) == len(commands), done.stdout + done.stderr
    for (command, want), got in zip(commands, outputs):
        assert matches(with_roots("\n".join(want), tmp_path), got), (
            f"README line {line}: `{command}` prints\n{got}\nnot\n" + "\n".join(want))


def test_every_python_and_console_block_is_run_or_marked():
    """Nothing is left out by accident: every python or console block of the
    README is run, or says why not."""
    text = open(README, encoding="utf-8").read()
    shown = len(re.findall(r"^```(?:python|console)\s*$", text, flags=re.M))
    skipped = len(re.findall(r"^<!-- not run", text, flags=re.M))
    assert len(blocks()) + skipped == shown


def test_the_help_examples_run(tmp_path):
    """``ddmq --help`` ends with examples: each works as shown, in order (the
    ack takes the work file name the consume before it printed)."""
    import json
    import shlex

    from ddmq.cli.parser import EPILOG
    commands = [line.strip() for line in EPILOG.split("\n") if line.strip().startswith("ddmq ")]
    assert len(commands) >= 7
    work = ""
    for command in commands:
        argv = shlex.split(with_roots(command, tmp_path))
        argv = [work if arg.endswith("ddmq1ed1...") else arg for arg in argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env=environment())
        assert done.returncode == 0, f"{command}: {done.stderr}"
        if argv[1] == "consume":
            work = json.loads(done.stdout)["filename"]
