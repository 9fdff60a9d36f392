"""Copy the latest run's tables into ``benchmarks/README.md``: ``python -m benchmarks.readme``.

The README's numbers are never typed by hand: the blocks between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` are replaced, ``targets`` by the run's targets table and ``run`` by the
whole report (``results.md``, headings moved two levels down, links made relative to the
README), ``notebooks`` by the lines of the executed notebooks' saved outputs that state a
target, and ``gpu`` by the header and tables of the GPU runs kept in ``results/gpu*/``.
Everything outside the markers is left alone.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"


def _block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(\n<!-- END {name} -->)", flags=re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- BEGIN {name} --> … <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.strip("\n") + m.group(2), text)


def _relink(report: str, results: Path) -> str:
    """Links in ``results.md`` are relative to it; make them relative to the README."""
    prefix = Path(os.path.relpath(results.resolve(), HERE)).as_posix()

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("#", "/")):
            return m.group(0)
        return f"{m.group(1)}({prefix}/{target})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, report)


def _section(report: str, title: str) -> str:
    """The body of ``## title`` in the report (up to the next ``## ``)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, flags=re.M | re.DOTALL)
    return m.group(1).strip() if m else ""


def notebook_targets(folder: Path) -> str:
    """Lines mentioning a target in the saved outputs of the executed notebooks, as a list."""
    import json

    items = []
    for path in sorted(folder.glob("*.ipynb")):
        try:
            cells = json.loads(path.read_text())["cells"]
        except (OSError, ValueError, KeyError):
            continue
        for cell in cells:
            for out in cell.get("outputs", []):
                text = out.get("text") or out.get("data", {}).get("text/plain", "")
                text = "".join(text) if isinstance(text, list) else text
                for line in text.splitlines():
                    if "target" in line.lower():
                        rel = os.path.relpath(path, HERE)
                        items.append(f"- [`{path.name}`]({rel}): {line.strip()}")
    return "\n".join(items) or "(no executed notebook states a target)"


def gpu_tables(results: Path) -> str:
    """Header lines and tables (no legends) of every run kept in ``results/gpu*/``: the
    ``benchmarks.run`` reports (``results.md``) and the throughput tables (``throughput.md``)."""
    parts = []
    for folder in sorted(results.glob("gpu*/")):
        path = folder / "results.md"
        if (folder / "throughput.md").is_file():  # python -m benchmarks.throughput
            lines = (folder / "throughput.md").read_text().strip().splitlines()
            lines[0] = "- " + lines[0]
            parts.append("\n".join([f"#### `{os.path.relpath(folder, HERE)}/`", "", *lines]))
        if not path.is_file():
            continue
        report = path.read_text()
        header, _, rest = report.partition("\n## ")
        keep = ("- Command:", "- Machine:", "- Versions:", "- Device:", "- Note")
        lines = [f"#### `{os.path.relpath(folder, HERE)}/`", ""]
        lines += [line for line in header.splitlines() if line.startswith(keep)]
        for section in ("## " + rest).split("\n## "):
            title, _, body = section.removeprefix("## ").partition("\n")
            table = [line for line in body.splitlines() if line.startswith("|")]
            if table:
                lines += ["", f"{title}:", "", *table]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "(no GPU run kept)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__)
    parser.add_argument("--results", type=Path, default=HERE / "results", help="run's folder")
    parser.add_argument("--readme", type=Path, default=README, help="file to update")
    args = parser.parse_args(argv)
    report = _relink((args.results / "results.md").read_text(), args.results)
    header = report.split("\n## ", 1)[0].splitlines()
    keep = ("- Command:", "- Machine:", "- Note: the machine was busy")
    header = "\n".join(line for line in header if line.startswith(keep))
    targets = _section(report, "Targets")
    body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 1) + " ", report, flags=re.M)
    body = body.split("\n", 1)[1].strip()  # drop the report's own title
    text = args.readme.read_text()
    text = _block(text, "targets", header + "\n\n" + targets)
    text = _block(text, "run", body)
    text = _block(text, "notebooks", notebook_targets(HERE.parent / "notebooks"))
    text = _block(text, "gpu", gpu_tables(args.results))
    args.readme.write_text(text)
    print(f"updated {args.readme} from {args.results / 'results.md'}")


if __name__ == "__main__":
    main()
