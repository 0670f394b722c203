#!/usr/bin/env bash
# https:// vs http:// relay vs direct: gateway CPU per GB, 1 tunnel, plain stream, loopback only.
set -u
cd "$(dirname "$0")/.."
source loadtest/lib.sh   # free_port
L=${L:-$PWD/loadtest/target/release/splicegate-load}; GW=${GW:-$PWD/target/release/splicegate}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
$L sink --seconds 600 > sink.out 2>&1 & SINKPID=$!
sleep 0.5; SINK=$(awk '/listening/ {print $2}' sink.out); SP=${SINK##*:}
SQ=$(free_port)
cat > squid.conf <<C
http_port 127.0.0.1:$SQ
pid_filename none
cache deny all
cache_mem 8 MB
cache_log $work/cache.log
access_log none
coredump_dir $work
dns_nameservers 127.0.0.1
acl p port $SP
http_access allow CONNECT p
http_access deny all
C
chmod 777 "$work"
/usr/sbin/squid -N -f squid.conf & SQPID=$!
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=relay -keyout f.key -out f.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext
openssl x509 -req -in f.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out f.pem 2>/dev/null
FP=$(free_port)
printf "foreground = yes\npid =\n[r]\naccept = 127.0.0.1:$FP\nconnect = 127.0.0.1:$SQ\ncert = $work/f.pem\nkey = $work/f.key\n" > st.conf
stunnel st.conf >/dev/null 2>&1 & STPID=$!
sleep 2
for round in 1 2; do
for mode in direct http https; do
  case $mode in
    direct) R="" ;;
    http) R="relay_proxy: { address: \"http://127.0.0.1:$SQ\" }" ;;
    https) R="relay_proxy: { address: \"https://127.0.0.1:$FP\", ca_file: \"$work/ca.pem\" }" ;;
  esac
  cat > gw.yaml <<Y
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 1
allowed_ports: [$SP]
allowed_hosts: ["127.0.0.1"]
allowed_destination_networks: ["127.0.0.0/8"]
tls: { inspect: false }
$R
Y
  $GW run --config gw.yaml --log-format json 2> gw.log & G=$!
  for _ in $(seq 100); do grep -q '"event_id":101' gw.log && break; sleep 0.05; done
  A=$(grep '"event_id":101' gw.log | sed 's/.*"listen":"\([^"]*\)".*/\1/')
  printf '%-7s ' $mode; $L stream --proxy "$A" --target 127.0.0.1:$SP --tunnels 1 --seconds 4 --gateway-pid $G 2>&1 | tail -1
  kill $G; wait $G 2>/dev/null
done
done
kill $SINKPID $SQPID $STPID 2>/dev/null
