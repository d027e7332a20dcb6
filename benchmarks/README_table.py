"""Render the README's performance tables from benchmark result files (never typed by hand).

    python benchmarks/README_table.py                     # print (benchmarks/results/models_*.json)
    python benchmarks/README_table.py --readme README.md  # rewrite the section between the markers
    python benchmarks/README_table.py FILE.json ...       # chosen files, in this order

The README section is delimited by the two lines of fastguide.bench.report.BEGIN and END.
"""
import argparse
import pathlib

from fastguide.bench.report import render_files, replace_section

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def default_files():
    """Every models_*.json but the tests' tiny suite; GPU files first, the CPU one last."""
    files = [p for p in sorted(RESULTS.glob("models_*.json"))
             if not p.name.startswith("models_tiny")]
    return sorted(files, key=lambda p: p.name == "models_cpu.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=pathlib.Path)
    p.add_argument("--readme", type=pathlib.Path, default=None, help="rewrite this file's section")
    args = p.parse_args(argv)
    files = args.files or default_files()
    if not files:
        p.error(f"no result files given and none in {RESULTS}")
    tables = render_files(files)
    if args.readme is None:
        print(tables, end="")
        return
    args.readme.write_text(replace_section(args.readme.read_text(), tables))
    print(f"updated {args.readme} from {', '.join(str(f) for f in files)}")


if __name__ == "__main__":
    main()
