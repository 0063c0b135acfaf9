#!/usr/bin/env bash
# Run a built image the way Grand Challenge does and check every output against the contract.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: ./test.sh TASK [CASE_DIR] [--flavour onnxruntime|torch] [--engine docker|podman] [-- ENTRY POINT ARGS...]

Runs the image hecktor2025-task<TASK>-<flavour> (build it first with ./build.sh) like the platform:
--network none, a read-only root filesystem, a non-root user, /input read-only, a scratch folder on /tmp,
/output writable, 15 GiB of memory (the 16 GiB instance less 1 GiB reserved), no swap, an 8 GiB /dev/shm, and
the GPUs when an NVIDIA GPU is present (CPU otherwise, said so).
Cases: CASE_DIR only when given; else the bundled SYNTHETIC sample case (test/sample-case) and the three real
sarcoma cases of ../shared/data/sts when that folder exists next to the repository. Each case's outputs are
checked inside the same image by `python -m hecktor.apps.contract`. Exit 0 only when every case passes.
Arguments after `--` are appended to the image's entry point (hecktor-inference), e.g. `-- --time-limit 300` to
plan each case against 300 s instead of the platform's limit; without them the image runs as the platform runs
it. The pass/fail time check stays the platform's limit either way.
EOF
  exit 2
}

repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"

task="" case_arg="" flavour="onnxruntime" engine=""
entry_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) [ $# -ge 2 ] || usage; flavour="$2"; shift 2;;
    --engine) [ $# -ge 2 ] || usage; engine="$2"; shift 2;;
    --) shift; entry_args=("$@"); break;;
    -h|--help) usage;;
    -*) echo "test.sh: unknown option $1" >&2; usage;;
    *) if [ -z "$task" ]; then task="$1"; elif [ -z "$case_arg" ]; then case_arg="$1"; else usage; fi; shift;;
  esac
done
case "$task" in 1|2|3) ;; *) echo "test.sh: TASK must be 1, 2 or 3, got '${task}'" >&2; usage;; esac
case "$flavour" in onnxruntime|torch) ;; *) echo "test.sh: --flavour must be onnxruntime or torch" >&2; usage;; esac
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else echo "test.sh: neither a running docker nor podman found (choose with --engine)" >&2; exit 2
  fi
fi
case "$engine" in docker|podman) ;; *) echo "test.sh: --engine must be docker or podman" >&2; usage;; esac

tag="hecktor2025-task${task}-${flavour}"
"$engine" image inspect "$tag" >/dev/null 2>&1 || {
  echo "test.sh: image $tag not found; build it with ./build.sh $task --flavour $flavour" >&2; exit 2; }
# The platform's per-case limit (interface.md): 10 minutes, 15 for Task 2.
limit_s=600; [ "$task" = 2 ] && limit_s=900

work="$(mktemp -d "${TMPDIR:-/tmp}/hecktor-test.XXXXXX")"
containers=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  for name in "${containers[@]}"; do "$engine" rm -f "$name" >/dev/null 2>&1 || true; done
  # Outputs belong to the container's user; rootless podman maps it to a sub-uid only its namespace may remove.
  rm -rf "$work" 2>/dev/null || { [ "$engine" = podman ] && podman unshare rm -rf "$work"; } || true
}
trap cleanup EXIT
# Bash runs the EXIT trap on an interrupt only when the signal itself is trapped.
trap 'exit 130' INT
trap 'exit 143' TERM

# A non-root user: the image's own (10001) when this script runs as root, else the caller, so that the caller
# can remove what the container writes.
run_user=(--user 10001:10001)
if [ "$(id -u)" != 0 ]; then
  run_user=(--user "$(id -u):$(id -g)")
  [ "$engine" = podman ] && run_user+=(--userns keep-id)
fi
# The root filesystem read-only with NOTHING writable but the mounts below (podman adds tmpfs folders to
# --read-only unless told not to; docker adds none besides /dev/shm). Memory as Grand Challenge's runtime
# documentation gives it for the T4 instance (ml.g4dn.xlarge, 16 GiB): 1 GiB of it reserved for the system,
# so 15 GiB for the container, no swap, and /dev/shm half of the instance's memory.
sandbox=(--network none --read-only --memory 15g --memory-swap 15g --shm-size 8g "${run_user[@]}")
[ "$engine" = podman ] && sandbox+=(--read-only-tmpfs=false)

gpu=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if [ "$engine" = docker ]; then gpu=(--gpus all); else gpu=(--device nvidia.com/gpu=all); fi
  echo "NVIDIA GPU present: running with ${gpu[*]}"
else
  echo "no NVIDIA GPU here: the image runs on CPU"
fi

# Folders the container may write: its scratch /tmp and /output (modes so that any non-root user can).
new_dir() { local d; d="$(mktemp -d "$work/$1.XXXXXX")"; chmod 0777 "$d"; echo "$d"; }

