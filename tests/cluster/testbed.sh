#!/usr/bin/env bash
# testbed.sh - a cluster of nodes sharing one GlusterFS volume, on this one Linux box, for ddmq's
# cluster tests (tests/cluster/). Debian packages only; needs root (network namespaces, FUSE).
#
#   netns $TAG-srv : glusterd + one brick process (glusterfsd): volume "ddmq", 1 brick, tcp,
#                    brick dir $STATE/brick, both bound to $NET.1 on bridge dqbr0
#   netns $TAG-a   : "node a": a native GlusterFS FUSE client (glusterfs -N) -> $STATE/mnt/a
#   netns $TAG-b   : "node b"                                                 -> $STATE/mnt/b
#   netns $TAG-c   : "node c"                                                 -> $STATE/mnt/c
#
# The namespaces are joined by veth pairs on a bridge inside $TAG-srv, on a /24 that exists only
# inside them: no link to the host's network, no default route, so nothing but the namespaces'
# own subnet and loopback is ever addressed. Each client daemon joins only its node's *network*
# namespace (nsenter --net), so its FUSE mount lands in the host's mount namespace: any process
# can use $STATE/mnt/a, and each mount has its own client process, caches and TCP connection.
# "A process on node a" is any process that uses $STATE/mnt/a.
#
# Commands (as root):
#   install                  apt-get the Debian packages that are missing (update first; a
#                            policy-rc.d keeps glusterd from starting on the host), and PyPI's
#                            libfaketime wheel into $FAKETIME_DIR (see `faketime-lib`)
#   up                       bring the cluster up (runs `install` first); fails if $STATE exists
#   down                     undo `up`: heal links, resume a paused brick, unmount, stop exactly
#                            the PIDs recorded in $STATE/pids, delete exactly the namespaces in
#                            $STATE/netns, remove the brick's socket and log and $STATE itself
#   partition NODE | heal NODE      cut / restore NODE's link to the server (I/O on its mount
#                            blocks meanwhile; past network.ping-timeout it fails with ENOTCONN)
#   pause-server SECS        SIGSTOP the brick for SECS, then SIGCONT (a hung server: I/O blocks)
#   kill-server [SIG]        stop brick + glusterd (TERM, or KILL = crash) and stay down: client
#                            I/O fails with ENOTCONN
#   start-server             start glusterd again (it starts the brick) and wait for the brick
#   restart-server SECS [SIG]  kill-server SIG, sleep SECS, start-server
#   recover                  after a test, whatever it did: heal every node, resume the brick,
#                            start the server if it is down
#   server-pids              "GLUSTERD_PID BRICK_PID"
#   profile start|interval   the brick's per-operation counters (gluster volume profile): turn
#                            them on; print the operations served since the last `interval`
#   faketime-lib             print the path of libfaketime.so.1 from PyPI's wheel (installing it
#                            if needed). Debian's libfaketime 0.9.10 breaks Python 3.11
#                            (time.monotonic jumps; with FAKETIME_DONT_FAKE_MONOTONIC=1,
#                            time.sleep raises EINVAL); the wheel's build does not.
#   status                   pids, links, volume status
#
# Environment:
#   DDMQ_CLUSTER_STATE  state dir (default /var/tmp/ddmq-cluster/default): pids, netns, logs,
#                       glusterd's working dir, the brick, the mount points. On disk, not tmpfs:
#                       the brick needs trusted.* xattrs. `down` deletes it.
#   DDMQ_CLUSTER_TAG    prefix of the namespace names (default dqc; at most 10 characters)
#   DDMQ_CLUSTER_NODES  node names (default "a b c")
#   DDMQ_CLUSTER_NET    the private /24, first three octets (default 10.213.78)
#   DDMQ_CLUSTER_ENTRY_TIMEOUT / ATTR_TIMEOUT / NEG_TIMEOUT   FUSE cache seconds (1 / 1 / 0)
#   DDMQ_CLUSTER_PING_TIMEOUT   seconds a client waits on a silent server before ENOTCONN (42)
#   DDMQ_CLUSTER_FAKETIME_DIR   where the libfaketime wheel is installed
#                               (default /var/cache/ddmq-cluster/libfaketime)
#   PYTHON              interpreter whose pip installs the wheel (default python3)
#
# Other host paths GlusterFS uses have compiled-in names: the brick's unix socket
# /var/run/gluster/<hash>.socket (recorded in $STATE/sockets) and its log
# /var/log/glusterfs/bricks/<brick path>.log, both removed by `down`; and the shared logs
# /var/log/glusterfs/{cli.log,cmd_history.log}, which it leaves. Modelled on
# shared/testbed/{up,ctl,down}.sh; see its README for what was measured on this setup.
set -euo pipefail

