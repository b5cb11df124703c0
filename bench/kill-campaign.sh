#!/usr/bin/env bash
# bench/kill-campaign.sh
#
# The long kill campaign (issue 9): `slipway install` of the example bot is
# killed with SIGKILL at random instants and inside every journal step, by
# pid and by whole process tree, while a two-second migrate hook and a slow
# restart command run; then `slipway recover`, then every invariant of a
# crash-exact update (current complete and verified, data at current's
# schema, one bot tracked by its manager and not paused, no orphaned child,
# no debris, the lock free, the data again a moment later), and a full
# update every few kills. The engine is tests/harness/campaign.rs; the
# backends are installer/tests/kill_campaign.rs (command backend, bot-ctl)
# and tests/kill_campaign.rs (real systemd in a container: root only).
# scripts/test runs the short version (40 kills per backend).
#
# Environment:
#   KILL_CAMPAIGN_KILLS       kills per backend (default 300)
#   KILL_CAMPAIGN_SEED        RNG seed (default: random; printed, and the same
#                             for both backends)
#   KILL_CAMPAIGN_FULL_EVERY  a full update after every N kills (default 8)
#   KILL_CAMPAIGN_BACKENDS    which backends, in order (default "command systemd")
#   BENCH_OUT                 report directory (default bench/out)
#
# Writes $BENCH_OUT/kill-campaign-<backend>.txt (the report: counts per step,
# per kill mode, per scenario and per outcome, every inconsistent outcome in
# detail, and the line "N passed, M failed") and .log (every kill, one line
# each). Exits non-zero when any kill ended inconsistent. About 7 s per kill
# on the command backend and 5 s under systemd on 2 vCPUs.
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"
OUT_DIR=${BENCH_OUT:-$ROOT_DIR/bench/out}
mkdir -p "$OUT_DIR"

export KILL_CAMPAIGN_KILLS=${KILL_CAMPAIGN_KILLS:-300}
if [[ -z ${KILL_CAMPAIGN_SEED:-} ]]; then
    KILL_CAMPAIGN_SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
fi
export KILL_CAMPAIGN_SEED
echo "kill campaign: $KILL_CAMPAIGN_KILLS kills per backend, KILL_CAMPAIGN_SEED=$KILL_CAMPAIGN_SEED"

# The systemd backend runs the binaries `cargo build` put in target/ (see
# tests/harness/bins.rs); the command backend builds its own.
cargo build --workspace --features slipway/fault-injection

status=0
for backend in ${KILL_CAMPAIGN_BACKENDS:-command systemd}; do
    case $backend in
        command) args=(-p slipway --features slipway/fault-injection) ;;
        systemd) args=(-p slipway-e2e) ;;
        *)
            echo "bench/kill-campaign.sh: unknown backend '$backend' (command, systemd)" >&2
            exit 2
            ;;
    esac
    report=$OUT_DIR/kill-campaign-$backend.txt
    log=$OUT_DIR/kill-campaign-$backend.log
    rm -f "$report"
    echo "== $backend: log in $log, report in $report"
    if ! KILL_CAMPAIGN_REPORT=$report cargo test "${args[@]}" --test kill_campaign \
        -- --ignored --nocapture >"$log" 2>&1; then
        status=1
    fi
    grep -E '^(calibration|kill #|full update)' "$log" | tail -n 3 || true
    if [[ -s $report ]]; then
        tail -n 1 "$report"
    else
        echo "no report: the campaign did not finish (or skipped); see $log" >&2
        tail -n 20 "$log" >&2
        status=1
    fi
done

echo
for backend in ${KILL_CAMPAIGN_BACKENDS:-command systemd}; do
    report=$OUT_DIR/kill-campaign-$backend.txt
    [[ -s $report ]] && printf '%-8s %s\n' "$backend" "$(tail -n 1 "$report")"
done
exit "$status"
