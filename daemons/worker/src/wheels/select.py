# Wheel selection in the runners' own interpreter (run with `python -I -c`): which wheels this
# Python can install (packaging.tags.sys_tags) and the highest PEP 440 version per canonical
# package name, exactly as the original worker decides it. Input on stdin:
# {"wheels": [filename, ...]}; output on stdout: {"selected", "skipped_incompatible", "invalid"}.
import json
import sys

try:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # a bare venv still has pip's vendored copy
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename

req = json.load(sys.stdin)
supported = frozenset(sys_tags())
best = {}
skipped = []
invalid = []
for name in req.get("wheels", []):
    try:
        dist, version, _build, tags = parse_wheel_filename(name)
    except Exception:
        invalid.append(name)
        continue
    dist = str(dist)
    if tags and supported.isdisjoint(tags):
        skipped.append(
            {
                "wheel_name": name,
                "package_name": dist,
                "package_version": str(version),
                "reason": "unsupported_wheel_tags",
            }
        )
        continue
    prev = best.get(dist)
    if prev is None or version > prev[0] or (version == prev[0] and name > prev[1]):
        best[dist] = (version, name)
selected = sorted(
    (
        {"wheel_name": n, "package_name": d, "package_version": str(v)}
        for d, (v, n) in best.items()
    ),
    key=lambda w: w["wheel_name"],
)
json.dump({"selected": selected, "skipped_incompatible": skipped, "invalid": invalid}, sys.stdout)
