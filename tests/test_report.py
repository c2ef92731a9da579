"""report.html of a run, checked in a real headless browser (Debian's chromium): it renders with no
console message, its charts are there, its figures equal summary.json and prep_report.json, and a
screenshot is kept in tests/artifacts/report.png."""
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_ship import trained  # noqa: F401  (the fixture: a small LoRA run, evaluated before and after)
from tunesmith.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--enable-logging=stderr", "--v=0"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


class Facts(HTMLParser):
    """The text of every element that carries data-fact."""

    def __init__(self):
        super().__init__()
        self.facts, self._key = {}, None

    def handle_starttag(self, tag, attrs):
        self._key = dict(attrs).get("data-fact")

    def handle_data(self, data):
        if self._key:
            self.facts[self._key] = data.strip()
            self._key = None


def lookup(doc: dict, path: list[str]):
    # keys may contain dots (none do today); walk greedily
    for part in path:
        doc = doc[part]
    return doc


def shown_equals(text: str, value) -> bool:
    """The page's text against the file's value, to the precision the page shows."""
    if value is None:
        return text == "-"
    if isinstance(value, bool) or isinstance(value, str):
        return text == str(value).lower() if isinstance(value, bool) else text == value
    number = float(text.replace(",", "").rstrip("%")) / (100 if text.endswith("%") else 1)
    decimals = len(text.rstrip("%").split(".")[1]) if "." in text else 0
    step = 10 ** -decimals / (100 if text.endswith("%") else 1)
    return abs(number - value) <= step / 2 + 1e-12


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_report_page_renders_in_chromium_and_matches_the_run(trained, tmp_path, capsys):  # noqa: F811
    cfg_path, out = trained
    assert main(["report", str(cfg_path)]) == 0
    page = Path(capsys.readouterr().out.strip())
    assert page == out / "report.html"
    source = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)|url\((?!#)|@import""", source)  # self-contained: in-page refs only

    dump = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert ":CONSOLE" not in dump.stderr, [line for line in dump.stderr.splitlines() if ":CONSOLE" in line]
    dom = dump.stdout
    assert dom.count("<svg") == 1 and dom.count('src="data:image/png;base64,') == 1  # length histogram, loss.png
    for heading in ("Run: time, throughput, speed-ups", "Data", "Training rows, trained tokens highlighted", "Loss",
                    "Evaluation", "Predictions that changed", "Config"):
        assert f"{heading}" in dom, heading
    applied = json.loads((out / "summary.json").read_text())["speedups"]["applied"]
    assert "trained_positions_loss" in applied  # a tiny Llama: the page must list what ran
    for name in applied:
        assert f"speed-up {name}</td><td>applied" in dom, name
    assert dom.count('class="trained"') >= 3  # three rows, each with its answer highlighted

    parser = Facts()
    parser.feed(dom)
    files = {"summary": json.loads((out / "summary.json").read_text()),
             "prep": json.loads((out / "data" / "prep_report.json").read_text())}
    for key in ("summary.tokens_per_second", "summary.trained_tokens", "summary.wall_seconds", "summary.eval_loss",
                "summary.attention", "summary.batching", "summary.loss", "prep.splits.train.rows_kept", "prep.splits.train.trained_share",
                "prep.splits.eval.tokens"):
        assert key in parser.facts, key
    for key, text in parser.facts.items():
        source_name, *path = key.split(".")
        assert shown_equals(text, lookup(files[source_name], path)), (key, text)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    taken = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    assert taken.returncode == 0 and shot.stat().st_size > 50_000  # a blank page is a few kB


def test_config_secrets_are_masked():
    from tunesmith.ship.facts import masked

    cfg = {"model": {"upload_to": ["s3://AKIAKEY:hunter2@bucket/run"]},
           "data": {"train": {"storage_options": {"key": "k", "secret": "s", "token": "t", "anon": False}}},
           "training": {"hub_token": "hf_abc", "push_to_hub": False, "learning_rate": 1e-4}}
    shown = json.dumps(masked(cfg))
    for secret in ("hunter2", "AKIAKEY", '"s"', '"t"', "hf_abc"):
        assert secret not in shown, secret
    assert '"learning_rate": 0.0001' in shown and '"anon": false' in shown
