"""Helpers for the browser test of the stock LLaMA-Factory Web UI (``tests/integration/test_webui.py``).

Two parts:

* :class:`WebUIServer` starts ``llamafactory-cli webui`` in a subprocess (own session, so the training
  subprocess it spawns dies with it), waits until it answers HTTP and always kills the whole process group.
* :class:`GradioPage` drives the Gradio 5 page in headless Chromium through Selenium.

LLaMA-Factory gives its components no ``elem_id``; labels come from ``webui/locales.py`` (English) and are set by
``engine.change_lang`` right after the page loads. The selectors therefore go by visible label text:

* every component sits in ``div.block``; its label text is ``span[data-testid="block-info"]`` inside it;
* a single-select ``gr.Dropdown`` is ``input[role="listbox"][aria-label="<label>"]``; its open option list is
  ``ul[role="listbox"] > li[role="option"][aria-label="<choice>"]``;
* a multiselect ``gr.Dropdown`` (Dataset, Checkpoint path) has a bare ``input`` in its block, no aria-label; the
  chosen values are ``div.token`` chips;
* a ``gr.Textbox`` is the ``textarea[data-testid="textbox"]`` (or ``input``) of its block;
* a ``gr.Slider`` exposes ``input[type="number"][aria-label="number input for <label>"]``;
* buttons, tabs (``button[role="tab"]``) and accordions (``button.label-wrap``, Gradio 5) go by their text;
* ``gr.Markdown`` output (the Train tab's status box) is a ``div.prose``; toasts are
  ``div[data-testid="toast-body"]`` with a ``toast-title`` (``Error``/``Warning``/``Info``);
* ``gr.Chatbot(type="messages")`` renders ``[data-testid="user"]`` / ``[data-testid="bot"]`` bubbles;
* ``gr.Audio`` uploads through its ``input[type="file"]`` (``data-testid="file-upload"``), hidden but
  accepted by ChromeDriver's ``send_keys``.

Every helper scopes to *displayed* elements: the four tabs' components all exist in the DOM and several share
labels (``Data dir``, ``Dataset``, ``Output dir``, ``Extra arguments``, ``Batch size``...).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

# Flags from the environment notes: the machine's network is closed, so everything that phones home is off.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1800",
)


def find_executable(candidates: tuple[str, ...], name: str) -> str | None:
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def missing_browser_requirements() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'selenium>=4.20' or the package's [webui-test] extra)"
    if find_executable(CHROMIUM_CANDIDATES, "chromium") is None:
        return "chromium is not installed (apt-get install -y chromium chromium-driver)"
    if find_executable(CHROMEDRIVER_CANDIDATES, "chromedriver") is None:
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    if shutil.which("llamafactory-cli", path=venv_path()) is None:
        return "llamafactory-cli is neither next to this interpreter nor on PATH"
    return None


def venv_path() -> str:
    """PATH with this interpreter's ``bin`` first, as in an activated venv: the Web UI starts training with a bare
    ``Popen(["llamafactory-cli", "train", ...])``, which must find the same installation."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebUIServer:
    """``llamafactory-cli webui`` on 127.0.0.1:<free port> with ``cwd`` as its working directory.

    The Web UI resolves ``saves/``, ``llamaboard_cache/`` and ``llamaboard_config/`` against its CWD, so a fresh
    directory keeps runs independent. ``start_new_session`` puts the server and the ``llamafactory-cli train``
    child it spawns in one process group, which :meth:`stop` kills.
    """

    def __init__(self, cwd: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.cwd = Path(cwd)
        self.log_path = Path(log_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 240.0) -> WebUIServer:
        env = dict(os.environ)
        env.update(
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
            # launch(inbrowser=True) calls webbrowser.open(): make that a no-op instead of a stray browser.
            BROWSER="true",
            PYTHONUNBUFFERED="1",
            PATH=venv_path(),
        )
        env.update(self.extra_env)
        exe = shutil.which("llamafactory-cli", path=env.get("PATH"))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, "webui"],
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webui exited with {self.proc.returncode} before serving:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"webui did not answer on {self.url} within {timeout:.0f}s:\n{self.log_tail()}")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Kill leftovers of the group (e.g. a training child) even when the leader already exited.
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None


