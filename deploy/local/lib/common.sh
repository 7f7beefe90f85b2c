# shellcheck shell=bash
# Shared helpers of deploy/local/stack.sh: messages, processes, pid files, locks,
# Java discovery and templates. Sourced, never run; uses the settings stack.sh sets.

# Progress goes to stderr so that stdout carries only the endpoint lines.
# SAY_PREFIX names the script that speaks (stack, cluster).
SAY_PREFIX=${SAY_PREFIX:-stack}
say()  { printf '%s: %s\n' "$SAY_PREFIX" "$*" >&2; }
warn() { printf '%s: WARNING: %s\n' "$SAY_PREFIX" "$*" >&2; }
die()  { printf '%s: ERROR: %s\n' "$SAY_PREFIX" "$*" >&2; exit 1; }

now() { date +%s; }

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp,
# so no nc/ss needed). A refused connect on loopback returns at once.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Command line of a process, to tell our JVMs from unrelated processes that
# reuse a pid after a reboot or crash (/proc on Linux, ps elsewhere).
proc_cmdline() {
  if [ -r "/proc/$1/cmdline" ]; then tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else ps -o args= -p "$1" 2>/dev/null || true
  fi
}

# Every JVM we start carries -Dcitypop.stack=<component>@<stack dir>; a pid file
# only counts when its process still has that marker.
marker() { printf -- '-Dcitypop.stack=%s@%s' "$1" "$STACK_DIR"; }

# The pids of processes that carry a component's marker (Linux /proc only; empty
# elsewhere), for the moment between a launch and its pid file.
marked_pids() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    case "$(tr '\0' ' ' <"$f" 2>/dev/null)" in
      *"$(marker "$1")"*) f=${f#/proc/}; echo "${f%/cmdline}" ;;
    esac
  done
}

# kafka | engine (stack.sh), kafka-N | engine-N (the nodes of cluster.sh). The
# engine's files may live apart from the stack dir (engine_base).
comp_dir() {
  case "$1" in
    engine|engine-*) printf '%s/%s' "$(engine_base)" "$1" ;;
    *) printf '%s/%s' "$STACK_DIR" "$1" ;;
  esac
}

# Where the engine's homes and run dir live: the stack dir, unless the engine's own
# user cannot enter it (a clone under /root, run as root), in which case `up` chose a
# directory of its own under /var/tmp and wrote it down in <stack dir>/engine.base.
engine_base() {
  if [ -s "$STACK_DIR/engine.base" ]; then cat "$STACK_DIR/engine.base"; else printf '%s' "$STACK_DIR"; fi
}
# " node N" for a node of cluster.sh (kafka-N, engine-N), nothing for stack.sh's
# single components: for messages.
node_label() { case "$1" in *-[0-9]*) printf ' node %s' "${1##*-}" ;; esac; }
pid_file() { printf '%s/%s.pid' "$(comp_dir "$1")" "$1"; }
out_file() { printf '%s/%s.out' "$(comp_dir "$1")" "$1"; }      # JVM stdout/stderr
conf_file() { printf '%s/running.conf' "$(comp_dir "$1")"; }    # settings it was started with

# running_pid COMPONENT: prints the pid if the component runs, else nothing.
# A stale pid file (process gone or pid reused) is removed.
running_pid() {
  local comp=$1 pidfile pid
  pidfile=$(pid_file "$comp")
  [ -f "$pidfile" ] || return 0
  pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    case "$(proc_cmdline "$pid")" in
      *"$(marker "$comp")"*) echo "$pid"; return 0 ;;
    esac
  fi
  rm -f "$pidfile"
}

# The settings a running component was started with; `up` refuses to pretend a
# running stack matches different requested settings.
write_running_conf() { printf '%s\n' "$2" >"$(conf_file "$1")"; }
running_conf() { cat "$(conf_file "$1")" 2>/dev/null || true; }
conf_value() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# A component that runs with other settings than requested: refuse rather than
# hand out endpoints that are not what the caller asked for. A different heap only
# earns a warning: the endpoints are still right.
check_running_matches() {
  local comp=$1 want=$2 have
  have=$(running_conf "$comp")
  [ -n "$have" ] || return 0
  if [ "$(without_heap "$have")" != "$(without_heap "$want")" ]; then
    die "$comp is already running with '$have' but '$want' was requested; run '$0 down' first"
  fi
  if [ "$have" != "$want" ]; then
    warn "$comp is running with '$have', not '$want'; '$0 down' and 'up' again to apply"
  fi
}
without_heap() { printf '%s\n' "$1" | tr ' ' '\n' | grep -v '^heap=' | tr '\n' ' '; }

