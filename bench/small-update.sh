#!/usr/bin/env bash
# bench/small-update.sh
#
# What a small update costs on a host that runs v1, v2 being v1 with 1% of
# its files changed (every 100th file under app/, rewritten), in
# alternating rounds:
#
#   (a) `slipway install v2` into a fresh root: every file of v2 written
#   (b) `slipway install v2` on a root running v1: unchanged files
#       hardlinked from v1, only the changed ones written (the v1 install
#       before it is untimed)
#   (c) `slipway verify` of the running release: every file re-hashed
#   (d) `slipway verify --quick`: only files whose identity record differs
#   (e) an idle `slipway update --auto` (nothing newer offered) from a local
#       repository directory: its CPU time and peak RSS
#
# Both installs end with `sync`. The tree is made by bench/gen-tree with
# BENCH_SMALL_MIB MiB (default 256, to keep a run under 5 minutes on 2
# CPUs) and BENCH_SMALL_FILES small files (default 20000, as in the 1 GiB
# bench tree: the file count, not the bytes, is what (b), (c) and (d) are
# about). Report on stdout and in bench/out/small-update.md. Binaries:
# $SLIPWAY_PACK and $SLIPWAY, else target/release/{slipway-pack,slipway}.
# shellcheck disable=SC2016
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || {
    echo "usage: bench/small-update.sh   (see the comment at the top of the script)" >&2
    exit 2
}

require_tools zstd tar awk python3
PACK=$(resolve_binary slipway-pack SLIPWAY_PACK)
SLIPWAY_BIN=$(resolve_binary slipway SLIPWAY)
SMALL_MIB=${BENCH_SMALL_MIB:-256}
SMALL_FILES=${BENCH_SMALL_FILES:-20000}
require_free_gib $((2 + RUNS * SMALL_MIB * 3 / 1024))

WORK=$OUT_DIR/small-update-work
LOGS=$WORK/logs
rm -rf "$WORK"
mkdir -p "$LOGS"

TREE=$WORK/tree
note "generating a $SMALL_MIB MiB, $SMALL_FILES-file tree"
"$BENCH_DIR/gen-tree" "$TREE" --size-mib "$SMALL_MIB" --files "$SMALL_FILES" >"$LOGS/gen-tree.out" 2>&1 ||
    die "gen-tree failed (see $LOGS/gen-tree.out)"
"$PACK" keygen --out-dir "$WORK/keys" --name bench --unencrypted >"$LOGS/keygen.out" 2>&1 ||
    die "keygen failed"
