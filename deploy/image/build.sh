#!/usr/bin/env bash
# Build the recsys image, and with `test` run the smoke test against it (deploy/image/smoke.py).
#
#   deploy/image/build.sh build     `make image`
#   deploy/image/build.sh test      `make image-test`: build (cached), then the smoke test
#   deploy/image/build.sh sizes     `make image-sizes`: build (cached), then where the bytes go
#
# The engine. A Docker engine that answers (`docker info`) is used as it is. Where none does, this
# script provides one for its own duration and stops it on exit, failure included: Debian's
# docker.io (installed with apt-get when missing), dockerd with no bridge, no iptables and no IP
# forwarding, its own data root (IMAGE_DOCKER_ROOT, /var/lib/recsys-docker: the layer cache and
# pip's download cache outlive the run) and exec root; every build and container uses the host's
# network. It uses that package's docker CLI (/usr/bin/docker), which builds with BuildKit by
# itself: a newer CLI without the buildx plugin falls back to the legacy builder, which rejects
# `RUN --mount`.
#
# The base. python:<PYTHON_VERSION>-slim-bookworm is pulled when a registry answers. When the pull
# fails, a stand-in is built from Debian packages (debootstrap --variant=minbase bookworm, then
# python3.11, python3.11-venv, python3-pip, ca-certificates; `python` and `python3` in
# /usr/local/bin as in the official image; this machine's extra CA certificates, so that pip works
# behind a TLS-intercepting proxy; documentation and translations removed as Debian's slim images
# do, copyright files kept), cached under IMAGE_CACHE (/var/cache/recsys-image) and imported
# under the official name with the label recsys.stand-in-base. The output says which base was used.
#
# torch. PIP_EXTRA is passed to the build's pip (default: the Dockerfile's, the PyTorch CPU
# index). When PIP_EXTRA is empty and pip's `find-links` setting (`pip config list`) names a local
# folder, that folder is served on 127.0.0.1 for the build's duration and the build finds
# torch==2.13.0+cpu there.
#
# Without an engine and without apt-get, `build` fails and `test` says why it skips (exit 0).
set -euo pipefail

cd "$(dirname "$0")/../.."
ACTION=${1:-build}
case $ACTION in build | test | sizes) ;; *)
    echo "usage: $0 build|test|sizes" >&2
    exit 2
    ;;
esac

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=${IMAGE:-recsys:$VERSION}
PYTHON_VERSION=$(sed -n 's/^ARG PYTHON_VERSION=//p' Dockerfile)
BASE=python:$PYTHON_VERSION-slim-bookworm
DOCKER_ROOT=${IMAGE_DOCKER_ROOT:-/var/lib/recsys-docker}
DOCKER_RUN=${IMAGE_DOCKER_EXEC_ROOT:-/run/recsys-docker}
CACHE=${IMAGE_CACHE:-/var/cache/recsys-image}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SMOKE_PYTHON=${SMOKE_PYTHON:-.venv/bin/python}
# the stand-in's recipe: bump the version when the recipe changes, so that a cached one is rebuilt
STAND_IN_VERSION=2
STAND_IN_TAR=$CACHE/stand-in-bookworm-python$PYTHON_VERSION-v$STAND_IN_VERSION.tar
STAND_IN_LABEL=recsys.stand-in-base
STAND_IN_ID="v$STAND_IN_VERSION: debootstrap --variant=minbase bookworm + Debian python$PYTHON_VERSION"

say() { echo "image: $*"; }
fail() {
    echo "image: error: $*" >&2
    exit 1
}

