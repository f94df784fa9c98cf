# %postun of pyoco-server ($1: 0 = erase, 1+ = upgrade). Configuration changed by the admin is
# kept as *.rpmsave, data in /var/lib/pyoco stays: RPM has no purge (see install.md).

#PYOCO_COMMON#

if pyoco_systemd_running; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -eq 0 ]; then
        systemctl reset-failed 'pyoco*' >/dev/null 2>&1 || true
    fi
fi
exit 0
