"""End to end: every notebook executed at the smoke profile through `make book`, the book built
with warnings as errors, a second `make book` executing nothing, and the HTML opened in headless
Chromium (pages load, figures present, no broken internal links). The reader's page (issue 15),
on every page: no progress-bar text, NaN, None, Config repr or unresolved glue; nothing wider than
the page; every figure numbered, captioned, with alt text; each chapter's verdicts and re-run
command before any code output; every ledger and headline link resolving to an anchor."""

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


def _network_namespace() -> list[str]:
    """The command prefix that runs a command in a new network namespace with only loopback up,
    or ``[]`` where the kernel or its policy refuses one (e.g. Ubuntu's AppArmor rule against
    unprivileged user namespaces).

    Inside it the kernel itself bars every other host, for every process, Python or not (a
    ``curl`` ignoring the proxy variables, bash's ``/dev/tcp``). The Python guard of tests/offline
    holds in both cases and names the code that tried."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return []
    bring_up_loopback = f'"{ip}" link set lo up && exec "$@"'
    prefix = [unshare, "--net", "--map-root-user", "sh", "-c", bring_up_loopback, "netns"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return prefix if probe.returncode == 0 else []


NETWORK_NAMESPACE = _network_namespace()


def _make(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run make offline: in a network namespace where the kernel allows one, and always with every
    Python process barred from the network by the guard (tests/offline). The timeout only stops a
    hang: the smoke book takes ~5 min on 2 quiet cores, and several times that on a loaded one."""
    return subprocess.run([*NETWORK_NAMESPACE, "make", "--no-print-directory", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **OFFLINE_ENV})


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


@pytest.mark.skipif(not NETWORK_NAMESPACE, reason="this kernel refuses an unprivileged network "
                    "namespace; the offline smoke book relies on the Python guard alone")
