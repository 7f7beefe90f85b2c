# shellcheck shell=bash
# The assertions of the shell tests of deploy/local (stack_test.sh, cluster_test.sh):
# TAP-like "ok - ..." / "FAILED - ..." lines and the counts. Sourced, never run.

passed=0
failed=0
check() { # description, then a command that must succeed
  local what=$1
  shift
  if "$@"; then
    echo "ok - $what"; passed=$((passed + 1))
  else
    echo "FAILED - $what"; failed=$((failed + 1))
  fi
}
contains() { grep -q -- "$2" <<<"$1"; }
lacks() { ! grep -q -- "$2" <<<"$1"; }
alive() { kill -0 "$1" 2>/dev/null; }
dead() { ! kill -0 "$1" 2>/dev/null; }
