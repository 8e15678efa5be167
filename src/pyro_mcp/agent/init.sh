#!/bin/sh
# pyro-mcp guest init, first stage (PID 1 in the initramfs, run by busybox).
#
# Root = the read-only environment image (/dev/vda) under an overlay whose upper layer is the
# VM's writable disk (pyro.rw=/dev/vdX) or, for throw-away VMs, a tmpfs. /workspace lives on
# the writable layer. The agent comes from this initramfs, never from the image, so the image
# never has to be rebuilt when the agent changes. busybox init then becomes PID 1 of the real
# root: it reaps orphaned processes and restarts the agent if it ever dies.

bb=/bin/busybox
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb --install -s /bin
exec </dev/console >/dev/console 2>&1

arg() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

fail() {
    echo "pyro-init: error: $*"
    sync
    reboot -f
}

# The host's boot probe only asks whether this kernel reaches user space at all.
if arg pyro.probe >/dev/null; then
    echo "PYRO_PROBE_OK $(uname -r)"
    reboot -f
fi

while read -r module; do
    insmod "/lib/modules/$module.ko" || fail "cannot load kernel module $module"
done </lib/modules/order

wait_for_block() {
    tries=0
    while [ ! -b "$1" ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 1000 ] && return 1
        usleep 10000
    done
}

mkdir -p /mnt/ro /mnt/rw
wait_for_block /dev/vda || fail "root image /dev/vda did not appear"
mount -t ext4 -o ro /dev/vda /mnt/ro || fail "cannot mount the root image"

rw=$(arg pyro.rw)
if [ -n "$rw" ]; then
    wait_for_block "$rw" || fail "writable disk $rw did not appear"
    mount -t ext4 -o noatime "$rw" /mnt/rw || fail "cannot mount the writable disk $rw"
else
    mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
fi
mkdir -p /mnt/rw/upper /mnt/rw/work /mnt/rw/workspace
mount -t overlay overlay \
    -o lowerdir=/mnt/ro,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
    || fail "cannot assemble the overlay root"

mkdir -p /newroot/workspace /newroot/opt/pyro /newroot/dev /newroot/proc /newroot/sys
mount --bind /mnt/rw/workspace /newroot/workspace
mount -t tmpfs -o mode=0755 tmpfs /newroot/opt/pyro
cp -a /pyro/lib /newroot/opt/pyro/lib
cp /bin/busybox /newroot/opt/pyro/busybox
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run

# A helper VM of the disk tools (pyro.inspect=/dev/vdX): another workspace's stopped disk,
# behind a throwaway overlay (mounted read-only, but the kernel may replay its journal into
# the overlay). Its /workspace stands in for this VM's own, and the root as that
# workspace saw it (image under its writable layer) is at /mnt/view. A guest wrote that disk,
# so it may be garbage: then nothing of it is mounted and /run/pyro-inspect says why.
inspect=$(arg pyro.inspect) && {
    mkdir -p /mnt/inspect /newroot/mnt/view
    if ! wait_for_block "$inspect"; then
        echo "error: the disk $inspect did not appear" >/newroot/run/pyro-inspect
    elif ! err=$(mount -t ext4 -o ro "$inspect" /mnt/inspect 2>&1); then
        echo "error: the kernel cannot mount it: $err" >/newroot/run/pyro-inspect
    elif ! err=$(mount -t overlay overlay -o ro,lowerdir=/mnt/inspect/upper:/mnt/ro \
            /newroot/mnt/view 2>&1 && mount --bind /mnt/inspect/workspace /newroot/workspace \
            2>&1 && mount --bind /mnt/inspect/workspace /newroot/mnt/view/workspace 2>&1); then
        echo "error: its layers do not assemble: $err" >/newroot/run/pyro-inspect
    else
        echo ok >/newroot/run/pyro-inspect
    fi
}

# Loopback always; eth0 only when the VM has a NIC (pyro.net=ADDRESS/PREFIX,GATEWAY). The guest
# speaks IPv4 only: its network filters IPv6 by having none. The gateway is also its resolver.
ip link set lo up
net=$(arg pyro.net) && {
    echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null
    echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
    ip link set eth0 up && ip addr add "${net%,*}" dev eth0 \
        && ip route add default via "${net#*,}" || fail "cannot configure eth0 from pyro.net=$net"
    rm -f /newroot/etc/resolv.conf
    echo "nameserver ${net#*,}" >/newroot/etc/resolv.conf
}

hostname=$(arg pyro.hostname) || hostname=pyro
echo "$hostname" >/newroot/etc/hostname
hostname "$hostname"
cat >/newroot/etc/inittab <<EOF
::sysinit:/opt/pyro/busybox mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
::sysinit:/opt/pyro/busybox mount -t tmpfs -o mode=1777 tmpfs /dev/shm
::respawn:/usr/bin/env PYTHONPATH=/opt/pyro/lib /usr/bin/python3 -u -m pyro_mcp.agent
::ctrlaltdel:/opt/pyro/busybox reboot -f
EOF

mkdir -p /dev/pts /dev/shm
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /opt/pyro/busybox init
