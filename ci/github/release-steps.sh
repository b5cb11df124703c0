#!/usr/bin/env bash
# release-steps.sh: the shell steps of slipway's GitHub Actions workflows
# (ci/github/release.yml and ci/github/checks.yml), kept in one script so
# that they run the same on a laptop, in slipway's own tests and in CI.
#
# Copy it into your app's repository as .github/slipway/release-steps.sh
# (the workflows call it from there).
#
#   release-steps.sh fetch-repo   check out the release repository branch into $REPO_DIR
#   release-steps.sh release      build, sign, publish and verify one release
#   release-steps.sh refresh      re-sign every channel index of $REPO_DIR with a new expiry
#   release-steps.sh push-repo    commit $REPO_DIR and push it to its branch
#   release-steps.sh check        build and verify with a throwaway key (pull requests)
#
# Inputs (environment):
#   TAG                  the pushed tag, vX.Y.Z (release); gives the version
#   SOURCE_DIR           the app's source tree with slipway.toml (default .)
#   APP                  app name (default: `app` in slipway.toml)
#   CHANNEL              channel to publish to (default stable)
#   REPO_DIR             the release repository tree (default slipway-repo)
#   REPO_BRANCH          the git branch that stores it (default slipway-repo)
#   SLIPWAY_SECRET_KEY   the minisign secret key file's text (a repository secret)
#   SLIPWAY_KEY_PASSWORD its password, if encrypted (a repository secret; read by slipway-pack)
#   SLIPWAY_PUBLIC_KEY   the public key hosts trust (base64 RW...); the published
#                        repository must verify with it (recommended)
#   SLIPWAY_PACK         the slipway-pack binary (default: slipway-pack on PATH)
#   SLIPWAY              the slipway binary, for `check`'s dry run (optional)
#   COMMIT               the commit recorded in the manifest (default: git HEAD of SOURCE_DIR)
#   SOURCE_DATE_EPOCH    the archive's timestamps (default: the commit's committer time)
#   EXPIRES_IN           lifetime of the signed channel index (default 30d); hosts refuse
#                        an expired index and warn 7 days before, so `refresh` must run
#                        well within it (ci/github/refresh.yml: weekly)
#   ROLLOUT              percent of hosts that take the release (default 100)
#   NOTES                release notes (default "release $TAG")
#   COMMIT_MESSAGE       push-repo's commit message (default "slipway: publish $TAG to $CHANNEL")
#
# The secret key never reaches the log or the command line: it is written
# with umask 077 to a mktemp file that is removed on exit, xtrace is off,
# and the variable is unset before any other program runs. Secrets that
# come from `secrets.*` are masked by the runner line by line already; this
# script prints no secret, so it needs no ::add-mask:: of its own.
set -euo pipefail
set +x

die() {
    printf 'release-steps: error: %s\n' "$*" >&2
    exit 1
}

note() {
    printf 'release-steps: %s\n' "$*"
}

SOURCE_DIR="${SOURCE_DIR:-.}"
CHANNEL="${CHANNEL:-stable}"
REPO_DIR="${REPO_DIR:-slipway-repo}"
REPO_BRANCH="${REPO_BRANCH:-slipway-repo}"
SLIPWAY_PACK="${SLIPWAY_PACK:-slipway-pack}"
EXPIRES_IN="${EXPIRES_IN:-30d}"
ROLLOUT="${ROLLOUT:-100}"
SCRATCH_BASE="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"

# Files this run creates and removes on exit, whatever happens.
cleanup_paths=()
cleanup() {
    local p
    for p in "${cleanup_paths[@]}"; do
        rm -rf -- "$p"
    done
}
trap cleanup EXIT

# Writes $SLIPWAY_SECRET_KEY to a private temporary file (removed on exit),
# unsets the variable, and sets KEY_FILE to the file's path. Not called in
# a subshell, so the cleanup list it extends is this shell's own.
secret_key_file() {
    [[ -n "${SLIPWAY_SECRET_KEY:-}" ]] ||
        die "SLIPWAY_SECRET_KEY is empty: add the secret key file's text as a repository secret (Settings > Secrets and variables > Actions) and pass it in the step's env"
    KEY_FILE="$(umask 077 && mktemp "$SCRATCH_BASE/slipway-key.XXXXXXXX")"
    cleanup_paths+=("$KEY_FILE")
    (umask 077 && printf '%s\n' "$SLIPWAY_SECRET_KEY" >"$KEY_FILE")
    unset SLIPWAY_SECRET_KEY
    # Only the first line is looked at, and never printed.
    head -n 1 "$KEY_FILE" | grep -q '^untrusted comment:' ||
        die "SLIPWAY_SECRET_KEY does not hold a minisign secret key file (it must start with 'untrusted comment:'); paste the whole .key file written by slipway-pack keygen"
}

