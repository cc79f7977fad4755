# A device job longer than one 10-minute call (used 2026-12-07 for a 27-minute job over four calls): started in its own process session (the device keeps such a process
# running between calls while the machine is held; it kills every other process a call leaves behind), then waited
# on by later calls, back to back (the machine goes back after 30 s idle). Its output folder lives under $QERL_BG_DIR
# (default /tmp/bg), since the device empties $OUT before each call; every wait copies it into that call's $OUT.
#
#   source benchmarks/lease_setup.sh && bash benchmarks/lease_bg.sh start dapo \
#       'python3 benchmarks/step.py --rows 32b:nvfp4:128:8192:1 ... --out $OUT' && bash benchmarks/lease_bg.sh wait dapo 560
#   source benchmarks/lease_setup.sh && bash benchmarks/lease_bg.sh wait dapo 580      # the next call(s)
#
# `start NAME COMMAND`: COMMAND runs under bash with OUT set to the job's own folder (quote it so $OUT expands there).
# `wait NAME SECONDS`: returns when the job has finished (exit 0, its exit status in NAME.rc) or after SECONDS (exit
# 3, "still running"); either way the job's files (as NAME-out.tgz when there are more than 6 or any sits deeper than
# $OUT/a/file: a call brings back at most 8 files, 2 folders down), its log as NAME.log and the log's tail come back.
set -u
root=${QERL_BG_DIR:-/tmp/bg}
action=${1:-}; name=${2:-}
[ -n "$action" ] && [ -n "$name" ] || { echo "usage: lease_bg.sh start NAME COMMAND | wait NAME SECONDS" >&2; exit 2; }
job=$root/$name
case $action in
  start)
    command=${3:-}
    [ -n "$command" ] || { echo "lease_bg.sh start $name: no command given" >&2; exit 2; }
    [ -e "$job/pid" ] && [ ! -e "$job/rc" ] && { echo "lease_bg.sh: job $name is already running" >&2; exit 2; }
    rm -rf "$job" && mkdir -p "$job/out"
    OUT=$job/out setsid bash -c 'bash -c "$1"; echo $? > "$2"' lease_bg "$command" "$job/rc" > "$job/log" 2>&1 < /dev/null &
    echo $! > "$job/pid"
    echo "lease_bg.sh: $name started (pid $(cat "$job/pid")) $(date -u +%T)"
    ;;
  wait)
    limit=${3:-0}
    [ -d "$job" ] || { echo "lease_bg.sh: no job $name under $root" >&2; exit 2; }
    waited=0
    while [ ! -e "$job/rc" ] && [ "$waited" -lt "$limit" ]; do sleep 1; waited=$((waited + 1)); done
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
      # A call brings back at most 8 files, no deeper than $OUT/a/b/file: a job's folder that would not all come
      # back travels as one tarball, NAME-out.tgz (next to NAME.log and NAME.rc).
      files=$(find "$job/out" -type f | wc -l); deep=$(find "$job/out" -mindepth 3 -type f | head -1)
      if [ "$files" -le 6 ] && [ -z "$deep" ]; then
        cp -r "$job/out/." "$OUT/" 2>/dev/null
      else
        tar czf "$OUT/$name-out.tgz" -C "$job/out" . && echo "lease_bg.sh: $files files in $name-out.tgz"
      fi
      cp "$job/log" "$OUT/$name.log"
      [ -e "$job/rc" ] && cp "$job/rc" "$OUT/$name.rc"
    fi
    grep -v -e ' INFO ' -e '^INFO ' "$job/log" | tail -n 12
    if [ -e "$job/rc" ]; then
      echo "lease_bg.sh: $name finished with exit status $(cat "$job/rc") $(date -u +%T)"
      exit 0
    fi
    echo "lease_bg.sh: $name still running after ${waited} s more $(date -u +%T)"
    exit 3
    ;;
  *) echo "lease_bg.sh: unknown action $action (start or wait)" >&2; exit 2 ;;
esac
