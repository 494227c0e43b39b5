#!/bin/sh
# all-notifier.sh: a ZFS Event Daemon (ZED) zedlet turning pool and device events into
# notifier events. A faulted or degraded device opens an alert; the same device back
# ONLINE resolves it. I/O and checksum errors are counted per device, not mailed one by one.
#
# Install (root-owned, not writable by others, or ZED ignores it):
#   install -m 755 all-notifier.sh /etc/zfs/zed.d/all-notifier.sh
#   systemctl restart zfs-zed
# Set ZED_EMAIL_ADDR="" in /etc/zfs/zed.d/zed.rc to stop ZED's own mails if this replaces them.
#
# ZED runs zedlets with ZEVENT_CLASS, ZEVENT_SUBCLASS, ZEVENT_POOL, ZEVENT_VDEV_PATH,
# ZEVENT_VDEV_STATE_STR, ZEVENT_POOL_STATE_STR, ZEVENT_EID... set, and a minimal PATH.
# NOTIFIER (the command, default `notifier`) and NOTIFIER_CONFIG may be set to override;
# NOTIFIER_ZED_VERBOSE=1 also forwards the routine events skipped below, as info.
set -u
PATH="$PATH:/usr/local/bin:/opt/notifier/bin"

class=${ZEVENT_CLASS:-}
subclass=${ZEVENT_SUBCLASS:-${class##*.}}
pool=${ZEVENT_POOL:-}
vdev=${ZEVENT_VDEV_PATH:-${ZEVENT_VDEV_GUID:-}}
vdev_state=${ZEVENT_VDEV_STATE_STR:-}
key=${pool:-unknown pool}${vdev:+ $vdev}
state=event
check=$subclass

case $class in
    resource.fs.zfs.statechange)
        # One identity per device, whatever its state: ONLINE clears what FAULTED opened.
        check=device-state
        case $vdev_state in
            ONLINE)
                severity=info state=resolved
                subject="ZFS pool $pool: $vdev is ONLINE again" ;;
            FAULTED | UNAVAIL | REMOVED)
                severity=critical state=problem
                subject="ZFS pool $pool: $vdev is $vdev_state" ;;
            DEGRADED | OFFLINE)
                severity=warning state=problem
                subject="ZFS pool $pool: $vdev is $vdev_state" ;;
            *)
                severity=info
                subject="ZFS pool $pool: $vdev is ${vdev_state:-in an unknown state}" ;;
        esac ;;
    ereport.fs.zfs.data)
        severity=critical
        subject="ZFS pool $pool: unrecoverable data error (zpool status -v $pool lists the files)" ;;
    ereport.fs.zfs.deadman)
        severity=critical
        subject="ZFS pool $pool: I/O hung on ${vdev:-a device} (deadman)" ;;
    ereport.fs.zfs.io | ereport.fs.zfs.checksum | ereport.fs.zfs.probe_failure | \
    ereport.fs.zfs.delay | ereport.fs.zfs.authentication)
        severity=warning
        subject="ZFS pool $pool: $subclass error on ${vdev:-the pool}" ;;
    ereport.fs.zfs.*)
        severity=warning
        subject="ZFS pool $pool: $subclass" ;;
    sysevent.fs.zfs.scrub_finish | sysevent.fs.zfs.resilver_finish)
        severity=info key=$pool
        subject="ZFS pool $pool: ${subclass%_finish} finished" ;;
    sysevent.fs.zfs.resilver_start)
        severity=info key=$pool
        subject="ZFS pool $pool: resilver started" ;;
    *)
        # history_event, config_sync, scrub_start, pool_import... happen on every zfs
        # command or boot: routine, not worth a mail unless asked for.
        [ "${NOTIFIER_ZED_VERBOSE:-0}" = 1 ] || exit 0
        severity=info
        subject="ZFS ${pool:+pool $pool: }$subclass" ;;
esac

{
    printf 'ZFS event %s (eid %s) at %s\n' "$class" "${ZEVENT_EID:-?}" "${ZEVENT_TIME_STRING:-?}"
    [ -n "$pool" ] && printf 'Pool: %s (%s)\n' "$pool" "${ZEVENT_POOL_STATE_STR:-state unknown}"
    [ -n "$vdev" ] && printf 'Device: %s %s\n' "$vdev" "$vdev_state"
    [ -n "${ZEVENT_VDEV_READ_ERRORS:-}${ZEVENT_VDEV_WRITE_ERRORS:-}${ZEVENT_VDEV_CKSUM_ERRORS:-}" ] &&
        printf 'Errors: read %s, write %s, checksum %s\n' "${ZEVENT_VDEV_READ_ERRORS:-0}" \
            "${ZEVENT_VDEV_WRITE_ERRORS:-0}" "${ZEVENT_VDEV_CKSUM_ERRORS:-0}"
    [ -n "$pool" ] && command -v zpool >/dev/null 2>&1 && { echo; zpool status "$pool" 2>&1; }
    true
} | ${NOTIFIER:-notifier} send ${NOTIFIER_CONFIG:+-c "$NOTIFIER_CONFIG"} \
    --severity "$severity" --subject "$subject" --state "$state" \
    --source zfs --check "$check" --key "$key" --body -