def test_the_offline_book_runs_where_no_process_can_reach_another_host():
    """What the Python guard cannot see, the namespace stops: a shell's own TCP connection to a
    documentation address (RFC 5737) fails at once, while loopback, which Jupyter kernels use,
    works."""
    outside = [*NETWORK_NAMESPACE, "bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/80"]
    probe = subprocess.run(outside, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe.stderr
    loopback = subprocess.run(
        [*NETWORK_NAMESPACE, sys.executable, "-c",
         "import socket; s = socket.create_server(('127.0.0.1', 0)); "
         "socket.create_connection(s.getsockname(), 5).close()"],
        capture_output=True, text=True, timeout=60)
    assert loopback.returncode == 0, loopback.stderr


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


def _dump_dom(url: str, window: str = "800,600") -> str:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        done = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
             f"--window-size={window}",
             # offline: every host but the local server fails to resolve
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--dump-dom", url], capture_output=True, text=True, timeout=300)  # a hang guard
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


# ---- the reader's page (issue 15): what every page of the smoke book shows in Chromium --------

# Injected into a copy of each page: after MathJax has typeset, list the elements of the article
# that reach past its right edge without a scrolling box around them, and whether the page
# itself scrolls sideways.
_LAYOUT_SCRIPT = """<script>
window.addEventListener('load', () => {
  const report = () => {
    const article = document.querySelector('.bd-article') || document.body;
    const limit = article.getBoundingClientRect().right + 1;
    const clipped = [];
    for (const el of article.querySelectorAll('*')) {
      const box = el.getBoundingClientRect();
      if (box.width === 0 || box.right <= limit) continue;
      if (el.closest('mjx-assistive-mml, a.headerlink')) continue;  // hidden until hovered
      // past the article's edge: fine inside a box that scrolls sideways, or inside a box it
      // fits in (that box is judged on its own); clipped by a box that hides the overflow, or
      // when nothing holds it (MathJax's hidden MathML copy and heading links left out)
      let parent = el.parentElement, scrolls = false;
      while (parent && parent !== article) {  // the article's own scrolling does not count
        const style = getComputedStyle(parent), overflow = style.overflowX;
        if (overflow !== 'visible' && style.display !== 'inline') {  // inline boxes never clip
          scrolls = overflow === 'auto' || overflow === 'scroll'
            || box.right <= parent.getBoundingClientRect().right + 1;
          break;
        }
        parent = parent.parentElement;
      }
      if (!scrolls) clipped.push(el.tagName + ' ' + (el.textContent || '').trim().slice(0, 60));
    }
    const out = document.createElement('pre');
    out.id = 'layout-report';
    out.textContent = JSON.stringify({clipped: clipped.slice(0, 10),
      page_scrolls: document.documentElement.scrollWidth > window.innerWidth + 1});
    document.body.appendChild(out);
  };
  const typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
  (typeset || Promise.resolve()).then(() => setTimeout(report, 100));
});
</script>"""


def _book_pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html", "index.html"}  # index.html only redirects
    return sorted(p for p in html.rglob("*.html") if p.name not in skip and not p.name.startswith(
        "_") and not any(part.startswith("_") for part in p.relative_to(html).parts[:-1])
        and not p.name.endswith(".layout.html"))


@pytest.fixture(scope="module")
def rendered(smoke_book, served):
    """Every page of the smoke book as Chromium renders it: {relative path: DOM}."""
    if _chromium() is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    html = smoke_book["book"] / "_build" / "html"
    doms = {}
    for page in _book_pages(html):
        copy = page.with_name(page.stem + ".layout.html")
        copy.write_text(page.read_text().replace("</body>", _LAYOUT_SCRIPT + "</body>"))
        doms[page.relative_to(html).as_posix()] = _dump_dom(
            f"{served}/{copy.relative_to(html).as_posix()}", window="1280,1024")
    return doms


def _text(dom: str, code: bool = True) -> str:
    """The visible text of a DOM dump (no scripts, styles or tags); ``code=False`` also drops
    source code (notebook inputs and code blocks), keeping prose, tables and cell outputs."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    if not code:
        dom = re.sub(r'<div class="highlight-(?!myst-ansi)[^"]*"><div class="highlight">'
                     r"<pre[^>]*>.*?</pre>", " ", dom, flags=re.S)
        dom = re.sub(r"<code\b[^>]*>.*?</code>", " ", dom, flags=re.S)
    return re.sub(r"<[^>]+>", " ", dom)


_PROGRESS = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+|\d+(?:\.\d+)?(?:it|s)/(?:s|it)\]|█|"
                       r"Executing:\s+\d+%")


def _context(pattern: str, text: str) -> str | None:
    """The first match of ``pattern`` in ``text`` with 60 characters around it, or None."""
    found = re.search(pattern, text)
    return None if found is None else " ".join(
        text[max(0, found.start() - 60):found.end() + 60].split())


def test_no_progress_bars_nan_reprs_or_unresolved_glue_on_any_page(rendered):
    for name, dom in rendered.items():
        text = _text(dom)
        assert _context(_PROGRESS.pattern, text) is None, \
            f"{name} shows progress-bar text: {_context(_PROGRESS.pattern, text)}"
        prose = _text(dom, code=False).replace("None of", "")  # outputs, tables and prose
        for what, pattern in (("NaN", r"\bNaN\b|\bnan\b"), ("a raw glue reference", r"\{glue"),
                              ("a Config repr", r"\bConfig\("), ("None", r"\bNone\b")):
            assert _context(pattern, prose) is None, f"{name} shows {what}: " \
                f"{_context(pattern, prose)}"


def test_nothing_is_clipped_wider_than_the_page(rendered):
    for name, dom in rendered.items():
        found = re.search(r'<pre id="layout-report"[^>]*>(.*?)</pre>', dom, flags=re.S)
        assert found, f"{name}: the layout report did not run"
        layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                            .replace("&lt;", "<").replace("&gt;", ">"))
        assert not layout["clipped"], f"{name}: wider than the page: {layout['clipped']}"
        assert not layout["page_scrolls"], f"{name}: the page scrolls sideways"


class _Figures(HTMLParser):
    """Images of the article, whether each sits in a <figure> with a caption, and alt texts."""

    def __init__(self) -> None:
        super().__init__()
        self.in_article = 0
        self.figure_depth = 0
        self.caption_text: list[str] = []
        self.in_caption = 0
        self.loose_images: list[str] = []
        self.no_alt: list[str] = []
        self.uncaptioned = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" and "bd-article" in (attrs.get("class") or ""):
            self.in_article += 1
        if not self.in_article:
            return
        if tag == "figure":
            self.figure_depth += 1
            self.caption_text = []
        elif tag == "figcaption":
            self.in_caption += 1
        elif tag == "img":
            if not self.figure_depth:
                self.loose_images.append(attrs.get("src", "")[:60])
            if not (attrs.get("alt") or "").strip():
                self.no_alt.append(attrs.get("src", "")[:60])

    def handle_endtag(self, tag):
        if tag == "article" and self.in_article:
            self.in_article -= 1
        elif tag == "figcaption" and self.in_caption:
            self.in_caption -= 1
        elif tag == "figure" and self.figure_depth:
            self.figure_depth -= 1
            if not "".join(self.caption_text).strip():
                self.uncaptioned += 1

    def handle_data(self, data):
        if self.in_caption:
            self.caption_text.append(data)


def test_every_figure_is_numbered_captioned_and_has_alt_text(rendered):
    for name, dom in rendered.items():
        figures = _Figures()
        figures.feed(dom)
        assert not figures.loose_images, f"{name}: images outside a captioned figure " \
            f"(use page.glue_figure + {{glue:figure}}): {figures.loose_images}"
        assert not figures.uncaptioned, f"{name}: {figures.uncaptioned} figure(s) without caption"
        assert not figures.no_alt, f"{name}: images without alt text: {figures.no_alt}"
        if name.startswith("chapters/"):
            assert re.search(r'class="caption-number">\s*Fig\. \d', dom), \
                f"{name}: figures carry no number"


def test_chapters_show_verdicts_before_any_code_output(rendered):
    for name in chapter_names():
        dom = rendered[f"chapters/{name}.html"]
        box = dom.find('verdict-box admonition"')
        output = dom.find('class="cell_output')
        assert box != -1, f"{name} has no verdict box"
        assert output == -1 or box < output, f"{name} shows code output before its verdicts"
        assert re.search(rf"make\s+chapter\s+NAME\s*=\s*{name}", _text(dom)), \
            f"{name} shows no re-run command"
        assert "tag_injected-parameters" not in dom, f"{name} renders papermill's parameters"


def test_every_ledger_and_headline_link_resolves_to_an_anchor(smoke_book):
    html = smoke_book["book"] / "_build" / "html"
    checked = 0
    for page in (html / "ledger.html", html / "intro.html", html / "status.html"):
        parser = _Links()
        parser.feed(page.read_text())
        for ref in parser.hrefs:
            parts = urlsplit(ref)
            if parts.scheme or not parts.fragment or ref.startswith("//"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            anchor = unquote(parts.fragment)
            assert target.exists(), f"{page.name} links to missing {ref}"
            assert f'id="{anchor}"' in target.read_text(), f"{page.name}: no anchor for {ref}"
            checked += 1
    ledger = (html / "ledger.html").read_text()
    assert checked and "#claim-" in ledger, "the ledger links no claim section"
