#!/bin/bash
# The comparison tree an A/B call needs, in the repository's root: `bash bench/results/2026-12-05-next-calls/tree.sh
# DIR COMMIT` makes DIR/ with COMMIT's llmserve, this tree's bench (without its results) and a link to .carry (the
# scripts' headers name theirs: _prev 8775101, _base 8ba3916, _base2 55bbcec). Untracked and not ignored, DIR travels
# with the working tree to the device; `rm -rf DIR` after the call.
set -euo pipefail
dir=${1:?DIR}
commit=${2:?COMMIT}
cd "$(git rev-parse --show-toplevel)"
[ ! -e "$dir" ] || { echo "$dir exists" >&2; exit 1; }
mkdir "$dir"
git archive "$commit" llmserve | tar x -C "$dir"
cp -r bench "$dir/" && rm -rf "$dir/bench/results"
ln -s ../.carry "$dir/.carry"
echo "$dir: llmserve at $(git rev-parse --short "$commit"), bench as here; $(du -sh "$dir" | cut -f1)"
