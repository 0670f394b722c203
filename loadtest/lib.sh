# Shared by the loadtest/ scripts, which `source loadtest/lib.sh` from the repository root.

# A free TCP port on loopback (the kernel's pick; free again when this returns).
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# The head of a squid.conf for the comparisons: listen on 127.0.0.1:PORT and allow CONNECT from
# loopback to PORT_ALLOWED only (the gateway's `allowed_ports`).
squid_connect_head() {
  local port=$1 allowed=$2
  cat <<CONF
http_port 127.0.0.1:$port
acl SSL_ports port $allowed
acl CONNECT method CONNECT
acl loop src 127.0.0.0/8
http_access deny CONNECT !SSL_ports
http_access allow CONNECT loop SSL_ports
http_access deny all
CONF
}

# The Squid settings every comparison run shares, for a squid.conf under WORK (its logs and pid
# go to WORK/peer): no cache, no logs, no identifying headers, the gateway's fd budget. Each
# script writes its own http_port and ACLs before these lines and any extras after.
squid_common_conf() {
  local work=$1
  cat <<CONF
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $work/peer/squid-cache.log
pid_filename $work/peer/squid.pid
coredump_dir $work/peer
max_filedescriptors 20000
shutdown_lifetime 0 seconds
icp_port 0
htcp_port 0
via off
forwarded_for delete
cache_effective_user proxy
CONF
}

# Quieting the machine for a measurement: PAUSE_PIDS="PID..." (each with its descendants) are
# held off the CPUs from `pause_begin` until `pause_end` (call it from the EXIT trap: it runs on
# errors and on INT/TERM/HUP too, and only once). PAUSE_HOW:
#   stop - SIGSTOP, SIGCONT at the end. The quietest, but a stopped process's wall clock runs
#          on: libFuzzer checks its per-input -timeout against the wall clock, so on SIGCONT a
#          fuzzer stopped mid-input for longer than -timeout reports that input as a timeout and
#          exits. Refused for a command line with `-timeout=` unless PAUSE_FORCE=1.
#   idle - SCHED_IDLE for every thread, back to SCHED_OTHER and its nice value at the end: the
#          processes run only on CPU time nothing else wants and yield at once. Safe for
#          libFuzzer (no clock jumps); they still use what the benchmark leaves idle.
# The list and the command that undoes it are written to WORK_OUT/paused.txt (if the script is
# SIGKILLed, run that command by hand).
PAUSED=()     # "pid" (stop) or "tid:nice" (idle), in the order applied
pause_tree() { # pid -> the pid and its descendants, parents first
  local p=$1 c
  [ -d "/proc/$p" ] || return 0
  echo "$p"
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pause_tree "$c"; done
}
pause_begin() { # record-file
  local rec=$1 how=${PAUSE_HOW:-stop} p t all=()
  [ -n "${PAUSE_PIDS:-}" ] || return 0
  for p in $PAUSE_PIDS; do
    [[ $p =~ ^[0-9]+$ ]] || { echo "PAUSE_PIDS: not a pid: $p" >&2; return 1; }
    [ -d "/proc/$p" ] || { echo "PAUSE_PIDS: no process $p" >&2; return 1; }
    mapfile -t -O "${#all[@]}" all < <(pause_tree "$p")
  done
  case $how in
    stop)
      for p in "${all[@]}"; do
        local cmd; cmd=" $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null || true)"
        if [[ $cmd == *" -timeout="* ]] && [ "${PAUSE_FORCE:-0}" != 1 ]; then
          echo "PAUSE_HOW=stop refused: $p runs with libFuzzer's -timeout=, which would report the" \
               "input it was on as a timeout after SIGCONT; use PAUSE_HOW=idle or PAUSE_FORCE=1" >&2
          return 1
        fi
      done
      for p in "${all[@]}"; do kill -STOP "$p" 2>/dev/null && PAUSED+=("$p"); done
      echo "paused (SIGSTOP) ${PAUSED[*]}; undo: kill -CONT ${PAUSED[*]}" | tee "$rec" ;;
    idle)
      for p in "${all[@]}"; do
        for t in /proc/"$p"/task/*; do
          t=${t##*/}
          [ "$(chrt -p "$t" 2>/dev/null | awk -F': ' '/policy/ {print $2; exit}')" = SCHED_OTHER ] || continue
          local ni; ni=$(awk '{print $19}' "/proc/$p/task/$t/stat" 2>/dev/null) || continue
          chrt --idle -p 0 "$t" 2>/dev/null && PAUSED+=("$t:$ni")
        done
      done
      echo "idled (SCHED_IDLE) threads ${PAUSED[*]%%:*}; undo: for each TID:NICE in ${PAUSED[*]}: chrt --other -p 0 TID; renice -n NICE -p TID" | tee "$rec" ;;
    *) echo "PAUSE_HOW must be stop or idle" >&2; return 1 ;;
  esac
}
pause_end() {
  local how=${PAUSE_HOW:-stop} i e
  [ "${#PAUSED[@]}" -gt 0 ] || return 0
  if [ "$how" = stop ]; then
    for (( i=${#PAUSED[@]}-1; i>=0; i-- )); do kill -CONT "${PAUSED[i]}" 2>/dev/null || true; done
    echo "resumed (SIGCONT) ${PAUSED[*]}" >&2
  else
    for e in "${PAUSED[@]}"; do
      chrt --other -p 0 "${e%%:*}" 2>/dev/null && renice -n "${e##*:}" -p "${e%%:*}" > /dev/null 2>&1 || true
    done
    echo "restored SCHED_OTHER and nice on ${PAUSED[*]%%:*}" >&2
  fi
  PAUSED=()
}
