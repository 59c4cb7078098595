"""Write a copy of a Triton config.pbtxt with some `parameters` entries set (added when missing).

    python3 set_params.py SRC DST key=value [key=value ...]

Only the one-line form our model's config uses is rewritten:
    parameters { key: "engine" value: { string_value: "pytorch" } }
Stdlib only: it runs inside the Triton image before tritonserver starts (deploy/triton/start.sh).
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(r'^(\s*)parameters\s*\{\s*key:\s*"(?P<key>[^"]+)"\s*value:\s*\{\s*string_value:\s*"(?:[^"\\]|\\.)*"'
                  r'\s*\}\s*\}\s*$')


def set_params(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        if '"' in value or "\\" in value or "\n" in value:
            raise ValueError(f"{key}: quotes, backslashes and newlines are not allowed in values")
    todo = dict(values)
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group("key") in todo:
            key = m.group("key")
            line = f'{m.group(1)}parameters {{ key: "{key}" value: {{ string_value: "{todo.pop(key)}" }} }}'
        out.append(line)
    for key, value in todo.items():
        out.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, pairs = argv[0], argv[1], argv[2:]
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"expected key=value, got {pair!r}", file=sys.stderr)
            return 2
        values[key] = value
    with open(src) as fh:
        text = fh.read()
    with open(dst, "w") as fh:
        fh.write(set_params(text, values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
