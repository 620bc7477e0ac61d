# The docker@qemu engine VM's command (run by the guest bootstrap as `/bin/sh -c`; see
# pytest_hostperf/environments/qemu/engine_vm.py). containerd is started first and waited
# for: dockerd's own start of it timed out in a TCG guest on a loaded host. No iptables and
# no bridge: containers get network "none" (hostperf's default), so the VM needs neither
# netfilter nor a docker0. The controller stops the engine by writing a line to the agent
# port; the script then waits for dockerd so the data disk is left clean.
set -u
containerd --log-level=warn >/dev/console 2>&1 &
containerd=$!
tries=0
while [ ! -S /run/containerd/containerd.sock ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 1200 ] || ! kill -0 "$containerd" 2>/dev/null; then
        echo "@@engine-exited containerd did not start"; exit 1
    fi
    sleep 0.1
done
dockerd --containerd=/run/containerd/containerd.sock \
    --host=tcp://10.0.2.15:2375 --host=unix:///run/docker.sock --tls=false \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false --storage-driver=overlay2 --log-level=warn >/dev/console 2>&1 &
engine=$!
echo "@@engine-started $engine"
# If dockerd dies, end this script too: the VM powers off and the controller sees why.
( while kill -0 "$engine" 2>/dev/null; do sleep 1; done; echo "@@engine-exited"; kill -TERM $$ ) &
watcher=$!
read -r _request || true
kill "$watcher"
kill -TERM "$engine" 2>/dev/null
wait "$engine"
status=$?
kill -TERM "$containerd"
wait "$containerd"
echo "@@engine-stopped $status"
sync
