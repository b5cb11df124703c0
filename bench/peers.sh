#!/usr/bin/env bash
# bench/peers.sh
#
# A small update, v1 → v2 on a host running v1, over HTTP from one real
# nginx on 127.0.0.1, measured in alternating rounds for:
#
#   (a) slipway, delta: `slipway update` (the channel lists the delta from
#       v1: `slipway-pack publish` made it), then `sync`
#   (b) slipway, full archive: the same from a repository published with
#       `--deltas 0`
#   (c) OSTree: `ostree pull` of the branch (a static delta from v1's
#       commit), then `ostree checkout -U -H` of v2 (hardlinks), then `sync`
#   (d) casync: `casync extract` of v2's index with v1's tree as the seed,
#       then `sync`
#
# and on the host that took the delta: (e) the clean-tree check
# (`slipway verify --quick`, the update's own rule) against (f) the full
# re-hash (`slipway verify`), and (g) an idle `update --auto` (the index
# answered 304).
#
# For each: wall time, CPU, peak RSS (GNU time), and from nginx's access
# log the requests and the bytes sent. The tree is bench/gen-tree's
# (BENCH_PEERS_MIB MiB, default 1024; BENCH_PEERS_FILES files, default
# 20000); v2 rewrites every 100th file (1%), adds 5 and removes 5.
# Report on stdout and in bench/out/peers.md. Needs root (OSTree's and
# casync's Debian packages are installed when missing). Binaries:
# $SLIPWAY_PACK and $SLIPWAY, else target/release/{slipway-pack,slipway}.
# shellcheck disable=SC2016
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || {
    echo "usage: bench/peers.sh   (see the comment at the top of the script)" >&2
    exit 2
}
[[ $(id -u) -eq 0 ]] || die "bench/peers.sh needs root (it installs ostree and casync, and casync restores owners)"
for pkg in ostree casync; do
    if ! command -v "$pkg" >/dev/null 2>&1; then
        note "installing Debian package $pkg"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2 ||
            die "could not install $pkg; install it and run again"
    fi
done
require_tools nginx curl awk python3 ostree casync
PACK=$(resolve_binary slipway-pack SLIPWAY_PACK)
SLIPWAY_BIN=$(resolve_binary slipway SLIPWAY)
PEERS_MIB=${BENCH_PEERS_MIB:-1024}
PEERS_FILES=${BENCH_PEERS_FILES:-20000}
require_free_gib $((2 + PEERS_MIB * (8 + 4 * RUNS) / 1024))

WORK=$OUT_DIR/peers-work
LOGS=$WORK/logs
SRV=$WORK/srv
rm -rf "$WORK"
mkdir -p "$LOGS" "$SRV"

# --- v1 and v2 ---------------------------------------------------------------

V1_TREE=$WORK/v1
V2_TREE=$WORK/v2
note "generating a $PEERS_MIB MiB, $PEERS_FILES-file tree"
"$BENCH_DIR/gen-tree" "$V1_TREE" --size-mib "$PEERS_MIB" --files "$PEERS_FILES" >"$LOGS/gen-tree.out" 2>&1 ||
    die "gen-tree failed (see $LOGS/gen-tree.out)"
cp -a "$V1_TREE" "$V2_TREE"
CHANGED=$(find "$V2_TREE/app" -type f | sort | awk 'NR % 100 == 0' |
    while read -r f; do
        printf 'changed in 1.0.1\n' >>"$f"
        echo "$f"
    done | wc -l)
find "$V2_TREE/app" -type f | sort | awk 'NR % 100 == 50 && ++n <= 5' | xargs rm -f
for i in 1 2 3 4 5; do
    head -c 20000 /dev/urandom >"$V2_TREE/app/added-$i.bin"
done

# --- slipway: one repository with the delta, one without ---------------------

