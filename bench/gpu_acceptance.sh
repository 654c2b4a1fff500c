#!/usr/bin/env bash
# Every GPU figure the README still lacks, in one command, into one JSON file.
#
#   bash bench/gpu_acceptance.sh --prepare DIR        # here (network): the wheels it may need
#   bash bench/gpu_acceptance.sh --dry-run            # lists the steps, checks their flags
#   bash bench/gpu_acceptance.sh [--wheels DIR] [--out FILE] [--budget SECONDS]   # on the GPU
#
# Steps, most wanted first, each time-boxed with `timeout` inside one overall budget (default
# 450 s, for a limit of 8 minutes on one H100 from a bare machine); a step that fails or runs out
# of time is recorded and the next one runs:
#   1. install the carried wheels of the packages the machine lacks (into a private folder);
#   2. train step per variant (EMB, TEA) with model.lstm auto (the Pallas kernels), compile cold
#      and cached (bench/train_step.py);
#   3. kernels per step, busy time, top ops of the TEA step (bench/profile_step.py);
#   4. LLaVA-1.5-13b-architecture narration (random weights), fast path, batch auto and 64, forced
#      lengths (bench/narrate.py), and with EOS-realistic lengths where narrate.py has that flag;
#   5. I3D extraction windows/s, model only (bench/extract_features.py);
#   6. train step with model.lstm scan, the comparison rows.
# The JSON holds the machine (GPU, versions), and per step its command, exit status, seconds,
# the markdown tables it printed (as rows) and the end of its output.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-python3}
MODE=run
WHEELS=""
OUT_FILE=gpu_acceptance.json
BUDGET=450
# Pure-python packages of requirements.txt that the steps import and a GPU image may lack; they
# are installed only where missing, at the lock's versions.
CARRIED="ml_collections clu flax optax orbax-checkpoint etils absl-py humanize transformers
huggingface_hub"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; WHEELS=${2:?--prepare needs a folder}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --out) OUT_FILE=${2:?--out needs a file}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --dry-run) MODE=dry-run; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu_acceptance.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in
  ''|*[!0-9]*) echo "gpu_acceptance.sh: --budget must be whole seconds" >&2; exit 2 ;;
esac
# The steps run from the repository root: make the caller's relative paths absolute first.
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
OUT_FILE=$(absolute "$OUT_FILE")
[ -n "$WHEELS" ] && WHEELS=$(absolute "$WHEELS")

lock_version() {  # the version requirements.txt pins for a package (case and -/_ insensitive)
  local want
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  sed -n 's/^\([A-Za-z0-9_.-]*\)\(\[[^]]*\]\)\{0,1\}==\(.*\)$/\1 \3/p' "$REPO/requirements.txt" |
    while read -r name version; do
      [ "$(echo "$name" | tr 'A-Z_' 'a-z-')" = "$want" ] && echo "$version"
    done
}

if [ "$MODE" = prepare ]; then
  # The GPU image's python3 is CPython 3.12 on x86_64 Linux; --no-deps: only the names above.
  mkdir -p "$WHEELS"
  for package in $CARRIED; do
    version=$(lock_version "$package")
    [ -n "$version" ] || { echo "$package is not pinned in requirements.txt" >&2; exit 1; }
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "$package==$version" || exit 1
  done
  du -sh "$WHEELS"
  echo "carry $WHEELS with the repository and run: bash bench/gpu_acceptance.sh --wheels $WHEELS"
  exit 0
fi

# --- The steps: name, seconds at most, command (run from the repository root). ---
NAMES=(); CAPS=(); COMMANDS=()
add_step() { NAMES+=("$1"); CAPS+=("$2"); COMMANDS+=("$3"); }

WORK=${TMPDIR:-/tmp}/tea_jax_gpu_acceptance.$$
# An option of bench/narrate.py naming "eos" as a word (--eos-lengths, --stop-at-eos; not --videos).
EOS_FLAG='--([a-z0-9]+-)*eos(-[a-z0-9]+)*\b'
add_step install 60 "install_wheels"
add_step train_step_auto 170 "$PY bench/train_step.py --variants emb,tea --lstm auto \
--repeats 10 --cache-dir $WORK/cache_auto"
add_step profile_step_tea 80 "JAX_COMPILATION_CACHE_DIR=$WORK/cache_auto $PY bench/profile_step.py \
--variant tea --lstm auto --steps 3 --repeats 10"
add_step narrate_13b_forced 150 "$PY bench/narrate.py --architecture llava-1.5-13b \
--batch-sizes auto,64 --paths fast --new-tokens 60"
add_step narrate_13b_eos 90 "narrate_eos"
add_step extract_features_default 45 "$PY bench/extract_features.py --batch-sizes 1,8,32 \
--windows 64 --precision default"
add_step extract_features_highest 40 "$PY bench/extract_features.py --batch-sizes 1,8,32 \
--windows 64 --precision highest"
add_step train_step_scan 240 "$PY bench/train_step.py --variants emb,tea --lstm scan \
--repeats 10 --cache-dir $WORK/cache_scan"