def make_driver(user_data_dir: str | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = find_executable(CHROMIUM_CANDIDATES, "chromium")
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp(prefix='chromium-profile-')}")
    service = Service(find_executable(CHROMEDRIVER_CANDIDATES, "chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(120)
    return driver


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in text.split("'")) + ")"


class GradioPage:
    """Label-driven actions on a Gradio 5 page (see the module docstring for the DOM they rely on)."""

    def __init__(self, driver, shots_dir: Path, timeout: float = 30.0) -> None:
        self.driver = driver
        self.shots_dir = Path(shots_dir)
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.shots: list[Path] = []

    # --- waiting -----------------------------------------------------------------------------------------
    def wait(self, condition: Callable[[Any], Any], timeout: float | None = None, message: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(
            self.driver,
            timeout or self.timeout,
            poll_frequency=0.5,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(condition, message)

    def _visible(self, by: str, selector: str, root=None) -> list:
        root = root or self.driver
        found = []
        for el in root.find_elements(by, selector):
            try:
                if el.is_displayed():
                    found.append(el)
            except Exception:  # stale while re-rendering
                continue
        return found

    def find_visible(self, by: str, selector: str, timeout: float | None = None, root=None):
        return self.wait(lambda _d: (self._visible(by, selector, root) or [None])[0], timeout, f"{by}={selector}")

    # --- locating components by label ---------------------------------------------------------------------
    def block(self, label: str, timeout: float | None = None):
        """The displayed ``div.block`` whose label (``span[data-testid=block-info]``) reads ``label``."""
        from selenium.webdriver.common.by import By

        xpath = (
            f"//span[@data-testid='block-info' and normalize-space()={_xpath_literal(label)}]"
            "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' block ')][1]"
        )
        return self.find_visible(By.XPATH, xpath, timeout)

    def textbox(self, label: str):
        from selenium.webdriver.common.by import By

        block = self.block(label)
        return self.find_visible(By.CSS_SELECTOR, "textarea, input[type='text'], input:not([type])", root=block)

    def text_of(self, label: str) -> str:
        return self.textbox(label).get_attribute("value") or ""

    def set_text(self, label: str, value: str) -> None:
        """Replace a textbox's text (select-all + delete, then type; Tab blurs so ``.change``/``.input`` fire)."""

        box = self.textbox(label)
        self._replace(box, value)
        self.wait(lambda _d: self.text_of(label) == value, message=f"textbox {label!r} != {value!r}")

    def _replace(self, element, value: str) -> None:
        from selenium.webdriver.common.keys import Keys

        self.scroll_to(element)
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(value)
        element.send_keys(Keys.TAB)

    def dropdown_value(self, label: str) -> str:
        from selenium.webdriver.common.by import By

        return self.find_visible(
            By.CSS_SELECTOR, f"input[role='listbox'][aria-label={_css_str(label)}]"
        ).get_attribute("value")

    def dropdown_options(self, label: str) -> list[str]:
        """Open a single-select dropdown and return every choice it lists (then close it with Escape)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        inp = self.find_visible(By.CSS_SELECTOR, f"input[role='listbox'][aria-label={_css_str(label)}]")
        self.scroll_to(inp)
        inp.click()

        def read_names(_driver) -> list[str] | None:
            # Read inside the wait: Gradio re-renders the list while it opens, and wait() retries stale elements.
            options = self._visible(By.CSS_SELECTOR, "ul[role='listbox'] li[role='option']")
            return [o.get_attribute("aria-label") or o.text for o in options] or None

        names = self.wait(read_names, message=f"options of {label!r}")
        inp.send_keys(Keys.ESCAPE)
        return names

    def select(self, label: str, choice: str) -> None:
        """Pick ``choice`` in the single-select dropdown labelled ``label`` (type to filter, click the option)."""
        from selenium.webdriver.common.by import By

        inp = self.find_visible(By.CSS_SELECTOR, f"input[role='listbox'][aria-label={_css_str(label)}]")
        self._pick(inp, choice)
        self.wait(lambda _d: self.dropdown_value(label) == choice, message=f"dropdown {label!r} != {choice!r}")

    def multiselect(self, label: str, choice: str) -> None:
        """Add ``choice`` to the multiselect dropdown labelled ``label``; focusing it makes LLaMA-Factory list
        the choices (``dataset.focus(list_datasets)``, ``checkpoint_path.focus(list_checkpoints)``)."""
        from selenium.webdriver.common.by import By

        if self.has_chip(label, choice):  # already chosen (the Checkpoint path is shared by all tabs)
            return
        block = self.block(label)
        inp = self.find_visible(By.CSS_SELECTOR, "input", root=block)
        self._pick(inp, choice)
        self.wait(
            lambda _d: any(
                t.text.strip() == choice for t in self._visible(By.CSS_SELECTOR, "div.token", self.block(label))
            ),
            message=f"multiselect {label!r} has no {choice!r} chip",
        )

    def multiselect_options(self, label: str, expected: tuple[str, ...] = (), shot: str | None = None) -> list[str]:
        """Open the multiselect dropdown labelled ``label`` and return the choices it lists (Escape closes it).
        The choices arrive from the server after focus, so this waits until every ``expected`` one is listed;
        ``shot`` names a screenshot taken while the list is open."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        inp = self.find_visible(By.CSS_SELECTOR, "input", root=self.block(label))
        self.scroll_to(inp)

        def listed(_d):
            names = [
                o.get_attribute("aria-label") or o.text
                for o in self._visible(By.CSS_SELECTOR, "ul[role='listbox'] li[role='option']")
            ]
            return names if names and all(name in names for name in expected) else False

        names = None
        deadline = time.monotonic() + self.timeout
        while names is None:
            inp.click()
            try:
                names = self.wait(listed, 5, message=f"options of {label!r}")
            except Exception:
                if time.monotonic() > deadline:
                    raise
                inp.send_keys(Keys.ESCAPE)
        if shot:
            self.screenshot(shot)
        inp.send_keys(Keys.ESCAPE)
        return names

    def has_chip(self, label: str, choice: str) -> bool:
        from selenium.webdriver.common.by import By

        return any(t.text.strip() == choice for t in self._visible(By.CSS_SELECTOR, "div.token", self.block(label)))

    def _pick(self, inp, choice: str) -> None:
        """Open the list, type ``choice`` to filter it, click the matching option (retrying the opening click:
        the dataset/checkpoint choices only arrive from the server after focus)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        option_css = f"ul[role='listbox'] li[role='option'][aria-label={_css_str(choice)}]"
        self.scroll_to(inp)
        deadline = time.monotonic() + self.timeout
        option = None
        while option is None:
            inp.click()
            inp.send_keys(Keys.CONTROL, "a")
            inp.send_keys(Keys.BACKSPACE)
            inp.send_keys(choice)
            try:
                option = self.wait(
                    lambda _d: (self._visible(By.CSS_SELECTOR, option_css) or [None])[0], 5, message=option_css
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                inp.send_keys(Keys.ESCAPE)
        option.click()
        try:
            inp.send_keys(Keys.ESCAPE)
        except Exception:
            pass

    def set_number(self, label: str, value: float | int) -> None:
        """Set a ``gr.Slider`` through its number box (``aria-label="number input for <label>"``)."""
        from selenium.webdriver.common.by import By

        box = self.find_visible(
            By.CSS_SELECTOR, f"input[type='number'][aria-label={_css_str('number input for ' + label)}]"
        )
        self._replace(box, str(value))
        self.wait(
            lambda _d: float(box.get_attribute("value") or "nan") == float(value),
            message=f"slider {label!r} != {value}",
        )

    def button(self, text: str, timeout: float | None = None):
        from selenium.webdriver.common.by import By

        # not a tab: the "Export" tab and the Export tab's "Export" button share their text
        xpath = f"//button[not(@role='tab') and normalize-space()={_xpath_literal(text)}]"
        return self.find_visible(By.XPATH, xpath, timeout)

    def click(self, text: str) -> None:
        btn = self.button(text)
        self.scroll_to(btn)
        self.wait(lambda _d: btn.is_enabled(), message=f"button {text!r} disabled")
        btn.click()

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        tab = self.find_visible(By.XPATH, f"//button[@role='tab' and normalize-space()={_xpath_literal(name)}]")
        self.scroll_to(tab)
        tab.click()
        self.wait(lambda _d: tab.get_attribute("aria-selected") == "true", message=f"tab {name!r} not selected")

    def open_accordion(self, title: str, want_open: bool = True) -> None:
        """Open (or close) a ``gr.Accordion`` (Gradio 5: ``button.label-wrap`` holding the title; ``open`` class
        when open)."""
        from selenium.webdriver.common.by import By

        btn = self.find_visible(
            By.XPATH,
            f"//button[contains(@class, 'label-wrap') and .//span[normalize-space()={_xpath_literal(title)}]]",
        )

        def is_open(_d=None) -> bool:
            return "open" in (btn.get_attribute("class") or "").split()

        if is_open() != want_open:
            self.scroll_to(btn)
            btn.click()
        self.wait(lambda _d: is_open() == want_open, message=f"accordion {title!r} open != {want_open}")

    def close_accordion(self, title: str) -> None:
        self.open_accordion(title, want_open=False)

    # --- page state --------------------------------------------------------------------------------------
    def body_text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for_text(self, text: str, timeout: float | None = None) -> None:
        self.wait(lambda _d: text in self.body_text(), timeout, f"text {text!r} never appeared")

    def textbox_values(self) -> list[str]:
        """Values of all displayed textareas (for unlabelled boxes such as the Chat tab's info box)."""
        from selenium.webdriver.common.by import By

        return [t.get_attribute("value") or "" for t in self._visible(By.CSS_SELECTOR, "textarea")]

    def wait_for_textbox(self, text: str, timeout: float | None = None) -> None:
        self.wait(
            lambda _d: any(text in value for value in self.textbox_values()), timeout, f"no textbox shows {text!r}"
        )

    def upload_audio(self, path: Path, timeout: float | None = None) -> None:
        """Upload through the (hidden) ``input[type=file][accept*=audio]`` of a ``gr.Audio``; waits for the
        player (``audio`` element / waveform) that replaces the drop zone once the server has the file."""
        from selenium.webdriver.common.by import By

        inp = self.wait(
            lambda d: (d.find_elements(By.CSS_SELECTOR, "input[type='file'][accept*='audio']") or [None])[0],
            timeout,
            "no audio file input",
        )
        inp.send_keys(str(Path(path).resolve()))
        self.wait(
            lambda _d: self._visible(
                By.CSS_SELECTOR, "audio, #waveform, [data-testid='waveform-Audio'], .waveform-container"
            ),
            timeout,
            "the uploaded audio never showed a player",
        )

    def chat_settled(self, settle: float = 3.0) -> bool:
        """Poll: True once the last assistant bubble (``[data-testid=bot]``) exists, no progress indicator
        (``.eta-bar`` / ``.progress-text`` / ``.generating``) shows and its text is unchanged for ``settle`` s."""
        from selenium.webdriver.common.by import By

        bubbles = self._visible(By.CSS_SELECTOR, "[data-testid='bot']")
        busy = self._visible(By.CSS_SELECTOR, ".eta-bar, .progress-text, .generating")
        text = bubbles[-1].text if bubbles else None
        now = time.monotonic()
        if not bubbles or busy or text != getattr(self, "_chat_text", None):
            self._chat_text, self._chat_since = text, now
            return False
        return now - self._chat_since >= settle

    def toasts(self) -> list[tuple[str, str]]:
        """(title, text) of every toast on screen, e.g. ``("Warning", "CUDA environment was not detected.")``."""
        from selenium.webdriver.common.by import By

        found = []
        for toast in self._visible(By.CSS_SELECTOR, "[data-testid='toast-body']"):
            titles = toast.find_elements(By.CSS_SELECTOR, "[class*='toast-title']")
            title = titles[0].text.strip() if titles else ""
            if titles and "error" in (titles[0].get_attribute("class") or "").split():
                title = title or "Error"  # the title element's class carries the type: "toast-title error"
            found.append((title, toast.text.strip()))
        return found

    def error_toasts(self) -> list[str]:
        return [text for title, text in self.toasts() if title.lower().startswith("error")]

    def scroll_to(self, element) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)

    def screenshot(self, name: str, element=None) -> Path:
        """A viewport PNG (``NN-name.png``): the top of the page, or the view centred on ``element``."""
        if element is None:
            self.driver.execute_script("window.scrollTo(0, 0);")
        else:
            self.scroll_to(element)
        time.sleep(0.5)  # let Gradio's transitions finish
        path = self.shots_dir / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def full_page_screenshot(self, name: str, until=None, margin: int = 0) -> Path:
        """The whole page (``NN-name.png``): the window grows to the document height for the shot, then shrinks.
        With ``until`` (an element) the shot is cut ``margin`` px below that element's bottom edge."""
        size = self.driver.get_window_size()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], max(size["height"], min(int(height) + 140, 8000)))
        try:
            self.driver.execute_script("window.scrollTo(0, 0);")
            time.sleep(0.8)  # re-layout at the new height
            path = self.shots_dir / f"{len(self.shots) + 1:02d}-{name}.png"
            self.driver.save_screenshot(str(path))
            if until is not None:
                from PIL import Image

                bottom = self.driver.execute_script(
                    "return arguments[0].getBoundingClientRect().bottom * window.devicePixelRatio;", until
                )
                with Image.open(path) as image:
                    cut = image.crop((0, 0, image.width, min(image.height, int(bottom) + margin)))
                cut.save(path)
            self.shots.append(path)
        finally:
            self.driver.set_window_size(size["width"], size["height"])
        return path


def _css_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
