"""The `ablate` console script: manage and review sweeps.

    ablate collect <sweep_dir> [key=value ...]     decision, statistics and report (select overrides)
"""

from __future__ import annotations

import argparse


def _collect(args) -> int:
    from ablate.collect import collect, describe, select_config

    print(describe(collect(args.sweep_dir, select_config(args.overrides), plots=not args.no_plots)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="compare the cells of a sweep and write its report")
    p.add_argument("sweep_dir")
    p.add_argument("overrides", nargs="*", help="decision-rule overrides (conf/select/default.yaml), e.g. slice=clean")
    p.add_argument("--no-plots", action="store_true", help="summary.json and cells.csv only")
    p.set_defaults(func=_collect)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
