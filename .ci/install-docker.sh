#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, installing and starting it if needed.
#
# Idempotent: installs docker.io and debootstrap only when missing, starts dockerd
# only when no engine answers, and returns as soon as one does. The machines we run on
# have no init system managing services, so dockerd is started in the background with
# its output in a log file (HOSTPERF_DOCKERD_LOG, default /var/log/hostperf-dockerd.log).
set -euo pipefail

LOG="${HOSTPERF_DOCKERD_LOG:-/var/log/hostperf-dockerd.log}"
TIMEOUT="${HOSTPERF_DOCKERD_TIMEOUT:-60}"

log() { echo "install-docker: $*" >&2; }

engine_answers() { docker info >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    log "installing ${missing[*]} with apt-get"
    as_root apt-get update -qq
    # sort -u: docker.io may be listed twice (client and daemon both missing)
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Whether a process named $1 runs and is not a zombie (killed but not yet reaped).
live_process() {
    local pid
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" = Z ] || return 0
    done
    return 1
}

# A pid file is stale unless its pid is a live (not zombie) process of the expected name.
# After a SIGKILL the old containerd can linger as a zombie or leave its pid file behind,
# and dockerd then waits for that "still running" containerd until it gives up.
remove_stale_pidfile() {
    local file="$1" name="$2" pid state comm
    [ -f "$file" ] || return 0
    pid="$(cat "$file" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
        comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
        state="$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
        if [ "$comm" = "$name" ] && [ "$state" != Z ]; then
            return 0
        fi
    fi
    log "removing stale $file (pid ${pid:-?} is not a running $name)"
    as_root rm -f "$file"
}

start_dockerd() {
    if [ -n "${DOCKER_HOST:-}" ]; then
        log "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd for it"
        return 1
    fi
    if live_process dockerd; then
        log "dockerd is already running but not answering yet; waiting for it"
        return 0
    fi
    remove_stale_pidfile /var/run/docker.pid dockerd
    remove_stale_pidfile /var/run/docker/containerd/containerd.pid containerd
    log "starting dockerd in the background (log: $LOG)"
    # setsid + nohup: the daemon must outlive this script and the shell that ran it.
    as_root mkdir -p "$(dirname "$LOG")"
    as_root setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
}

wait_for_engine() {
    local waited=0
    until engine_answers; do
        if [ "$waited" -ge "$TIMEOUT" ]; then
            log "no Docker engine answered 'docker info' after ${TIMEOUT}s"
            log "last lines of $LOG:"
            tail -n 20 "$LOG" >&2 2>/dev/null || true
            log "hint: check the log above; on hosts with systemd try 'systemctl start docker'"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "Docker engine answers (after ${waited}s)"
}

main() {
    install_packages
    if engine_answers; then
        log "Docker engine already answers"
        return 0
    fi
    start_dockerd
    wait_for_engine
}

main "$@"
