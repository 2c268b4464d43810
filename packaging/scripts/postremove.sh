#!/bin/sh
# After removal. Tokens and env files in /etc/kuma-dp are kept on remove and upgrade, and go only on a deb
# purge (rpm has no purge: its erase keeps files it did not install; edited config files become .rpmsave).
# The kuma-dp user is never removed: files it owns may outlive the package (Debian policy).
set -e
case "$1" in
    purge)
        rm -rf /etc/kuma-dp /run/kuma-dp
        ;;
esac
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi
exit 0
