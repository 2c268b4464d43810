#!/bin/sh
# Before removal (deb: "remove" or "upgrade"; rpm: 0 on erase, 1 on upgrade). Only a real removal stops the
# dataplanes; an upgrade restarts them from postinstall instead.
set -e
# The byte code postinstall compiled is no package file: delete it on removal and before a deb upgrade (the
# new version's postinstall compiles its own), so no stray __pycache__ keeps /opt/kuma-dp from going.
# rpm runs the old package's %preun after the new one's %post on upgrade ($1 = 1): keep it then.
case "$1" in
    remove|upgrade|deconfigure|failed-upgrade|0)
        if [ -d /opt/kuma-dp/lib ]; then
            find /opt/kuma-dp/lib -depth -type d -name __pycache__ -exec rm -rf {} + 2>/dev/null || true
        fi
        ;;
esac
case "$1" in
    remove|0)
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            systemctl stop 'kuma-dp@*.service' || true
            systemctl disable 'kuma-dp@*.service' >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
