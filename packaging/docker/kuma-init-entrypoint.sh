#!/bin/sh
# Entrypoint of the kuma-init image. Kuma's injector runs the init container with the transparent-proxy flags
# as its arguments (`--redirect-outbound-port 15001 --redirect-inbound-port 15006 --kuma-dp-user 5678 ...`):
# those go to kuma-init. An argument that is not a flag is a command to run instead (`sh`, `iptables-save`),
# which is how an operator debugs the image. XTABLES_LOCKFILE defaults to /tmp/xtables.lock as Kuma sets it:
# the default /run/xtables.lock is not writable on a read-only root file system.
set -eu
: "${XTABLES_LOCKFILE:=/tmp/xtables.lock}"
export XTABLES_LOCKFILE
: "${KUMA_INIT_BIN:=/usr/bin/kuma-init}"
case "${1:-}" in
    "" | -*)
        if [ ! -x "$KUMA_INIT_BIN" ]; then
            echo "kuma-init-entrypoint: $KUMA_INIT_BIN is not an executable (set KUMA_INIT_BIN)" >&2
            exit 127
        fi
        exec "$KUMA_INIT_BIN" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
