"""Every scenario beside its bare baseline, on SQLite and on PostgreSQL, in one table of
absolute figures and ratios, with the production issue's targets:

    bench/run all                 # the full sizes (--size full)
    bench/run all --size small    # a tenth of them, to try it out

Rates are per second from 8 client processes on loopback against 2 gunicorn workers. The
flash join's prospects arrive evenly over a minute; its p99 is of each tap (request), the
notes give the whole journey's from arrival to member number.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    export_revenue,
    flash_join,
    order_create,
    page_render,
    perk_redeem,
    webhook_ingest,
)
from bench.webhook_ingest import SETTINGS  # noqa: E402

CLIENTS = 8
#: Each size's share of the full counts.
SIZES = {"full": 1.0, "small": 0.1}
HEADER = (
    f"{'database':9} {'scenario':34} {'ours':>10} {'bare':>10} {'ratio':>6} {'p99 ms':>8} "
    f"{'target':>14} {'met':>4}  notes"
)


def _line(kind, scenario, ours, bare, ratio, p99, target, met, notes="") -> str:
    def number(value, digits=1):
        return "—" if value is None else f"{value:.{digits}f}"

    return (
        f"{kind:9} {scenario:34} {number(ours):>10} {number(bare):>10} {number(ratio, 2):>6} "
        f"{number(p99):>8} {target:>14} {('yes' if met else 'no') if target != '—' else '—':>4}"
        f"  {notes}"
    ).rstrip()


def _rates(kind: str, rows, targets: dict[str, float]) -> list[str]:
    """Rate scenarios: each row against the first (the bare baseline)."""
    (_, bare), *ours = rows
    lines = []
    for name, r in ours:
        ratio = r["rate"] / bare["rate"]
        target = targets.get(name)
        lines.append(
            _line(
                kind,
                f"{name} /s",
                r["rate"],
                bare["rate"],
                ratio,
                r["p99"],
                f"ratio ≥ {target}" if target else "—",
                target is not None and ratio >= target,
                f"{r['errors']} errors" if r["errors"] else "",
            )
        )
    return lines


def scenarios(kind: str, size: float) -> list[str]:
    def n(full: int) -> int:
        return max(int(full * size), 10)

    lines = _rates(kind, page_render.run(kind, n(3000), CLIENTS), {"join page /join/demo": 0.5})
    lines += _rates(kind, order_create.run(kind, n(1000), CLIENTS), {})
    lines += _rates(
        kind,
        webhook_ingest.run(kind, n(1000), CLIENTS),
        {
            "Stripe, fresh payments": 0.7,
            "WeChat Pay, fresh payments": 0.5,
            "WeChat Pay v3, fresh payments": 0.5,
        },
    )
    lines += _rates(kind, perk_redeem.run(kind, n(2000), CLIENTS), {})
    prospects = n(1000)
    flash = flash_join.run(kind, prospects, 16, over=60 * size)
    lines.append(
        _line(
            kind,
            f"flash join {prospects} (seconds)",
            flash["seconds"],
            None,
            None,
            flash["p99"],
            "p99 < 300 ms",
            flash["p99"] < 300 and not (flash["errors"] or flash["duplicates"]),
            f"{flash['errors']} errors, {flash['duplicates']} duplicate numbers, "
            f"{flash['gaps']} gaps; journey p50 {flash['journey p50']:.0f} ms, "
            f"p99 {flash['journey p99']:.0f} ms",
        )
    )
    rows = n(1_000_000)
    raw, python, ours, peak = export_revenue.run(kind, rows)
    lines.append(
        _line(
            kind,
            f"revenue export {rows} (seconds)",
            ours,
            raw,
            ours / raw,
            None,
            "≤ 3×, < 200 MB",
            ours / raw <= 3 and peak < 200,
            f"peak {peak} MB; bare = raw dump; Python reading and writing the raw rows "
            f"alone: {python:.1f} s ({python / raw:.2f}×)",
        )
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=SIZES, default="full", help="full: the issue's sizes; small: a tenth"
    )
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(SETTINGS)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    lines = [line for kind in kinds for line in scenarios(kind, SIZES[args.size])]
    print(f"Qunmen benchmarks: {os.cpu_count()} CPUs, gunicorn -c gunicorn.conf.py -w 2")
    print(HEADER)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
