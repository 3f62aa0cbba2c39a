"""Open a local HTML file in headless Chromium and report what a user would see: did the page load, did
every image decode, what did the console say, which URLs were requested, and a screenshot.

Talks the Chrome DevTools Protocol over `--remote-debugging-pipe` (JSON messages separated by NUL bytes
on file descriptors 3 and 4 of the browser), so it needs nothing beyond the standard library and Debian's
`chromium` package (`apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
    "--window-size=1280,1600",
]


@dataclass
class PageReport:
    title: str
    images: list[dict[str, Any]]  # {src prefix, complete, width, height}
    console: list[dict[str, str]]  # {level, text}: console calls, exceptions, browser log entries
    requests: list[str]  # every URL the page requested
    screenshot: bytes
    text: str  # the page's visible text
    events: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, str]]:
        return [c for c in self.console if c["level"] in ("error", "exception")]


class _Browser:
    def __init__(self, profile: Path) -> None:
        import fcntl

        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser's ends move to fds >= 10 first, so bash's "3<&X 4>&Y" can never clobber one with
        # the other (os.pipe may well return 3 and 4 themselves).
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = high
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout=60)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while True:
            e = self._read(timeout=max(0.1, deadline - time.monotonic()))
            self.events.append(e)
            if e.get("method") == method:
                return e

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages, image decode errors)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.events.append(self._read(timeout=deadline - time.monotonic()))
            except TimeoutError:
                return

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def open_page(html: Path) -> PageReport:
    """Load `html` (a file) in a fresh headless Chromium profile and inspect it."""
    profile = Path(tempfile.mkdtemp(prefix="edgeface-chromium-"))
    browser = _Browser(profile)
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        browser.drain(1.0)
        value = browser.send(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify({title: document.title, text: document.body.innerText, "
                "images: Array.from(document.images).map(i => ({src: i.src.slice(0, 40), "
                "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))})",
                "returnByValue": True,
            },
            session=session,
        )["result"]["value"]
        shot = browser.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
        )
        state = json.loads(value)
        console, requests = [], []
        for e in browser.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                console.append({"level": p.get("type", ""), "text": text})
            elif m == "Runtime.exceptionThrown":
                details = json.dumps(p.get("exceptionDetails", {}))[:500]
                console.append({"level": "exception", "text": details})
            elif m == "Log.entryAdded":
                entry = p.get("entry", {})
                console.append({"level": entry.get("level", ""), "text": entry.get("text", "")})
            elif m == "Network.requestWillBeSent":
                requests.append(p["request"]["url"][:80])
        return PageReport(
            state["title"],
            state["images"],
            console,
            requests,
            base64.b64decode(shot["data"]),
            state["text"],
            sorted({str(e.get("method")) for e in browser.events}),
        )
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
