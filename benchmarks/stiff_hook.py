"""The ``stiff`` workload of ``benchmarks.run``: runs the stiff benchmark, ``benchmarks/stiff.py``,
if it is there.

That script is written and maintained separately and writes its own results (``stiff.md``,
``stiff.json``, plots). Here it is run in a subprocess as ``python -m benchmarks.stiff --out
OUT`` (with ``--quick`` in a quick run; options the script does not take are dropped), and its
printed report is kept for the combined report, with links to its files. If the script is
missing or fails, the run goes on with a note.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["run"]

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 1800


def _links(out_dir: Path) -> list[str]:
    """Relative links to the stiff benchmark's result files next to ``results.md``."""
    found = sorted(out_dir.glob("stiff*")) or sorted((HERE / "results").glob("stiff*"))
    links = []
    for path in found:
        try:
            rel = os.path.relpath(path, out_dir)
        except ValueError:
            rel = str(path)
        links.append(f"[{path.name}]({rel})")
    return links


def run(quick: bool, out_dir: Path, log) -> dict:
    """Run the stiff benchmark; returns ``{"status", "command", "summary", "stdout_tail"}``."""
    if not (HERE / "stiff.py").exists():
        log("stiff skipped: benchmarks/stiff.py is not there (yet)", keep=True)
        return {}
    out = ["--out", str(out_dir)]
    attempts = [["--quick", *out], ["--quick"], []] if quick else [out, []]
    proc = None
    for extra in attempts:
        cmd = [sys.executable, "-m", "benchmarks.stiff", *extra]
        log(f"  {' '.join(cmd[1:])}")
        try:
            proc = subprocess.run(
                cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            log(f"stiff: `{' '.join(cmd[1:])}` ran past {TIMEOUT_S} s", keep=True)
            return {"status": "timeout", "command": " ".join(cmd[1:])}
        if proc.returncode == 0 or "unrecognized arguments" not in proc.stderr:
            break
    command = "python " + " ".join(cmd[1:])
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        log(f"stiff: `{command}` failed: {tail[0]:.300}", keep=True)
        return {"status": f"failed ({proc.returncode})", "command": command}
    links = _links(out_dir)
    stdout = proc.stdout.strip()
    summary = f"Run by `{command}` (maintained separately)."
    if links:
        summary += " Its results: " + ", ".join(links) + "."
    if stdout.lstrip().startswith(("#", "|", "-")) or "\n|" in stdout:
        summary += "\n\n" + re.sub(r"^#{1,2} ", "### ", stdout, flags=re.M)
    return {"status": "ok", "command": command, "summary": summary, "stdout_tail": stdout[-4000:]}
