"""Brings docs/ops.md's "Converted aten ops" table in line with the converter registry: rows for
new converters (engine ops from --engine-ops TARGET=OPS, default "?" to fill in by hand), limits
and dynamic flags copied from the registry, rows of removed converters dropped; rows stay sorted.

    python3 tools/sync_ops_doc.py --engine-ops aten.tan.default=unary ...
"""

import argparse
import re
from pathlib import Path

from kiln import _C

DOC = Path(__file__).resolve().parents[1] / "docs" / "ops.md"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-ops", nargs="*", default=[], help="TARGET=engine ops")
    args = parser.parse_args()
    given = dict(a.split("=", 1) for a in args.engine_ops)
    head, table = DOC.read_text().split("## Converted aten ops", 1)
    lines = table.splitlines()
    first = next(i for i, line in enumerate(lines) if ROW.match(line))
    last = first
    while last + 1 < len(lines) and ROW.match(lines[last + 1]):
        last += 1
    engine_ops = {}
    for line in lines[first : last + 1]:
        m = ROW.match(line)
        engine_ops[m.group(1)] = [c.strip() for c in m.group(2).split("|")][0]
    rows = []
    for target, dynamic, limits in sorted(_C.registered_converters()):
        ops = given.get(target, engine_ops.get(target, "?"))
        rows.append(f"| `{target}` | {ops} | {'yes' if dynamic else 'no'} | {limits} |")
    lines[first : last + 1] = rows
    DOC.write_text(head + "## Converted aten ops" + "\n".join(lines) + "\n")
    missing = [r for r in rows if "| ? |" in r]
    print(f"{len(rows)} rows; {len(missing)} without engine ops")


if __name__ == "__main__":
    main()
