"""README.md and docs/: the command list is the CLI's, and the text describes the product only
(nothing about who made it or in which steps)."""
import os
import re
import subprocess
import sys

from reproduce.__main__ import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
# Words that tell how or by whom the package was built, not what it is (case-insensitive).
MAKING = re.compile(r"engineer|helper|this session|issues? [0-9]|first draft|chain\.sh|target <=",
                    re.I)


def readme_commands():
    """The command names listed under the README's "## Commands", in order."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    listing = section.split("lists them:", 1)[1].split(".", 1)[0]
    return re.findall(r"`([a-z]+)`", listing)


def doc_files():
    """README.md and every text file under docs/ (images are skipped)."""
    yield README
    for base, _, files in os.walk(os.path.join(ROOT, "docs")):
        for name in sorted(files):
            path = os.path.join(base, name)
            try:
                with open(path, encoding="utf-8") as f:
                    f.read()
            except UnicodeDecodeError:
                continue
            yield path


def test_readme_lists_the_cli_commands():
    assert readme_commands() == list(COMMANDS)


def test_readme_commands_are_in_the_help():
    out = subprocess.run([sys.executable, "-m", "reproduce", "--help"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=300)
    assert out.returncode == 0, out.stderr
    listed = set(re.findall(r"^\s{4}([a-z]+)\s", out.stdout, re.M))
    assert set(readme_commands()) <= listed, (readme_commands(), out.stdout)


def test_docs_describe_the_product_only():
    found = []
    for path in doc_files():
        with open(path, encoding="utf-8") as f:
            for k, line in enumerate(f, 1):
                if MAKING.search(line):
                    found.append("{}:{}: {}".format(os.path.relpath(path, ROOT), k, line.strip()))
    assert not found, "\n".join(found)
