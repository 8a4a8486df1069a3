#!/usr/bin/env bash
# Installs qfs, mounts it with the embedded defaults at a temporary directory, copies an
# example circuit in and shows what the mount makes of it. Unmount with the printed command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mnt=$(mktemp -d /tmp/qfs-demo.XXXXXX)
.venv/bin/qfsmount "$mnt"
example=$(mktemp -d)/bell.qasm
cat > "$example" <<'QASM'
OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
QASM
cp "$example" "$mnt/circuits/"
set -x
ls -l "$mnt/circuits/bell"
cat "$mnt/circuits/bell/v1.txt"
ls -l "$mnt/search/qubits:2"
echo "alloc 2 task=demo topology=linear" > "$mnt/qubits/ctl"
cat "$mnt/qubits/tasks/demo/mapping"
echo "run bell shots=1000" > "$mnt/qubits/tasks/demo/ctl"
cat "$mnt/qubits/tasks/demo/ctl"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"])' "$mnt/qubits/tasks/demo/result.json"
echo release > "$mnt/qubits/tasks/demo/ctl"
{ set +x; } 2>/dev/null
echo "qfs is mounted at $mnt; unmount with: fusermount3 -u $mnt"
