#!/usr/bin/env bash
# System packages the platform and its tests need: Java 17+ (Spark, Kafka), Maven (fetches the Delta and
# Kafka jars), MariaDB server (the MySQL source tests), openssl (the TLS broker test's certificate),
# Chromium (the browser test of the Dagster UI, pinterest_platform_tests/ui, drives Debian's build, not a
# browser download of Playwright's own), and the venv module of a Debian system Python. `make install` (so
# `make test`, `make demo`, `make dev`) runs this first, as does .ci/run.
#
# Checks first and exits 0 at once, without apt, when everything is there; otherwise installs what is
# missing with apt-get as root or through passwordless sudo, and when it cannot (no rights, no apt-get)
# stops with the exact command to run. Safe to run again.
set -euo pipefail

# mariadb.py looks for the server in PATH and then in these folders (Debian puts mariadbd in /usr/sbin,
# which a normal user's PATH lacks); the check must agree with it. Overridable for the Makefile's tests.
SYSDEPS_SBIN_DIRS="${SYSDEPS_SBIN_DIRS-/usr/sbin /usr/bin /usr/local/sbin}"
PYTHON="${PYTHON:-python3}"

java_major() {
  # `openjdk version "17.0.15"`, `java version "1.8.0_292"` (major 1, so too old); empty when unreadable
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}
java_ok() {
  command -v java >/dev/null || return 1
  local major
  major="$(java_major)"
  [ -n "$major" ] && [ "$major" -ge 17 ]
}
found() {  # found NAME...: any of the names in PATH or in SYSDEPS_SBIN_DIRS
  local name dir
  for name in "$@"; do
    command -v "$name" >/dev/null && return 0
    for dir in $SYSDEPS_SBIN_DIRS; do
      [ -x "$dir/$name" ] && return 0
    done
  done
  return 1
}
python_needs_venv() {  # a Debian system Python without ensurepip cannot make the project's venv
  local path
  path="$(command -v "$PYTHON" 2>/dev/null)" || return 1
  case "$(readlink -f "$path")" in /usr/bin/python3*) ;; *) return 1 ;; esac
  ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1
}

missing() {
  java_ok || echo java
  command -v mvn >/dev/null || echo maven
  { found mariadbd mysqld && found mariadb-install-db mysql_install_db; } || echo mariadb-server
  command -v openssl >/dev/null || echo openssl
  # the browser test launches the `chromium` found in PATH
  command -v chromium >/dev/null || echo chromium
  if python_needs_venv; then echo python3-venv; fi
}

need=()
while read -r item; do [ -n "$item" ] && need+=("$item"); done < <(missing)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present: java $(java_major), maven, mariadb-server, openssl, chromium"
  exit 0
fi

# the Debian package of each missing tool; Java is the first JRE 17+ the distribution has (bookworm and
# jammy ship 17, trixie and noble 21)
packages() {
  local item
  for item in "${need[@]}"; do
    if [ "$item" = java ]; then
      local jre=openjdk-17-jre-headless candidate
      for candidate in openjdk-17-jre-headless openjdk-21-jre-headless openjdk-25-jre-headless; do
        if apt-cache show "$candidate" >/dev/null 2>&1; then jre="$candidate"; break; fi
      done
      echo "$jre"
    else
      echo "$item"
    fi
  done
}

what="${need[*]}"
what="${what/java/Java 17+}"
if ! command -v apt-get >/dev/null; then
  echo "missing system packages: $what" >&2
  echo "this script installs them with apt-get (Debian, Ubuntu); install them with your package manager," >&2
  echo "then run the make command again" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo)
else
  # without rights, print the exact command: the user runs it once, then make again
  mapfile -t pkgs < <(packages)
  echo "missing system packages: $what" >&2
  echo "installing them needs root, and this user is not root and has no passwordless sudo. Run:" >&2
  echo "" >&2
  echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${pkgs[*]}" >&2
  echo "" >&2
  echo "then run the make command again." >&2
  exit 1
fi

# (the +expansion: an empty array is "unbound" to bash before 4.4 under set -u)
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# after the update, so a fresh machine's empty package lists still find the newest JRE
mapfile -t pkgs < <(packages)
echo "installing: ${pkgs[*]}"
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"

# check again, as the tests will look: a package can install and still leave its tool out of reach
mapfile -t left < <(missing)
if [ ${#left[@]} -ne 0 ]; then
  if [[ " ${left[*]} " == *" java "* ]]; then
    # an older java earlier in PATH (or the alternatives link) still wins over the one just installed
    echo "Java 17+ is installed but \`java\` is still version $(java_major): select it with" \
         "\`sudo update-alternatives --config java\` (or put it first in PATH)" >&2
  fi
  echo "still missing after apt-get install: ${left[*]}" >&2
  exit 1
fi
echo "system packages present: java $(java_major), maven, mariadb-server, openssl, chromium"
