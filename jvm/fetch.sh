#!/usr/bin/env bash
# Resolve the JVM jars the platform runs (Delta and S3A for Spark, the Kafka broker) from Maven Central into
# the local Maven cache and copy them to $PINTEREST_JARS_DIR (default <project>/.pinterest/jars), so
# that Spark and Kafka start offline afterwards. Idempotent: a warm run takes a few seconds.
#
# The S3A jars must match the Hadoop inside pyspark: its version is read here, from the installed pyspark
# (PYTHON, default the project's venv), and nowhere else.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${PINTEREST_JARS_DIR:-$here/../.pinterest/jars}"
python="${PYTHON_FOR_JARS:-$here/../.venv/bin/python}"
command -v mvn >/dev/null || { echo "Maven (mvn) is required to fetch the JVM jars: apt-get install maven" >&2; exit 1; }

hadoop_version() {
  "$python" - <<'PY'
import pathlib, re, sys
import pyspark
jars = sorted(pathlib.Path(pyspark.__file__).parent.joinpath("jars").glob("hadoop-client-api-*.jar"))
if not jars:
    sys.exit("no hadoop-client-api jar inside pyspark: is pyspark installed?")
print(re.match(r"hadoop-client-api-(.+)\.jar", jars[0].name).group(1))
PY
}

for component in delta s3 kafka; do
  extra=()
  # the stamp names what was fetched, so a changed pom (another Delta, say) fetches again
  stamp="$component $(sha1sum "$here/$component/pom.xml" | cut -c1-12)"
  if [ "$component" = s3 ]; then
    version="$(hadoop_version)" || { echo "cannot read the Hadoop version of pyspark with $python" >&2; exit 1; }
    extra=(-Dhadoop.version="$version")
    stamp="$stamp hadoop-aws $version"
  fi
  if [ -f "$out/$component/.complete" ] && [ "$(cat "$out/$component/.complete")" = "$stamp" ]; then
    continue
  fi
  echo "fetching $stamp jars from Maven Central"
  rm -rf "$out/$component"
  mkdir -p "$out/$component"
  mvn -q -B -f "$here/$component/pom.xml" dependency:copy-dependencies "${extra[@]}" \
      -DoutputDirectory="$out/$component" -DincludeScope=runtime
  echo "$stamp" > "$out/$component/.complete"
done
echo "jars ready in $out"
