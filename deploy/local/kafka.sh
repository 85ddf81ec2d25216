#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node, 127.0.0.1) without Docker.
#
#   deploy/local/kafka.sh fetch             # Maven -> .cache/kafka/libs (skipped when up to date)
#   deploy/local/kafka.sh start [--port N] [--data-dir D] [--log-dir L]
#                                           # foreground; prints "kafka ready at 127.0.0.1:PORT"
#   deploy/local/kafka.sh stop              # stops a broker started with `start`
#
# `fetch` is plain bash so it works before the venv exists (e.g. a CI cache step);
# it writes the same stamp (sha256 of pom.xml) as orchestrator.kafka_local, so
# neither re-runs Maven when the other already did. start/stop delegate to the
# Python module, which is the single implementation of the broker lifecycle.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
pom="$script_dir/pom.xml"
cache_dir="$repo_root/.cache/kafka"
libs_dir="$cache_dir/libs"
stamp="$cache_dir/libs.sha256"
python="${PYTHON:-$repo_root/.venv/bin/python}"

libs_fresh() {
  local want="$1"
  [[ -f "$stamp" ]] && [[ "$(tr -d '[:space:]' <"$stamp")" == "$want" ]] \
    && compgen -G "$libs_dir/kafka_2.13-*.jar" >/dev/null
}

fetch() {
  command -v mvn >/dev/null || { echo "error: Apache Maven (mvn) is not on PATH" >&2; exit 1; }
  local pom_hash
  pom_hash="$(sha256sum "$pom" | cut -d' ' -f1)"
  if libs_fresh "$pom_hash"; then
    echo "kafka jars up to date in $libs_dir"
    return 0
  fi
  mkdir -p "$cache_dir"
  # Same lock file as the Python side: parallel fetches would clobber each other.
  exec 9>"$cache_dir/fetch.lock"
  flock 9
  if libs_fresh "$pom_hash"; then
    echo "kafka jars up to date in $libs_dir"
    return 0
  fi
  local staging="$cache_dir/libs.tmp-$$"
  rm -rf "$staging"
  local started=$SECONDS
  local output
  # Captured, not streamed: Maven 3.8 prints stray ANSI resets even with -q;
  # the output only matters when it fails.
  if ! output="$(mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
      -DoutputDirectory="$staging" 2>&1)"; then
    rm -rf "$staging"
    printf '%s\n' "$output" >&2
    echo "error: maven failed to fetch the Kafka jars" >&2
    exit 1
  fi
  rm -rf "$libs_dir"
  mv "$staging" "$libs_dir"
  echo "$pom_hash" >"$stamp"
  echo "fetched $(ls "$libs_dir" | wc -l) jars into $libs_dir in $((SECONDS - started))s"
}

require_python() {
  [[ -x "$python" ]] || { echo "error: $python not found; create the venv first (pip install -e '.[test]')" >&2; exit 1; }
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  fetch) fetch ;;
  start)
    require_python
    cd "$repo_root"
    exec "$python" -m orchestrator.kafka_local start "$@"
    ;;
  stop)
    require_python
    cd "$repo_root"
    exec "$python" -m orchestrator.kafka_local stop "$@"
    ;;
  *)
    echo "usage: $0 {fetch|start [--port N] [--data-dir D] [--log-dir L]|stop}" >&2
    exit 2
    ;;
esac