PUBKEY_FILE=$WORK/keys/bench.pub
REPO=$WORK/repo
build() { # TREE VERSION -> release id
    "$PACK" build "$1" --version "$2" --key "$WORK/keys/bench.key" --out "$REPO" --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
V1=$(build "$TREE" 1.0.0)
TREE2=$WORK/tree2
cp -a "$TREE" "$TREE2"
CHANGED=$(find "$TREE2/app" -type f | LC_ALL=C sort | awk 'NR % 100 == 0' |
    while read -r f; do
        printf 'changed in 1.0.1\n' >>"$f"
        echo "$f"
    done | wc -l)
V2=$(build "$TREE2" 1.0.1)
ARCHIVE1=$REPO/releases/${V1#sha256:}.tar.zst
ARCHIVE2=$REPO/releases/${V2#sha256:}.tar.zst
"$PACK" publish --repo "$REPO" --channel stable --key "$WORK/keys/bench.key" "$V1" >"$LOGS/publish.out"

# write_config DIR : a host under DIR (docs/configuration.md), no service.
write_config() {
    mkdir -p "$1/root" "$1/persist"
    {
        printf '[update]\nsource = "%s"\npublic_keys = ["%s"]\nrequire_signed = true\nmax_attempts_per_day = 100000\n\n' "$REPO" "$PUBKEY_FILE"
        printf '[paths]\nroot = "%s"\npersistence = "%s"\nmax_save_age_minutes = 0\n\n' "$1/root" "$1/persist"
        printf '[service]\nmanager = "none"\nhealthy_polls = 1\n'
    } >"$1/update.toml"
}

RUNS_DIR=$WORK/runs
SEQ=0
fresh_host() { # -> HOST, a new host directory
    SEQ=$((SEQ + 1))
    HOST=$RUNS_DIR/host.$SEQ
    write_config "$HOST"
}

# The host running v1 for (c), (d) and (e).
fresh_host
IDLE=$HOST
"$SLIPWAY_BIN" --config "$IDLE/update.toml" install "$ARCHIVE1" >"$LOGS/idle-install.out" 2>&1 ||
    die "installing 1.0.0 failed (see $LOGS/idle-install.out)"

note "warm-up"
"$SLIPWAY_BIN" --config "$IDLE/update.toml" verify >/dev/null
"$SLIPWAY_BIN" --config "$IDLE/update.toml" update --auto >/dev/null

for round in $(seq 1 "$RUNS"); do
    note "round $round of $RUNS"
    fresh_host
    settle
    measure "$WORK/full.runs" "$LOGS/full.$round" bash -c '"$1" --config "$2" install "$3" && sync' \
        _ "$SLIPWAY_BIN" "$HOST/update.toml" "$ARCHIVE2"
    fresh_host
    "$SLIPWAY_BIN" --config "$HOST/update.toml" install "$ARCHIVE1" >"$LOGS/base.$round.out" 2>&1 ||
        die "installing 1.0.0 failed (see $LOGS/base.$round.out)"
    settle
    measure "$WORK/linked.runs" "$LOGS/linked.$round" bash -c '"$1" -v --config "$2" install "$3" && sync' \
        _ "$SLIPWAY_BIN" "$HOST/update.toml" "$ARCHIVE2"
    settle
    measure "$WORK/deep.runs" "$LOGS/deep.$round" "$SLIPWAY_BIN" --config "$IDLE/update.toml" verify
    measure "$WORK/quick.runs" "$LOGS/quick.$round" "$SLIPWAY_BIN" --config "$IDLE/update.toml" verify --quick
    measure "$WORK/idle.runs" "$LOGS/idle.$round" "$SLIPWAY_BIN" --config "$IDLE/update.toml" update --auto
done

LINKED_DIR=$(find "$RUNS_DIR"/host.*/root/releases -maxdepth 1 -name '1.0.1-*' | tail -n 1)
SHARED=$(find "$LINKED_DIR" -type f -links +1 | wc -l)

ratio_row() { # LABEL NUM DEN
    printf '| %s | %s | %s | %s |\n' "$1" \
        "$(ratio "$(median "$2" 1)" "$(median "$3" 1)")" \
        "$(ratio "$(median "$2" 2)" "$(median "$3" 2)")" \
        "$(paired_ratio "$2" "$3")"
}

report() {
    echo "# slipway small update: hardlinked staging, quick clean check, idle poll"
    echo
    machine_info
    tree_info "$TREE"
    printf -- '- archives: 1.0.0 %s MiB, 1.0.1 %s MiB; 1.0.1 changes %s files; %s files of the linked 1.0.1 share their inode with 1.0.0\n' \
        "$(mib "$(file_size "$ARCHIVE1")")" "$(mib "$(file_size "$ARCHIVE2")")" "$CHANGED" "$SHARED"
    printf -- '- command: `bench/small-update.sh` (BENCH_RUNS=%s BENCH_SMALL_MIB=%s BENCH_SMALL_FILES=%s); slipway: %s\n' \
        "$RUNS" "$SMALL_MIB" "$SMALL_FILES" "$SLIPWAY_BIN"
    echo
    echo "| step | wall s | CPU s (user+sys) | peak RSS MiB | wall s per run | load before / others' CPU s during each run |"
    echo "| --- | ---: | ---: | ---: | --- | --- |"
    stats_row '(a) `slipway install` 1.0.1, fresh root `&& sync`' "$WORK/full.runs" "$(loads_list "$WORK/full.runs")"
    stats_row '(b) `slipway install` 1.0.1 over 1.0.0 (hardlinked) `&& sync`' "$WORK/linked.runs" "$(loads_list "$WORK/linked.runs")"
    stats_row '(c) `slipway verify` (full re-hash)' "$WORK/deep.runs" "$(loads_list "$WORK/deep.runs")"
    stats_row '(d) `slipway verify --quick` (identity records)' "$WORK/quick.runs" "$(loads_list "$WORK/quick.runs")"
    stats_row '(e) idle `slipway update --auto` (local repository)' "$WORK/idle.runs" "$(loads_list "$WORK/idle.runs")"
    echo
    echo "| ratio | wall | CPU | wall within each round: median (every round) |"
    echo "| --- | ---: | ---: | --- |"
    ratio_row '(b) / (a): hardlinked vs full install' "$WORK/linked.runs" "$WORK/full.runs"
    ratio_row '(d) / (c): quick vs full clean check' "$WORK/quick.runs" "$WORK/deep.runs"
    echo
    echo "(b)'s own log (\`-v\`) times each step: see $LOGS/linked.*.err."
}

report | tee "$OUT_DIR/small-update.md"

if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf "$RUNS_DIR" "$TREE2" "$TREE"
fi
note "report written to $OUT_DIR/small-update.md; logs in $LOGS"
