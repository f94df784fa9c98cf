#!/usr/bin/env bash
# Builds the pyoco-server .deb and .rpm.
#
#   packaging/build.sh [deb|rpm|all] [--version V] [--no-build] [--out DIR]
#
#   deb|rpm|all   which packages (default: all)
#   --version V   package version (default: the workspace's version from Cargo.toml)
#   --no-build    use the release binaries already in target/release
#   --out DIR     where the packages go (default: target/packaging)
#
# Steps: release build of pyoco-server, pyoco-worker and pyococtl; stripped copies, shell
# completions (`pyococtl completions bash|zsh|fish`) and man pages (`pyococtl man DIR`) made by
# the built pyococtl, docs and examples, maintainer scripts with lib/setup-common.sh inlined, all
# under target/packaging/; a check that every key of etc/pyoco.toml is a valid setting; then
# cargo-deb and cargo-generate-rpm (installed with `cargo install --locked` when missing).
# Prints the paths of the packages it made, one a line, last.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

what=all version="" build=1 out="$ROOT/target/packaging"
while [ $# -gt 0 ]; do
    case "$1" in
        deb|rpm|all) what=$1 ;;
        --version) version=$2; shift ;;
        --version=*) version=${1#*=} ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --out=*) out=${1#*=} ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$version" ]; then
    version=$(awk '/^\[workspace.package\]/{w=1} w && /^version *=/{gsub(/[" ]/,"",$0); sub(/version=/,"",$0); print; exit}' Cargo.toml)
fi
[ -n "$version" ] || { echo "build.sh: cannot read the workspace version" >&2; exit 1; }
log() { printf '[package] %s\n' "$*" >&2; }

need_tool() {  # need_tool SUBCOMMAND CRATE VERSION: the version the metadata was written for
    cargo "$1" --version >/dev/null 2>&1 && return 0
    log "installing $2 $3 (cargo install --locked, a few minutes)"
    cargo install --locked --quiet "$2@$3" >&2
}
case "$what" in deb|all) need_tool deb cargo-deb 3.8.0 ;; esac
case "$what" in rpm|all) need_tool generate-rpm cargo-generate-rpm 0.21.1 ;; esac

REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ "$build" = 1 ]; then
    log "cargo build --release (pyoco-server, pyoco-worker, pyococtl)"
    cargo build --release --bin pyoco-server --bin pyoco-worker --bin pyococtl >&2
fi

STAGE=$ROOT/target/packaging/stage
MAINT=$ROOT/target/packaging/maint
rm -rf "$STAGE" "$MAINT"
mkdir -p "$STAGE"/{bin,completions,man,doc,examples} "$MAINT"/{deb,rpm} "$out"
for b in pyoco-server pyoco-worker pyococtl; do
    [ -x "$REL/$b" ] || { echo "build.sh: $REL/$b missing (build first, or drop --no-build)" >&2; exit 1; }
    strip -o "$STAGE/bin/$b" "$REL/$b"
done
CTL=$STAGE/bin/pyococtl
# pyococtl reads the config before any command: keep the host's files out of it.
export PYOCO_LOAD_DOTENV=0 PYOCO_CONFIG=/dev/null
"$CTL" completions bash >"$STAGE/completions/pyococtl.bash"
"$CTL" completions zsh >"$STAGE/completions/_pyococtl"
"$CTL" completions fish >"$STAGE/completions/pyococtl.fish"
"$CTL" man "$STAGE/man"
gzip -9n "$STAGE"/man/*.1
cp README.md "$STAGE/doc/"
cp docs/*.md "$STAGE/doc/"
cp deploy/examples/flow.yaml deploy/examples/hello_tasks.py "$STAGE/examples/"

# Every key in the shipped pyoco.toml, uncommented, must be accepted by the daemons.
sed -E 's/^# ([a-z_]+ = .*)$/\1/' packaging/etc/pyoco.toml >"$ROOT/target/packaging/pyoco.toml.check"
if ! (cd /tmp && "$REL/pyoco-server" config --config "$ROOT/target/packaging/pyoco.toml.check" >/dev/null); then
    echo "build.sh: packaging/etc/pyoco.toml has a key or value the daemons reject (see above)" >&2
    exit 1
fi

render() {  # render SRC DST: inline lib/setup-common.sh at the #PYOCO_COMMON# line
    awk -v common="packaging/lib/setup-common.sh" '
        /^#PYOCO_COMMON#$/ { while ((getline l < common) > 0) print l; next } { print }' "$1" >"$2"
    chmod 755 "$2"
    sh -n "$2"
}
for s in postinst prerm postrm; do render "packaging/debian/$s" "$MAINT/deb/$s"; done
for s in post preun postun; do render "packaging/rpm/$s.sh" "$MAINT/rpm/$s.sh"; done

made=()
if [ "$what" = deb ] || [ "$what" = all ]; then
    log "cargo deb (version $version-1)"
    deb=$(CARGO_TARGET_DIR="$ROOT/target" cargo deb --quiet --manifest-path packaging/Cargo.toml --no-build --deb-version "$version-1" \
        --output "$out/pyoco-server_${version}-1_amd64.deb" 2>&2 | tail -n 1)
    made+=("$deb")
fi
if [ "$what" = rpm ] || [ "$what" = all ]; then
    log "cargo generate-rpm (version $version-1)"
    rpm_version=${version//-/_}
    (cd packaging && CARGO_TARGET_DIR="$ROOT/target" cargo generate-rpm -s "version = \"$rpm_version\"" -o "$out/pyoco-server-${rpm_version}-1.x86_64.rpm" >&2)
    made+=("$out/pyoco-server-${rpm_version}-1.x86_64.rpm")
fi
printf '%s\n' "${made[@]}"
