"""Headless Chromium: a screenshot of a local HTML file, or its DOM after the page has loaded.

Used to check the report as a reader's browser renders it (tests/test_report.py) and to take
the README's screenshot of it (``reproduce report --screenshot``). Chromium runs with
``--no-sandbox`` (it refuses to start as root otherwise, as in containers and CI) on a file this
package wrote itself, and with no network access needed: the report embeds everything.
"""
import os
import shutil
import subprocess

from data.errors import InputError
from data.files import atomic_path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "chrome", "chrome-headless-shell")


class BrowserError(InputError):
    """No usable headless Chromium, or it failed on the file."""


def find_chromium():
    """Path of the browser: $CHROMIUM, else the first of ``CANDIDATES`` on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise BrowserError("CHROMIUM={}: not an executable".format(explicit))
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("no headless Chromium found (tried {}); install Debian's 'chromium' "
                       "package: sudo bash docker/install-system.sh".format(", ".join(CANDIDATES)))


def _command(extra, html_path, width, height):
    return [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--mute-audio",
            "--window-size={},{}".format(int(width), int(height))] + extra + [
        "file://" + os.path.abspath(html_path)]


def _run(cmd, timeout):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BrowserError("{} timed out after {} s".format(os.path.basename(cmd[0]), timeout))
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise BrowserError("{} failed (exit {}): {}".format(os.path.basename(cmd[0]),
                                                           p.returncode, tail))
    return p


def screenshot(html_path, png_path, width=1400, height=1800, timeout=180):
    """PNG of the page's first ``width`` x ``height`` CSS pixels, written atomically."""
    with atomic_path(png_path) as tmp:
        os.remove(tmp)   # Chromium reports success without writing if the path is odd; check
        _run(_command(["--screenshot=" + tmp], html_path, width, height), timeout)
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise BrowserError("{}: Chromium wrote no screenshot".format(html_path))
    return png_path


def dump_dom(html_path, width=1400, height=1800, timeout=180):
    """The serialised DOM after the page's load event (its scripts have run)."""
    return _run(_command(["--dump-dom"], html_path, width, height), timeout).stdout
