"""The log page at scale, side by side in one run (BENCHMARKS.md, "The page"): a real `opschain
server` (release build) with two changes, one of 1,000 log lines and one of 1,000,000, opened in
headless Chromium over WebDriver in alternating rounds.

Measured in the browser, from the navigation's start (`performance.timeOrigin`):
  * first screen: until the log's first lines are in the document (a MutationObserver installed
    before the page's own script runs, through the DevTools protocol);
  * search: from submitting a search for a line near the log's end until that line is marked
    as the current match in the document (the server's search, the page's jump to it, drawn).
Targets: the 1,000,000-line change's first screen within 1.5x the 1,000-line change's (medians),
and its search answered within 1 s (every round).

Usage: python3 crates/opschain/benches/page.py [ROUNDS]   (default 7; OPSCHAIN_BIN to use another binary)
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "crates" / "opschain" / "tests" / "page"))
os.environ.setdefault("OPSCHAIN_BIN", str(ROOT / "target" / "release" / "opschain"))
for agent in ("x86_64-unknown-linux-musl/release", "release", "debug"):
    if (ROOT / "target" / agent / "opschain-runner").exists():
        os.environ.setdefault("OPSCHAIN_RUNNER_BIN", str(ROOT / "target" / agent / "opschain-runner"))

import harness  # noqa: E402

# Installed before the page's script: notes when the first log line reaches the document.
FIRST_LINE_OBSERVER = """
window.__firstLine = null;
new MutationObserver((records, observer) => {
  const log = document.getElementById('log');
  if (log && log.querySelector('.ln')) { window.__firstLine = performance.now(); observer.disconnect(); }
}).observe(document, { childList: true, subtree: true });
"""

# Submits a search and answers how long until the match is the current line in the document.
TIMED_SEARCH = """
const [text, expected, done] = arguments;
const log = document.getElementById('log');
const input = document.getElementById('search-text');
const found = () => { const el = log.querySelector('.ln.current'); return el && el.textContent.includes(expected); };
const start = performance.now();
const observer = new MutationObserver(() => { if (found()) { observer.disconnect(); done(performance.now() - start); } });
observer.observe(log, { childList: true, subtree: true, attributes: true, attributeFilter: ['class'] });
input.value = text;
document.getElementById('search').requestSubmit();
setTimeout(() => { observer.disconnect(); done(null); }, 20000);
"""


def lines_file(path, count):
    with open(path, "w") as f:
        for start in range(0, count, 100_000):
            f.write("".join(f"row {i} of {count}: the quick brown fox jumps over the lazy dog\n" for i in range(start + 1, min(count, start + 100_000) + 1)))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    work = Path(tempfile.mkdtemp(prefix="opschain-page-bench-"))
    sizes = {"1k": 1_000, "1M": 1_000_000}
    for name, count in sizes.items():
        lines_file(work / f"{name}.txt", count)
    actions = "".join(f'[actions.print_{name}]\ncommand = ["/bin/cat", "{work / (name + ".txt")}"]\n\n' for name in sizes)
    repo = harness.git_repo(work / "repo", actions)
    server = harness.Server()
    driver = None
    try:
        server.project("bench", list(sizes), repo)
        changes = {}
        for name in sizes:
            started = time.monotonic()
            changes[name] = server.change("bench", name, f"print_{name}")
            server.wait_status(changes[name], ("success",), timeout=600)
            stored = server.api("GET", f"/api/changes/{changes[name]}/log_lines?page%5Bsize%5D=1")["meta"]["last_id"]
            print(f"change {changes[name]}: {stored:,} log lines stored in {time.monotonic() - started:.1f} s", flush=True)
        driver = harness.browser()
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FIRST_LINE_OBSERVER})
        harness.log_in(driver, server)
        first_screen = {name: [] for name in sizes}
        search = {name: [] for name in sizes}
        for round_no in range(rounds + 1):
            for name, count in sizes.items():
                driver.get(f"{server.url}/changes/{changes[name]}/logs")
                shown = harness.wait_for("the first screen", lambda: driver.execute_script("return window.__firstLine"), timeout=30, every=0.02)
                wanted = f"row {count - 7} of {count}:"
                took = driver.execute_async_script(TIMED_SEARCH, wanted, wanted)
                assert took is not None, f"the search for {wanted!r} found nothing in 20 s"
                if round_no == 0:
                    continue  # a warm-up round: the server's and the browser's caches
                first_screen[name].append(shown)
                search[name].append(took)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        if driver:
            driver.quit()
        server.stop()
        server.cleanup()
        subprocess.run(["rm", "-rf", str(work)])
    print(f"\n{rounds} rounds, alternated; times in ms (median, min-max)")
    print(f"{'log':>6} {'first screen':>24} {'search near the end':>26}")
    for name in sizes:
        f, s = first_screen[name], search[name]
        print(f"{name:>6} {statistics.median(f):10.0f} ({min(f):5.0f}-{max(f):5.0f}) {statistics.median(s):12.0f} ({min(s):5.0f}-{max(s):5.0f})")
    ratio = statistics.median(first_screen["1M"]) / statistics.median(first_screen["1k"])
    worst = max(search["1M"])
    print(f"\nfirst screen 1M / 1k: {ratio:.2f}x (target <= 1.5x): {'met' if ratio <= 1.5 else 'MISSED'}")
    print(f"search near the end of 1M lines, slowest round: {worst:.0f} ms (target < 1000 ms): {'met' if worst < 1000 else 'MISSED'}")
    return 0 if ratio <= 1.5 and worst < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
