#!/usr/bin/env bash
# kube.sh: a real one-node Kubernetes (v1.34.4) on loopback for podtrail's cluster tests.
#
# Usage:
#   kube.sh build        Install missing Debian packages (etcd-server, containernetworking-
#                        plugins, containerd, runc, busybox-static, gcc, openssl) and build
#                        (once) kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
#                        and kubectl; print their directory ($PODTRAIL_CACHE/bin/k8s-v1.34.4-r2).
#   kube.sh images       Build (once) and print two OCI image archives, one path a line:
#                        podtrail.test/busybox:1 (Debian's busybox-static, applets in /bin,
#                        CMD ["sh"]) and podtrail.test/pause:3.10 (kubernetes' pause.c).
#   kube.sh start DIR    Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                        a private containerd and a kubelet; return once node 127.0.0.1 is
#                        Ready and untainted and `default` has its ServiceAccount and the
#                        kube-root-ca.crt ConfigMap. A second start on a live DIR only prints.
#   kube.sh stop DIR     Stop everything and remove what the cluster made outside DIR; exit 1
#                        (and say what) if a process, mount, cgroup, netns or bridge is left.
#                        Idempotent; safe after a failed or partial start.
#   kube.sh env DIR      Print DIR/env again.
#
# Environment in (all optional):
#   PODTRAIL_CACHE                 cache root (default /var/cache/podtrail).
#   GO                             Go toolchain for `build` (see lib.sh find_go).
#   KUBE_AUDIT_POLICY              audit policy file (default tests/harness/kube/audit-policy.yaml:
#                                  pods/exec|attach|portforward|ephemeralcontainers at Metadata,
#                                  all stages; everything else None).
#   KUBE_AUDIT_WEBHOOK_KUBECONFIG  if set, the API server also sends audit events to this
#                                  webhook (batch mode, max wait 1 s).
#   KUBE_ADMISSION_CONFIG          file for --admission-control-config-file (e.g. the client
#                                  certificate the API server presents to admission webhooks).
#   KUBE_EXTRA_IMAGES              space-separated OCI archives to import besides busybox/pause.
#   KUBE_POD_CIDR                  the node's pod /24 (default: a free 10.N.0.0/24, N=200..249).
#   KUBE_START_TIMEOUT             seconds to wait for the cluster (default 180).
#   KUBE_API_BIND_ADDRESS          the API server's --bind-address (default 127.0.0.1). Set
#                                  0.0.0.0 to let pods (own network namespace) reach it at
#                                  https://KUBE_GATEWAY_IP:<port>: they have no route to
#                                  the kubernetes Service IP, so a pod's in-cluster config
#                                  needs KUBERNETES_SERVICE_HOST/PORT pointed there. The
#                                  certificate names 127.0.0.1, KUBE_GATEWAY_IP and 10.96.0.1.
#
# Output of `start` (stdout, and the same lines in DIR/env, shell- and dotenv-compatible):
#   KUBECONFIG=DIR/pki/admin.kubeconfig     cluster admin (group system:masters)
#   KUBECONFIG_ALICE=...                    alice@example.com, groups sre, podtrail-exec-allowed
#   KUBECONFIG_MALLORY=...                  mallory@example.com, group contractors
#   KUBE_API=https://127.0.0.1:<port>       KUBE_CA=DIR/pki/ca.crt  KUBE_CA_KEY=DIR/pki/ca.key
#   KUBE_BIN=<dir with kubectl and the other binaries>
#   CONTAINERD_SOCK=DIR/containerd/containerd.sock  CONTAINERD_ROOT=DIR/containerd/root
#   CONTAINERD_NAMESPACE=k8s.io
#   KUBE_AUDIT_LOG=DIR/audit/audit.log      the API server's audit log (JSON lines)
#   KUBE_NODE=127.0.0.1                     the node's name
#   KUBE_CGROUP_ROOT=/sys/fs/cgroup/unified/podtrail-<id>/kubepods
#                                           pods' cgroups in the cgroup2 hierarchy; a container
#                                           is KUBE_CGROUP_ROOT/<qos>/pod<uid>/<container id>
#                                           (<qos>/ is absent for Guaranteed pods)
#   KUBE_CGROUP_PARENT=/podtrail-<id>       kubelet's --cgroup-root (the same path under every
#                                           cgroup v1 controller)
#   KUBE_POD_CIDR=10.N.0.0/24               the node's spec.podCIDR; pods get IPs from it
#   KUBE_GATEWAY_IP=10.N.0.1                the host on the pods' bridge (pods reach it; pods
#                                           have no default route, so nothing leaves the host)
#   KUBE_BRIDGE=ptk<id>                     the bridge interface
#   KUBE_SERVICE_CIDR=10.96.0.0/16          no kube-proxy, no DNS: Service IPs do not route
#   KUBE_DIR=DIR
#   KUBECACHEDIR=DIR/kube-cache             for kubectl: keeps its discovery cache out of ~/.kube
# DIR also holds: <component>/log (etcd, apiserver, controller-manager, scheduler, containerd,
# kubelet), pki/, state (what stop needs), and the data directories.
#
# Images: pods use imagePullPolicy: Never and the refs podtrail.test/busybox:1 (give
# `command:`; the image has CMD ["sh"] and no entrypoint) and any ref in KUBE_EXTRA_IMAGES.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

