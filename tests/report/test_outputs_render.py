"""The HTML opens in headless Chromium without console errors; the LaTeX compiles with pdflatex.

Both skip where the program is absent (CI installs them: apt-get install -y chromium
texlive-latex-base texlive-latex-recommended).
"""

import shutil
import subprocess

import numpy as np
import pytest

from ablate.report.build import build_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")
def test_html_in_headless_chromium(toy_store, tmp_path):
    import matplotlib.image as mpimg

    build_report(toy_store, "toy", ["smoke"], ["1", "3"], ["html"], tmp_path / "r")
    page = (tmp_path / "r" / "index.html").resolve()
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's script ran to its end (it marks the body), and nothing was logged as an error
    assert 'data-report-ready="' in dom.stdout and 'data-report-ready="0"' not in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1400,2600", "--hide-scrollbars",
                      page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    pixels = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)

    def share(rgb, tol=6):
        return float(np.mean(np.all(np.abs(pixels - np.array(rgb)) <= tol, axis=-1)))

    assert share((0xd6, 0xe4, 0xf7)) > 1e-4  # blue "better" table cells
    assert share((0x3b, 0x6f, 0xb6), tol=10) > 1e-4  # figure 1's bars


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="needs pdflatex (apt-get install -y texlive-latex-base "
                           "texlive-latex-recommended)")
def test_latex_compiles(toy_store, tmp_path, paper_dir):
    build_report(toy_store, "toy", ["smoke", "2", "3", "4", "5", "cost"], [], ["latex"],
                 tmp_path / "r",
                 vs_paper=True)
    assert r"{\scriptsize (paper " in (tmp_path / "r" / "table2.tex").read_text()
    build_report(None, None, [], [], ["latex"], tmp_path / "p", paper_dir=paper_dir)
    for folder in (tmp_path / "r", tmp_path / "p"):
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                                 "tables.tex"], cwd=folder, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout[-3000:]
        assert (folder / "tables.pdf").stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")
def test_clicking_a_cell_shows_the_models_output(toy_store, tmp_path):
    import html
    import re

    build_report(toy_store, "toy", ["smoke"], [], ["html"], tmp_path / "r")
    page = (tmp_path / "r" / "index.html").read_text()
    # a click as a reader makes it, on the DPO row's GSM8k number, once the page's script has run
    click = ("<script>document.querySelector(\"td.num[data-id='t0r1c0']\")"
             ".dispatchEvent(new MouseEvent('click', {bubbles: true}));</script>")
    clicked = tmp_path / "r" / "clicked.html"
    clicked.write_text(page.replace("</body>", click + "</body>"))
    dom = chromium("--dump-dom", clicked.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    panel = dom.stdout[dom.stdout.index("<div id=\"detail\""):]
    assert "display: block" in panel[:200]
    assert "<b>+DPO on UltraF.: GSM8k</b>" in panel
    outputs = [html.unescape(t) for t in re.findall(r'<pre class="output">([^<]*)</pre>', panel)]
    assert outputs[:2] == ["The answer to item 0 is 40.", "The answer to item 1 is 41."]
    prompt = html.unescape(re.search(r'<pre class="prompt">([^<]*)</pre>', panel).group(1))
    assert prompt.endswith("Question: item 0 of gsm8k?\nAnswer:")
