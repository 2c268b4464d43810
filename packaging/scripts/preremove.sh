#!/bin/sh
# Before removal (deb: "remove" or "upgrade"; rpm: 0 on erase, 1 on upgrade). Only a real removal stops the
# dataplanes; an upgrade restarts them from postinstall instead.
set -e
case "$1" in
    remove|0)
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            systemctl stop 'kuma-dp@*.service' || true
            systemctl disable 'kuma-dp@*.service' >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
