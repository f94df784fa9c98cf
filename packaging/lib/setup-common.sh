# Shared by the .deb postinst and the .rpm %post (inlined at build time; POSIX sh).
pyoco_setup_user_and_dirs() {
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/pyoco.conf >/dev/null 2>&1 || true
    fi
    if ! getent passwd pyoco >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/pyoco --no-create-home \
            --shell /usr/sbin/nologin --comment "pyoco-server daemons" pyoco
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/pyoco.conf >/dev/null 2>&1 || true
    fi
    [ -d /var/lib/pyoco ] || install -d -m 0750 -o pyoco -g pyoco /var/lib/pyoco
    [ -d /var/lib/pyoco/flows ] || install -d -m 0755 -o root -g root /var/lib/pyoco/flows
    return 0
}

pyoco_systemd_running() { [ -d /run/systemd/system ]; }

# The units that run the daemons, for stop on removal.
pyoco_stop_all() {
    pyoco_systemd_running || return 0
    systemctl stop pyoco.target >/dev/null 2>&1 || true
    systemctl stop 'pyoco-worker@*.service' pyoco-server.socket pyoco-server.service \
        pyoco-nats.service >/dev/null 2>&1 || true
}

# After an upgrade: the gateway and the workers run the new binaries (workers drain first).
# NATS is not restarted: restart pyoco-nats when convenient.
pyoco_restart_after_upgrade() {
    pyoco_systemd_running || return 0
    systemctl try-restart pyoco-server.service >/dev/null 2>&1 || true
    systemctl try-restart 'pyoco-worker@*.service' >/dev/null 2>&1 || true
}

# Enablement symlinks of our units (for purge / erase).
pyoco_remove_links() {
    find /etc/systemd/system -type l \( -name 'pyoco.target' -o -name 'pyoco-server.socket' \
        -o -name 'pyoco-server.service' -o -name 'pyoco-nats.service' -o -name 'pyoco-worker@*.service' \) \
        -delete 2>/dev/null || true
}