STATE=${DDMQ_CLUSTER_STATE:-/var/tmp/ddmq-cluster/default}
FAKETIME_DIR=${DDMQ_CLUSTER_FAKETIME_DIR:-/var/cache/ddmq-cluster/libfaketime}
FAKETIME_SO=$FAKETIME_DIR/libfaketime/vendor/libfaketime/src/libfaketime.so.1
PYTHON=${PYTHON:-python3}
VOL=ddmq
PKGS="glusterfs-server glusterfs-client fuse3 iproute2 util-linux strace"

die() { echo "testbed.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, FUSE mounts)"

# ---- settings of an existing cluster come from $STATE/env; of a new one from the environment --
load_env() {
  # shellcheck disable=SC1091
  . "$STATE/env"   # TAG NODES NET SRV_IP BRICK GDIR
}
G() { ip netns exec "$TAG-srv" gluster --mode=script --glusterd-sock="$STATE/glusterd.socket" "$@"; }
pid_of() { awk -v w="$1" '$2==w{print $1}' "$STATE/pids"; }
set_pid() {  # what newpid: replace the line of <what>, or add one
  if grep -q " $1\$" "$STATE/pids"; then
    sed -i "s/^[0-9]* $1\$/$2 $1/" "$STATE/pids"
  else
    echo "$2 $1" >> "$STATE/pids"
  fi
}
# Is PID still the process we recorded (and not a reused PID)? Its command line must be a
# GlusterFS daemon's that names this cluster's state dir (every one of ours does: glusterd its
# volfile, the brick its brick dir, a client its mount point).
ours() {  # pid
  local cmd
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  case $cmd in
    *gluster*"$STATE/"*) return 0 ;;
    *) return 1 ;;
  esac
}

# ---- install ----------------------------------------------------------------------------------
install_packages() {
  local need=() p prc=/usr/sbin/policy-rc.d made_prc=0
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages (${need[*]}) and no apt-get"
  echo "testbed.sh: installing ${need[*]}" >&2
  apt-get update -qq
  # policy-rc.d exit 101: the packages' scripts must not start glusterd on the host.
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' > $prc; chmod +x $prc; made_prc=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { [ $made_prc = 1 ] && rm -f $prc; die "apt-get install ${need[*]} failed"; }
  if [ $made_prc = 1 ]; then rm -f $prc; fi
}

install_faketime() {
  [ -e "$FAKETIME_SO" ] && return 0
  mkdir -p "$FAKETIME_DIR"
  # --target: a folder this harness owns, nothing added to any environment; the wheel's
  # libfaketime.so.1 is all that is used (LD_PRELOAD), never its Python module.
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$FAKETIME_DIR" "libfaketime==3.0.1" >&2 \
    || die "pip install libfaketime into $FAKETIME_DIR failed"
  [ -e "$FAKETIME_SO" ] || die "the libfaketime wheel has no $FAKETIME_SO"
}

