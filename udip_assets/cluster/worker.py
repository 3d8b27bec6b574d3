"""The command a cluster job runs: ``python -m udip_assets.cluster.worker <task>``, reporting through Pipes.

Each task reads its parameters from the Pipes extras, works on files only (never the warehouse),
logs through ``pipes.log`` (so its lines reach the Dagster event log while it runs) and reports
its summary as one custom message, which the orchestrating step turns into metadata.
"""

from __future__ import annotations

import sys

from dagster_pipes import open_dagster_pipes


def _gwas(pipes) -> dict:
    from udip_assets.genetics.gwas_partition import run_partition

    extras = pipes.extras
    return run_partition(extras["out"], extras["genotypes"], str(extras["chrom"]), log=pipes.log.info)


TASKS = {"gwas": _gwas}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TASKS:
        print(f"usage: python -m udip_assets.cluster.worker {{{','.join(TASKS)}}}", file=sys.stderr)
        return 2
    with open_dagster_pipes() as pipes:
        pipes.report_custom_message({"task": argv[0], "summary": TASKS[argv[0]](pipes)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
