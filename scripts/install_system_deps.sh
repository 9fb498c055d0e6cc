#!/usr/bin/env bash
# System packages the platform and its tests need: Java 17+ (Spark, Kafka), Maven (fetches the Delta and
# Kafka jars), MariaDB server (the MySQL source tests), openssl (the TLS broker test's certificate). Installs missing ones with apt-get when run as
# root; otherwise says what to install. Used by .ci/run; safe to run again.
set -euo pipefail
need=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then need+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null || need+=(maven)
if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then need+=(mariadb-server); fi
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present: java $(java_major), maven, mariadb-server, openssl"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (install them with: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
