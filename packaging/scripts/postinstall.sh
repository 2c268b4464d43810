#!/bin/sh
# After unpacking (deb: "configure" [old-version]; rpm: 1 on install, 2+ on upgrade).
set -e

# The agent's user: created only if absent, with uid/gid 5678 when free (the uid Kuma's transparent proxy
# exempts by default). An existing kuma-dp user, whatever its uid, is left alone.
if ! getent passwd kuma-dp >/dev/null 2>&1; then
    if ! getent group kuma-dp >/dev/null 2>&1; then
        if getent group 5678 >/dev/null 2>&1; then
            groupadd --system kuma-dp
        else
            groupadd --system --gid 5678 kuma-dp
        fi
    fi
    if getent passwd 5678 >/dev/null 2>&1; then
        echo "kuma-dp: uid 5678 is taken by $(getent passwd 5678 | cut -d: -f1); creating user kuma-dp with" \
            "another uid: pass --kuma-dp-user kuma-dp to the transparent-proxy installer" >&2
        useradd --system --gid kuma-dp --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "Kuma dataplane proxy" kuma-dp
    else
        useradd --system --uid 5678 --gid kuma-dp --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "Kuma dataplane proxy" kuma-dp
    fi
fi

# Byte code for the bundled interpreter and libraries (none ships in the package, as Debian's Python policy
# asks). checked-hash: each .pyc records its source's hash, so a .pyc left from another version is never used.
# The service user cannot write under /opt, so without this every start would compile in memory. One
# process (-j 1) when worker processes cannot start (a bare chroot without /dev/shm).
/opt/kuma-dp/bin/python3 -I -m compileall -q -f -j 0 --invalidation-mode checked-hash \
    /opt/kuma-dp/lib >/dev/null 2>&1 ||
    /opt/kuma-dp/bin/python3 -I -m compileall -q -f -j 1 --invalidation-mode checked-hash \
    /opt/kuma-dp/lib >/dev/null 2>&1 || echo "kuma-dp: compiling byte code failed; it still runs, slower to start" >&2

# Tokens and env files live here: root only.
mkdir -p /etc/kuma-dp
chown root:root /etc/kuma-dp
chmod 0700 /etc/kuma-dp

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
    upgrade=0
    case "$1" in
        configure) [ -n "${2:-}" ] && upgrade=1 ;;
        [2-9]|[1-9][0-9]*) upgrade=1 ;;
    esac
    if [ "$upgrade" = 1 ]; then
        # Running dataplanes pick up the new agent; stopped ones stay stopped.
        systemctl try-restart 'kuma-dp@*.service' || true
    fi
fi
exit 0
