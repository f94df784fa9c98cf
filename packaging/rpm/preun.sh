# %preun of pyoco-server ($1: 0 = erase, 1+ = upgrade): stop and disable on erase.

#PYOCO_COMMON#

if [ "$1" -eq 0 ]; then
    pyoco_stop_all
    pyoco_remove_links
fi
exit 0
