"""End to end: every notebook executed at the smoke profile through `make book`, the book built
with warnings as errors, a second `make book` executing nothing, and the HTML opened in headless
Chromium (pages load, figures present, no broken internal links)."""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from softmax_repro.pipeline.runner import chapter_names

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {"ledger.md", "status.md", "_generated", "_build", "chapters", "_mathjax"}
pytestmark = pytest.mark.slow


# the guard's variables (npm, pip, HuggingFace offline; dead proxies) for make and its children
OFFLINE_ENV = {"PYTHONPATH": str(ROOT / "tests" / "offline"),
               **json.loads((ROOT / "tests" / "offline" / "guard_env.json").read_text())}


def _make(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run make with every Python process barred from the network (tests/offline)."""
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **OFFLINE_ENV})


@pytest.fixture(scope="module")
def smoke_book():
    """`make book PROFILE=smoke` into a scratch book folder, run twice."""
    from softmax_repro.data import text

    # the offline book reads the Brown corpus and MathJax from the cache: fetch them first
    try:
        text.fetch_brown()
    except (text.CorpusUnavailableError, OSError) as error:
        pytest.skip(f"the smoke book needs the Brown corpus in the cache, and it could not be "
                    f"fetched here: {error}")
    mathjax = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.setup-stamp",
                              "mathjax"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if mathjax.returncode != 0:
        pytest.skip(f"the smoke book needs MathJax in the cache (make mathjax), and it could not "
                    f"be fetched here: {mathjax.stdout[-1000:]}{mathjax.stderr[-1000:]}")
    scratch = Path(tempfile.mkdtemp(prefix="smoke-book-"))
    book = scratch / "book"
    shutil.copytree(ROOT / "book", book, ignore=lambda d, names: [
        n for n in names if Path(d) == ROOT / "book" and n in GENERATED])
    (book / "chapters").mkdir()
    first = _make("book", "PROFILE=smoke", f"BOOK={book}", f"RESULTS={scratch / 'results'}")
    second = _make("book", "PROFILE=smoke", f"BOOK={book}", f"RESULTS={scratch / 'results'}")
    yield {"book": book, "results": scratch / "results", "first": first, "second": second}
    shutil.rmtree(scratch, ignore_errors=True)


def test_every_notebook_executes_at_smoke_and_the_book_builds(smoke_book):
    first = smoke_book["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in chapter_names():
        assert (smoke_book["book"] / "chapters" / f"{name}.ipynb").exists()
        assert (smoke_book["results"] / "smoke" / f"{name}.json").exists()
        assert (smoke_book["book"] / "_build" / "html" / "chapters" / f"{name}.html").exists()
    assert first.stdout.count("[executing]") == len(chapter_names())


def test_second_make_book_executes_nothing(smoke_book):
    second = smoke_book["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("[up to date]") == len(chapter_names())
    assert "[executing]" not in second.stdout


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def test_no_broken_internal_links_and_figures_exist(smoke_book):
    html = smoke_book["book"] / "_build" / "html"
    for page in html.rglob("*.html"):
        if page.parent.name in ("_static", "_sources"):
            continue
        parser = _Links()
        parser.feed(page.read_text())
        for ref in parser.hrefs + parser.images:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith(("#", "mailto:", "//")):
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.exists(), f"{page.relative_to(html)} links to missing {ref}"


def test_offline_guard_blocks_the_network():
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
        capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=30)
    assert probe.returncode != 0 and "OfflineViolation" in probe.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def served(smoke_book):
    handler = partial(http.server.SimpleHTTPRequestHandler,
                      directory=str(smoke_book["book"] / "_build" / "html"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _dump_dom(url: str) -> str:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        done = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
             # offline: every host but the local server fails to resolve
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--dump-dom", url], capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed "
                    "(.ci/run installs it: apt-get install chromium)")
def test_pages_load_in_headless_chromium(served):
    index = _dump_dom(f"{served}/intro.html")
    assert "Softmax, Reproduced" in index and "Headline" in index
    ledger = _dump_dom(f"{served}/ledger.html")
    assert "Ledger of claims" in ledger and "not attempted" in ledger
    for name in chapter_names():
        dom = _dump_dom(f"{served}/chapters/{name}.html")
        assert "Traceback" not in dom, f"{name} shows a traceback"
        images = re.findall(r"<img[^>]+src=\"([^\"]+)\"", dom)
        assert images, f"{name} renders no figure"
    status = _dump_dom(f"{served}/status.html")
    assert all(name in status for name in chapter_names())


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed "
                    "(.ci/run installs it: apt-get install chromium)")
def test_equations_render_offline(served):
    # MathJax comes with the book, so TeX becomes MathJax's elements without any network
    dom = _dump_dom(f"{served}/chapters/01_balanced_softmax.html")
    assert "mjx-container" in dom and "cdn.jsdelivr" not in dom


def _experiment_modules():
    import importlib
    import pkgutil

    import softmax_repro.experiments as package

    modules = [importlib.import_module(f"{package.__name__}.{m.name}")
               for m in pkgutil.iter_modules(package.__path__)]
    return {m.CHAPTER: m for m in modules}


def test_every_chapter_has_an_experiment_module():
    assert set(chapter_names()) <= set(_experiment_modules())


@pytest.mark.parametrize("chapter", chapter_names())
def test_smoke_numbers_are_bit_identical_across_processes(chapter, smoke_book, tmp_path):
    """Re-running a chapter's experiment in this process reproduces the numbers papermill's kernel
    produced, exactly (timing columns aside)."""
    from softmax_repro.pipeline.results import read_results, without_timings

    module = _experiment_modules()[chapter]
    config = module.make_config("smoke")
    ours = without_timings(module.run(config, results_dir=str(tmp_path)).rows)
    theirs = without_timings(read_results(smoke_book["results"] / "smoke" / f"{chapter}.json")[0])
    assert len(ours) > 0 and ours.equals(theirs), f"{chapter}: smoke numbers differ between runs"
