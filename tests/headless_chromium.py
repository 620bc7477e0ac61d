"""Open a local HTML file in headless Chromium and report what happened. Test helper.

Speaks the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated
by NUL bytes on file descriptors 3 and 4), so no websocket client or browser-automation
package is needed: only Debian's ``chromium``. Every request the page makes is recorded
(``Network.requestWillBeSent``) while the browser runs with the network blocked
(unresolvable hosts, a dead proxy), and console errors and uncaught exceptions are
collected, so a test can assert that a report is self-contained and draws cleanly.

Run by hand: ``python3 tests/headless_chromium.py report.html shot.png``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Flags that work here as root; the last two make any network request fail fast.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9")

# Chromium reads commands on fd 3 and writes answers on fd 4; subprocess keeps fd numbers,
# so a two-line trampoline moves the pipe ends there before exec.
_TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
               "os.execv(sys.argv[3], sys.argv[3:])")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclasses.dataclass
class PageRun:
    """What the browser saw while loading the page and evaluating ``ready``."""

    requests: list[str]
    errors: list[str]
    value: Any
    screenshot: bytes | None


class DevToolsPipe:
    """A DevTools protocol connection to a Chromium started with --remote-debugging-pipe."""

    def __init__(self, binary: str, user_data_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        argv = [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser_r), str(from_browser_w), *argv],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its answer; events seen meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"chromium did not answer {waiting_for} in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited while waiting for {waiting_for}: {self._stderr_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        self.process.wait(timeout=10)
        return (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        if self.process.stderr:
            self.process.stderr.close()


def open_page(path: Path, ready: str, value: str, timeout: float = 60.0, screenshot: bool = True,
              width: int = 1400, full_height: bool = True) -> PageRun:
    """Load ``path``, wait until the JavaScript expression ``ready`` is truthy, evaluate ``value``.

    ``full_height`` makes the viewport as tall as the loaded page, so that what a page
    draws lazily (on scrolling into view) is drawn. Returns every request URL, every
    console error or uncaught exception, the value and a full-page PNG screenshot.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="hostperf-chromium-") as profile:
        browser = DevToolsPipe(binary, Path(profile))
        try:
            return _run(browser, path, ready, value, timeout, screenshot, width, full_height)
        finally:
            browser.close()


def _run(browser: DevToolsPipe, path: Path, ready: str, value: str, timeout: float,
         screenshot: bool, width: int, full_height: bool) -> PageRun:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable", session=session)
    _resize(browser, session, width, 900)
    browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session)
    deadline = time.monotonic() + timeout
    while not _evaluate(browser, session, 'document.readyState === "complete"'):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: not loaded after {timeout:.0f} s")
        time.sleep(0.05)
    if full_height:
        # A viewport as tall as the page: content drawn on scrolling into view is drawn now.
        _resize(browser, session, width, int(_evaluate(browser, session, "document.documentElement.scrollHeight")))
    while not _evaluate(browser, session, ready):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: {ready!r} still false after {timeout:.0f} s; "
                               f"errors so far: {_errors(browser.events)}")
        time.sleep(0.1)
    result = _evaluate(browser, session, value)
    shot = None
    if screenshot:
        _resize(browser, session, width, int(_evaluate(browser, session, "document.documentElement.scrollHeight")))
        data = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        shot = base64.b64decode(data["data"])
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"]
    return PageRun(requests, _errors(browser.events), result, shot)


def _resize(browser: DevToolsPipe, session: str, width: int, height: int) -> None:
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)


def _evaluate(browser: DevToolsPipe, session: str, expression: str) -> Any:
    answer = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    if "exceptionDetails" in answer:
        raise RuntimeError(f"evaluating {expression!r}: {answer['exceptionDetails']}")
    return answer["result"].get("value")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                      for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip())
    return found


if __name__ == "__main__":
    page, out = Path(sys.argv[1]), Path(sys.argv[2])
    run = open_page(page, "document.body.dataset.chartsReady !== undefined",
                    "document.body.dataset.chartsReady")
    out.write_bytes(run.screenshot or b"")
    print(f"charts drawn: {run.value}; requests: {run.requests}; errors: {run.errors}; screenshot: {out}")
