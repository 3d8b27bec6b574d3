"""Shared by the benchmark scripts: write one run's subsection into ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from pathlib import Path


def update_section(path: Path, section: str, script: str, label: str, body: str) -> None:
    """Replace (or add) the '### label' subsection inside ``section`` (a '## ...' heading) of ``path``.

    Text between the section heading and its first subsection (notes written by hand) is kept.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\nWritten by `{script}`.\n\n"
    start = text.index(section)
    nxt = text.find("\n## ", start + len(section))
    end = len(text) if nxt < 0 else nxt + 1
    part = text[start:end]
    head = f"### {label}\n"
    if head in part:
        s0 = part.index(head)
        s1 = part.find("\n### ", s0 + len(head))
        part = part[:s0] + body.rstrip("\n") + "\n\n" + ("" if s1 < 0 else part[s1 + 1:])
    else:
        part = part.rstrip("\n") + "\n\n" + body
    rest = "\n" + text[end:] if end < len(text) else ""
    path.write_text(text[:start] + part.rstrip("\n") + "\n" + rest)



def write_result(result: dict, args, argv: list[str], section: str, script: str, default_label: str, render,
                 show: str) -> None:
    """Stamp ``result`` with the date and the command line (``script`` and ``argv``), print
    ``result[show]``, write ``result`` as JSON to ``args.out`` and ``render(label, result)`` into
    ``args.results_md`` (each only if given), under ``args.label`` or ``default_label``."""
    import datetime as dt
    import json

    result["date"] = dt.datetime.now().isoformat(timespec="seconds")
    result["command"] = f"python {script} " + " ".join(argv)

    print(json.dumps(result[show], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if args.results_md:
        label = args.label or default_label
        update_section(args.results_md, section, script, label, render(label, result))
