#!/bin/sh
# vllm-gateway container entrypoint (both image targets; tini runs it as PID 1's child).
#
# 1. Turns `docker run IMAGE`, `docker run IMAGE --port 9000` and `docker run IMAGE serve` into
#    `vllm-gateway serve ...`; any other command (`bash`, `vllm-gateway simulate ...`) runs as given.
# 2. Finds the configuration: GATEWAY_CONFIG if set, else a file mounted at $DEFAULT_CONFIG, else
#    GATEWAY_* variables alone (how RunPod templates configure it).
# 3. Started as root with RUN_AS_USER set (the vLLM image: docker, compose and RunPod start
#    containers as root, and volumes such as RunPod's /workspace are root-owned), it creates the
#    cache directories (HF_HOME, VLLM_CACHE_ROOT), hands them to that user and drops to it, so the
#    gateway and the vLLM processes it launches never run as root. Started as another user
#    (Kubernetes runAsUser, the slim image) it only checks that the caches are writable.
# 4. Before `serve`, prints the routing table (`vllm-gateway check-config`): a bad configuration
#    stops the container here, with the offending key named, before any model is loaded.
# It then execs the command, so signals from tini reach the gateway directly.
set -eu

DEFAULT_CONFIG=${DEFAULT_GATEWAY_CONFIG:-/etc/vllm-gateway/gateway.yaml}

say() { printf 'entrypoint: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 64; }

case "${1-}" in
    "") set -- vllm-gateway serve ;;
    -*) set -- vllm-gateway serve "$@" ;;
    serve | check-config | demo | simulate) set -- vllm-gateway "$@" ;;
esac

serving=false
if [ "$1" = vllm-gateway ] && [ "${2-}" = serve ]; then serving=true; fi

# A --config on the command line wins over GATEWAY_CONFIG, as in `vllm-gateway serve` itself.
config_arg=""
previous=""
for arg in "$@"; do
    case "$arg" in
        --config=*) config_arg=${arg#--config=} ;;
        *) if [ "$previous" = --config ]; then config_arg=$arg; fi ;;
    esac
    previous=$arg
done

if [ -z "$config_arg" ] && [ -z "${GATEWAY_CONFIG-}" ] && [ -f "$DEFAULT_CONFIG" ]; then
    export GATEWAY_CONFIG="$DEFAULT_CONFIG"
fi
config=${config_arg:-${GATEWAY_CONFIG-}}
if [ -n "$config" ] && [ ! -r "$config" ]; then
    die "configuration file $config is missing or unreadable: mount it there, or unset GATEWAY_CONFIG and configure with GATEWAY_* variables"
fi

run_as=""
if [ "$(id -u)" = 0 ] && [ -n "${RUN_AS_USER-}" ] && [ "$RUN_AS_USER" != root ]; then
    getent passwd "$RUN_AS_USER" >/dev/null || die "RUN_AS_USER=$RUN_AS_USER is not a user of this image"
    run_as=$RUN_AS_USER
fi

prepare_cache() {  # $1: a directory the model loaders write to
    [ -n "$1" ] || return 0
    if ! mkdir -p "$1" 2>/dev/null; then
        say "warning: cannot create $1; downloads into it will fail"
        return 0
    fi
    if [ -n "$run_as" ]; then
        # Only entries with another owner are changed: a warm cache of many files costs one walk.
        find "$1" ! -user "$run_as" -exec chown "$run_as:" {} + 2>/dev/null \
            || say "warning: could not give $1 to $run_as (read-only or foreign file system?)"
    elif [ ! -w "$1" ]; then
        say "warning: $1 is not writable by uid $(id -u); model downloads will fail (chown it, or set fsGroup in Kubernetes)"
    fi
}
prepare_cache "${HF_HOME-}"
prepare_cache "${VLLM_CACHE_ROOT-}"

if [ -n "$run_as" ]; then
    HOME=$(getent passwd "$run_as" | cut -d: -f6)
    export HOME
    as_user() { setpriv --reuid="$run_as" --regid="$(id -g "$run_as")" --init-groups -- "$@"; }
else
    as_user() { "$@"; }
fi

if $serving; then
    if [ -n "$config_arg" ]; then
        as_user vllm-gateway check-config --config "$config_arg" || exit $?
    else
        as_user vllm-gateway check-config || exit $?
    fi
fi

if [ -n "$run_as" ]; then
    exec setpriv --reuid="$run_as" --regid="$(id -g "$run_as")" --init-groups -- "$@"
fi
exec "$@"
