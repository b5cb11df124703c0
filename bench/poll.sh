#!/usr/bin/env bash
# bench/poll.sh
#
# Measures what slipway costs on the wire and in CPU when it talks to a
# release repository over HTTP, against a real nginx on 127.0.0.1:
#
#   (a) an idle poll: `slipway update --auto` when nothing changed (one
#       conditional GET of the channel index, answered 304)
#   (b) a full update: `slipway update` from v1 to v2 (index, signatures,
#       the archive download, verify, checked unpack, switch) into a root
#       holding v1, with a fresh trust state and index cache each run
#   (c) for reference, `curl -o` of the same archive from the same nginx
#
# For each: wall time, CPU (user+sys, GNU time), peak RSS, and from nginx's
# access log the requests, the bytes sent to the client (headers and body,
# `$bytes_sent`) and received from it (`$request_length`).
#
# The release is a tree made by bench/gen-tree (BENCH_POLL_MIB MiB, default
# 64, BENCH_POLL_FILES files, default 2000); v2 differs from v1 in one file.
# Reports go to stdout and bench/out/poll.md. Binaries: $SLIPWAY_PACK and
# $SLIPWAY, else target/release/{slipway-pack,slipway}, built when missing.
# shellcheck disable=SC2016
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || {
    echo "usage: bench/poll.sh   (see the comment at the top of the script)" >&2
    exit 2
}

require_tools nginx curl awk python3
PACK=$(resolve_binary slipway-pack SLIPWAY_PACK)
SLIPWAY_BIN=$(resolve_binary slipway SLIPWAY)
POLL_MIB=${BENCH_POLL_MIB:-64}
POLL_FILES=${BENCH_POLL_FILES:-2000}

WORK=$OUT_DIR/poll-work
LOGS=$WORK/logs
rm -rf "$WORK"
mkdir -p "$LOGS"

# --- the releases -------------------------------------------------------------

TREE=$WORK/tree
note "generating a $POLL_MIB MiB, $POLL_FILES-file tree"
"$BENCH_DIR/gen-tree" "$TREE" --size-mib "$POLL_MIB" --files "$POLL_FILES" >"$LOGS/gen-tree.out" 2>&1 ||
    die "gen-tree failed (see $LOGS/gen-tree.out)"
"$PACK" keygen --out-dir "$WORK/keys" --name bench --unencrypted >"$LOGS/keygen.out" 2>&1 ||
    die "keygen failed"