narrate_flags_help() { (cd "$REPO" && "$PY" bench/narrate.py --help 2>/dev/null); }

eos_arguments() {  # what turns on EOS-realistic lengths in bench/narrate.py, if anything does
  local help flag choice
  help=$(narrate_flags_help)
  # A switch naming "eos" (--eos-lengths), or an option with "eos" among its choices
  # (--lengths {forced,eos}).
  flag=$(echo "$help" | grep -oE -- "$EOS_FLAG" | head -1)
  if [ -n "$flag" ] && ! echo "$help" | grep -qE -- "$flag [A-Z_{]"; then echo "$flag"; return; fi
  choice=$(echo "$help" | grep -oE -- '--[a-z0-9-]+ \{[a-z0-9_,-]*\beos\b[a-z0-9_,-]*\}' | head -1)
  [ -n "$choice" ] && echo "${choice%% *} eos"
}

narrate_eos() {  # the EOS-realistic narration, where bench/narrate.py has such a flag
  local arguments
  arguments=$(eos_arguments)
  if [ -z "$arguments" ]; then
    echo "SKIPPED: bench/narrate.py has no EOS-realistic switch (an option naming 'eos')"
    return 3
  fi
  echo "EOS-realistic lengths: $arguments"
  # shellcheck disable=SC2086  # the switch and its value as separate words
  "$PY" bench/narrate.py --architecture llava-1.5-13b --batch-sizes auto,64 --paths fast \
    --new-tokens 60 $arguments
}

install_wheels() {  # installs the carried wheels of the packages missing here
  if [ -z "$WHEELS" ]; then echo "no --wheels folder: nothing to install"; return 0; fi
  [ -d "$WHEELS" ] || { echo "--wheels $WHEELS: no such folder"; return 1; }
  local missing=() wheel name
  for wheel in "$WHEELS"/*.whl; do
    [ -e "$wheel" ] || continue
    name=$(basename "$wheel" | cut -d- -f1)
    if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null
    then echo "present: $name $("$PY" -c "import importlib.metadata as m, sys; \
print(m.version(sys.argv[1]))" "$name")"
    else missing+=("$wheel"); fi
  done
  [ ${#missing[@]} -eq 0 ] && { echo "all carried packages present"; return 0; }
  echo "installing into $WORK/site: ${missing[*]##*/}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "${missing[@]}"
}

if [ "$MODE" = dry-run ]; then
  echo "gpu_acceptance.sh --dry-run: budget ${BUDGET}s, output $OUT_FILE; the steps (cap s):"
  for i in "${!NAMES[@]}"; do
    printf '  %d. %-26s %4ss  %s\n' "$((i + 1))" "${NAMES[$i]}" "${CAPS[$i]}" \
      "$(echo "${COMMANDS[$i]}" | tr -s ' ')"
  done
  # Every flag a step passes must be one its script knows (the scripts' --help, on this CPU).
  status=0
  for i in "${!NAMES[@]}"; do
    script=$(echo "${COMMANDS[$i]}" | grep -oE 'bench/[a-z_]+\.py' | head -1)
    [ -n "$script" ] || continue
    help=$(cd "$REPO" && "$PY" "$script" --help 2>/dev/null) || {
      echo "  ${NAMES[$i]}: $script --help failed here"; status=1; continue; }
    for flag in $(echo "${COMMANDS[$i]}" | grep -oE -- ' --[a-z0-9-]+' ); do
      echo "$help" | grep -q -- "$flag" || {
        echo "  ${NAMES[$i]}: $script has no $flag"; status=1; }
    done
  done
  arguments=$(eos_arguments)
  if [ -n "$arguments" ]; then echo "  narrate.py takes '$arguments': step 5 runs with it"
  else echo "  narrate.py has no EOS-realistic switch yet: step 5 will be recorded as skipped"; fi
  [ $status -eq 0 ] && echo "dry run: every step's flags are known to its script"
  exit $status