# The version of a tag vX.Y.Z[-pre][+build].
version_of_tag() {
    local tag=$1
    [[ "$tag" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]] ||
        die "TAG ${tag@Q} is not vX.Y.Z: release tags look like v1.4.0"
    printf '%s' "${tag#v}"
}

# The commit and its committer time, when SOURCE_DIR is in a git work tree.
commit_of_source() {
    if [[ -n "${COMMIT:-}" ]]; then
        printf '%s' "$COMMIT"
    elif git -C "$SOURCE_DIR" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$SOURCE_DIR" rev-parse HEAD
    fi
}

epoch_of_commit() {
    local commit=$1
    if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
        printf '%s' "$SOURCE_DATE_EPOCH"
    elif [[ -n "$commit" ]] && git -C "$SOURCE_DIR" cat-file -e "$commit^{commit}" 2>/dev/null; then
        git -C "$SOURCE_DIR" log -1 --format=%ct "$commit"
    else
        printf '0'
    fi
}

# Appends KEY=VALUE to $GITHUB_OUTPUT when running in Actions.
output() {
    if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
        printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
    fi
}

summary() {
    if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
        printf '%s\n' "$*" >>"$GITHUB_STEP_SUMMARY"
    fi
}

# A JSON string field of a one-object JSON text (slipway-pack --json output),
# without depending on jq.
json_field() {
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

cmd_release() {
    [[ -n "${TAG:-}" ]] || die "TAG is not set: run on a pushed tag (github.ref_name) or set TAG=v1.2.3"
    local version commit epoch key
    version="$(version_of_tag "$TAG")"
    commit="$(commit_of_source)"
    epoch="$(epoch_of_commit "$commit")"
    secret_key_file
    key="$KEY_FILE"
    mkdir -p "$REPO_DIR"

    local build_args=(build "$SOURCE_DIR" --tag "$TAG" --key "$key" --out "$REPO_DIR"
        --channel "$CHANNEL" --source-date-epoch "$epoch" --json)
    [[ -n "${APP:-}" ]] && build_args+=(--app "$APP")
    [[ -n "$commit" ]] && build_args+=(--commit "$commit")
    note "building $TAG (version $version, commit ${commit:-unknown}, SOURCE_DATE_EPOCH=$epoch)"
    local built id archive
    built="$("$SLIPWAY_PACK" "${build_args[@]}")"
    id="$(json_field id <<<"$built")"
    archive="$(json_field archive <<<"$built")"
    note "built $id"

    note "publishing $version to channel $CHANNEL"
    "$SLIPWAY_PACK" publish --repo "$REPO_DIR" --channel "$CHANNEL" --key "$key" \
        --expires-in "$EXPIRES_IN" --rollout "$ROLLOUT" --notes "${NOTES:-release $TAG}" "$id"

    verify_repo

    output release_id "$id"
    output version "$version"
    output archive "$archive"
    summary "### slipway: published ${APP:-release} $version to $CHANNEL" \
        "" "- release id: \`$id\`" "- commit: \`${commit:-unknown}\`" \
        "- SOURCE_DATE_EPOCH: $epoch"
    note "done: $version ($id) is in channel $CHANNEL of $REPO_DIR"
}

# Verifies $REPO_DIR as a host would, with the key hosts trust.
verify_repo() {
    local pubkeys=()
    if [[ -n "${SLIPWAY_PUBLIC_KEY:-}" ]]; then
        pubkeys=(--pubkey "$SLIPWAY_PUBLIC_KEY")
    else
        local f
        for f in "$REPO_DIR"/keys/*.pub; do
            pubkeys+=(--pubkey "$f")
        done
        note "SLIPWAY_PUBLIC_KEY is not set: verifying with the repository's own keys/ (set it to the key your hosts trust)"
    fi
    note "verifying the repository as a host would"
    "$SLIPWAY_PACK" verify --repo "$REPO_DIR" "${pubkeys[@]}"
}

# Re-signs every channel index in $REPO_DIR with a fresh expiry, so that
# hosts never see one expire (they refuse an expired index). Run on a
# schedule well within EXPIRES_IN.
cmd_refresh() {
    [[ -d "$REPO_DIR/channels" ]] ||
        die "$REPO_DIR/channels does not exist: run fetch-repo first (and publish a release before the first refresh)"
    local indexes=("$REPO_DIR"/channels/*.json)
    [[ -e "${indexes[0]}" ]] || die "no channel index in $REPO_DIR/channels: nothing to refresh"
    secret_key_file
    local key="$KEY_FILE" index channel refreshed=()
    for index in "${indexes[@]}"; do
        channel="$(basename "$index" .json)"
        note "refreshing channel $channel (expires in $EXPIRES_IN)"
        "$SLIPWAY_PACK" refresh --repo "$REPO_DIR" --channel "$channel" --key "$key" \
            --expires-in "$EXPIRES_IN"
        refreshed+=("$channel")
    done
    verify_repo
    output channels "${refreshed[*]}"
    summary "### slipway: refreshed ${refreshed[*]} (expires in $EXPIRES_IN)"
    note "done: refreshed ${refreshed[*]}"
}

cmd_check() {
    local scratch
    scratch="$(mktemp -d "$SCRATCH_BASE/slipway-check.XXXXXXXX")"
    cleanup_paths+=("$scratch")
    local version=0.0.0-check
    if [[ -n "${TAG:-}" ]]; then
        version="$(version_of_tag "$TAG")"
    fi
    local commit epoch
    commit="$(commit_of_source)"
    epoch="$(epoch_of_commit "$commit")"
    "$SLIPWAY_PACK" keygen --out-dir "$scratch/keys" --name check --unencrypted >/dev/null
    local build_args=(build "$SOURCE_DIR" --version "$version" --key "$scratch/keys/check.key"
        --out "$scratch/repo" --channel "$CHANNEL" --source-date-epoch "$epoch" --json)
    [[ -n "${APP:-}" ]] && build_args+=(--app "$APP")
    note "building $SOURCE_DIR as $version with a throwaway key"
    local built id archive
    built="$("$SLIPWAY_PACK" "${build_args[@]}")"
    id="$(json_field id <<<"$built")"
    archive="$(json_field archive <<<"$built")"
    "$SLIPWAY_PACK" verify --pubkey "$scratch/keys/check.pub" "$archive"
    "$SLIPWAY_PACK" inspect "$archive"
    if [[ -n "${SLIPWAY:-}" ]]; then
        note "dry-run install: unpack and run the release's check hook, as a host would"
        cat >"$scratch/update.toml" <<TOML
[update]
channel = "$CHANNEL"
public_keys = ["$scratch/keys/check.pub"]
[paths]
root = "$scratch/root"
persistence = "$scratch/data"
max_save_age_minutes = 0
[service]
manager = "none"
[report]
journald = false
TOML
        "$SLIPWAY" --config "$scratch/update.toml" install "$archive" --dry-run
    fi
    output release_id "$id"
    note "ok: $SOURCE_DIR builds into a valid release ($id)"
}

cmd_fetch_repo() {
    if [[ -e "$REPO_DIR" ]]; then
        die "$REPO_DIR already exists; remove it or set REPO_DIR"
    fi
    if git ls-remote --exit-code --heads origin "$REPO_BRANCH" >/dev/null 2>&1; then
        git fetch --no-tags --depth=1 origin "$REPO_BRANCH:refs/remotes/origin/$REPO_BRANCH"
        git worktree add --detach "$REPO_DIR" "origin/$REPO_BRANCH"
        note "checked out branch $REPO_BRANCH into $REPO_DIR"
    else
        git worktree add --detach "$REPO_DIR"
        git -C "$REPO_DIR" checkout --orphan "$REPO_BRANCH"
        git -C "$REPO_DIR" rm -rfq --ignore-unmatch .
        note "branch $REPO_BRANCH does not exist yet: starting an empty repository in $REPO_DIR"
    fi
}

cmd_push_repo() {
    [[ -d "$REPO_DIR" ]] || die "$REPO_DIR does not exist: run fetch-repo and release first"
    git -C "$REPO_DIR" add -A
    if git -C "$REPO_DIR" diff --cached --quiet 2>/dev/null &&
        git -C "$REPO_DIR" rev-parse --verify HEAD >/dev/null 2>&1; then
        note "nothing changed in $REPO_DIR"
        return
    fi
    git -C "$REPO_DIR" -c user.name="${GIT_AUTHOR_NAME:-slipway release}" \
        -c user.email="${GIT_AUTHOR_EMAIL:-slipway-release@users.noreply.github.com}" \
        commit -q -m "${COMMIT_MESSAGE:-slipway: publish ${TAG:-release} to $CHANNEL}"
    git -C "$REPO_DIR" push origin "HEAD:refs/heads/$REPO_BRANCH"
    note "pushed $REPO_DIR to branch $REPO_BRANCH"
}

case "${1:-release}" in
    release) cmd_release ;;
    check) cmd_check ;;
    fetch-repo) cmd_fetch_repo ;;
    push-repo) cmd_push_repo ;;
    refresh) cmd_refresh ;;
    *) die "unknown step ${1@Q}: use release, refresh, check, fetch-repo or push-repo" ;;
esac
