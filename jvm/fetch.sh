#!/usr/bin/env bash
# Resolve the JVM jars the platform runs (Delta for Spark, the Kafka broker) from Maven Central into
# the local Maven cache and copy them to $PINTEREST_JARS_DIR (default <project>/.pinterest/jars), so
# that Spark and Kafka start offline afterwards. Idempotent: a warm run takes a few seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${PINTEREST_JARS_DIR:-$here/../.pinterest/jars}"
command -v mvn >/dev/null || { echo "Maven (mvn) is required to fetch the JVM jars: apt-get install maven" >&2; exit 1; }
for component in delta kafka; do
  if [ -f "$out/$component/.complete" ] && [ "$out/$component/.complete" -nt "$here/$component/pom.xml" ]; then
    continue
  fi
  rm -rf "$out/$component"
  mkdir -p "$out/$component"
  mvn -q -B -f "$here/$component/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$out/$component" -DincludeScope=runtime
  touch "$out/$component/.complete"
done
echo "jars ready in $out"
