"""Screenshot TensorBoard's own web page for a run, headless, to see what a user sees.

Usage::

    python benchmarks/tensorboard_screenshots.py --logdir runs/<run> --out DIR \
        [--tabs timeseries scalars images histograms text hparams] [--port N] \
        [--tag-filter REGEX] [--window-size 1600,1200] [--budget-ms 15000]

It starts ``tensorboard --logdir LOGDIR --host 127.0.0.1 --port PORT`` as a subprocess, waits until
http://127.0.0.1:PORT/ answers and the run list is loaded, takes one screenshot per tab with headless
Chromium into DIR/<tab>.png, stops TensorBoard again (also on errors), and prints one JSON line that
lists the files and their sizes (plus, per tab, whether TensorBoard has data for that plugin).

Needs:

* ``tensorboard`` (the project's venv has it); run with that venv's Python.
* A Chromium-family browser on PATH (chromium, chromium-browser, chromium-headless-shell,
  google-chrome, ...); on Debian: ``apt-get install -y chromium``. ``--browser PATH`` overrides.

How the page is made to render (TensorBoard is a single-page app that fetches its data by XHR
after load, so a plain ``--screenshot`` gives only the orange title bar):

* ``--virtual-time-budget`` lets the page run its timers and requests before the shot is taken.
  A small run needs a few seconds of virtual time; the default is 15 s (timings: benchmarks/RESULTS.md,
  "Inside the memory"). A very short budget can hang Chromium, so each shot has a wall-clock timeout.
* ``--run-all-compositor-stages-before-draw`` is needed for the Time Series tab's lazily drawn cards
  (without it the cards stay empty boxes).
* ``?forceSVG=true`` (a TensorBoard feature flag) makes the Time Series line charts draw with SVG:
  their default WebGL renderer draws no lines in headless Chromium without a GPU.
* A tag filter (default ``.*``) puts every matching chart of a tab into one expanded group at the
  top; without it the legacy dashboards and Time Series expand only their first tag groups.

Tabs: ``timeseries`` is the default Angular dashboard (scalars, images and histograms together);
``scalars``, ``images``, ``histograms``, ``distributions``, ``text`` and ``hparams`` are the
per-plugin dashboards, still reachable as URL fragments (``/#images``) in TensorBoard 2.21.
A tab whose plugin has no data shows TensorBoard's own "No ... data was found" page.

Exit status: 0 when every screenshot was written, 1 when some tab failed, 2 when the browser is
missing or TensorBoard did not come up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# Browser executables tried in order; Debian's "chromium" package installs /usr/bin/chromium.
BROWSER_NAMES: tuple[str, ...] = (
    "chromium",
    "chromium-browser",
    "chromium-headless-shell",
    "headless_shell",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
)

# Tabs this script knows, mapped to the plugin name in /data/plugins_listing.
TABS: dict[str, str] = {
    "timeseries": "timeseries",
    "scalars": "scalars",
    "images": "images",
    "histograms": "histograms",
    "distributions": "distributions",
    "text": "text",
    "hparams": "hparams",
}
DEFAULT_TABS: tuple[str, ...] = ("timeseries", "scalars", "images", "histograms", "text", "hparams")

# Legacy (Polymer) dashboards that read a tag filter from the URL fragment ("#scalars&tagFilter=...").
LEGACY_TAG_FILTER_TABS: frozenset[str] = frozenset(
    {"scalars", "images", "histograms", "distributions", "text"}
)

INSTALL_HINT = "no headless browser found (tried: {names}); install one, e.g. `apt-get install -y chromium`"


class ScreenshotError(RuntimeError):
    """A setup step failed (browser missing, TensorBoard not answering)."""


def find_browser(explicit: str | None) -> str:
    """Return the browser executable: ``explicit`` if given, else the first of BROWSER_NAMES on PATH."""
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise ScreenshotError(f"browser {explicit!r} not found or not executable")
        return path
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise ScreenshotError(INSTALL_HINT.format(names=", ".join(BROWSER_NAMES)))


def free_port() -> int:
    """Ask the OS for a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    """The TensorBoard command line: the console script next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("tensorboard")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "tensorboard.main"]
    return [*base, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]


def http_get(url: str, timeout: float = 2.0) -> bytes:
    """GET ``url`` and return the body; raises on connection errors and non-2xx answers."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL we built)
        return resp.read()


def wait_for_tensorboard(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> list[str]:
    """Wait until TensorBoard answers on ``base_url`` and lists runs; return the run names.

    The HTTP server comes up before the event files are read, so after ``/`` answers this also polls
    ``/data/runs`` until it is non-empty (an empty logdir is reported as an empty list at the deadline).
    """
    deadline = time.monotonic() + timeout_s
    page_up = False
    runs: list[str] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"tensorboard exited with status {proc.returncode} before answering")
        try:
            if not page_up:
                http_get(base_url + "/")
                page_up = True
            runs = json.loads(http_get(base_url + "/data/runs"))
            if runs:
                return runs
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.25)
    if not page_up:
        raise ScreenshotError(f"tensorboard did not answer on {base_url}/ within {timeout_s:.0f} s")
    return runs


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop ``proc`` and its children (it was started in its own session): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def tab_url(base_url: str, tab: str, tag_filter: str) -> str:
    """The URL of one tab, with the SVG renderer forced and the tag filter applied where supported."""
    query = {"forceSVG": "true"}
    fragment = tab
    if tag_filter:
        if tab == "timeseries":
            # The Angular dashboard reads its tag filter from the query string.
            query["tagFilter"] = tag_filter
        elif tab in LEGACY_TAG_FILTER_TABS:
            # The Polymer dashboards keep their state in the fragment, "&"-separated.
            fragment += "&tagFilter=" + urllib.parse.quote(tag_filter, safe="")
    return f"{base_url}/?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}#{fragment}"