WORK=$(mktemp -d)
OWN_DAEMON=
WHEEL_SERVER=
CHILD=
cleanup() {
    local status=$?
    set +e
    # the long step in hand first (the smoke test removes its containers and stops its stack)
    [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
    [ -n "$WHEEL_SERVER" ] && kill "$WHEEL_SERVER" 2>/dev/null && wait "$WHEEL_SERVER" 2>/dev/null
    [ -n "$OWN_DAEMON" ] && stop_daemon
    # an interrupted debootstrap may leave /proc, /sys or /dev mounted in its target: never delete
    # through a mount point
    findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A long step runs in the background and is waited for: a signal to this script then interrupts the
# wait at once (bash runs traps only between commands) and cleanup() stops the step.
long_step() {
    "$@" &
    CHILD=$!
    local status=0
    wait "$CHILD" || status=$?
    CHILD=
    return "$status"
}

# ---- the engine ---------------------------------------------------------------------------------

stop_daemon() {
    local pid containerd
    pid=$(cat "$DOCKER_RUN/dockerd.pid" 2>/dev/null) || return 0
    containerd=$(cat "$DOCKER_RUN/containerd/containerd.pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || return 0
    # dockerd stops its containers (their own stop timeout), then its containerd, then itself
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd did not stop within 60 s: killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    [ -n "$containerd" ] && kill -0 "$containerd" 2>/dev/null && kill -TERM "$containerd" 2>/dev/null
    # the host network namespace's handle that dockerd may leave mounted in its exec root
    umount "$DOCKER_RUN/netns/default" 2>/dev/null || true
    say "engine stopped (data root $DOCKER_ROOT kept: the layer and pip caches)"
}

start_daemon() {
    [ "$(id -u)" = 0 ] || fail "no Docker engine answers, and starting one needs root (run as root or start Docker)"
    if [ ! -x /usr/sbin/dockerd ]; then
        say "installing Debian's docker.io (apt-get)"
        local apt=(apt-get install --yes --no-install-recommends docker.io)
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$WORK/apt.log" 2>&1 ||
            { apt-get update >>"$WORK/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$WORK/apt.log" 2>&1; } ||
            { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get install docker.io failed"; }
    fi
    mkdir -p "$DOCKER_ROOT" "$DOCKER_RUN"
    # one build at a time on this data root; a dockerd left by a killed run of this script goes first
    exec 9>"$DOCKER_RUN.lock"
    flock --timeout 3600 9 || fail "another build holds $DOCKER_RUN.lock"
    OWN_DAEMON=1
    stop_daemon >/dev/null
    /usr/sbin/dockerd \
        --data-root "$DOCKER_ROOT" --exec-root "$DOCKER_RUN" --pidfile "$DOCKER_RUN/dockerd.pid" \
        --host "unix://$DOCKER_RUN/docker.sock" \
        --iptables=false --ip-forward=false --bridge=none \
        >"$DOCKER_RUN/dockerd.log" 2>&1 &
    export DOCKER_HOST="unix://$DOCKER_RUN/docker.sock"
    DOCKER=/usr/bin/docker
    for _ in $(seq 600); do
        "$DOCKER" version >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || break
        sleep 0.1
    done
    "$DOCKER" version >/dev/null 2>&1 ||
        { tail -n 20 "$DOCKER_RUN/dockerd.log" >&2; fail "dockerd did not start"; }
    # containers a killed run left behind (stopped ones keep their anonymous volumes)
    "$DOCKER" container prune --force >/dev/null
    say "engine: dockerd $("$DOCKER" version --format '{{.Server.Version}}') started by this script" \
        "(data root $DOCKER_ROOT, host network only; stopped at the end)"
}

find_engine() {
    export DOCKER_BUILDKIT=1
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        DOCKER=docker
        if ! docker buildx version >/dev/null 2>&1; then
            # the legacy builder rejects RUN --mount; Debian's docker.io CLI has BuildKit built in
            [ -x /usr/bin/docker ] ||
                fail "this docker CLI has no buildx plugin, and the legacy builder cannot build the Dockerfile (RUN --mount): install buildx"
            DOCKER=/usr/bin/docker
        fi
        say "engine: the running Docker engine ($("$DOCKER" version --format '{{.Server.Version}}'))"
        return 0
    fi
    if [ ! -x /usr/sbin/dockerd ] && ! command -v apt-get >/dev/null; then
        return 1
    fi
    start_daemon
}

# ---- the base -----------------------------------------------------------------------------------

base_label() { # the stand-in's label of the local base image; empty for the official one
    "$DOCKER" image inspect --format "{{ index .Config.Labels \"$STAND_IN_LABEL\" }}" "$BASE" 2>/dev/null
}

build_stand_in() {
    command -v debootstrap >/dev/null || {
        say "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends debootstrap >"$WORK/apt.log" 2>&1 ||
            { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get install debootstrap failed"; }
    }
    local root=$WORK/rootfs
    mkdir -p "$CACHE/debs"
    say "building the stand-in base: debootstrap --variant=minbase bookworm + Debian's python$PYTHON_VERSION"
    long_step debootstrap --variant=minbase --cache-dir="$CACHE/debs" \
        --include="python$PYTHON_VERSION,python$PYTHON_VERSION-venv,python3-pip,ca-certificates" \
        bookworm "$root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    # this machine's own CAs (a TLS-intercepting proxy's among them): pip in the build trusts them
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    chroot "$root" update-ca-certificates >/dev/null 2>&1
    # where the official image has them
    ln -sf "/usr/bin/python$PYTHON_VERSION" "$root/usr/local/bin/python$PYTHON_VERSION"
    ln -sf "python$PYTHON_VERSION" "$root/usr/local/bin/python3"
    ln -sf python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    # as Debian's slim images: no documentation, manual pages or translations; copyright files stay
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/man/* \
        "$root"/usr/share/info/* "$root"/usr/share/groff/* "$root"/usr/share/lintian/* \
        "$root"/etc/hostname "$root"/etc/resolv.conf
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    tar --numeric-owner -C "$root" -cf "$STAND_IN_TAR.tmp" .
    mv "$STAND_IN_TAR.tmp" "$STAND_IN_TAR"
}

import_stand_in() {
    "$DOCKER" import \
        --change "LABEL $STAND_IN_LABEL=\"$STAND_IN_ID\"" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$STAND_IN_TAR" "$BASE" >/dev/null
}

ensure_base() {
    if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1 && [ -z "$(base_label)" ]; then
        BASE_USED="$BASE (official, already present)"
        return
    fi
    if timeout 120 "$DOCKER" pull --quiet "$BASE" >"$WORK/pull.log" 2>&1; then
        BASE_USED="$BASE (official, pulled)"
        return
    fi
    local why
    why=$(tail -n 1 "$WORK/pull.log" | cut -c1-160)
    if [ "$(base_label)" = "$STAND_IN_ID" ]; then
        BASE_USED="$BASE: stand-in built from Debian packages (already imported; the pull failed: $why)"
        return
    fi
    [ -f "$STAND_IN_TAR" ] || build_stand_in
    import_stand_in
    BASE_USED="$BASE: stand-in built from Debian packages ($STAND_IN_TAR; the pull failed: $why)"
}

# ---- torch's wheel ------------------------------------------------------------------------------

serve_find_links() {
    local folder
    folder=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\([^' ]*\).*$/\1/p" | head -n 1)
    folder=${folder#file://}
    [ -n "$folder" ] && [ -d "$folder" ] || return 0
    # a fixed port when it is free: the build argument (so the dependency layer's cache key) stays the same
    python3 -c '
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
handler = functools.partial(Quiet, directory=sys.argv[1])
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
' "$folder" "${IMAGE_WHEEL_PORT:-47813}" >"$WORK/wheel-port" &
    WHEEL_SERVER=$!
    for _ in $(seq 100); do
        [ -s "$WORK/wheel-port" ] && break
        sleep 0.1
    done
    [ -s "$WORK/wheel-port" ] || fail "could not serve $folder"
    PIP_EXTRA="--find-links http://127.0.0.1:$(cat "$WORK/wheel-port")/"
    say "pip's find-links folder $folder is served to the build at ${PIP_EXTRA#--find-links }"
}

# ---- main ---------------------------------------------------------------------------------------

if ! find_engine; then
    if [ "$ACTION" = test ]; then
        say "smoke test skipped: no Docker engine answers and apt-get is not available to install one"
        exit 0
    fi
    fail "no Docker engine answers and apt-get is not available to install one"
fi

started=$SECONDS
BASE_USED=
ensure_base
say "base: $BASE_USED"

PIP_EXTRA=${PIP_EXTRA:-}
[ -n "$PIP_EXTRA" ] || serve_find_links
build_args=(--network host --tag "$IMAGE")
[ -n "$PIP_EXTRA" ] && build_args+=(--build-arg "PIP_EXTRA=$PIP_EXTRA")
built=$SECONDS
long_step "$DOCKER" build "${build_args[@]}" .
say "built $IMAGE in $((SECONDS - built)) s ($((SECONDS - started)) s with the base)"
# our own engine's data root keeps the layer cache (the least recently used beyond 5 GB goes), not
# the images that new builds replaced
if [ -n "$OWN_DAEMON" ]; then
    "$DOCKER" image prune --force >/dev/null
    "$DOCKER" builder prune --force --keep-storage "${IMAGE_CACHE_KEEP:-5GB}" >/dev/null
fi
say "$IMAGE: $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}') uncompressed"

export DOCKER
case $ACTION in
test)
    [ -x "$SMOKE_PYTHON" ] || fail "$SMOKE_PYTHON is missing: run \`make install\` first"
    long_step "$SMOKE_PYTHON" -m deploy.image.smoke --image "$IMAGE"
    ;;
sizes)
    [ -x "$SMOKE_PYTHON" ] || fail "$SMOKE_PYTHON is missing: run \`make install-dev\` first"
    long_step "$SMOKE_PYTHON" -m deploy.image.sizes --image "$IMAGE" --bytecode
    ;;
esac
