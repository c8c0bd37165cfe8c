#!/usr/bin/env bash
# Paired benchmark of two runner binaries: `case CASE` on each kernel, alternating OLD and NEW,
# ROUNDS times, wall time per run (each runner's KVM probe included, as a user meets it).
#
#   scripts/paired-bench.sh OLD_BIN NEW_BIN [ROUNDS] [CASE] KERNEL...
#
# A KERNEL of the form 'OLDSPEC|NEWSPEC' gives each runner its own spelling of the same kernel
# (spec syntax changed: fc260c8's `build:debian:6.12` is `build:debian:6.12=6.12.117-1~deb12u1` now).
#
# OLD_CASES (optional): a cases/ dir for OLD (a runner reads the case files of the checkout
# it was built from; give the old runner the case files of its own commit), e.g.
#   git worktree add /tmp/old fc260c8 && (cd /tmp/old && cargo build --release)
#   OLD_CASES=/tmp/old/cases scripts/paired-bench.sh /tmp/old/target/release/dmcache-vmtest \
#     target/release/dmcache-vmtest 3 unclean_passthrough debian:6.12.117+deb12
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} case=${4:-unclean_passthrough}
shift 4 || shift $#
[ $# -gt 0 ] || set -- debian:6.12.117+deb12
echo "round runner kernel rc wall_s verdict"
for r in $(seq 1 "$rounds"); do
  for k in "$@"; do
    for which in old new; do
      bin=$old env=() spec=${k%%|*}
      if [ "$which" = new ]; then bin=$new spec=${k##*|}; elif [ -n "${OLD_CASES:-}" ]; then env=(DMCACHE_VMTEST_CASES="$OLD_CASES"); fi
      log=$(mktemp)
      s=$(date +%s.%N)
      rc=0; env "${env[@]}" "$bin" case "$case" --kernel "$spec" >"$log" 2>&1 || rc=$?
      e=$(date +%s.%N)
      echo "$r $which $spec $rc $(echo "$e - $s" | bc) $(grep -o '^\(PASS\|FAIL\|ERROR\)[^(]*' "$log" | tail -1)"
      rm -f "$log"
    done
  done
done
