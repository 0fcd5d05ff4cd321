#!/usr/bin/env bash
# Before and after in one run: tollgate-bench built at a baseline commit and
# at this working tree, run alternately on the same machine, then the median
# of each figure side by side (`tollgate-bench compare-report`).
#
#   devtools/bench/compare.sh <baseline-commit> [tollgate-bench flags both builds know]
#   e.g. devtools/bench/compare.sh 3be38a1
#        RUNS=5 devtools/bench/compare.sh 3be38a1 --duration-secs 4
#
# Each build's bench links its own gateway (the child it measures is itself),
# so the baseline binary is the baseline gateway. The baseline is built in a
# temporary git worktree with its own target dir; the target dir and the
# built binary are kept under <target>/bench-baseline/, so the next run
# against the same commit builds nothing.
#
# Flags only newer benches know are passed to a build only if its --help
# lists them (the peer gateway: --peer-portkey); scenarios a build lacks
# (HTTP/2, Portkey in a bench that predates them) show as "—" in its column.
#
# Environment:
#   RUNS=3           runs of each build, in the order B C C B B C … (neither
#                    build always goes first)
#   PROFILE=release  release: fat LTO as shipped (slow to build);
#                    quick: release without LTO, only for trying the script
#   PEER=auto        --peer-portkey value (devtools/bench/peers/install.sh installs
#                    Portkey where `auto` finds it); PEER=none skips Portkey
#   OUT=<dir>        where each run's printed output is kept (default: new temp dir)
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
case "$1" in -h|--help) usage 0 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
baseline="$(git -C "$root" rev-parse --verify --quiet "$1^{commit}")" \
  || { echo "compare.sh: $1 is not a commit" >&2; exit 2; }
shift
short="$(git -C "$root" rev-parse --short "$baseline")"
current_label="$(git -C "$root" describe --always --dirty --abbrev=7)"
runs="${RUNS:-3}"
peer="${PEER:-auto}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "${PROFILE:-release}" in
  release) profile_args=(--release); profile_dir=release ;;
  quick)
    # A profile of its own, so it never overwrites the release artifacts.
    profile_args=(--profile bench-quick
      --config 'profile.bench-quick.inherits="release"'
      --config 'profile.bench-quick.lto=false'
      --config 'profile.bench-quick.codegen-units=16')
    profile_dir=bench-quick ;;
  *) echo "compare.sh: PROFILE must be release or quick" >&2; exit 2 ;;
esac
out="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tollgate-compare.XXXXXX")}"
mkdir -p "$out"

echo "== building current ($current_label, $profile_dir)" >&2
(cd "$root" && CARGO_TARGET_DIR="$target" cargo build --locked "${profile_args[@]}" -p tollgate-bench)
current_bin="$target/$profile_dir/tollgate-bench"

cache="$target/bench-baseline"
baseline_bin="$cache/tollgate-bench-$short-$profile_dir"
if [ -x "$baseline_bin" ]; then
  echo "== baseline $short: reusing $baseline_bin" >&2
else
  echo "== building baseline $short ($profile_dir) in a temporary worktree" >&2
  mkdir -p "$cache"
  base_target="$cache/target"
  if [ ! -d "$base_target/$profile_dir" ] && [ -d "$target/$profile_dir" ]; then
    # Seed with the current build: the registry dependencies (librdkafka,
    # SQLite, …) are then reused instead of compiled again.
    mkdir -p "$base_target"
    cp -a "$target/$profile_dir" "$base_target/"
  fi
  worktree="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-baseline.XXXXXX")/src"
  cleanup() {
    git -C "$root" worktree remove --force "$worktree" 2>/dev/null || true
    rm -rf "$(dirname "$worktree")"
    git -C "$root" worktree prune
  }
  trap cleanup EXIT
  git -C "$root" worktree add --detach --quiet "$worktree" "$baseline"
  (cd "$worktree" && CARGO_TARGET_DIR="$base_target" \
    cargo build --locked "${profile_args[@]}" -p tollgate-bench)
  cp "$base_target/$profile_dir/tollgate-bench" "$baseline_bin"
  cleanup
  trap - EXIT
fi

# Flags for one build: the common ones, plus those its --help lists.
flags_for() {
  local bin="$1"
  local -a flags=("${@:2}")
  if [ "$peer" != none ] && "$bin" --help | grep -q -- '--peer-portkey'; then
    flags+=(--peer-portkey "$peer")
  fi
  if [ ${#flags[@]} -gt 0 ]; then printf '%s\n' "${flags[@]}"; fi
}
mapfile -t baseline_flags < <(flags_for "$baseline_bin" "$@")
mapfile -t current_flags < <(flags_for "$current_bin" "$@")
echo "== baseline flags: ${baseline_flags[*]:-(none)}" >&2
echo "== current flags : ${current_flags[*]:-(none)}" >&2

run_one() {
  local which="$1" i="$2"
  local file="$out/$which-$i.txt"
  echo "== run $i/$runs: $which" >&2
  if [ "$which" = baseline ]; then
    "$baseline_bin" "${baseline_flags[@]}" >"$file" 2>"$out/$which-$i.err"
  else
    "$current_bin" "${current_flags[@]}" >"$file" 2>"$out/$which-$i.err"
  fi || { echo "compare.sh: $which run $i failed:" >&2; tail -5 "$out/$which-$i.err" >&2; exit 1; }
}
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) -eq 1 ]; then
    run_one baseline "$i"; run_one current "$i"
  else
    run_one current "$i"; run_one baseline "$i"
  fi
done

# The machine line of one run, for the record.
grep -m1 '^machine' "$out/current-1.txt" || true
echo "builds: baseline $short, current $current_label, profile $profile_dir; outputs in $out"
base_files=(); cur_files=()
for i in $(seq 1 "$runs"); do
  base_files+=("$out/baseline-$i.txt"); cur_files+=("$out/current-$i.txt")
done
"$current_bin" compare-report --baseline-name "$short" --current-name "$current_label" \
  --baseline "${base_files[@]}" --current "${cur_files[@]}"
