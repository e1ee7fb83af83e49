"""python -m stapo_verl.tasks.data INPUT... --out-dir DIR [--split train|test] [--template boxed|raw] [--skip-bad]

Writes one verl parquet per input, named after the input file (``aime24.parquet``, ...).
"""

import argparse
import os
import sys

from stapo_verl.tasks.data import TEMPLATES, BadRowError, convert_file, output_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stapo_verl.tasks.data", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="parquet/json/jsonl files, or hf:NAME[:SPLIT]")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--template", default="boxed", choices=sorted(TEMPLATES))
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted at the end)")
    args = parser.parse_args(argv)
    outputs = {}
    for path in args.inputs:  # one output per input name: two inputs must not write one file
        name = output_name(path)
        if name in outputs:
            parser.error(f"{outputs[name]} and {path} would both be written to {name}.parquet; rename one")
        outputs[name] = path
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        parser.error(f"--out-dir {args.out_dir} is a file, not a directory")
    total_skipped = 0
    for path in args.inputs:
        try:
            report = convert_file(path, args.out_dir, args.split, args.template, args.skip_bad)
        except (BadRowError, ValueError, OSError) as error:  # OSError: unreadable input, unwritable out-dir
            print(f"error: {error}", file=sys.stderr)
            return 1
        total_skipped += len(report.skipped)
        print(
            f"{report.source} -> {report.output}: {report.rows} rows, {len(report.skipped)} skipped, "
            f"{report.repaired_rows} with repaired LaTeX escapes",
            flush=True,
        )
        for line in report.skipped[:20]:
            print(f"  skipped {line}")
    if args.skip_bad:
        print(f"skipped {total_skipped} malformed row(s) in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