# Remembers where this start begins in a log that outlives restarts, so that
# show_log_tail shows only what this start logged.
mark_log() {
  local log=$1 mark=0
  if [ -f "$log" ]; then mark=$(wc -c <"$log" | tr -d ' '); fi
  echo "$mark" >"$log.mark"
}

# show_log_tail OUT_FILE SERVER_LOG: the last lines of a component's logs, for
# error messages; its errors first, since a failed JVM's last lines are usually
# its shutdown chatter.
show_log_tail() {
  local out=$1 log=$2 n=30 errors f
  if [ -s "$log" ]; then
    errors=$(tail -c +"$(( $(cat "$log.mark" 2>/dev/null || echo 0) + 1 ))" "$log" |
      grep -E -A3 '(ERROR|FATAL)' | tail -n 20 || true)
    if [ -n "$errors" ]; then printf -- '----- errors in %s -----\n%s\n' "$log" "$errors" >&2; fi
  fi
  for f in "$out" "$log"; do
    if [ -s "$f" ]; then
      printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
      tail -n "$n" "$f" >&2
    fi
  done
}

# launch PIDFILE OUT WORKDIR CMD...: runs CMD in the background, detached from
# this shell (nohup + setsid: a closed terminal or Ctrl-C of the caller must not
# take the services down), and records its pid. The inner shell writes its own pid
# and then execs CMD, so the pid file holds CMD's pid whether or not setsid forked.
launch() {
  local pidfile=$1 out=$2 workdir=$3
  shift 3
  rm -f "$pidfile"
  [ -f "$out" ] && mv -f "$out" "$out.prev"
  local detach=""
  command -v setsid >/dev/null 2>&1 && detach=setsid
  (
    cd "$workdir" || exit 1
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    nohup $detach bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
      >"$out" 2>&1 </dev/null &
  )
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -s "$pidfile" ] && return 0
    sleep 0.5
  done
  die "$* did not start (no pid file); see $out"
}

# show_logs FOLLOW LINES WHAT FILE...: the last LINES lines of those FILEs that
# exist (all of them when following, since tail -F waits for them), or follows them.
# WHAT names them in the error when none exists yet.
show_logs() {
  local follow=$1 lines=$2 what=$3 files=() f
  shift 3
  for f in "$@"; do
    if $follow || [ -s "$f" ]; then files+=("$f"); fi
  done
  [ ${#files[@]} -gt 0 ] || die "no logs yet for $what under $STACK_DIR (has it been started?)"
  if $follow; then exec tail -n "$lines" -F "${files[@]}"; fi
  tail -n "$lines" "${files[@]}"
}

# down_components [--purge] -- COMP...: the `down` command: stops the COMPs, then
# with --purge deletes their data (the calling script's purge_data).
down_components() {
  local purge=false
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    case "$1" in
      --purge) purge=true ;;
      *) die "unknown option for down: $1" ;;
    esac
    shift
  done
  [ $# -gt 0 ] && shift   # the --
  resolve_stack_dir
  [ -d "$STACK_DIR" ] || { say "nothing to stop ($STACK_DIR does not exist)"; return 0; }
  acquire_lock
  stop_components "$@"
  if $purge; then purge_data; fi
  return 0
}

# stop_components COMP...: stops those that run, all at once (SIGTERM to each
# first, then wait: the shutdowns overlap), and forgets their pid and settings.
# A SIGSTOPped process acts on the SIGTERM only once continued: SIGCONT follows.
stop_components() {
  local comp pid pids=""
  for comp in "$@"; do
    pid=$(running_pid "$comp")
    if [ -n "$pid" ]; then
      say "stopping $comp (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      kill -CONT "$pid" 2>/dev/null || true
      pids="$pids $pid"
    fi
  done
  [ -n "$pids" ] || say "nothing running"
  for pid in $pids; do stop_pid "$pid"; done   # waits, SIGKILL after the timeout
  for comp in "$@"; do rm -f "$(pid_file "$comp")" "$(conf_file "$comp")"; done
}

# stop_pid PID: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds.
stop_pid() {
  local pid=$1 waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge "$STOP_TIMEOUT" ]; then
      warn "pid $pid still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 1; waited=$((waited + 1))
  done
}

# Resolve STACK_DIR (and the download cache) to absolute paths: the JVMs get them
# as arguments and must not depend on the caller's working directory.
init_stack_dir() {
  mkdir -p "$STACK_DIR"
  STACK_DIR=$(cd "$STACK_DIR" && pwd -P)
  CACHE_DIR=${CITYPOP_STACK_CACHE_DIR:-$STACK_DIR/cache}
  mkdir -p "$CACHE_DIR"
  CACHE_DIR=$(cd "$CACHE_DIR" && pwd -P)
  # Marks the dir as ours, so that purge/clean never delete a directory
  # someone pointed CITYPOP_STACK_DIR at by mistake.
  [ -f "$STACK_DIR/.citypop-stack" ] || echo "citypop local stack (deploy/local/stack.sh)" >"$STACK_DIR/.citypop-stack"
}

