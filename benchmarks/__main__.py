import argparse
import importlib
import logging

SUITES = ("raster", "layout")


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--json", help="write the result(s) here (all: PATH.SUITE.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for suite in SUITES if args.suite == "all" else (args.suite,):
        print(f"== {suite}{' (quick)' if args.quick else ''}")
        path = args.json
        if path and args.suite == "all":
            path = f"{path.removesuffix('.json')}.{suite}.json"
        importlib.import_module(f"benchmarks.{suite}").run(quick=args.quick, json_path=path)


if __name__ == "__main__":
    main()
