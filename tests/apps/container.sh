#!/bin/sh
# Runs a command the way a container runtime would, for the end-to-end tests: in mount and
# network namespaces of its own (this script runs under `unshare --mount --net`), with a root of
# its own (a tmpfs holding the host's /usr, /etc, /root, /tmp, /dev, /proc and /sys, the test
# apps at /app) entered with pivot_root, its own loopback, and its own copy of libssl at the
# host's path — so the path a process's maps show names, on the host, a different file than
# the one the process runs.
#
# Usage: unshare --mount --net container.sh ROOT APPS LIBSSL COMMAND [ARGS...]
#   ROOT    an empty directory to mount the root on
#   APPS    the directory mounted at /app, the command's working directory
#   LIBSSL  the real path of the host's libssl, replaced by a copy inside
set -eu
root=$1 apps=$2 libssl=$3
shift 3

mount --make-rprivate /
mount -t tmpfs container "$root"
for dir in usr etc root tmp dev proc sys; do
    mkdir "$root/$dir"
    mount --rbind "/$dir" "$root/$dir"
done
for link in bin sbin lib lib64; do
    ln -s "usr/$link" "$root/$link"
done
mkdir "$root/app"
mount --bind "$apps" "$root/app"
cp "$libssl" "$root/libssl.copy"
mount --bind "$root/libssl.copy" "$root$libssl"

mkdir "$root/.host"
cd "$root"
pivot_root . .host
umount -l /.host
rmdir /.host
ip link set lo up
cd /app
exec "$@"
