"""Headless Chromium driven through the DevTools protocol over a pipe (no websocket library needed).

Used by ``tests/test_view.py`` and ``docs/render_viewers.sh``. Chromium is
started with ``--remote-debugging-pipe``: it reads NUL-terminated JSON commands
on file descriptor 3 and writes NUL-terminated replies and events on 4. WebGL
runs on the CPU through SwiftShader (``--use-angle=swiftshader``).

As a script: ``python tests/headless_chromium.py PAGE.html SHOT.png [WIDTH HEIGHT [I,J,K]]``
loads a ``llm2nifti view`` page, waits until the viewer is ready, puts the
crosshair on voxel ``I,J,K`` (printing the layer shown) and saves a
screenshot; console errors make it exit 1.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page; collects console errors and exceptions.

    Attributes
    ----------
    errors : list of str
        ``console.error`` messages, uncaught exceptions and browser log entries of level error.
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        binary = find_chromium()
        if binary is None:
            raise ChromiumError("chromium is not installed")
        self.timeout = timeout
        self.errors: list[str] = []
        self.messages: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="llm2nifti-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def plumbing():  # in the child: fd 3 = commands in, fd 4 = replies out (dup2 leaves them inheritable)
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [binary, "--headless", "--remote-debugging-pipe", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
                "--mute-audio", f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
                "about:blank"]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=plumbing)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._session = None
        self._width, self._height = width, height
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                  session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # -- protocol ---------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise ChromiumError("no answer from chromium in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ChromiumError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.messages.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description")
                                                   or details.get("text")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.messages.append(f"log {entry.get('level')}: {entry.get('text')}")
            if entry.get("level") == "error":
                self.errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    # -- page -------------------------------------------------------------
    def open(self, path: str | Path) -> None:
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})

    def evaluate(self, expression: str, *, await_promise: bool = True):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": await_promise,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(str(details.get("exception", {}).get("description") or details.get("text")))
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.2):
        """Evaluate ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except ChromiumError:
                value = None
            if value:
                return value
            time.sleep(interval)
        raise ChromiumError(f"timed out waiting for {expression}")

    def screenshot(self, path: str | Path | None = None) -> bytes:
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (ChromiumError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


VIEWER_READY = ("(() => { const v = document.querySelector('.llm2nifti-viewer');"
                " return v && v.dataset.status !== 'loading' ? v.dataset.status : null; })()")


def load_viewer(browser: Chromium, page: str | Path, timeout: float = 60.0) -> str:
    """Open a ``llm2nifti view`` page and wait until its viewer is ready (or failed); returns the status."""
    browser.open(page)
    status = browser.wait_for(VIEWER_READY, timeout=timeout)
    browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return status


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4, 5):
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    width, height = (int(argv[2]), int(argv[3])) if len(argv) >= 4 else (1280, 900)
    with Chromium(width, height) as browser:
        status = load_viewer(browser, argv[0])
        if len(argv) == 5 and status == "ready":
            i, j, k = (int(v) for v in argv[4].split(","))
            print(browser.evaluate(f"Object.values(window.llm2niftiViewers)[0].setVoxel({i}, {j}, {k})"))
            browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        browser.screenshot(argv[1])
        for error in browser.errors:
            print(error, file=sys.stderr)
    if status != "ready" or browser.errors:
        print(f"viewer status: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