"$PACK" keygen --out-dir "$WORK/keys" --name bench --unencrypted >"$LOGS/keygen.out" 2>&1 || die "keygen failed"
REPO=$SRV/repo
build() { # TREE VERSION -> release id
    "$PACK" build "$1" --version "$2" --key "$WORK/keys/bench.key" --out "$REPO" --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
publish() { # REPO ID [ARGS...]
    local repo=$1 id=$2
    shift 2
    "$PACK" publish --repo "$repo" --channel stable --key "$WORK/keys/bench.key" "$@" "$id" >>"$LOGS/publish.out" 2>&1 ||
        die "publish failed (see $LOGS/publish.out)"
}
note "slipway-pack: building v1 and v2"
V1=$(build "$V1_TREE" 1.0.0)
V2=$(build "$V2_TREE" 1.0.1)
publish "$REPO" "$V1"
cp -a "$REPO" "$SRV/repo-full"
publish "$REPO" "$V2"
publish "$SRV/repo-full" "$V2" --deltas 0
ARCHIVE1=$REPO/releases/${V1#sha256:}.tar.zst
ARCHIVE2_SIZE=$(file_size "$REPO/releases/${V2#sha256:}.tar.zst")
DELTA=$(find "$REPO/deltas" -name '*.tar.zst' | head -n 1)
[[ -n $DELTA ]] || die "publish made no delta from v1 to v2"
DELTA_SIZE=$(file_size "$DELTA")

# --- OSTree: main at v1 (ostree-v1), and main at v2 with a static delta ------

note "ostree: committing v1 and v2, generating the static delta"
ostree --repo="$SRV/ostree-v1" init --mode=archive
ostree --repo="$SRV/ostree-v1" commit -b main --no-xattrs --tree=dir="$V1_TREE" >"$LOGS/ostree-commit1.out"
cp -a "$SRV/ostree-v1" "$SRV/ostree-v2"
ostree --repo="$SRV/ostree-v2" commit -b main --no-xattrs --tree=dir="$V2_TREE" >"$LOGS/ostree-commit2.out"
OSTREE_V1=$(ostree --repo="$SRV/ostree-v1" rev-parse main)
OSTREE_V2=$(ostree --repo="$SRV/ostree-v2" rev-parse main)
ostree --repo="$SRV/ostree-v2" static-delta generate --from="$OSTREE_V1" --to="$OSTREE_V2" >"$LOGS/ostree-delta.out"
ostree --repo="$SRV/ostree-v1" summary -u
ostree --repo="$SRV/ostree-v2" summary -u

# --- casync: an index per version, one chunk store ---------------------------

note "casync: indexing v1 and v2"
mkdir -p "$SRV/casync"
casync make --store="$SRV/casync/store" "$SRV/casync/v1.caidx" "$V1_TREE" >"$LOGS/casync-make1.out" 2>&1
casync make --store="$SRV/casync/store" "$SRV/casync/v2.caidx" "$V2_TREE" >"$LOGS/casync-make2.out" 2>&1

start_nginx "$WORK/nginx" "$SRV"

# --- hosts -------------------------------------------------------------------

SEQ=0
slipway_host() { # REPO_NAME -> HOST: a host running v1 whose source is REPO_NAME
    SEQ=$((SEQ + 1))
    HOST=$WORK/hosts/$SEQ
    mkdir -p "$HOST/root" "$HOST/persist"
    {
        printf '[update]\nchannel = "stable"\nsource = "%s/%s"\npublic_keys = ["%s"]\nmax_attempts_per_day = 100000\n\n' \
            "$NGX_URL" "$1" "$WORK/keys/bench.pub"
        printf '[paths]\nroot = "%s"\npersistence = "%s"\nmax_save_age_minutes = 0\n\n' "$HOST/root" "$HOST/persist"
        printf '[service]\nmanager = "none"\nhealthy_polls = 1\n\n[report]\njournald = false\n'
    } >"$HOST/update.toml"
    "$SLIPWAY_BIN" --config "$HOST/update.toml" --quiet install "$ARCHIVE1" >"$LOGS/host-$SEQ.out" 2>&1 ||
        die "installing v1 on host $SEQ failed (see $LOGS/host-$SEQ.out)"
}
ostree_host() { # -> OHOST: an OSTree repository with v1 pulled and checked out
    SEQ=$((SEQ + 1))
    OHOST=$WORK/hosts/$SEQ
    mkdir -p "$OHOST"
    ostree --repo="$OHOST/repo" init --mode=bare-user
    ostree --repo="$OHOST/repo" remote add --no-gpg-verify origin "$NGX_URL/ostree-v1"
    ostree --repo="$OHOST/repo" pull origin main >"$LOGS/ostree-host-$SEQ.out" 2>&1 || die "ostree pull of v1 failed"
    ostree --repo="$OHOST/repo" checkout -U -H main "$OHOST/v1"
    ostree --repo="$OHOST/repo" remote delete origin
    ostree --repo="$OHOST/repo" remote add --no-gpg-verify origin "$NGX_URL/ostree-v2"
}
casync_host() { # -> CHOST: v1's tree extracted by casync
    SEQ=$((SEQ + 1))
    CHOST=$WORK/hosts/$SEQ
    mkdir -p "$CHOST"
    casync extract --store="$NGX_URL/casync/store" "$NGX_URL/casync/v1.caidx" "$CHOST/v1" >"$LOGS/casync-host-$SEQ.out" 2>&1 ||
        die "casync extract of v1 failed (see $LOGS/casync-host-$SEQ.out)"
}

# timed NAME CMD... : measure CMD into $WORK/NAME.runs and the wire into
# $WORK/NAME.wire.
timed() {
    local name=$1
    shift
    settle
    local from
    from=$(access_lines)
    measure "$WORK/$name.runs" "$LOGS/$name.$ROUND" "$@" || die "$name failed in round $ROUND (see $LOGS/$name.$ROUND.err)"
    wire "$from" >>"$WORK/$name.wire"
}

for ROUND in $(seq 1 "$RUNS"); do
    note "round $ROUND of $RUNS"
    slipway_host repo
    timed delta bash -c '"$1" -v --config "$2" update && sync' _ "$SLIPWAY_BIN" "$HOST/update.toml"
    grep -q "delta" "$LOGS/delta.$ROUND.err" || die "round $ROUND did not take the delta (see $LOGS/delta.$ROUND.err)"
    DELTA_HOST=$HOST
    slipway_host repo-full
    timed full bash -c '"$1" --config "$2" update && sync' _ "$SLIPWAY_BIN" "$HOST/update.toml"
    ostree_host
    timed ostree bash -c 'ostree --repo="$1/repo" pull origin main && ostree --repo="$1/repo" checkout -U -H main "$1/v2" && sync' _ "$OHOST"
    casync_host
    timed casync bash -c 'casync extract --store="$1/casync/store" --seed="$2/v1" "$1/casync/v2.caidx" "$2/v2" && sync' _ "$NGX_URL" "$CHOST"
    timed quick "$SLIPWAY_BIN" --config "$DELTA_HOST/update.toml" verify --quick
    timed deep "$SLIPWAY_BIN" --config "$DELTA_HOST/update.toml" verify
    "$SLIPWAY_BIN" --config "$DELTA_HOST/update.toml" --quiet update --auto >/dev/null 2>&1 || true
    timed idle "$SLIPWAY_BIN" --config "$DELTA_HOST/update.toml" --quiet update --auto
    # The hosts stay until the end: deleting 20,000-file trees between
    # rounds would slow the next round's inode allocation (bench/README.md,
    # "Deleting files slows the next creation"); require_free_gib counted
    # them.
done
rm -rf "$WORK/hosts"
grep -q ' 304 ' "$NGX_ACCESS" || die "no 304 in the access log: the idle poll was not conditional"

# --- report ------------------------------------------------------------------

cells() { # NAME -> "requests | bytes sent" (medians)
    printf '%s | %s' "$(median "$WORK/$1.wire" 1)" "$(median "$WORK/$1.wire" 2)"
}
sent() { median "$WORK/$1.wire" 2; }
wall() { median "$WORK/$1.runs" 1; }
cpu() { median "$WORK/$1.runs" 2; }
REPORT=$OUT_DIR/peers.md
{
    echo "## A small update against the peers (bench/peers.sh)"
    echo
    machine_info
    tree_info "$V1_TREE"
    echo "- v2: $CHANGED files rewritten, 5 added, 5 removed; slipway archive $(mib "$ARCHIVE2_SIZE") MiB, delta $DELTA_SIZE bytes; $(ostree --version | awk '/Version/ { print "ostree " $2; exit }'); casync $(casync --version 2>&1 | head -n 1 | awk '{ print $NF }'); nginx on 127.0.0.1"
    echo
    echo "| what | wall s | CPU s | peak RSS MiB | runs (wall s) | requests | bytes sent |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    stats_row "(a) slipway update, delta" "$WORK/delta.runs" "$(cells delta)"
    stats_row "(b) slipway update, full archive" "$WORK/full.runs" "$(cells full)"
    stats_row "(c) ostree pull (static delta) + checkout -H" "$WORK/ostree.runs" "$(cells ostree)"
    stats_row "(d) casync extract, v1 as seed" "$WORK/casync.runs" "$(cells casync)"
    stats_row "(e) slipway verify --quick (the clean-tree rule)" "$WORK/quick.runs" "-" "-"
    stats_row "(f) slipway verify (full re-hash)" "$WORK/deep.runs" "-" "-"
    stats_row "(g) idle update --auto (304)" "$WORK/idle.runs" "$(cells idle)"
    echo
    echo "| ratio | value | target |"
    echo "| --- | ---: | --- |"
    echo "| bytes: (a) / (c) OSTree's pull | $(ratio "$(sent delta)" "$(sent ostree)") | ≤ 1.0 |"
    echo "| bytes: (a) / (b) the full update | $(ratio "$(sent delta)" "$(sent full)") | ≤ 0.02 |"
    echo "| install: (a) / (c) OSTree pull + checkout, wall | $(ratio "$(wall delta)" "$(wall ostree)") (rounds: $(paired_ratio "$WORK/delta.runs" "$WORK/ostree.runs")) | ≤ 1.0 |"
    echo "| install: (a) / (b), wall | $(ratio "$(wall delta)" "$(wall full)") (rounds: $(paired_ratio "$WORK/delta.runs" "$WORK/full.runs")) | ≤ 0.1 |"
    echo "| install: (a) / (d) casync, wall | $(ratio "$(wall delta)" "$(wall casync)") | |"
    echo "| clean-tree check (e), wall ms | $(awk -v s="$(wall quick)" 'BEGIN { printf "%.0f", s * 1000 }') | < 50 |"
    echo "| idle poll (g), CPU ms | $(awk -v s="$(cpu idle)" 'BEGIN { printf "%.0f", s * 1000 }') | ≤ 20 |"
} | tee "$REPORT"
