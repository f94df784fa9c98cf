# %post of pyoco-server ($1: 1 = install, 2+ = upgrade): system users, /var/lib/pyoco, the NATS
# passwords, systemd.

#PYOCO_COMMON#

pyoco_setup_user_and_dirs
if pyoco_systemd_running; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
pyoco_start_moved_nats
if [ "$1" -eq 1 ]; then
    systemctl enable pyoco-server.socket >/dev/null 2>&1 || true
    if pyoco_systemd_running; then
        systemctl start pyoco-server.socket >/dev/null 2>&1 || true
    fi
else
    pyoco_restart_after_upgrade
fi
exit 0
