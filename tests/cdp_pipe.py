"""A tiny Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no websocket,
no extra dependency): chromium reads NUL-terminated JSON commands on its fd 3 and
writes NUL-terminated JSON replies and events on its fd 4.

>>> with Browser("/usr/bin/chromium", tmp) as b:
...     page = b.new_page()
...     page.navigate("file:///path/report.html")
...     page.evaluate("document.title")
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import threading
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless chromium; ``events`` collects every event from every session."""

    def __init__(self, exe: str, profile_dir, timeout: float = 60.0):
        self.timeout = timeout
        r_in, w_in = os.pipe()      # we write commands, chromium reads them on fd 3
        r_out, w_out = os.pipe()    # chromium writes on fd 4, we read
        # Move the child's ends to fds >= 10 so dup2 onto 3 and 4 cannot clobber them.
        c_in = fcntl.fcntl(r_in, fcntl.F_DUPFD_CLOEXEC, 10)
        c_out = fcntl.fcntl(w_out, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(r_in)
        os.close(w_out)

        def child():
            os.dup2(c_in, 3)        # dup2 makes 3 and 4 inheritable; the rest stay CLOEXEC
            os.dup2(c_out, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(c_in)
        os.close(c_out)
        self._w = os.fdopen(w_in, "wb", buffering=0)
        self._r = os.fdopen(r_out, "rb", buffering=0)
        self._next = 0
        self._replies: dict = {}
        self._cv = threading.Condition()
        self.events: queue.Queue = queue.Queue()
        self.log: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr = threading.Thread(target=self._drain, daemon=True)
        self._stderr.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.decode("utf-8", "replace"))

    def _read(self):
        buf = b""
        while True:
            chunk = self._r.read(1 << 16)
            if not chunk:
                with self._cv:
                    self._replies[None] = "closed"
                    self._cv.notify_all()
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for raw in msgs:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None):
        with self._cv:
            self._next += 1
            mid = self._next
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cv:
            while mid not in self._replies:
                if None in self._replies:
                    raise CDPError(f"chromium closed the pipe: {''.join(self.log)[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"no reply to {method}")
                self._cv.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def new_page(self, width: int = 1280, height: int = 1000) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session, width, height)

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    """One tab: console errors, uncaught exceptions and requests are recorded."""

    def __init__(self, browser: Browser, session: str, width: int, height: int):
        self.b, self.s = browser, session
        self.errors: list = []      # console.error / uncaught exceptions / error log entries
        self.requests: list = []    # every URL the page asked for
        self.loaded = False
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method, params=None):
        return self.b.send(method, params, self.s)

    def pump(self, timeout: float = 0.0):
        """Move the events that arrived into errors / requests / loaded."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.b.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if ev.get("sessionId") != self.s:
                continue
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                self.errors.append("uncaught: " + str(d.get("exception", {}).get(
                    "description") or d.get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(
                    str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                self.errors.append("log: " + p["entry"].get("text", ""))
            elif m == "Network.requestWillBeSent":
                self.requests.append(p.get("request", {}).get("url", ""))
            elif m == "Page.loadEventFired":
                self.loaded = True

    def navigate(self, url: str, timeout: float = 60.0):
        self.loaded = False
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not self.loaded:
            if time.monotonic() > deadline:
                raise CDPError(f"{url} did not load")
            self.pump(0.2)

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CDPError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression!r}")
            self.pump(0.05)

    def rect(self, selector: str) -> dict:
        """The element's box in CSS pixels, viewport (x, y) and page (px, py) origin."""
        return self.evaluate(
            "(() => { const r = document.querySelector(" + json.dumps(selector) + ")"
            ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, "
            "height: r.height, px: r.x + window.scrollX, py: r.y + window.scrollY}; })()")

    def click(self, x: float, y: float):
        """A real left click at viewport (x, y): move, press, release."""
        for kind, extra in (("mouseMoved", {}), ("mousePressed", {"clickCount": 1}),
                            ("mouseReleased", {"clickCount": 1})):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": x, "y": y, "button": "left", **extra})

    def key(self, key: str, code: str, key_code: int):
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                 "windowsVirtualKeyCode": key_code})

    def screenshot(self, selector: str | None = None) -> bytes:
        """PNG of the page, or of one element (scrolled into view first)."""
        params = {"format": "png", "captureBeyondViewport": True}
        if selector:
            self.evaluate(f"document.querySelector({json.dumps(selector)})"
                          ".scrollIntoView({block: 'center'})")
            r = self.rect(selector)
            params["clip"] = {"x": r["px"], "y": r["py"], "width": r["width"],
                              "height": r["height"], "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
