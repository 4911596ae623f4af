set -u
S=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
A=fp3-a$S; B=fp3-b$S
cleanup(){ ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; }
trap cleanup EXIT
ip netns add $A; ip netns add $B
ip -n $A link set lo up; ip -n $B link set lo up
ip link add fp3a$S netns $A type veth peer name fp3b$S netns $B
ip -n $A addr add 10.91.0.1/24 dev fp3a$S; ip -n $A link set fp3a$S up
ip -n $B addr add 10.91.0.2/24 dev fp3b$S; ip -n $B link set fp3b$S up
ip -n $A route add default via 10.91.0.2
ip netns exec $B sysctl -qw net.ipv4.ip_forward=1
ip -n $B route add 10.92.0.0/24 via 10.91.0.1
ip -n $B route add unreachable 10.93.0.0/24
# partial loss: drop every second echo request at B
ip netns exec $B nft add table inet fp3
ip netns exec $B nft add chain inet fp3 c '{ type filter hook input priority 0; }'
ip netns exec $B nft add rule inet fp3 c ip daddr 10.91.0.2 icmp type echo-request numgen inc mod 2 == 1 drop
ip netns exec $B nft add rule inet fp3 c ip daddr 127.0.0.2 icmp type echo-request drop
for tool in iputils busybox; do
  if [ $tool = iputils ]; then P="ping -n"; W="-W 1"; else P="busybox ping"; W="-W 1"; fi
  run(){ name=$1; shift; echo "== $tool $name: $*"; ip netns exec $1 $P "${@:2}" > ${tool}_$name.txt 2>&1; echo "rc=$?" ; cat ${tool}_$name.txt; }
  run partial_loss $A -c 4 -i 0.2 $W 10.91.0.2
  run ttl_exceeded $A -c 2 -i 0.2 $W -t 1 10.92.0.5
  run unreachable $A -c 2 -i 0.2 $W 10.93.0.5
  run all_lost $B -c 2 -i 0.2 $W 127.0.0.2
  run neigh_fail $A -c 2 -i 0.5 $W 10.91.0.77
  ip -n $A route del default
  run no_route $A -c 1 $W 10.99.0.1
  ip -n $A route add default via 10.91.0.2
done
