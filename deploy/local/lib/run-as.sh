#!/usr/bin/env bash
# run-as.sh USER CMD...: runs CMD as USER when root (Elasticsearch refuses to run as
# root), else as ourselves. Used by deploy/local/stack.sh to start the engine.
set -euo pipefail
user=$1
shift
if [ "$(id -u)" = 0 ]; then exec runuser -u "$user" -- "$@"; fi
exec "$@"