# ---- up ---------------------------------------------------------------------------------------
cmd_up() {
  TAG=${DDMQ_CLUSTER_TAG:-dqc}
  NODES=${DDMQ_CLUSTER_NODES:-"a b c"}
  NET=${DDMQ_CLUSTER_NET:-10.213.78}
  SRV_IP=$NET.1
  BRICK=$STATE/brick
  GDIR=$STATE/glusterd
  local entry=${DDMQ_CLUSTER_ENTRY_TIMEOUT:-1} attr=${DDMQ_CLUSTER_ATTR_TIMEOUT:-1}
  local neg=${DDMQ_CLUSTER_NEG_TIMEOUT:-0} ping=${DDMQ_CLUSTER_PING_TIMEOUT:-42}
  [ ${#TAG} -le 10 ] || die "DDMQ_CLUSTER_TAG must be at most 10 characters"
  [ -e "$STATE" ] && die "$STATE exists - already up? run '$0 down' first"
  for ns in "$TAG-srv" $(for n in $NODES; do echo "$TAG-$n"; done); do
    ip netns list | grep -qw -- "$ns" && die "netns $ns already exists"
  done
  install_packages
  install_faketime

  mkdir -p "$STATE/log" "$STATE/run" "$GDIR" "$BRICK" "$STATE/mnt"
  : > "$STATE/pids"; : > "$STATE/netns"; : > "$STATE/sockets"
  cat > "$STATE/env" <<EOF
TAG=$TAG
NODES="$NODES"
NET=$NET
SRV_IP=$SRV_IP
BRICK=$BRICK
GDIR=$GDIR
EOF
  # -- network: a bridge in the server's namespace, a veth pair to each node's -----------------
  ip netns add "$TAG-srv"
  echo "netns $TAG-srv" >> "$STATE/netns"
  ip -n "$TAG-srv" link set lo up
  ip -n "$TAG-srv" link add dqbr0 type bridge
  ip -n "$TAG-srv" addr add "$SRV_IP/24" dev dqbr0
  ip -n "$TAG-srv" link set dqbr0 up
  local i=10 n ns
  for n in $NODES; do
    ns=$TAG-$n
    ip netns add "$ns"
    echo "netns $ns" >> "$STATE/netns"
    ip -n "$ns" link set lo up
    ip -n "$TAG-srv" link add "dq-$n" type veth peer name eth0 netns "$ns"
    ip -n "$TAG-srv" link set "dq-$n" master dqbr0 up
    ip -n "$ns" addr add "$NET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    i=$((i + 1))
  done

  # -- glusterd in the server's namespace: own working dir, run dir and CLI socket -------------
  cat > "$STATE/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $GDIR
    option run-directory $STATE/run
    option glusterd-sockfile $STATE/glusterd.socket
    option transport-type socket
    option transport.address-family inet
    option transport.socket.bind-address $SRV_IP
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
  start_glusterd
  for _ in $(seq 100); do G volume list >/dev/null 2>&1 && break; sleep 0.1; done
  # 'force': the brick may sit on the root filesystem.
  G volume create "$VOL" transport tcp "$SRV_IP:$BRICK" force >/dev/null
  # The volume options a file queue needs (measured in shared/testbed/README.md):
  #  - features.ctime off: mtime/ctime come from the brick's clock. With it on, the *client's*
  #    clock is stored (ddmq's ServerClock would learn a skewed node's own time), and rename /
  #    O_EXCL / mkdir races had names won by nobody.
  #  - storage.gfid2path off: with it on, hard links fail with ENOSPC after ~40 links.
  #  - storage.max-hardlinks 60000: the default of 100 gives EMLINK.
  #  - every client-side caching/"behind" translator off (write-behind, flush-behind,
  #    open-behind, quick-read, read-ahead, io-cache, readdir-ahead, stat-prefetch = md-cache,
  #    nl-cache): with the defaults a cross-mount rename onto an existing file returned ESTALE.
  #    Only FUSE's own entry/attr caches remain, set per client by the timeouts above.
  local kv
  for kv in "features.ctime off" "storage.gfid2path off" "storage.max-hardlinks 60000" \
            "performance.write-behind off" "performance.flush-behind off" \
            "performance.open-behind off" "performance.quick-read off" \
            "performance.read-ahead off" "performance.io-cache off" \
            "performance.readdir-ahead off" "performance.stat-prefetch off" \
            "performance.nl-cache off" "network.ping-timeout $ping"; do
    # shellcheck disable=SC2086
    G volume set "$VOL" $kv >/dev/null
  done
  G volume start "$VOL" >/dev/null
  wait_brick ""

  # -- one native FUSE client per node, each in its node's network namespace ------------------
  local mnt
  for n in $NODES; do
    mnt=$STATE/mnt/$n
    mkdir -p "$mnt"
    # -N: foreground, so $! is the client's PID (nsenter execs it).
    nsenter --net="/run/netns/$TAG-$n" glusterfs -N --volfile-server="$SRV_IP" --volfile-id="$VOL" \
      --entry-timeout="$entry" --attribute-timeout="$attr" --negative-timeout="$neg" \
      -l "$STATE/log/client-$n.log" "$mnt" > "$STATE/log/client-$n.out" 2>&1 &
    echo "$! glusterfs-$n $mnt" >> "$STATE/pids"
  done
  for n in $NODES; do
    mnt=$STATE/mnt/$n
    for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.1; done
    mountpoint -q "$mnt" || die "$mnt did not mount; see $STATE/log"
  done
  # Writable for everyone, like a shared scratch folder (tests drop privileges in places).
  chmod 1777 "$STATE/mnt/$(echo "$NODES" | awk '{print $1}')"
  echo "testbed.sh: volume $VOL ($SRV_IP:$BRICK) mounted at $(for n in $NODES; do printf '%s ' "$STATE/mnt/$n"; done)"
}

start_glusterd() {
  # -N: foreground, so $! is its PID (ip netns exec execs it).
  ip netns exec "$TAG-srv" glusterd -N -f "$STATE/glusterd.vol" -l "$STATE/log/glusterd.log" \
    -p "$STATE/glusterd.pid" >> "$STATE/log/glusterd.out" 2>&1 &
  set_pid glusterd $!
}

wait_brick() {  # old brick pid ("" if none): wait for a brick process other than it
  local bp=""
  for _ in $(seq 300); do
    bp=$(cat "$STATE"/run/vols/"$VOL"/*.pid 2>/dev/null | head -1 || true)
    # (the status table wraps long brick paths: look for "Y <pid>" anywhere)
    if [ -n "$bp" ] && [ "$bp" != "$1" ] && ours "$bp" && \
       G volume status "$VOL" 2>/dev/null | grep -Eq "[[:space:]]Y[[:space:]]+$bp([[:space:]]|\$)"; then break; fi
    bp=""; sleep 0.1
  done
  [ -n "$bp" ] || die "the brick did not come up; see $STATE/log and /var/log/glusterfs/bricks"
  set_pid brick "$bp"
  tr '\0' '\n' < "/proc/$bp/cmdline" | sed -n '/^-S$/{n;p}' >> "$STATE/sockets"
}

# ---- faults -----------------------------------------------------------------------------------
stop_server() {  # SIG
  local sig=${1:-TERM} p what
  for what in brick glusterd; do
    p=$(pid_of $what)
    if [ -n "$p" ] && ours "$p"; then kill -"$sig" "$p"; fi
  done
  for what in brick glusterd; do
    p=$(pid_of $what)
    [ -n "$p" ] || continue
    for _ in $(seq 100); do ours "$p" || break; sleep 0.1; done
    if ours "$p"; then die "$what $p still running"; fi
  done
}

cmd_start_server() {
  local old
  old=$(pid_of brick)
  if [ -n "$old" ] && ours "$old"; then die "the server is running (brick $old)"; fi
  start_glusterd
  wait_brick "$old"
  echo "server up: glusterd $(pid_of glusterd), brick $(pid_of brick)"
}

# ---- down -------------------------------------------------------------------------------------
cmd_down() {
  [ -d "$STATE" ] || { echo "testbed.sh: nothing to do ($STATE missing)"; return 0; }
  [ -f "$STATE/env" ] && load_env
  local pid what mnt ns p
  # 1. a partitioned node or a stopped brick would make umount hang: undo both first
  if [ -f "$STATE/netns" ]; then
    while read -r _ ns; do
      [ "$ns" = "$TAG-srv" ] || ip -n "$ns" link set eth0 up 2>/dev/null || true
    done < "$STATE/netns"
  fi
  p=$(pid_of brick 2>/dev/null || true)
  if [ -n "$p" ] && ours "$p"; then kill -CONT "$p" 2>/dev/null || true; fi
  # 2. unmount every client mount (a FUSE client exits when its mount goes away)
  if [ -f "$STATE/pids" ]; then
    while read -r _ _ mnt; do
      # findmnt, not mountpoint: a mount whose FUSE client died fails stat with ENOTCONN
      if [ -n "${mnt:-}" ] && findmnt -rn -o TARGET | grep -qxF "$mnt"; then
        timeout 20 umount "$mnt" 2>/dev/null || umount -l "$mnt"
      fi
    done < "$STATE/pids"
  fi
  # 3. stop the recorded processes, newest first, by PID (only if still ours), SIGKILL after 5 s.
  #    A brick that glusterd started but `up` had not recorded yet is in glusterd's pid file.
  if [ -f "$STATE/pids" ]; then
    for p in $(cat "$STATE"/run/vols/*/*.pid 2>/dev/null || true); do
      if ours "$p" && ! grep -q "^$p " "$STATE/pids"; then echo "$p brick-unrecorded" >> "$STATE/pids"; fi
    done
    while read -r pid _ _; do  # each brick's socket, from its command line (-S PATH)
      if ours "$pid"; then tr '\0' '\n' < "/proc/$pid/cmdline" | sed -n '/^-S$/{n;p}' >> "$STATE/sockets"; fi
    done < "$STATE/pids"
    tac "$STATE/pids" | while read -r pid what _; do
      if ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    tac "$STATE/pids" | while read -r pid what _; do
      for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
      if ours "$pid"; then
        echo "testbed.sh: $what ($pid) ignored SIGTERM; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  # 4. the brick's unix sockets under the compiled-in /var/run/gluster, as recorded
  if [ -f "$STATE/sockets" ]; then
    while read -r s; do case $s in /var/run/gluster/*.socket) rm -f "$s" ;; esac; done < "$STATE/sockets"
  fi
  # 5. exactly the namespaces recorded
  if [ -f "$STATE/netns" ]; then
    tac "$STATE/netns" | while read -r _ ns; do ip netns del "$ns" 2>/dev/null || true; done
  fi
  # 6. the brick's log under the compiled-in /var/log/glusterfs/bricks (named for the brick path)
  if [ -n "${BRICK:-}" ]; then
    rm -f "/var/log/glusterfs/bricks/$(echo "${BRICK#/}" | tr / -).log"
  fi
  # 7. the state dir (brick, volume definition, logs) - never while something is mounted in it
  if findmnt -rn -o TARGET | grep -q "^$STATE/"; then
    die "something is still mounted under $STATE; not deleting it"
  fi
  rm -rf "$STATE"
  echo "testbed.sh: down ($STATE removed)"
}

cmd_status() {
  load_env
  local pid what mnt ns
  while read -r pid what mnt; do
    printf '%-8s %-14s %-40s %s\n' "$pid" "$what" "${mnt:-}" "$(ours "$pid" && echo running || echo DEAD)"
  done < "$STATE/pids"
  while read -r _ ns; do
    [ "$ns" = "$TAG-srv" ] && continue
    printf '%-14s eth0 %s\n' "$ns" "$(ip -n "$ns" -br link show eth0 | awk '{print $2}')"
  done < "$STATE/netns"
  G volume status "$VOL" 2>/dev/null | grep -E '^Brick' || echo "glusterd not answering"
}

node_ns() {  # NODE -> its namespace, checked against the recorded ones
  grep -qx "netns $TAG-$1" "$STATE/netns" || die "no node $1"
  echo "$TAG-$1"
}

case ${1:-} in
  install) install_packages; install_faketime ;;
  # `up` runs in a child so that `set -e` holds in it; if it fails, whatever it made is undone.
  up) bash "$0" _up || { rc=$?; echo "testbed.sh: up failed; tearing down" >&2; cmd_down >&2 || true; exit $rc; } ;;
  _up) cmd_up ;;
  down) cmd_down ;;
  faketime-lib) install_faketime; echo "$FAKETIME_SO" ;;
  partition|heal|pause-server|kill-server|start-server|restart-server|recover|server-pids|profile|status)
    [ -f "$STATE/pids" ] || die "not up ($STATE/pids missing)"
    load_env
    case $1 in
      partition) ip -n "$(node_ns "$2")" link set eth0 down; echo "node $2 partitioned" ;;
      heal)      ip -n "$(node_ns "$2")" link set eth0 up; echo "node $2 healed" ;;
      pause-server)
        p=$(pid_of brick); ours "$p" || die "brick $p is not running"
        kill -STOP "$p"; sleep "${2:-3}"; kill -CONT "$p"; echo "brick $p paused ${2:-3} s" ;;
      kill-server) stop_server "${2:-TERM}"; echo "server stopped (glusterd + brick)" ;;
      start-server) cmd_start_server ;;
      restart-server)
        old="$(pid_of glusterd)/$(pid_of brick)"
        stop_server "${3:-TERM}"; sleep "${2:-3}"
        echo "glusterd/brick were $old"
        cmd_start_server ;;
      recover)
        for n in $NODES; do ip -n "$(node_ns "$n")" link set eth0 up; done
        p=$(pid_of brick)
        if ours "$p"; then
          kill -CONT "$p"
        else
          g=$(pid_of glusterd)
          if ours "$g"; then kill -TERM "$g"; for _ in $(seq 100); do ours "$g" || break; sleep 0.1; done; fi
          cmd_start_server
        fi ;;
      server-pids) echo "$(pid_of glusterd) $(pid_of brick)" ;;
      profile)
        case ${2:-} in
          start) G volume profile "$VOL" start >/dev/null 2>&1 || true   # already on: fine
                 G volume profile "$VOL" info incremental >/dev/null ;;
          interval) G volume profile "$VOL" info incremental ;;
          *) die "profile start|interval" ;;
        esac ;;
      status) cmd_status ;;
    esac ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0" >&2; exit 2 ;;
esac
