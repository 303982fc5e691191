#!/usr/bin/env bash
# The book's chapters at two revisions, interleaved chapter by chapter so that machine drift hits both:
#   bash benchmarks/book_ab.sh OLD_REV NEW_REV [CHAPTER ...]     e.g. bash benchmarks/book_ab.sh dddabd8 HEAD
# Each run: one chapter alone, a fresh empty RLBOOK_CACHE, `jupyter nbconvert --execute` on a checkout of that
# revision (git worktrees under a temp dir; the committed notebooks are never written), rlbook imported from
# that checkout. Prints one line per run and the totals. Uses the current environment's jupyter and packages.
set -euo pipefail
old=${1:?usage: book_ab.sh OLD_REV NEW_REV [CHAPTER ...]}; new=${2:?usage: book_ab.sh OLD_REV NEW_REV}; shift 2
root=$(git rev-parse --show-toplevel); work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1; git -C "$root" worktree remove --force "$work/new" >/dev/null 2>&1; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/old" "$old"
git -C "$root" worktree add -q --detach "$work/new" "$new"
chapters=("$@"); [ ${#chapters[@]} -gt 0 ] || chapters=($(cd "$work/new/notebooks" && ls [0-9]*.ipynb | cut -c1-2))
declare -A total=([old]=0 [new]=0)
for ch in "${chapters[@]}"; do
  for side in old new; do
    nb=$(ls "$work/$side/notebooks/${ch}"_*.ipynb 2>/dev/null | head -1) || true
    [ -n "$nb" ] || { echo "$ch $side: no such chapter"; continue; }
    cache=$(mktemp -d); start=$(date +%s.%N)
    (cd "$work/$side" && RLBOOK_CACHE=$cache PYTHONPATH=$work/$side jupyter nbconvert --to notebook --execute \
       "$nb" --output-dir "$work/out-$side" --ExecutePreprocessor.timeout=900 >"$work/$side-$ch.log" 2>&1) \
       && rc=0 || rc=$?
    secs=$(echo "$(date +%s.%N) - $start" | bc); rm -rf "$cache"
    total[$side]=$(echo "${total[$side]} + $secs" | bc)
    printf "%s %-3s rc=%d %6.1f s\n" "$ch" "$side" "$rc" "$secs"
  done
done
printf "total old (%s) %.1f s, new (%s) %.1f s, new/old %.3f\n" "$old" "${total[old]}" "$new" "${total[new]}" \
  "$(echo "${total[new]} / ${total[old]}" | bc -l)"