REPO=$WORK/repo
build() { # VERSION -> release id
    "$PACK" build "$TREE" --version "$1" --key "$WORK/keys/bench.key" --out "$REPO" --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
V1=$(build 1.0.0)
echo "changed for 1.0.1" >>"$TREE/app/CHANGED.txt"
V2=$(build 1.0.1)
"$PACK" publish --repo "$REPO" --channel stable --key "$WORK/keys/bench.key" "$V1" >"$LOGS/publish1.out"
ARCHIVE2=$REPO/releases/${V2#sha256:}.tar.zst
ARCHIVE2_SIZE=$(file_size "$ARCHIVE2")

# --- nginx ----------------------------------------------------------------------

start_nginx "$WORK/nginx" "$REPO"
URL=$NGX_URL
ACCESS=$NGX_ACCESS

write_config() { # ROOT
    cat >"$WORK/update.toml" <<EOF
[update]
channel = "stable"
source = "$URL"
public_keys = ["$WORK/keys/bench.pub"]
max_attempts_per_day = 1000
[paths]
root = "$1"
persistence = "$WORK/data"
max_save_age_minutes = 0
[service]
manager = "none"
healthy_polls = 1
[report]
journald = false
EOF
}

log_lines() { access_lines; }

slipway_cmd() { env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY "$SLIPWAY_BIN" --config "$WORK/update.toml" "$@"; }

# --- (a) idle polls ----------------------------------------------------------------

ROOT=$WORK/root-idle
write_config "$ROOT"
slipway_cmd --quiet update >"$LOGS/idle-setup.out" 2>&1 || die "installing v1 failed (see $LOGS/idle-setup.out)"
# One untimed poll: the first after an install already is a 304.
slipway_cmd --quiet update --auto >"$LOGS/idle-warm.out" 2>&1
IDLE=$WORK/idle.txt IDLE_WIRE=$WORK/idle-wire.txt
: >"$IDLE"
: >"$IDLE_WIRE"
for i in $(seq "$RUNS"); do
    settle
    from=$(log_lines)
    measure "$IDLE" "$LOGS/idle-$i" "$SLIPWAY_BIN" --config "$WORK/update.toml" --quiet update --auto ||
        die "idle poll failed"
    wire "$from" >>"$IDLE_WIRE"
done
grep -q ' 304 ' "$ACCESS" || die "no 304 in the access log: the idle poll was not conditional"

# --- (b) full updates and (c) curl, alternating ---------------------------------------

"$PACK" publish --repo "$REPO" --channel stable --key "$WORK/keys/bench.key" "$V2" >"$LOGS/publish2.out"
FULL=$WORK/full.txt FULL_WIRE=$WORK/full-wire.txt CURL=$WORK/curl.txt CURL_WIRE=$WORK/curl-wire.txt
: >"$FULL"
: >"$FULL_WIRE"
: >"$CURL"
: >"$CURL_WIRE"
ROOT=$WORK/root-full
write_config "$ROOT"
for i in $(seq "$RUNS"); do
    rm -rf "$ROOT" "$WORK/data"
    slipway_cmd --quiet install "$REPO/releases/${V1#sha256:}.tar.zst" >"$LOGS/full-setup-$i.out" 2>&1 ||
        die "installing v1 failed (see $LOGS/full-setup-$i.out)"
    settle
    from=$(log_lines)
    measure "$FULL" "$LOGS/full-$i" "$SLIPWAY_BIN" --config "$WORK/update.toml" --quiet update ||
        die "full update failed (see $LOGS/full-$i.err)"
    wire "$from" >>"$FULL_WIRE"
    [[ $(readlink "$ROOT/current") == releases/1.0.1-* ]] || die "run $i did not install 1.0.1"

    settle
    from=$(log_lines)
    measure "$CURL" "$LOGS/curl-$i" curl -sf -o "$WORK/curl.tar.zst" "$URL/releases/${V2#sha256:}.tar.zst" ||
        die "curl failed"
    wire "$from" >>"$CURL_WIRE"
    rm -f "$WORK/curl.tar.zst"
done

# --- report ------------------------------------------------------------------------------

wire_cells() { # WIRE_FILE -> "| requests | sent | received |" cells (medians)
    local f=$1
    printf '%s | %s | %s' "$(median "$f" 1)" "$(median "$f" 2)" "$(median "$f" 3)"
}
REPORT=$OUT_DIR/poll.md
{
    echo "## Polling and updates over HTTP (bench/poll.sh)"
    echo
    machine_info
    echo "- release: $(mib "$ARCHIVE2_SIZE") MiB archive ($POLL_FILES files, $POLL_MIB MiB unpacked, bench/gen-tree); nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') on 127.0.0.1"
    echo
    echo "| what | wall s | CPU s | peak RSS MiB | runs (wall s) | requests | bytes to client | bytes from client |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    stats_row "(a) idle poll: \`update --auto\`, index unchanged (304)" "$IDLE" "$(wire_cells "$IDLE_WIRE")"
    stats_row "(b) full update v1 → v2 from nginx" "$FULL" "$(wire_cells "$FULL_WIRE")"
    stats_row "(c) \`curl -o\` of the v2 archive" "$CURL" "$(wire_cells "$CURL_WIRE")"
    echo
    echo "- (b)/(c) wall: $(ratio "$(median "$FULL" 1)" "$(median "$CURL" 1)"); (b) bytes to client / archive size: $(ratio "$(median "$FULL_WIRE" 2)" "$ARCHIVE2_SIZE")"
} | tee "$REPORT"
note "report written to $REPORT"
[[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$WORK/tree" "$WORK/root-full" "$WORK/root-idle" "$REPO/releases"