def browser_command(
    browser: str, url: str, png: Path, profile: Path, window: str, budget_ms: int
) -> list[str]:
    """Headless Chromium flags that let TensorBoard finish rendering before the screenshot."""
    return [
        browser,
        "--headless=new",
        "--no-sandbox",  # we run as root in containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--mute-audio",
        f"--user-data-dir={profile}",  # a fresh profile: no saved TensorBoard settings, no profile lock
        f"--window-size={window}",
        f"--virtual-time-budget={budget_ms}",  # let the XHRs and timers run before the shot
        "--run-all-compositor-stages-before-draw",  # Time Series cards stay blank without it
        f"--screenshot={png}",
        url,
    ]


def screenshot(cmd: list[str], png: Path, timeout_s: float) -> str | None:
    """Run the browser; return None on success, else a short error message.

    The browser runs in its own session so that a hang (seen with very small virtual time budgets)
    can be ended with all its helper processes.
    """
    png.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(proc, grace_s=5.0)
        return f"browser timed out after {timeout_s:.0f} s"
    if proc.returncode != 0 or not png.exists():
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        return f"browser exited with status {proc.returncode}, no screenshot: {' | '.join(tail)}"
    return None


def enabled_plugins(base_url: str) -> dict[str, bool]:
    """Which plugins TensorBoard reports as having data (``enabled``), by plugin name."""
    try:
        listing = json.loads(http_get(base_url + "/data/plugins_listing", timeout=10.0))
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return {}
    return {name: bool(info.get("enabled")) for name, info in listing.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--logdir", type=Path, required=True, help="TensorBoard log directory (a run or a parent)"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for <tab>.png and tensorboard.log")
    parser.add_argument(
        "--tabs", nargs="+", choices=sorted(TABS), default=list(DEFAULT_TABS), help="tabs to shoot"
    )
    parser.add_argument("--port", type=int, default=0, help="TensorBoard port (default: a free one)")
    parser.add_argument(
        "--tag-filter", default=".*", help="tag regex put in the page's filter box ('' for none)"
    )
    parser.add_argument("--window-size", default="1600,1200", help="browser viewport WIDTH,HEIGHT")
    parser.add_argument("--budget-ms", type=int, default=15000, help="browser virtual time budget per tab")
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds to wait for TensorBoard")
    parser.add_argument("--browser", default=None, help="browser executable (default: search PATH)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        browser = find_browser(args.browser)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.logdir.exists():
        print(f"error: logdir {args.logdir} does not exist", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = args.out / "tensorboard.log"
    started = time.monotonic()
    result: dict[str, object] = {"logdir": str(args.logdir), "browser": browser, "url": base_url}
    shots: list[dict[str, object]] = []
    failed = False

    with open(log_path, "wb") as log, tempfile.TemporaryDirectory(prefix="tb_shots_profile_") as tmp:
        tb = subprocess.Popen(
            tensorboard_command(args.logdir, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                runs = wait_for_tensorboard(base_url, tb, args.startup_timeout)
            except ScreenshotError as exc:
                print(f"error: {exc}; see {log_path}", file=sys.stderr)
                return 2
            if not runs:
                print(f"warning: tensorboard lists no runs under {args.logdir}", file=sys.stderr)
            result["runs"] = runs
            result["startup_s"] = round(time.monotonic() - started, 2)
            plugins = enabled_plugins(base_url)

            for tab in args.tabs:
                png = (args.out / f"{tab}.png").resolve()
                url = tab_url(base_url, tab, args.tag_filter)
                # Each tab gets its own fresh profile directory so no state leaks between shots.
                profile = Path(tmp) / tab
                cmd = browser_command(browser, url, png, profile, args.window_size, args.budget_ms)
                t0 = time.monotonic()
                error = screenshot(cmd, png, timeout_s=args.budget_ms / 1000 + 60)
                entry: dict[str, object] = {
                    "tab": tab,
                    "url": url,
                    "has_data": plugins.get(TABS[tab]),
                    "seconds": round(time.monotonic() - t0, 2),
                }
                if error is None:
                    entry.update(file=str(png), bytes=png.stat().st_size)
                else:
                    entry["error"] = error
                    failed = True
                    print(f"error: {tab}: {error}", file=sys.stderr)
                shots.append(entry)
        finally:
            stop_process_group(tb)

    result.update(shots=shots, log=str(log_path), total_s=round(time.monotonic() - started, 2))
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