# 1. The sandbox itself: writes outside /tmp and /output must fail, writes to them must work. Without this a
#    run that silently wrote elsewhere would look the same as one that did not.
probe_out="$(new_dir probe-output)" probe_tmp="$(new_dir probe-tmp)"
# shellcheck disable=SC2016  # expanded by the container's shell, not this one
probe='for p in /probe /opt/hecktor/probe /opt/venv/probe /var/tmp/probe /home/probe /etc/probe /input/probe; do
         if touch "$p" 2>/dev/null; then echo "WRITABLE: $p"; fi; done
       touch /tmp/probe /output/probe || echo "NOT WRITABLE: /tmp or /output"'
probe_result="$("$engine" run --rm "${sandbox[@]}" -v "$repo/test/sample-case:/input:ro" -v "$probe_out:/output" \
                -v "$probe_tmp:/tmp" --entrypoint /bin/sh "$tag" -c "$probe" 2>&1)" || true
if [ -n "$probe_result" ]; then
  echo "sandbox: FAILED, the container could write where the platform forbids it, or not where it allows:" >&2
  echo "$probe_result" >&2
  exit 1
fi
echo "sandbox: ok (root filesystem and /input read-only; /tmp and /output writable)"

# 2. The cases.
cases=() names=()
if [ -n "$case_arg" ]; then
  [ -d "$case_arg" ] || { echo "test.sh: $case_arg is not a folder" >&2; exit 2; }
  cases+=("$(cd "$case_arg" && pwd)"); names+=("$(basename "$case_arg")")
else
  cases+=("$repo/test/sample-case"); names+=("sample-case (SYNTHETIC)")
  sts="$(dirname "$repo")/shared/data/sts"
  if [ -d "$sts" ]; then
    for n in 001 002 003; do
      ct="$sts/STS_${n}_CT_image.nii.gz" pet="$sts/STS_${n}_PET_image.nii.gz"
      if [ -f "$ct" ] && [ -f "$pet" ]; then
        # The platform layout: images/ct/<name> and images/pet/<name>; copies (a link would point outside the
        # mount), readable by the container's user.
        d="$work/STS_$n"
        mkdir -p "$d/images/ct" "$d/images/pet"
        cp "$ct" "$d/images/ct/STS_$n.nii.gz"
        cp "$pet" "$d/images/pet/STS_$n.nii.gz"
        chmod -R a+rX "$d"
        cases+=("$d"); names+=("STS_$n (real sarcoma PET/CT)")
      else
        echo "STS_$n: skipped: $ct or $pet missing"
      fi
    done
  else
    echo "STS cases: skipped: $sts does not exist (real data is not shipped with the repository)"
  fi
fi

failed=0 results=()
for i in "${!cases[@]}"; do
  input="${cases[$i]}" name="${names[$i]}"
  output="$(new_dir output)" scratch="$(new_dir scratch)"
  container="hecktor-test-$$-$i"
  containers+=("$container")
  echo "=== $name: running $tag${entry_args[*]:+ with entry point arguments: ${entry_args[*]}}"
  start=$(date +%s)
  set +e
  "$engine" run --name "$container" "${sandbox[@]}" "${gpu[@]}" \
    -v "$input:/input:ro" -v "$output:/output" -v "$scratch:/tmp" "$tag" "${entry_args[@]}"
  code=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  problems=()
  [ "$code" = 0 ] || problems+=("exit code $code")
  # What the run changed in the container's own filesystem: with --read-only this must be nothing but the
  # mount points the engine itself makes (/input, /output, /tmp; podman's /etc/hosts, /etc/resolv.conf, ...).
  changed="$("$engine" diff "$container" 2>/dev/null \
             | grep -vE '^[AC] /(input|output|tmp|etc|etc/(hosts|hostname|resolv\.conf)|run|run/\.containerenv)$' || true)"
  [ -z "$changed" ] || problems+=("changed the root filesystem: $(echo "$changed" | tr '\n' ' ')")
  "$engine" rm -f "$container" >/dev/null 2>&1 || true
  if [ "$elapsed" -gt "$limit_s" ]; then
    if [ ${#gpu[@]} -gt 0 ]; then problems+=("took ${elapsed}s, over the platform's ${limit_s}s")
    else echo "note: took ${elapsed}s on CPU, over the platform's ${limit_s}s (the platform has a GPU)"; fi
  fi
  echo "--- outputs:"
  (cd "$output" && find . -mindepth 1 -printf '  %P (%s bytes)\n')
  for f in rfs.json hpv-status.json; do [ -f "$output/$f" ] && echo "  $f = $(cat "$output/$f")"; done
  # The contract, checked by the image itself (read-only mounts: the check cannot repair anything).
  if ! check="$("$engine" run --rm "${sandbox[@]}" -v "$input:/input:ro" -v "$output:/output:ro" \
                 --entrypoint /opt/venv/bin/python "$tag" -m hecktor.apps.contract \
                 --input /input --output /output --tasks "$task" 2>&1)"; then
    problems+=("$check")
  fi
  echo "$check"
  if [ ${#problems[@]} -eq 0 ]; then
    results+=("PASS  $name (${elapsed}s)")
  else
    failed=1
    results+=("FAIL  $name (${elapsed}s): $(printf '%s; ' "${problems[@]}")")
  fi
done

echo "=== $tag, Task $task:"
printf '%s\n' "${results[@]}"
exit "$failed"