fi

# --- Run. ---
mkdir -p "$WORK/logs"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s)
deadline=$((start + BUDGET))
records="$WORK/steps.tsv"
: > "$records"
cd "$REPO" || exit 1
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  log="$WORK/logs/$name.log"
  later=$(( ${#NAMES[@]} - i - 1 ))
  # Leave every later step 15 s (at most half of what remains), so that one slow step cannot take
  # the whole budget.
  remaining=$(( deadline - $(date +%s) ))
  reserve=$(( 15 * later < remaining / 2 ? 15 * later : remaining / 2 ))
  allowed=$(( remaining - reserve ))
  [ "$allowed" -gt "${CAPS[$i]}" ] && allowed=${CAPS[$i]}
  if [ "$allowed" -lt 15 ]; then
    echo "SKIPPED: out of time (budget ${BUDGET}s)" > "$log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" skipped 0 0 "${COMMANDS[$i]}" >> "$records"
    echo "== $name: skipped, out of time"
    continue
  fi
  echo "== $name (at most ${allowed}s)"
  t0=$(date +%s%N)
  case "${COMMANDS[$i]}" in
    install_wheels|narrate_eos)
      # Shell functions: run in a subshell under the same time box.
      ( export -f install_wheels narrate_eos eos_arguments narrate_flags_help
        export PY WHEELS WORK REPO EOS_FLAG
        timeout --kill-after=10 "$allowed" bash -c "${COMMANDS[$i]}" ) > "$log" 2>&1 ;;
    *) timeout --kill-after=10 "$allowed" bash -c "${COMMANDS[$i]}" > "$log" 2>&1 ;;
  esac
  rc=$?
  milliseconds=$(( ($(date +%s%N) - t0) / 1000000 ))
  seconds=$((milliseconds / 1000)).$(printf '%03d' $((milliseconds % 1000)))
  case $rc in 0) status=ok ;; 3) status=skipped ;; 124|137) status=timed_out ;; *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "${COMMANDS[$i]}" >> "$records"
  echo "   $status (exit $rc, ${seconds%.*}s); last line: $(tail -n 1 "$log" | cut -c1-150)"
done

# --- One JSON file: the machine, then every step with its tables and the end of its output. ---
"$PY" - "$records" "$WORK/logs" "$OUT_FILE" "$BUDGET" "$start" <<'PYTHON'
import datetime, importlib.metadata, json, pathlib, re, subprocess, sys, time

records, logs, out_file, budget, start = sys.argv[1:6]


def tables(text):
  """The markdown tables of a step's output, each a list of {column: cell} rows."""
  found, header = [], None
  for line in text.splitlines():
    row = line.startswith("|")
    cells = [c.strip() for c in line.strip().strip("|").split("|")] if row else None
    if cells is None:
      header = None
    elif header is None:
      header = cells
      found.append([])
    elif not all(set(c) <= set("-: ") for c in cells):
      found[-1].append(dict(zip(header, cells)))
  return [t for t in found if t]


def version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def gpu():
  try:
    return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    return f"nvidia-smi: {e}"


steps = []
for line in pathlib.Path(records).read_text().splitlines():
  name, status, rc, seconds, command = line.split("\t", 4)
  text = (pathlib.Path(logs) / f"{name}.log").read_text(errors="replace")
  # Lines worth reading first: warnings (e.g. model.lstm=auto falling back to the scan), errors.
  notes = [l for l in text.splitlines() if re.search(r"(?i)warn|error|using the scan|skipped", l)]
  steps.append(dict(name=name, status=status, exit_code=int(rc), seconds=round(float(seconds), 1),
                    command=command, tables=tables(text), notes=notes[:30],
                    output_tail=text[-6000:]))
result = dict(
    finished=datetime.datetime.now().isoformat(timespec="seconds"),
    wall_seconds=round(time.time() - int(start), 1), budget_seconds=int(budget),
    gpu=gpu(), python=sys.version.split()[0], logs=logs,
    packages={n: version(n) for n in (
        "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
        "orbax-checkpoint", "ml_collections", "torch", "transformers")},
    steps=steps)
pathlib.Path(out_file).write_text(json.dumps(result, indent=1))
print(f"wrote {out_file}: " + ", ".join(f"{s['name']} {s['status']}" for s in steps))
PYTHON