K8S_VERSION=v1.34.4
# Published version of the k8s.io/* staging modules that belong to K8S_VERSION.
K8S_STAGING_VERSION=v0.34.4
# The build recipe's revision: bump it when the go build flags change, so a cache built by the
# old recipe is not taken for the new one.
K8S_RECIPE=r2
BIN_DIR="$PODTRAIL_CACHE/bin/k8s-$K8S_VERSION-$K8S_RECIPE"
K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
SRC="$PODTRAIL_CACHE/build/kubernetes-$K8S_VERSION"
IMG_DIR="$PODTRAIL_CACHE/images"
BUSYBOX_REF=podtrail.test/busybox:1
PAUSE_REF=podtrail.test/pause:3.10
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
CNI_BIN_DIR=/usr/lib/cni
# The sysctls the kubelet sets when protectKernelDefaults is off, and ip_forward, which the
# bridge plugin turns on for a gateway bridge: saved at start, restored at stop.
SYSCTLS="vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward"

# apt_need PKG...: install the Debian packages that are missing.
apt_need() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}"; } >&2 || die "could not install ${missing[*]}"
}

bins_complete() {
    local b
    for b in $K8S_BINS; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

# ensure_source: the k8s.io/kubernetes module tree at $SRC, made buildable. The module zip
# leaves out staging/ (nested modules are never in a module zip), so each
# `k8s.io/X => ./staging/...` replace is pointed at the published k8s.io/X instead; vendor/
# holds only OWNERS files there and would break -mod=mod, and go.work names staging/.
ensure_source() {
    [ -f "$SRC/go.mod" ] && return 0
    local go=$1 mod
    mkdir -p "$PODTRAIL_CACHE/build"
    mod=$(cd "$PODTRAIL_CACHE/build" && GOWORK=off GOFLAGS=-mod=mod \
        "$go" mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
        || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    rm -rf "$SRC.tmp"
    cp -r "$mod" "$SRC.tmp"
    chmod -R u+w "$SRC.tmp"
    rm -rf "$SRC.tmp/vendor" "$SRC.tmp/go.work" "$SRC.tmp/go.work.sum"
    (
        cd "$SRC.tmp"
        local r
        for r in $("$go" mod edit -json | python3 -c 'import json,sys
d = json.load(sys.stdin)
for x in d.get("Replace") or []:
    if x["New"]["Path"].startswith("./staging"):
        print(x["Old"]["Path"])'); do
            "$go" mod edit "-replace=$r=$r@$K8S_STAGING_VERSION"
        done
    ) >&2 || die "could not rewrite the staging replaces in $SRC.tmp"
    mv "$SRC.tmp" "$SRC"
}

build() {
    apt_need etcd-server containernetworking-plugins containerd runc busybox-static gcc \
        libc6-dev openssl iproute2 util-linux python3
    if bins_complete; then echo "$BIN_DIR"; return; fi
    build_lock "k8s-$K8S_VERSION-$K8S_RECIPE"
    if bins_complete; then echo "$BIN_DIR"; return; fi
    local go
    go=$(find_go)
    log "building Kubernetes $K8S_VERSION with $go (~10 minutes on 2 cores, ~575 MB of modules; cached afterwards)"
    ensure_source "$go"
    rm -rf "$BIN_DIR.tmp"
    mkdir -p "$BIN_DIR.tmp"
    (
        cd "$SRC"
        export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
        "$go" mod download
        # One go build for all five: they share most packages, so this is far cheaper than
        # five builds. -s -w drops ~40% of 440 MB; the -X flags make `--version` truthful
        # (the API server reports it and kubectl warns on skew) and give kubectl the user agent
        # a released kubectl sends (`kubectl/v1.34.4 (linux/amd64) kubernetes/<commit>`, here
        # `kubernetes/unknown`: the module proxy does not say which commit the tag is; client-go
        # builds it from its own version package), which is what audit events and so podtrail's
        # root spans carry. Kubernetes' hack/lib/version.sh sets the same two packages.
        local ld="-s -w" pkg
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
            ld="$ld -X $pkg.gitCommit= -X $pkg.gitTreeState=clean"
        done
        "$go" build -trimpath -ldflags "$ld" \
            -o "$BIN_DIR.tmp/" ./cmd/kube-apiserver ./cmd/kube-controller-manager \
            ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kubectl
    ) >&2 || die "Kubernetes build failed"
    rm -rf "$BIN_DIR"
    mv "$BIN_DIR.tmp" "$BIN_DIR"
    echo "$BIN_DIR"
}

# images: the busybox and pause image archives, rebuilt when oci.py or this script changes.
images() {
    apt_need busybox-static gcc libc6-dev python3
    local bb="$IMG_DIR/busybox-1.tar" pause="$IMG_DIR/pause-3.10.tar"
    if [ "$bb" -nt "$HERE/oci.py" ] && [ "$bb" -nt "$0" ] \
        && [ "$pause" -nt "$HERE/oci.py" ] && [ "$pause" -nt "$0" ]; then
        printf '%s\n%s\n' "$bb" "$pause"; return
    fi
    [ -f "$HERE/oci.py" ] || die "$HERE/oci.py is missing"
    mkdir -p "$IMG_DIR"
    build_lock images
    local work a
    work=$(mktemp -d)
    (
        set -e
        # busybox: the static binary, one symlink per applet, and the files a shell and `id`
        # expect. Everything in /bin keeps PATH trivial.
        r="$work/busybox"
        mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/proc" "$r/sys" "$r/dev"
        cp /bin/busybox "$r/bin/busybox"
        for a in $("$r/bin/busybox" --list); do
            [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
        done
        chmod 1777 "$r/tmp"
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
        printf 'root:x:0:\nnobody:x:65534:\n' >"$r/etc/group"
        python3 "$HERE/oci.py" --ref "$BUSYBOX_REF" --rootfs "$r" --cmd '["sh"]' \
            --env PATH=/bin --out "$bb" >/dev/null
        # pause: kubernetes' own sandbox process, static so the image needs nothing else.
        p="$work/pause"
        mkdir -p "$p"
        [ -f "$SRC/build/pause/linux/pause.c" ] || {
            go=$(find_go); ensure_source "$go"; }
        gcc -Os -Wall -static -DVERSION=v3.10-podtrail -o "$p/pause" \
            "$SRC/build/pause/linux/pause.c"
        strip "$p/pause"
        python3 "$HERE/oci.py" --ref "$PAUSE_REF" --rootfs "$p" --entrypoint '["/pause"]' \
            --user 65535:65535 --out "$pause" >/dev/null
    ) >&2 || { rm -rf "$work"; die "image build failed"; }
    rm -rf "$work"
    printf '%s\n%s\n' "$bb" "$pause"
}

# ---------------------------------------------------------------------------------------
# start

# running PID: the process exists and is not a zombie (this machine's init reaps orphans only
# every second or so, and a zombie holds nothing).
running() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

alive() { [ -f "$1/pid" ] && running "$(cat "$1/pid")"; }

# stop_daemons SIG DIR/NAME...: signal them all at once, KILL what is left after 5 s. A pid counts
# only while its command line still names DIR (every component's does), so a stale pid file
# from a crashed run never kills an unrelated process that reused the pid.
stop_daemons() {
    local sig=$1 d pid pids="" i
    shift
    for d in "$@"; do
        [ -f "$d/pid" ] || continue
        pid=$(cat "$d/pid")
        { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$(dirname "$d")/" \
            && pids+=" $pid"
        rm -f "$d/pid"
    done
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill "-$sig" $pids 2>/dev/null || true
    for i in $(seq 1 100); do
        [ "$i" -eq 50 ] && { kill -KILL $pids 2>/dev/null || true; }
        local up=""
        for pid in $pids; do running "$pid" && up=1; done
        [ -n "$up" ] || return 0
        sleep 0.1
    done
}

# launch DIR/NAME CMD...: run a daemon in its own session (a test runner's Ctrl-C must not
# kill half a cluster), logging to DIR/NAME/log.
launch() {
    local d=$1; shift
    mkdir -p "$d"
    setsid "$@" >"$d/log" 2>&1 </dev/null &
    echo $! >"$d/pid"
}

# wait_for SECONDS WHAT CMD...: 0 once CMD succeeds, else 1 after SECONDS.
wait_for() {
    local secs=$1 what=$2 end; shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then log "timed out waiting for $what"; return 1; fi
        sleep 0.25
    done
}

# wait_up SECONDS WHAT DIR/NAME... -- CMD...: like wait_for, but gives up at once when one of
# the daemons has exited (a bad flag or config kills them in the first second).
wait_up() {
    local secs=$1 what=$2 end d; shift 2
    local daemons=()
    while [ "$1" != -- ]; do daemons+=("$1"); shift; done
    shift
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        for d in "${daemons[@]}"; do
            alive "$d" || { log "$(basename "$d") exited while waiting for $what"; return 1; }
        done
        if [ "$SECONDS" -ge "$end" ]; then log "timed out waiting for $what"; return 1; fi
        sleep 0.25
    done
}

# mkcert PKI NAME SUBJECT EKU [SAN]: an ECDSA P-256 key and a certificate signed by PKI/ca.
mkcert() {
    local pki=$1 name=$2 subj=$3 eku=$4 san=${5:-}
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [ -z "$san" ] || echo "subjectAltName=$san"
    } >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAserial "$pki/ca.srl" -CAcreateserial -days 365 -sha256 \
        -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# kubeconfig FILE USER CERTNAME: a self-contained kubeconfig (everything embedded, so a test
# may copy it anywhere).
kubeconfig() {
    local file=$1 user=$2 pki=$DIR/pki
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podtrail
  cluster:
    server: https://127.0.0.1:$P_API
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$3.crt")
    client-key-data: $(base64 -w0 "$pki/$3.key")
contexts:
- name: $user@podtrail
  context:
    cluster: podtrail
    user: $user
    namespace: default
current-context: $user@podtrail
EOF
    chmod 600 "$file"
}

make_pki() {
    local pki=$DIR/pki
    rm -rf "$pki"; mkdir -p "$pki"; chmod 700 "$pki"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=podtrail-test-ca-$ID" -days 365 \
        -sha256 -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$pki/ca.crt"
    mkcert "$pki" apiserver /CN=kube-apiserver serverAuth \
        "IP:127.0.0.1,IP:$SERVICE_IP,IP:$GATEWAY_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    mkcert "$pki" apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" clientAuth
    mkcert "$pki" admin "/CN=podtrail-admin/O=system:masters" clientAuth
    mkcert "$pki" controller-manager /CN=system:kube-controller-manager clientAuth
    mkcert "$pki" scheduler /CN=system:kube-scheduler clientAuth
    mkcert "$pki" kubelet-client "/CN=system:node:127.0.0.1/O=system:nodes" clientAuth
    mkcert "$pki" kubelet /CN=127.0.0.1 serverAuth "IP:127.0.0.1,DNS:localhost"
    mkcert "$pki" alice "/CN=alice@example.com/O=sre/O=podtrail-exec-allowed" clientAuth
    mkcert "$pki" mallory "/CN=mallory@example.com/O=contractors" clientAuth
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/sa.key" 2>/dev/null
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    kubeconfig "$pki/admin.kubeconfig" podtrail-admin admin
    kubeconfig "$pki/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
    kubeconfig "$pki/scheduler.kubeconfig" system:kube-scheduler scheduler
    kubeconfig "$pki/kubelet.kubeconfig" system:node:127.0.0.1 kubelet-client
    kubeconfig "$pki/alice.kubeconfig" alice@example.com alice
    kubeconfig "$pki/mallory.kubeconfig" mallory@example.com mallory
}

# pick_pod_cidr: a 10.N.0.0/24 (N in 200..249) that no interface or route on this machine
# uses. The search starts at a place derived from DIR, because a cluster's bridge (and its
# route) only appears with its first pod: two clusters starting together would otherwise both
# take the first free N.
pick_pod_cidr() {
    local n i used
    used=$( { ip -4 route show table all; ip -4 addr show; } 2>/dev/null)
    for i in $(seq 0 49); do
        n=$((200 + (16#$ID + i) % 50))
        if ! grep -qE "(^|[^0-9.])10\.$n\." <<<"$used"; then echo "10.$n.0.0/24"; return; fi
    done
    die "no free 10.N.0.0/24 (N=200..249) for pods; set KUBE_POD_CIDR"
}

# cgroup_mounts: the mount points of every cgroup hierarchy (v1 controllers, named v1
# hierarchies, and cgroup2), one a line.
cgroup_mounts() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }

cgroup2_mount() { findmnt -rn -t cgroup2 -o TARGET | head -n1; }

start() {
    local dir=${1:?usage: kube.sh start DIR}
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    DIR=$dir
    if [ -f "$dir/env" ] && alive "$dir/apiserver" && alive "$dir/kubelet"; then
        cat "$dir/env"; return
    fi
    # Whatever a failed or killed earlier start left behind goes first.
    ( stop "$dir" ) >/dev/null 2>&1 || true
    local t0=$SECONDS bin imgs timeout=${KUBE_START_TIMEOUT:-180}
    bin=$(build)
    mapfile -t imgs < <(images)
    [ ${#imgs[@]} -eq 2 ] || die "images did not give two archives"
    local x
    for x in ${KUBE_EXTRA_IMAGES:-}; do [ -f "$x" ] || die "KUBE_EXTRA_IMAGES: $x is not a file"; done
    local policy=${KUBE_AUDIT_POLICY:-$HERE/kube/audit-policy.yaml}
    [ -f "$policy" ] || die "audit policy $policy is not a file"
    [ -z "${KUBE_AUDIT_WEBHOOK_KUBECONFIG:-}" ] || [ -f "$KUBE_AUDIT_WEBHOOK_KUBECONFIG" ] \
        || die "KUBE_AUDIT_WEBHOOK_KUBECONFIG=$KUBE_AUDIT_WEBHOOK_KUBECONFIG is not a file"
    [ -z "${KUBE_ADMISSION_CONFIG:-}" ] || [ -f "$KUBE_ADMISSION_CONFIG" ] \
        || die "KUBE_ADMISSION_CONFIG=$KUBE_ADMISSION_CONFIG is not a file"
    command -v etcd >/dev/null || die "etcd not found (Debian package etcd-server)"
    [ -x "$CNI_BIN_DIR/bridge" ] || die "$CNI_BIN_DIR/bridge missing (containernetworking-plugins)"

    # Names derived from DIR: two clusters in two DIRs never share a bridge, CNI network,
    # cgroup parent or IPAM store, and stop can find each one from DIR alone.
    ID=$(printf %s "$dir" | sha256sum | cut -c1-8)
    local bridge=ptk$ID net=podtrail-$ID cgparent=/podtrail-$ID
    local cidr=${KUBE_POD_CIDR:-$(pick_pod_cidr)}
    local gw
    GATEWAY_IP=$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[1])' "$cidr") \
        || die "KUBE_POD_CIDR=$cidr is not a network"
    gw=$GATEWAY_IP
    local sock=$dir/containerd/containerd.sock
    [ ${#sock} -lt 100 ] || die "DIR is too long for a unix socket path: $sock"
    cat >"$dir/state" <<EOF
ID=$ID
BRIDGE=$bridge
CNI_NETWORK=$net
CGROUP_PARENT=$cgparent
CONTAINERD_SOCK=$sock
EOF
    # Machine directories the kubelet, libcni and the shims create when missing: stop removes
    # them again if it finds them empty.
    for x in /var/log/containers /var/lib/cni /run/containerd; do
        [ -e "$x" ] || echo "CREATED_DIRS=\"\${CREATED_DIRS:-} $x\"" >>"$dir/state"
    done
    P_ETCD=$(free_port); P_PEER=$(free_port); P_API=$(free_port)
    local p_kubelet p_khealth
    p_kubelet=$(free_port); p_khealth=$(free_port)

    make_pki
    local pki=$dir/pki kubectl=$bin/kubectl admin=$dir/pki/admin.kubeconfig
    # kubectl's discovery and HTTP caches stay in DIR, not in ~/.kube.
    export KUBECACHEDIR=$dir/kube-cache
    for x in etcd apiserver controller-manager scheduler kubelet; do rm -f "$dir/$x/log"; done

    # etcd (Debian's 3.4): loopback only, its own data dir.
    rm -rf "$dir/etcd"
    launch "$dir/etcd" etcd --name podtrail --data-dir "$dir/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$P_ETCD" \
        --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
        --listen-peer-urls "http://127.0.0.1:$P_PEER" \
        --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
        --initial-cluster "podtrail=http://127.0.0.1:$P_PEER" --initial-cluster-state new \
        --logger zap --log-outputs stderr

    # containerd: its own config, root, state, socket and runc root. CRI config schema
    # version 2 (containerd 1.6). restrict_oom_score_adj: this machine's capability bounding
    # set lacks CAP_SYS_RESOURCE, so runc cannot give the sandbox a negative oom_score_adj.
    rm -rf "$dir/containerd" "$dir/cni"
    mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam"
    cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Sandbox network namespaces under DIR, not /run/netns: stop finds them with the other
  # mounts under DIR.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
EOF
    # The pods' network: one bridge, host-local addresses from the node's podCIDR, no NAT.
    # Only the pod subnet is routed, so a pod reaches the host at the gateway address and
    # nothing beyond the machine (no default route, no masquerade).
    cat >"$dir/cni/net.d/10-$net.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$cidr", "gateway": "$gw"}]],
        "routes": [{"dst": "$cidr"}],
        "dataDir": "$dir/cni/ipam"
      }
    }
  ]
}
EOF
    launch "$dir/containerd" containerd --config "$dir/containerd/config.toml"

    wait_up 30 etcd "$dir/etcd" -- wait_http "http://127.0.0.1:$P_ETCD/health" 1 \
        || fail_start "etcd did not become healthy"

    # kube-apiserver
    # A fresh audit log: tests read it from the start.
    rm -rf "$dir/audit"; mkdir -p "$dir/audit"
    local api_args=(
        --bind-address="${KUBE_API_BIND_ADDRESS:-127.0.0.1}" --secure-port="$P_API"
        --etcd-servers="http://127.0.0.1:$P_ETCD"
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key"
        --client-ca-file="$pki/ca.crt"
        --service-account-issuer=https://kubernetes.default.svc.cluster.local
        --service-account-key-file="$pki/sa.pub"
        --service-account-signing-key-file="$pki/sa.key"
        --service-cluster-ip-range="$SERVICE_CIDR"
        --authorization-mode=Node,RBAC
        --enable-admission-plugins=NodeRestriction
        --allow-privileged=true
        # One API server and no kube-proxy: nothing should maintain the kubernetes
        # Service's endpoints (they would point at this machine's eth0 address).
        --endpoint-reconciler-type=none
        --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt"
        --kubelet-client-key="$pki/apiserver-kubelet-client.key"
        --kubelet-certificate-authority="$pki/ca.crt"
        # The node's Hostname address is 127.0.0.1 (--hostname-override); its InternalIP is
        # eth0's, which the kubelet does not listen on.
        --kubelet-preferred-address-types=Hostname
        --audit-policy-file="$policy"
        --audit-log-path="$dir/audit/audit.log" --audit-log-format=json
        --profiling=false
    )
    if [ -n "${KUBE_AUDIT_WEBHOOK_KUBECONFIG:-}" ]; then
        api_args+=(--audit-webhook-config-file="$KUBE_AUDIT_WEBHOOK_KUBECONFIG"
            --audit-webhook-mode=batch --audit-webhook-batch-max-wait=1s)
    fi
    if [ -n "${KUBE_ADMISSION_CONFIG:-}" ]; then
        api_args+=(--admission-control-config-file="$KUBE_ADMISSION_CONFIG")
    fi
    launch "$dir/apiserver" "$bin/kube-apiserver" "${api_args[@]}"

    wait_up 30 containerd "$dir/containerd" -- "$(command -v ctr)" -a "$sock" version \
        || fail_start "containerd did not answer on $sock"
    for x in "${imgs[@]}" ${KUBE_EXTRA_IMAGES:-}; do
        ctr -a "$sock" -n k8s.io images import "$x" >"$dir/containerd/import.log" 2>&1 \
            || { cat "$dir/containerd/import.log" >&2; fail_start "could not import $x"; }
    done

    wait_up "$timeout" "kube-apiserver /readyz" "$dir/apiserver" -- \
        "$kubectl" --kubeconfig "$admin" get --raw=/readyz \
        || fail_start "kube-apiserver did not become ready"
    "$kubectl" --kubeconfig "$admin" apply -f "$HERE/kube/rbac.yaml" >&2 \
        || fail_start "could not apply $HERE/kube/rbac.yaml"

    launch "$dir/controller-manager" "$bin/kube-controller-manager" \
        --kubeconfig="$pki/controller-manager.kubeconfig" \
        --secure-port=0 --leader-elect=false \
        --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --allocate-node-cidrs=true --cluster-cidr="$cidr" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" --configure-cloud-routes=false
    launch "$dir/scheduler" "$bin/kube-scheduler" \
        --kubeconfig="$pki/scheduler.kubeconfig" --secure-port=0 --leader-elect=false

    # kubelet. Its cgroup root is a parent of our own (/podtrail-ID, which must exist in
    # every hierarchy before it starts), so stop removes exactly this cluster's cgroups.
    local m
    for m in $(cgroup_mounts); do
        mkdir -p "$m$cgparent"
        # A new cgroup v1 cpuset is empty: copy the parent's so children can take tasks.
        if [ -f "$m/cpuset.cpus" ]; then
            cat "$m/cpuset.cpus" >"$m$cgparent/cpuset.cpus"
            cat "$m/cpuset.mems" >"$m$cgparent/cpuset.mems"
        fi
    done
    if [ ! -f "$dir/sysctl.saved" ]; then
        for x in $SYSCTLS; do echo "$x=$(cat "/proc/sys/$x")"; done >"$dir/sysctl.saved.tmp"
        mv "$dir/sysctl.saved.tmp" "$dir/sysctl.saved"
    fi
    mkdir -p "$dir/kubelet/root" "$dir/kubelet/pod-logs" "$dir/kubelet/volume-plugins"
    cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $p_kubelet
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $p_khealth
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupRoot: $cgparent
cgroupsPerQOS: true
failSwapOn: false
clusterDomain: cluster.local
podLogsDir: $dir/kubelet/pod-logs
volumePluginDir: $dir/kubelet/volume-plugins
serializeImagePulls: false
# Never garbage-collect the imported images (they cannot be pulled again) and never evict
# test pods because a shared CI disk is fuller than usual.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
EOF
    launch "$dir/kubelet" "$bin/kubelet" --config="$dir/kubelet/config.yaml" \
        --kubeconfig="$pki/kubelet.kubeconfig" --hostname-override=127.0.0.1 \
        --root-dir="$dir/kubelet/root" --v=2

    node_ready() {
        local out
        out=$("$kubectl" --kubeconfig "$admin" get node 127.0.0.1 -o \
            'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.podCIDR} {.spec.taints}')
        [ "$out" = "True $cidr " ]
    }
    wait_up "$timeout" "node 127.0.0.1 Ready with podCIDR $cidr and no taints" \
        "$dir/apiserver" "$dir/controller-manager" "$dir/scheduler" "$dir/containerd" \
        "$dir/kubelet" -- node_ready \
        || fail_start "node did not become Ready (kubelet log: $dir/kubelet/log)"
    wait_for 60 "ServiceAccount default/default" \
        "$kubectl" --kubeconfig "$admin" -n default get serviceaccount default \
        || fail_start "no default ServiceAccount (controller-manager log: $dir/controller-manager/log)"
    wait_for 60 "ConfigMap default/kube-root-ca.crt" \
        "$kubectl" --kubeconfig "$admin" -n default get configmap kube-root-ca.crt \
        || fail_start "no kube-root-ca.crt ConfigMap"

    cat >"$dir/env" <<EOF
KUBECONFIG=$admin
KUBECONFIG_ALICE=$pki/alice.kubeconfig
KUBECONFIG_MALLORY=$pki/mallory.kubeconfig
KUBE_API=https://127.0.0.1:$P_API
KUBE_CA=$pki/ca.crt
KUBE_CA_KEY=$pki/ca.key
KUBE_BIN=$bin
CONTAINERD_SOCK=$sock
CONTAINERD_ROOT=$dir/containerd/root
CONTAINERD_NAMESPACE=k8s.io
KUBE_AUDIT_LOG=$dir/audit/audit.log
KUBE_NODE=127.0.0.1
KUBE_CGROUP_ROOT=$(cgroup2_mount)$cgparent/kubepods
KUBE_CGROUP_PARENT=$cgparent
KUBE_POD_CIDR=$cidr
KUBE_GATEWAY_IP=$gw
KUBE_BRIDGE=$bridge
KUBE_SERVICE_CIDR=$SERVICE_CIDR
KUBE_DIR=$dir
KUBECACHEDIR=$dir/kube-cache
EOF
    log "cluster up in $((SECONDS - t0)) s (logs in $dir/*/log)"
    cat "$dir/env"
}

# fail_start MESSAGE: show the logs that explain it, tear down, exit 1.
fail_start() {
    local c
    for c in etcd containerd apiserver controller-manager scheduler kubelet; do
        [ -f "$DIR/$c/log" ] || continue
        log "--- last lines of $DIR/$c/log"
        tail -n 15 "$DIR/$c/log" >&2 || true
    done
    ( stop "$DIR" ) >&2 || true
    die "$1"
}

# ---------------------------------------------------------------------------------------
# stop

# our_ancestors: this script's pid and its ancestors (their command lines may name DIR, and
# the sweep must not kill the caller).
our_ancestors() {
    local p=$$
    while [ -n "$p" ] && [ "$p" != 0 ]; do
        echo "$p"
        p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    done
}

# pids_naming TEXT: processes whose command line contains TEXT, except this script (and the
# subshell running this function) and its callers.
pids_naming() {
    local text=$1 skip f pid
    skip=" $BASHPID $(our_ancestors | tr '\n' ' ') "
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        case "$skip" in *" $pid "*) continue ;; esac
        { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$text" && echo "$pid"
    done
    return 0
}

# cgroup_pids PARENT: every process in the cgroup subtree PARENT of any hierarchy.
cgroup_pids() {
    local m
    for m in $(cgroup_mounts); do
        [ -d "$m$1" ] || continue
        find "$m$1" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
    findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' \
        | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

stop() {
    local dir=${1:?usage: kube.sh stop DIR}
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    local ID="" BRIDGE="" CNI_NETWORK="" CGROUP_PARENT="" CONTAINERD_SOCK="" CREATED_DIRS=""
    if [ -f "$dir/state" ]; then . "$dir/state"; fi
    local kubectl=$BIN_DIR/kubectl admin=$dir/pki/admin.kubeconfig sock=$CONTAINERD_SOCK
    export KUBECACHEDIR=$dir/kube-cache
    local t0=$SECONDS c p id

    # 1. Nothing may re-create pods while they go: controllers first.
    # They hold no state worth a graceful exit (KILL saves ~2 s a stop).
    stop_daemons KILL "$dir/controller-manager" "$dir/scheduler"
    # 2. Let the kubelet tear pods down the proper way (CNI DEL, netns removed, volumes
    # unmounted): delete them with no grace and wait for their tasks to end.
    if alive "$dir/apiserver" && alive "$dir/kubelet" && [ -x "$kubectl" ] \
        && timeout 5 "$kubectl" --kubeconfig "$admin" get --raw=/readyz >/dev/null 2>&1; then
        timeout 20 "$kubectl" --kubeconfig "$admin" delete pods --all --all-namespaces \
            --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
        if alive "$dir/containerd"; then
            running_tasks() { ctr -a "$sock" -n k8s.io tasks ls 2>/dev/null | awk 'NR>1 && $3=="RUNNING"' | grep -q .; }
            wait_for 5 "pods to stop" eval '! running_tasks' || true
        fi
    fi
    stop_daemons KILL "$dir/kubelet"

    # 3. Kill what is left of the containers. Remember their network namespaces first: a
    # sandbox that was not torn down keeps its /run/netns/cni-* bind mount.
    local netns_inodes=""
    if [ -n "$CGROUP_PARENT" ]; then
        for p in $(cgroup_pids "$CGROUP_PARENT"); do
            netns_inodes+=" $(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null || true)"
        done
    fi
    if [ -n "$sock" ] && alive "$dir/containerd"; then
        for c in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr -a "$sock" -n k8s.io tasks kill -a -s SIGKILL "$c" >/dev/null 2>&1 || true
        done
    fi
    local i
    for i in $(seq 1 20); do
        local left=""
        [ -z "$CGROUP_PARENT" ] || left=$(cgroup_pids "$CGROUP_PARENT")
        [ -n "$left" ] || break
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.2
    done
    # The shims (one per pod) name our containerd's socket in their command lines.
    if [ -n "$sock" ]; then
        for p in $(pids_naming "$sock"); do
            [ "$p" = "$(cat "$dir/containerd/pid" 2>/dev/null)" ] || kill -KILL "$p" 2>/dev/null || true
        done
    fi

    # 4. containerd, then the control plane and etcd.
    # TERM: the API server flushes its batched audit webhook events on the way out.
    stop_daemons TERM "$dir/containerd" "$dir/apiserver" "$dir/etcd"
    # 5. Anything else still naming DIR (a stray kubectl port-forward, a shim of a previous
    # run whose pid file is gone).
    for i in 1 2 3; do
        local stray
        stray=$(pids_naming "$dir/")
        [ -n "$stray" ] || break
        # shellcheck disable=SC2086
        kill -KILL $stray 2>/dev/null || true
        sleep 0.3
    done

    # 6. Mounts: kubelet's volumes and its rshared bind of its root dir, containerd's rootfs
    # and shm mounts. Deepest first; lazily if something still holds one.
    local mnt
    for i in 1 2 3 4 5; do
        local any=""
        while read -r mnt; do
            [ -n "$mnt" ] || continue
            any=1
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        done < <(mounts_under "$dir")
        [ -n "$any" ] || break
    done
    # Network namespaces of our sandboxes in /run/netns (only if netns_mounts_under_state_dir
    # was not honoured).
    local ns ino
    for ns in /run/netns/cni-*; do
        [ -e "$ns" ] || continue
        ino=$(stat -L -c %i "$ns" 2>/dev/null || true)
        case " $netns_inodes " in
            *" $ino "*) umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
                rm -f "$ns" ;;
        esac
    done

    # 7. cgroups: this cluster's parent in every hierarchy, leaves first.
    if [ -n "$CGROUP_PARENT" ]; then
        local m
        for i in 1 2 3 4 5; do
            for m in $(cgroup_mounts); do
                [ -d "$m$CGROUP_PARENT" ] || continue
                find "$m$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            done
            [ -z "$(for m in $(cgroup_mounts); do [ -d "$m$CGROUP_PARENT" ] && echo x; done)" ] && break
            sleep 0.3
        done
    fi

    # 8. Network and files outside DIR: the bridge, libcni's result cache for our network,
    # the kubelet's /var/log/containers links, the shims' sockets in /run/containerd/s
    # (containerd 1.6 puts them there whatever its state dir: sha256(address/ns/id)).
    [ -z "$BRIDGE" ] || ip link del "$BRIDGE" 2>/dev/null || true
    # libcni caches one result per sandbox and network: ours ("$CNI_NETWORK-<id>-eth0") and
    # the loopback one containerd adds ("cni-loopback-<id>-lo").
    if [ -n "$CNI_NETWORK" ]; then
        rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
    fi
    for id in "$dir"/containerd/state/io.containerd.grpc.v1.cri/sandboxes/* \
        "$dir"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do
        [ -e "$id" ] || continue
        rm -f "/var/lib/cni/results/cni-loopback-$(basename "$id")-lo"
    done
    for p in /var/log/containers/*; do
        [ -L "$p" ] || continue
        case "$(readlink "$p")" in "$dir"/*) rm -f "$p" ;; esac
    done
    if [ -n "$sock" ] && [ -d "$dir/containerd/state/io.containerd.runtime.v2.task" ]; then
        local nsdir id h
        for nsdir in "$dir/containerd/state/io.containerd.runtime.v2.task"/*; do
            [ -d "$nsdir" ] || continue
            for id in "$nsdir"/*; do
                [ -e "$id" ] || continue
                h=$(printf %s "$sock/$(basename "$nsdir")/$(basename "$id")" | sha256sum | cut -d' ' -f1)
                rm -f "/run/containerd/s/$h"
            done
        done
    fi
    for p in $CREATED_DIRS; do
        [ -d "$p" ] && find "$p" -depth -type d -empty -delete 2>/dev/null || true
    done
    # 9. The kernel settings the kubelet and the bridge plugin changed.
    if [ -f "$dir/sysctl.saved" ]; then
        local kv
        while IFS= read -r kv; do
            echo "${kv#*=}" >"/proc/sys/${kv%%=*}" 2>/dev/null || log "could not restore ${kv%%=*}"
        done <"$dir/sysctl.saved"
        rm -f "$dir/sysctl.saved"
    fi
    # Bulky data goes (only once nothing is mounted there: --one-file-system guards it too).
    if [ -z "$(mounts_under "$dir")" ]; then
        rm -rf --one-file-system "$dir/containerd/root" "$dir/containerd/state" \
            "$dir/containerd/runc" "$dir/kubelet/root" "$dir/etcd/data" 2>/dev/null || true
    fi

    # 10. Prove nothing is left.
    local problems=""
    p=$(pids_naming "$dir/" | tr '\n' ' ')
    [ -z "$p" ] || problems+="processes naming $dir: $p; "
    mnt=$(mounts_under "$dir" | tr '\n' ' ')
    [ -z "$mnt" ] || problems+="mounts: $mnt; "
    if [ -n "$CGROUP_PARENT" ]; then
        for m in $(cgroup_mounts); do
            [ ! -d "$m$CGROUP_PARENT" ] || problems+="cgroup $m$CGROUP_PARENT; "
        done
    fi
    if [ -n "$BRIDGE" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
        problems+="bridge $BRIDGE; "
    fi
    for ns in /run/netns/cni-*; do
        [ -e "$ns" ] || continue
        ino=$(stat -L -c %i "$ns" 2>/dev/null || true)
        case " $netns_inodes " in *" $ino "*) problems+="netns $ns; " ;; esac
    done
    [ -z "$problems" ] || die "stop left: $problems"
    log "stopped in $((SECONDS - t0)) s; nothing left"
}

case "${1:-}" in
    build) build ;;
    images) images ;;
    start) start "${2:-}" ;;
    stop) stop "${2:?usage: kube.sh stop DIR}" ;;
    env) cat "${2:?usage: kube.sh env DIR}/env" ;;
    *) sed -n '2,62p' "$0" >&2; exit 2 ;;
esac
