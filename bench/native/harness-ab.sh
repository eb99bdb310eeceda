#!/usr/bin/env bash
# A/B of the attention harness between git revisions, in alternating rounds (shared machines drift by 1.5x within
# minutes, so only interleaved runs compare): builds bench/native/attention-harness.cc at each revision in a
# throwaway worktree, then per round runs every revision on every dtype, and prints the median and min ns a token.
#   usage: bash bench/native/harness-ab.sh REV_A REV_B [REV...]    (a revision may be WORKTREE: the files as they are,
#          or BIN:path, a harness binary built before, e.g. here for a machine without a compiler)
#   env:   ROUNDS (5), DTS ("f16 bf16"), ONLY (1064,1128,4064,4128,8064,8128), TABLES (avx2), MB, BS, OUT (build/harness-ab)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { echo "usage: $0 REV_A REV_B [REV...]" >&2; exit 2; }
rounds=${ROUNDS:-5}
dts=${DTS:-f16 bf16}
only=${ONLY:-1064,1128,4064,4128,8064,8128}
out=$(realpath -m "${OUT:-build/harness-ab}")
mkdir -p "$out"
names=()
for rev in "$@"; do
  if [ "${rev#BIN:}" != "$rev" ]; then
    name=$(basename "${rev#BIN:}")
    [ "$out/$name" -ef "${rev#BIN:}" ] || cp "${rev#BIN:}" "$out/$name"
  elif [ "$rev" = WORKTREE ]; then
    name=worktree
    HARNESS_OUT="$out/$name" BUILD_ONLY=1 bash bench/native/attention-harness.sh
  else
    name=$(git rev-parse --short "$rev")
    tree=$(mktemp -d)
    git worktree add -q --detach "$tree" "$rev"
    # The revision's kernels with this checkout's harness, so that every binary runs the same shapes.
    cp bench/native/attention-harness.cc bench/native/attention-harness.sh "$tree/bench/native/"
    (cd "$tree" && HARNESS_OUT="$out/$name" BUILD_ONLY=1 bash bench/native/attention-harness.sh)
    git worktree remove --force "$tree"
  fi
  names+=("$name")
done
rows="$out/rows.txt"
: > "$rows"
for r in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    for dt in $dts; do
      # harness rows: TABLE DTYPE G<g> D<d> bs<b>: GB/s ... ratio R  NS ns/token ...
      DT=$dt ONLY=$only TABLES=${TABLES:-avx2} "$out/$name" |
        awk -v n="$name" '/ ns\/token/ { for (i = 1; i < NF; i++) if ($(i + 1) == "ns/token") print $2, $3, $4, $1, n, $i }' >> "$rows"
    done
  done
done
echo "# $rounds rounds; ns a token, median and min; rows in $rows"
sort -k1,1 -k2,2V -k3,3V -k4,4 -k5,5 -k6,6n "$rows" | awk '
  function flush() { if (k != "") { m = (c % 2) ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2; printf "%-32s median %6.1f  min %6.1f  n %d\n", k, m, v[1], c } }
  { key = $1 " " $2 " " $3 " " $4 " " $5; if (key != k) { flush(); k = key; c = 0 } v[++c] = $6 }
  END { flush() }'
