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