# Absolute path without creating anything (for down/status/logs).
resolve_stack_dir() {
  if [ -d "$STACK_DIR" ]; then STACK_DIR=$(cd "$STACK_DIR" && pwd -P); fi
  CACHE_DIR=${CITYPOP_STACK_CACHE_DIR:-$STACK_DIR/cache}
}

# One `up`/`down` at a time: a mkdir lock works everywhere (flock is Linux-only).
LOCK_DIR=""
acquire_lock() {
  LOCK_DIR="$STACK_DIR/.lock"
  local deadline=$(( $(now) + START_TIMEOUT )) holder
  while ! mkdir "$LOCK_DIR" 2>/dev/null; do
    holder=$(cat "$LOCK_DIR/pid" 2>/dev/null || true)
    if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then
      rm -rf "$LOCK_DIR"; continue   # its holder died: stale
    fi
    [ "$(now)" -lt "$deadline" ] || die "another stack.sh (pid ${holder:-?}) holds $LOCK_DIR"
    sleep 1
  done
  echo $$ >"$LOCK_DIR/pid"
  trap 'rm -rf "$LOCK_DIR"' EXIT
}
release_lock() { rm -rf "$LOCK_DIR"; trap - EXIT; }

# render TEMPLATE OUT: copies TEMPLATE to OUT with every @NAME@ replaced by the
# value of the shell variable NAME. A placeholder left over is a typo: refused.
render() {
  local template=$1 out=$2 text name
  text=$(<"$template")
  for name in $(grep -o '@[A-Z_][A-Z0-9_]*@' "$template" | sort -u | tr -d '@'); do
    [ -n "${!name+set}" ] || die "$template uses @$name@, which the stack does not set"
    text=${text//@$name@/${!name}}
  done
  printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------------------
# Java
# ---------------------------------------------------------------------------
# "17.0.15" -> 17, "1.8.0_392" -> 8, "25" -> 25, "21-ea" -> 21
java_major() {
  "$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' |
    awk -F. '{ if ($1 == "1") print $2; else print $1 }' | sed 's/[^0-9].*//'
}

# find_java MIN [PREFERRED_HOME]: prints the home of a JDK of at least Java MIN:
# PREFERRED_HOME if given (it must qualify), else JAVA_HOME, else the `java` on
# PATH, else the newest JDK under /usr/lib/jvm (where Debian and the Temurin
# packages install them, side by side).
find_java_home() {
  local min=$1 preferred=${2:-} major best="" best_major=0 candidate
  if [ -n "$preferred" ]; then
    [ -x "$preferred/bin/java" ] || die "$preferred has no bin/java"
    major=$(java_major "$preferred/bin/java")
    [ "${major:-0}" -ge "$min" ] || die "$preferred is Java ${major:-?}; Java $min or newer is needed"
    echo "$preferred"; return 0
  fi
  for candidate in "${JAVA_HOME:-}" "$(java_home_of_path)" /usr/lib/jvm/*; do
    [ -n "$candidate" ] && [ -x "$candidate/bin/java" ] || continue
    major=$(java_major "$candidate/bin/java")
    [ -n "$major" ] || continue
    # The first of JAVA_HOME and PATH that qualifies wins; among the rest the newest.
    if [ "$major" -ge "$min" ] && { [ "$candidate" = "${JAVA_HOME:-}" ] || [ "$candidate" = "$(java_home_of_path)" ]; }; then
      echo "$candidate"; return 0
    fi
    if [ "$major" -ge "$min" ] && [ "$major" -gt "$best_major" ]; then best=$candidate; best_major=$major; fi
  done
  [ -n "$best" ] || return 1
  echo "$best"
}

# The JDK home of the `java` on PATH (empty if none).
java_home_of_path() {
  local java
  java=$(command -v java 2>/dev/null) || return 0
  java=$(readlink -f "$java")
  dirname "$(dirname "$java")"
}

# Copies the runtime dependencies of the pom $1 into the directory $2 with Maven,
# appending its output to the log $3. On failure: removes $2, shows the log's tail
# and stops, saying "mvn could not collect $4". Further arguments go to mvn (-D...).
maven_copy_dependencies() {
  local pom=$1 dest=$2 log=$3 what=$4
  shift 4
  if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dest" "$@" >>"$log" 2>&1; then
    rm -rf "$dest"
    tail -n 40 "$log" >&2 || true
    die "mvn could not collect $what; full output: $log"
  fi
}
