# Shared by the .deb postinst and the .rpm %post (inlined at build time; POSIX sh).
PYOCO_CREDENTIALS=/etc/pyoco/credentials
# The NATS passwords the units load with LoadCredential= (a missing one fails the unit).
PYOCO_CREDENTIAL_FILES="gateway.password worker.password admin.password system.password route.password"

pyoco_add_user() {  # NAME HOME COMMENT: when systemd-sysusers is missing or failed
    getent passwd "$1" >/dev/null 2>&1 && return 0
    useradd --system --user-group --home-dir "$2" --no-create-home \
        --shell /usr/sbin/nologin --comment "$3" "$1"
}

pyoco_setup_user_and_dirs() {
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/pyoco.conf >/dev/null 2>&1 || true
    fi
    pyoco_add_user pyoco /var/lib/pyoco "pyoco-server workers"
    pyoco_add_user pyoco-nats /var/lib/pyoco/nats "pyoco-server NATS server"
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/pyoco.conf >/dev/null 2>&1 || true
    fi
    # Also without systemd-tmpfiles, and from the old layout (pyoco:pyoco 0750, where the
    # workers' user could swap venv/ and flows/): /var/lib/pyoco is root's.
    [ -d /var/lib/pyoco ] || mkdir -p /var/lib/pyoco
    chown root:root /var/lib/pyoco
    chmod 0755 /var/lib/pyoco
    [ -d /var/lib/pyoco/flows ] || install -d -m 0755 -o root -g root /var/lib/pyoco/flows
    for d in /var/lib/pyoco/venv /var/lib/pyoco/flows; do
        # Not chowned: under the old layout the workers' user may have replaced it.
        if [ -L "$d" ]; then
            echo "pyoco-server: warning: $d is a symbolic link (to $(readlink "$d")); under the old layout the workers' user could have made it: check it, or remove it and make it again as root" >&2
        elif [ -e "$d" ] && [ "$(stat -c %u "$d")" != 0 ]; then
            echo "pyoco-server: warning: $d is owned by $(stat -c %U "$d"), not root; root will not run it (pyococtl runtime setup refuses). If you did not do this, remove it and make it again as root (pyococtl runtime setup)." >&2
        fi
    done
    pyoco_setup_credentials
    pyoco_move_nats_store
    return 0
}

# /etc/pyoco/credentials (root, 0700): the NATS passwords, made once, never overwritten.
pyoco_setup_credentials() {
    mkdir -p "$PYOCO_CREDENTIALS"
    chown root:root "$PYOCO_CREDENTIALS"
    chmod 0700 "$PYOCO_CREDENTIALS"
    # (No .env or configuration file of the caller: this command needs neither.)
    if ! PYOCO_LOAD_DOTENV=0 PYOCO_CONFIG=/dev/null pyococtl nats-credentials --dir "$PYOCO_CREDENTIALS" >/dev/null; then
        echo "pyoco-server: warning: pyococtl nats-credentials --dir $PYOCO_CREDENTIALS failed (above); the missing passwords are made here instead" >&2
    fi
    for f in $PYOCO_CREDENTIAL_FILES; do
        [ -s "$PYOCO_CREDENTIALS/$f" ] && continue
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PYOCO_CREDENTIALS/$f.new" \
            && mv "$PYOCO_CREDENTIALS/$f.new" "$PYOCO_CREDENTIALS/$f")
    done
}

# The NATS store belonged to the user pyoco (the workers' user) before the user pyoco-nats
# existed: hand it over, with the server stopped (it flushes JetStream on SIGTERM), and start
# it again after the daemon-reload (pyoco_start_moved_nats).
PYOCO_START_NATS=0
pyoco_move_nats_store() {
    d=/var/lib/pyoco/nats
    # The old owner could have planted links: never follow one, never chown a file with a
    # second hard link (it may be someone else's file).
    if [ -L "$d" ]; then
        echo "pyoco-server: warning: $d is a symbolic link (to $(readlink "$d")), not moved to the user pyoco-nats: replace it with the store directory itself" >&2
        return 0
    fi
    [ -d "$d" ] || return 0
    [ "$(stat -c %U "$d")" = pyoco-nats ] && return 0
    if pyoco_systemd_running && systemctl is-active --quiet pyoco-nats.service; then
        PYOCO_START_NATS=1
        systemctl stop pyoco-nats.service >/dev/null 2>&1 || true
    fi
    find "$d" -xdev \( -type d -o -links 1 \) -exec chown -h pyoco-nats:pyoco-nats {} +
    if [ -n "$(find "$d" -xdev ! -type d -links +1 -print -quit)" ]; then
        echo "pyoco-server: warning: files with several hard links in $d were left to their owner: $(find "$d" -xdev ! -type d -links +1 | head -n 3 | tr '\n' ' ')" >&2
    fi
    chmod 0700 "$d"
    # The old open server kept JetStream in the global account ($G); the secured one serves
    # its clients from the account PYOCO: move runs, API keys and queues there (unless
    # nats.env chooses the layout itself, e.g. NATS_AUTH=--insecure).
    js=$d/jetstream
    if [ ! -L "$js" ] && [ -d "$js/\$G" ] && [ ! -L "$js/\$G" ] && [ ! -e "$js/PYOCO" ] && ! grep -q '^[[:space:]]*NATS_AUTH=' /etc/pyoco/nats.env 2>/dev/null; then
        mv "$js/\$G" "$js/PYOCO"
    fi
}

pyoco_start_moved_nats() {
    if [ "$PYOCO_START_NATS" = 1 ] && pyoco_systemd_running; then
        systemctl start pyoco-nats.service >/dev/null 2>&1 || true
    fi
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
# NATS is not restarted (restart pyoco-nats when convenient), except to move its store over
# (pyoco_move_nats_store).
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
