#!/bin/bash
# castle-bridge Proxmox VE hookscript: announce a Talos VM to castle-bridge when it has started
# (post-start -> vm.created) and before it is destroyed (pre-destroy -> vm.destroyed).
#
# Install on every Proxmox node (the snippets storage must be shared, or the file present on each node):
#   install -m 0755 castle-bridge-hook.sh /var/lib/vz/snippets/castle-bridge-hook.sh
#   install -d -m 0700 /etc/castle-bridge
#   (umask 077; cat > /etc/castle-bridge/webhook-token)      # paste the token, then Ctrl-D
#   qm set <vmid> --hookscript local:snippets/castle-bridge-hook.sh
#
# What it sends: the VM name (a DNS label: the node's hostname), its management IP (cloud-init ipconfig0,
# else the map file below), its role (a `controlplane` tag, else worker), vmid, Proxmox node and tags.
#
# Settings (environment, or /etc/castle-bridge/hook.env):
#   CASTLE_BRIDGE_HOOK_URL         default http://127.0.0.1:8780/v1/hooks/proxmox
#   CASTLE_BRIDGE_HOOK_TOKEN_FILE  default /etc/castle-bridge/webhook-token (must be root-only: chmod 600)
#   CASTLE_BRIDGE_HOOK_NODES       default /etc/castle-bridge/nodes: "<vmid> <ip> [role]" per line, for VMs
#                                  without ipconfig0
#
# The token never appears in a process argument list (visible to every user in /proc): it is read with the
# shell builtin `read` and handed to curl as configuration on its standard input (`--config -`).
# Retries are safe: one Idempotency-Key per VM start/destroy, so the daemon stores the event once.
# A hook must never get in the way of a VM: every failure is logged to stderr (the task log) and the
# script exits 0.

set -uo pipefail

vmid="${1:-}"
phase="${2:-}"

case "$phase" in
    post-start) event=created ;;
    pre-destroy) event=destroyed ;;
    *) exit 0 ;; # pre-start, pre-stop, post-stop, ...: nothing to announce
esac

log() { echo "castle-bridge hook: VM ${vmid} ${phase}: $*" >&2; }

if [[ ! "$vmid" =~ ^[0-9]+$ ]]; then
    log "not a VM id; called as: hookscript <vmid> <phase>"
    exit 0
fi

hook_env="${CASTLE_BRIDGE_HOOK_ENV:-/etc/castle-bridge/hook.env}"
# shellcheck disable=SC1090
[ -r "$hook_env" ] && . "$hook_env"
url="${CASTLE_BRIDGE_HOOK_URL:-http://127.0.0.1:8780/v1/hooks/proxmox}"
token_file="${CASTLE_BRIDGE_HOOK_TOKEN_FILE:-/etc/castle-bridge/webhook-token}"
nodes_file="${CASTLE_BRIDGE_HOOK_NODES:-/etc/castle-bridge/nodes}"

# -- the token: root-only file, builtins only -----------------------------------------------------------
if [ ! -r "$token_file" ]; then
    log "cannot read the webhook token file ${token_file}; nothing sent"
    exit 0
fi
mode=$(stat -c '%a' "$token_file")
if (( 8#$mode & 8#077 )); then
    log "${token_file} is readable by others (mode ${mode}): chmod 600 it; nothing sent"
    exit 0
fi
IFS= read -r token <"$token_file" || true
if [[ ! "$token" =~ ^[A-Za-z0-9._~+/=-]{16,}$ ]]; then
    log "the token in ${token_file} must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = -; nothing sent"
    exit 0
fi

# -- what the VM is ---------------------------------------------------------------------------------------
if ! config=$(qm config "$vmid" 2>&1); then
    log "qm config failed: ${config}"
    exit 0
fi
field() { printf '%s\n' "$config" | sed -n "s/^$1: //p" | head -n 1; }

name=$(field name | tr '[:upper:]' '[:lower:]')
if [[ ! "$name" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; then
    log "VM name '${name}' is not a DNS label (the node's hostname); nothing sent"
    exit 0
fi

role=worker
tags_json=""
IFS=';, ' read -r -a tags <<<"$(field tags)"
for tag in "${tags[@]}"; do
    [[ "$tag" =~ ^[A-Za-z0-9_.-]+$ ]] || continue
    tags_json+="${tags_json:+,}\"${tag}\""
    [[ "$tag" == controlplane || "$tag" == control-plane ]] && role=controlplane
done

ip=$(field ipconfig0 | sed -n 's/.*ip=\([0-9.]*\)\/.*/\1/p')
if [ -z "$ip" ] && [ -r "$nodes_file" ]; then
    read -r ip map_role < <(awk -v id="$vmid" '$1 == id { print $2, $3; exit }' "$nodes_file")
    [ -n "${map_role:-}" ] && role="$map_role"
fi

idempotency="pve-$(hostname -s)-${vmid}-${phase}"
if [ "$event" = created ]; then
    if [[ ! "$ip" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
        log "no management IP (cloud-init ipconfig0 or ${nodes_file}); nothing sent"
        exit 0
    fi
    # One key per start of this VM: the QEMU pid file is written once per start.
    started=$(stat -c '%Y' "/var/run/qemu-server/${vmid}.pid" 2>/dev/null || date +%s)
    idempotency+="-${started}"
    body=$(printf '{"event":"created","name":"%s","ip":"%s","vmid":%s,"role":"%s","proxmox_node":"%s","tags":[%s]}' \
        "$name" "$ip" "$vmid" "$role" "$(hostname -s)" "$tags_json")
else
    idempotency+="-$(date +%s)"
    body=$(printf '{"event":"destroyed","name":"%s","vmid":%s}' "$name" "$vmid")
fi

# -- send: curl retries 408/429/5xx and refused connections with the same Idempotency-Key ----------------
answer=$(printf 'header = "Authorization: Bearer %s"\n' "$token" |
    curl --config - --silent --show-error \
        --max-time 10 --retry 6 --retry-delay 2 --retry-max-time 60 --retry-connrefused \
        --header "Content-Type: application/json" \
        --header "Idempotency-Key: ${idempotency}" \
        --data-binary "$body" \
        --write-out '\n%{http_code}' \
        "$url" 2>&1)
status="${answer##*$'\n'}"
case "$status" in
    200 | 202) log "vm.${event} for ${name} accepted (HTTP ${status})" ;;
    *) log "vm.${event} for ${name} NOT accepted (HTTP ${status}): ${answer%$'\n'*}" ;;
esac
exit 0
