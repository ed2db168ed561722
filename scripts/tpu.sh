#!/usr/bin/env bash
# shellcheck disable=SC2016  # remote commands are single-quoted on purpose: they expand on the TPU VM
# scripts/tpu.sh: create a Cloud TPU VM or pod slice, put this checkout on it, run a command on
# every worker, watch it through preemptions, fetch the results and delete the TPU.
# Every gcloud call goes through $GCLOUD (default: gcloud); --dry-run prints them instead.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/tpu.sh SUBCOMMAND [options] [-- COMMAND...]

Subcommands:
  create            request the TPU (a queued resource; --tpu-vm: a plain TPU VM), wait until it is up
  setup             ship this checkout's HEAD commit to every worker (~/prompt_tuning_jax, its runs/
                    kept, the commit in its COMMIT file), install it with -e ".[tpu]" into ~/ptj_venv
                    (Python $PTJ_REMOTE_PYTHON, default 3.11, made by uv), print each worker's devices
  launch -- CMD     stop stale processes holding the TPU, then start CMD in ~/prompt_tuning_jax on
                    every worker in the background, ~/ptj_venv active (CMD is one command; for a
                    pipeline use bash -c '...'; log: ~/ptj_logs/worker_<hostname>.log, exit
                    status: ~/ptj_logs/exit_code)
  logs              tail the workers' logs (--worker N for one worker, --follow to keep following)
  sweep -- FLAGS    start a sweep worker on each single-host TPU VM of --names (set each up first),
                    all on one gs:// --sweep-dir: `python -m prompt_tuning_jax.sweep FLAGS
                    --gin.SWEEP_DIR='DIR'`, in the background as launch starts CMD. The workers share
                    the grid out (each cell runs once; a dead VM's cell is taken over once its lease,
                    --gin.SWEEP_LEASE_S=300, expires) and each ends when the whole grid has, writing the
                    same SWEEP_DIR/results.csv and table.md. Running it again restarts the workers;
                    finished cells are kept
  babysit -- CMD    watch the TPU and the job launched with CMD; after a preemption delete the TPU,
                    re-create it, set it up and launch CMD again (it resumes from its gs:// MODEL_DIR);
                    a job found not running is relaunched too; exit 0 when the job exits 0, 1 when
                    it fails or after --max-retries recoveries
  fetch [DEST]      copy prompts/, metrics.jsonl, metrics.csv, plots/, tensorboard/ and best.json
                    from the run's gs:// MODEL_DIR to DEST (default runs/<basename of MODEL_DIR>)
  delete            delete the TPU (the queued resource with --force)
  info              print the accelerator's hosts and default runtime version

Options (before or after the subcommand; [ENV] gives a default):
  --name NAME            TPU name [TPU_NAME]; sweep: repeat it, one per VM
  --names A,B,C          sweep: the TPU VMs, one worker on each
  --zone ZONE            zone, e.g. us-central2-b [ZONE]
  --project PROJECT      project, passed to gcloud as --project= [PROJECT]
  --accelerator TYPE     e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8 [ACCELERATOR]
  --spot | --reserved    provisioning model (default on demand)
  --tpu-vm               gcloud compute tpus tpu-vm create instead of queued resources
  --runtime-version V    default by family: v2, v3, v4: tpu-ubuntu2204-base; v5litepod (v5e):
                         v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5; v6e: v2-alpha-tpuv6e
  --model-dir gs://B/R   the run's MODEL_DIR [MODEL_DIR]: fetch's source; launch and babysit
                         export it to COMMAND as MODEL_DIR
  --sweep-dir gs://B/S   sweep: the SWEEP_DIR every worker shares [SWEEP_DIR]
  --worker N|all         logs: which worker (default all)
  --follow               logs: keep following
  --max-retries N        babysit: recoveries before giving up (default 5)
  --poll-seconds S       seconds between state polls (default 60)
  --max-polls N          create: state polls before giving up (default 180)
  --dry-run              print the gcloud commands, shell-quoted, one a line, and run none
  -h, --help             this text

Hosts per slice: v2/v3/v4/v5p-N: N TensorCores, 8 per host (v4-8: 1 host, v4-32: 4 hosts);
v5litepod/v6e-N: N chips, up to 8 on one host, else 4 per host (v5litepod-16: 4 hosts).
On several hosts each has its own disk: MODEL_DIR must be a gs:// path.

Example:
  scripts/tpu.sh create --name ptj --zone us-central2-b --accelerator v4-32 --spot
  scripts/tpu.sh setup --name ptj --zone us-central2-b
  scripts/tpu.sh babysit --name ptj --zone us-central2-b --accelerator v4-32 --spot \
    --model-dir gs://BUCKET/sst2 -- bash scripts/sst2_demo.sh

  for vm in sw-1 sw-2 sw-3; do
    scripts/tpu.sh create --name $vm --zone us-central2-b --accelerator v4-8 --spot
    scripts/tpu.sh setup --name $vm --zone us-central2-b
  done
  scripts/tpu.sh sweep --names sw-1,sw-2,sw-3 --zone us-central2-b --accelerator v4-8 \
    --sweep-dir gs://BUCKET/seed_table -- --gin_file=sweeps/seed_table.gin
EOF
}

GCLOUD=${GCLOUD:-gcloud}
NAME=${TPU_NAME:-}
NAMES=()
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-}
MODEL_DIR_OPT=${MODEL_DIR:-}
SWEEP_DIR_OPT=${SWEEP_DIR:-}
PROVISIONING=""
TPU_VM=0
RUNTIME_VERSION=""
DRY_RUN=0
MAX_RETRIES=5
POLL_SECONDS=60
MAX_POLLS=180
WORKER=all
FOLLOW=0
SUBCOMMAND=""
POSITIONAL=()
CMD=()
SHIP_COMMIT=""
REMOTE_PYTHON=${PTJ_REMOTE_PYTHON:-3.11}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=""

die() { printf 'error: %s\n' "$*" >&2; exit 2; }   # a usage error: nothing ran
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }  # a failure after gcloud ran
say() { printf 'tpu.sh: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------- arguments

parse_args() {
  local flag value
  while (( $# )); do
    case $1 in
      --) shift; CMD=("$@"); return 0;;
      -h|--help) usage; exit 0;;
      --spot|--reserved)
        [[ -z $PROVISIONING || $PROVISIONING == "${1#--}" ]] || die "--spot and --reserved exclude each other: pass one"
        PROVISIONING=${1#--};;
      --tpu-vm) TPU_VM=1;;
      --dry-run) DRY_RUN=1;;
      --follow) FOLLOW=1;;
      --name|--names|--zone|--project|--accelerator|--runtime-version|--model-dir|--sweep-dir|--worker|--max-retries|--poll-seconds|--max-polls)
        (( $# >= 2 )) || die "$1 needs a value: $1 VALUE"
        set_option "$1" "$2"; shift;;
      --*=*)
        flag=${1%%=*}; value=${1#*=}
        case $flag in
          --name|--names|--zone|--project|--accelerator|--runtime-version|--model-dir|--sweep-dir|--worker|--max-retries|--poll-seconds|--max-polls)
            set_option "$flag" "$value";;
          *) die "unknown option $flag (see scripts/tpu.sh --help)";;
        esac;;
      -*) die "unknown option $1 (see scripts/tpu.sh --help)";;
      *) if [[ -z $SUBCOMMAND ]]; then SUBCOMMAND=$1; else POSITIONAL+=("$1"); fi;;
    esac
    shift
  done
}

set_option() {
  local names name
  case $1 in
    --name) NAME=$2; NAMES+=("$2");;
    --names) [[ $2 == *[^,]* ]] || die "--names takes TPU names separated by commas (got '$2')"
             IFS=, read -ra names <<< "$2"
             for name in "${names[@]}"; do [[ -z $name ]] || NAMES+=("$name"); done;;
    --zone) ZONE=$2;;
    --project) PROJECT=$2;;
    --accelerator) ACCELERATOR=$2;;
    --runtime-version) RUNTIME_VERSION=$2;;
    --model-dir) MODEL_DIR_OPT=$2;;
    --sweep-dir) SWEEP_DIR_OPT=$2;;
    --worker) [[ $2 == all || $2 =~ ^[0-9]+$ ]] || die "--worker takes a worker number or all (got '$2')"
              WORKER=$2;;
    --max-retries|--poll-seconds|--max-polls)
      [[ $2 =~ ^[0-9]+$ ]] || die "$1 takes a whole number (got '$2')"
      case $1 in
        --max-retries) MAX_RETRIES=$2;;
        --poll-seconds) POLL_SECONDS=$2;;
        --max-polls) MAX_POLLS=$2;;
      esac;;
  esac
}

require() {  # require name zone accelerator ...: the options a subcommand needs
  local what
  for what in "$@"; do
    case $what in
      name) [[ -n $NAME ]] || die "$SUBCOMMAND needs --name: pass --name NAME or set TPU_NAME";;
      zone) [[ -n $ZONE ]] || die "$SUBCOMMAND needs --zone: pass --zone ZONE (e.g. us-central2-b) or set ZONE";;
      accelerator) [[ -n $ACCELERATOR ]] || die "$SUBCOMMAND needs --accelerator: pass --accelerator TYPE (e.g. v4-8, v4-32, v5litepod-16) or set ACCELERATOR"
                   hosts >/dev/null;;
      command) (( ${#CMD[@]} )) || die "$SUBCOMMAND needs the command to run after --: scripts/tpu.sh $SUBCOMMAND [options] -- python -m prompt_tuning_jax.train ...";;
    esac
  done
}

# ------------------------------------------------------------------------------- accelerators

hosts() {  # hosts of $ACCELERATOR's slice; 0 when the family is unknown
  local family=${ACCELERATOR%-*} size=${ACCELERATOR##*-}
  [[ $ACCELERATOR == *-* && $size =~ ^[0-9]+$ && $size -gt 0 ]] \
    || die "--accelerator $ACCELERATOR is not FAMILY-SIZE: pass e.g. v4-8, v4-32, v5litepod-16, v5p-8 or v6e-8"
  case $family in
    v2|v3|v4|v5p) echo $(( size <= 8 ? 1 : size / 8 ));;      # N TensorCores, 8 per host
    v5litepod|v5e|v6e) echo $(( size <= 8 ? 1 : size / 4 ));;  # N chips, 4 per host beyond 8
    *) echo 0;;
  esac
}

runtime_version() {
  if [[ -n $RUNTIME_VERSION ]]; then echo "$RUNTIME_VERSION"; return 0; fi
  case ${ACCELERATOR%-*} in
    v2|v3|v4) echo tpu-ubuntu2204-base;;
    v5litepod|v5e) echo v2-alpha-tpuv5-lite;;
    v5p) echo v2-alpha-tpuv5;;
    v6e) echo v2-alpha-tpuv6e;;
    *) die "no default runtime version for the accelerator family ${ACCELERATOR%-*} ($ACCELERATOR): pass --runtime-version VERSION (see https://cloud.google.com/tpu/docs/runtimes)";;
  esac
}

# ------------------------------------------------------------------------------------ gcloud

quote() {  # one word, quoted for a POSIX shell (and Python's shlex): --flag=VALUE quotes VALUE alone
  local word=$1 prefix=""
  if [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then prefix=${BASH_REMATCH[1]}; word=${BASH_REMATCH[2]}; fi
  if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s%s' "$prefix" "$word"
  elif [[ $word != *\'* ]]; then printf "%s'%s'" "$prefix" "$word"
  elif [[ $word != *[\"\$\`\\!]* ]]; then printf '%s"%s"' "$prefix" "$word"
  else printf "%s'%s'" "$prefix" "${word//\'/\'\"\'\"\'}"; fi
}

quote_words() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

gc() {  # runs gcloud ARGS... (--dry-run: prints it)
  local argv=("$GCLOUD" "$@")
  if [[ -n $PROJECT ]]; then argv+=("--project=$PROJECT"); fi
  if (( DRY_RUN )); then quote_words "${argv[@]}"; echo; return 0; fi
  "${argv[@]}"
}

ssh_to() {  # ssh_to WORKER REMOTE_COMMAND
  gc compute tpus tpu-vm ssh "$NAME" --worker="$1" --zone="$ZONE" --command="$2"
}

state() {  # sets STATE: the TPU's state, NOT_FOUND, or ERROR (gcloud failed otherwise)
  local args err
  if (( TPU_VM )); then args=(compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format='value(state)')
  else args=(compute tpus queued-resources describe "$NAME" --zone="$ZONE" --format='value(state.state)'); fi
  if (( DRY_RUN )); then gc "${args[@]}"; STATE=ACTIVE; return 0; fi
  err="$WORK/describe.err"
  if STATE=$(gc "${args[@]}" 2>"$err"); then
    STATE=$(printf '%s' "$STATE" | tr -d '[:space:]')
  elif grep -q NOT_FOUND "$err"; then STATE=NOT_FOUND
  else cat "$err" >&2; STATE=ERROR
  fi
}

# ------------------------------------------------------------------------------- subcommands

request_tpu() {
  local version
  version=$(runtime_version)
  if (( TPU_VM )); then
    gc compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$version" ${PROVISIONING:+"--$PROVISIONING"}
  else
    gc compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$version" ${PROVISIONING:+"--$PROVISIONING"}
  fi
}

wait_until_up() {  # returns 1 when the TPU failed or was not up after MAX_POLLS polls
  local poll
  for (( poll = 1; poll <= MAX_POLLS; poll++ )); do
    state
    case $STATE in
      ACTIVE|READY) say "$NAME is $STATE"; return 0;;
      FAILED|SUSPENDED|SUSPENDING|PREEMPTED|TERMINATED|STOPPED|NOT_FOUND)
        say "$NAME is $STATE: it will not come up; delete it with scripts/tpu.sh delete"; return 1;;
    esac
    say "$NAME is ${STATE:-?} (poll $poll of $MAX_POLLS); waiting ${POLL_SECONDS}s"
    sleep "$POLL_SECONDS"
  done
  say "$NAME was not up after $MAX_POLLS polls: raise --max-polls, or delete it with scripts/tpu.sh delete"
  return 1
}

cmd_create() {
  require name zone accelerator
  runtime_version >/dev/null
  request_tpu
  wait_until_up || exit 1
}

cmd_setup() {
  require name zone
  local commit archive remote check
  commit=${SHIP_COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null)} \
    || die "setup ships a git commit, and $REPO is not a git checkout"
  if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]]; then
    say "warning: the working tree has uncommitted changes; setup ships commit ${commit:0:12} only (commit them to ship them)"
  fi
  archive="${WORK:-${TMPDIR:-/tmp}}/prompt_tuning_jax-${commit:0:12}.tar.gz"
  if (( DRY_RUN )); then quote_words git -C "$REPO" archive --format=tar.gz -o "$archive" "$commit"; echo
  else git -C "$REPO" archive --format=tar.gz -o "$archive" "$commit"; fi
  gc compute tpus tpu-vm scp "$archive" "$NAME:~/prompt_tuning_jax.tar.gz" --worker=all --zone="$ZONE" || return 1
  check='from prompt_tuning_jax.training import distributed; distributed.initialize(); import jax; '
  check+='print(f"worker {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local, '
  check+='{jax.device_count()} global devices ({jax.devices()[0].device_kind})")'
  # The checkout is replaced (its runs/ is kept); the package goes into ~/ptj_venv, a venv of
  # Python $REMOTE_PYTHON made by uv (the TPU images' python3 is 3.10, too old for current JAX).
  remote="mkdir -p ~/prompt_tuning_jax ~/ptj_logs"
  remote+=" && find ~/prompt_tuning_jax -mindepth 1 -maxdepth 1 ! -name runs -exec rm -rf {} +"
  remote+=" && tar xzf ~/prompt_tuning_jax.tar.gz -C ~/prompt_tuning_jax && echo $commit > ~/prompt_tuning_jax/COMMIT"
  remote+=" && cd ~/prompt_tuning_jax && { [ -x ~/.local/bin/uv ] || python3 -m pip install -q --user uv"
  remote+=" || python3 -m pip install -q --user --break-system-packages uv; }"
  remote+=" && { [ -x ~/ptj_venv/bin/python ] || ~/.local/bin/uv venv -q --python $REMOTE_PYTHON ~/ptj_venv; }"
  remote+=" && ~/.local/bin/uv pip install -q --python ~/ptj_venv/bin/python -e '.[tpu]'"
  remote+=" && ~/ptj_venv/bin/python -c $(quote "$check")"
  ssh_to all "$remote"
}

model_dirs() {  # the MODEL_DIRs CMD names (--gin.MODEL_DIR=..., MODEL_DIR=...) and --model-dir, unquoted
  local i word value
  for (( i = 0; i < ${#CMD[@]}; i++ )); do
    word=${CMD[i]}
    case $word in
      --gin.MODEL_DIR=*) value=${word#--gin.MODEL_DIR=};;
      --gin.MODEL_DIR) value=${CMD[i + 1]:-};;
      MODEL_DIR=*) value=${word#MODEL_DIR=};;
      *) continue;;
    esac
    value=${value#[\'\"]}; echo "${value%[\'\"]}"
  done
  if [[ -n $MODEL_DIR_OPT ]]; then echo "$MODEL_DIR_OPT"; fi
}

check_model_dir() {  # a multi-host slice needs a gs:// MODEL_DIR: fail before any gcloud call
  local n dir found=0
  n=$(hosts)
  (( n != 1 )) || return 0
  while IFS= read -r dir; do
    found=1
    [[ $dir == gs://* ]] || die "multi-host accelerator $ACCELERATOR (${n/#0/several} hosts) has one disk per host: MODEL_DIR must be a gs:// bucket path (got $dir); pass e.g. --gin.MODEL_DIR=\"'gs://BUCKET/${dir##*/}'\""
  done < <(model_dirs)
  (( found )) || say "note: no MODEL_DIR in the command; on the $ACCELERATOR slice it must be a gs:// path"
}

stale_kill_command() {  # stops the last job's process group, then anything else holding the TPU
  local c='p=$(cat "$HOME/ptj_logs/job.pid" 2>/dev/null); if [ -n "$p" ]; then kill -TERM -- "-$p" 2>/dev/null'
  c+=' && for i in $(seq 60); do kill -0 -- "-$p" 2>/dev/null || break; sleep 1; done; kill -KILL -- "-$p" 2>/dev/null; fi;'
  c+=' sudo fuser -k /dev/accel* /dev/vfio/* 2>/dev/null; sudo rm -f /tmp/libtpu_lockfile;'
  c+=' rm -f "$HOME/ptj_logs/job.pid" "$HOME/ptj_logs/exit_code"; true'
  printf '%s' "$c"
}

launch_command() {  # CMD in the background, one log per worker, exit status in ~/ptj_logs/exit_code
  # The job runs `bash -c JOB ptj-job CMD...`: CMD's words are quoted once and reach it as "$@".
  local job='echo $$ > "$HOME/ptj_logs/job.pid"; "$@"; rc=$?'
  job+='; if tail -n 20 "$PTJ_LOG" | grep -q "^preempted (SIGTERM)"; then rc=preempted; fi'
  job+='; echo "$rc" > "$HOME/ptj_logs/exit_code"'
  local c='mkdir -p "$HOME/ptj_logs" && rm -f "$HOME/ptj_logs/exit_code"'
  c+=' && { cd "$HOME/prompt_tuning_jax" || { echo "no ~/prompt_tuning_jax on $(hostname): run scripts/tpu.sh setup first" >&2; exit 1; }; }'
  c+=' && { [ ! -f "$HOME/ptj_venv/bin/activate" ] || . "$HOME/ptj_venv/bin/activate"; }'
  c+=' && PTJ_LOG="$HOME/ptj_logs/worker_$(hostname).log" && export PTJ_LOG'
  if [[ -n $MODEL_DIR_OPT ]]; then c+=" && export MODEL_DIR=$(quote "$MODEL_DIR_OPT")"; fi
  c+=" && (setsid nohup bash -c $(quote "$job") ptj-job $(quote_words "${CMD[@]}") > \"\$PTJ_LOG\" 2>&1 < /dev/null &)"
  c+=' && echo "started on $(hostname); log: $PTJ_LOG"'
  printf '%s' "$c"
}

job_status_command() {  # prints the exit status, running, or none
  printf '%s' 'if [ -f "$HOME/ptj_logs/exit_code" ]; then cat "$HOME/ptj_logs/exit_code"; elif [ -f "$HOME/ptj_logs/job.pid" ] && kill -0 "$(cat "$HOME/ptj_logs/job.pid")" 2>/dev/null; then echo running; else echo none; fi'
}

start_job() {
  ssh_to all "$(stale_kill_command)" || return 1
  ssh_to all "$(launch_command)"
}

cmd_launch() {
  require name zone accelerator command
  check_model_dir
  start_job
}

cmd_logs() {
  require name zone
  local tail_command="tail -v -n 200 ~/ptj_logs/worker_*.log"
  if (( FOLLOW )); then tail_command="tail -v -n 200 -F ~/ptj_logs/worker_*.log"; fi
  ssh_to "$WORKER" "$tail_command"
}

recover() {  # a fresh TPU with the job relaunched; returns 1 when a step failed
  if [[ $STATE != NOT_FOUND ]]; then cmd_delete_quietly || say "delete failed; trying to create anyway"; fi
  request_tpu || return 1
  wait_until_up || return 1
  cmd_setup || return 1
  start_job
}

babysit_dry_run() {
  state
  ssh_to 0 "$(job_status_command)"
  echo "# after a preemption:"
  cmd_delete_quietly
  request_tpu
  state
  cmd_setup
  start_job
}

cmd_babysit() {
  require name zone accelerator command
  check_model_dir
  runtime_version >/dev/null
  SHIP_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)  # every recovery ships the same commit
  if (( DRY_RUN )); then babysit_dry_run; return 0; fi
  local retries=0 errors=0 job
  while true; do
    state
    case $STATE in
      ACTIVE|READY)
        job=$(ssh_to 0 "$(job_status_command)" | tail -n 1 | tr -d '[:space:]') || job=""
        case $job in
          running) errors=0; sleep "$POLL_SECONDS";;
          0) say "the job finished (exit status 0)"; return 0;;
          [1-9]*) fail "the job exited with status $job; see scripts/tpu.sh logs";;
          none|preempted)
            (( retries < MAX_RETRIES )) || fail "the job is not running on $NAME and $MAX_RETRIES recoveries are used up (--max-retries)"
            retries=$(( retries + 1 ))
            say "the job is not running ($job): relaunching it (recovery $retries of $MAX_RETRIES)"
            { cmd_setup && start_job; } || say "relaunch failed";;
          *) errors=$(( errors + 1 ))
             (( errors < 10 )) || fail "could not read the job's status on worker 0 10 times in a row"
             say "could not read the job's status on worker 0 (got '$job'); retrying in ${POLL_SECONDS}s"
             sleep "$POLL_SECONDS";;
        esac;;
      ERROR)
        errors=$(( errors + 1 ))
        (( errors < 10 )) || fail "gcloud failed 10 times in a row describing $NAME"
        sleep "$POLL_SECONDS";;
      PREEMPTED|SUSPENDED|SUSPENDING|FAILED|TERMINATED|STOPPED|NOT_FOUND)
        (( retries < MAX_RETRIES )) || fail "$NAME is $STATE and $MAX_RETRIES recoveries are used up (--max-retries)"
        retries=$(( retries + 1 ))
        say "$NAME is $STATE: deleting, re-creating, setting up and relaunching (recovery $retries of $MAX_RETRIES)"
        recover || say "recovery $retries failed";;
      *) say "$NAME is ${STATE:-?}; waiting ${POLL_SECONDS}s"; sleep "$POLL_SECONDS";;
    esac
  done
}

cmd_sweep() {
  local name failed=()
  if (( ! ${#NAMES[@]} )) && [[ -n $NAME ]]; then NAMES=("$NAME"); fi
  (( ${#NAMES[@]} )) || die "sweep needs its TPU VMs: pass --names A,B,C (or --name once per VM)"
  require zone accelerator
  (( ${#CMD[@]} )) || die "sweep needs the sweep's flags after --: scripts/tpu.sh sweep --names A,B --zone Z --accelerator v4-8 --sweep-dir gs://BUCKET/SWEEP -- --gin_file=sweeps/demo.gin"
  [[ -n $SWEEP_DIR_OPT ]] || die "sweep needs the SWEEP_DIR its workers share: pass --sweep-dir gs://BUCKET/SWEEP or set SWEEP_DIR"
  [[ $SWEEP_DIR_OPT == gs://* ]] || die "sweep workers on several VMs share one SWEEP_DIR: it must be a gs:// bucket path (got $SWEEP_DIR_OPT)"
  (( $(hosts) <= 1 )) || die "sweep runs one worker per TPU VM and each cell on its VM alone: --accelerator $ACCELERATOR has $(hosts) hosts; use single-host VMs (e.g. v4-8, v5litepod-8, v6e-8)"
  for name in "${CMD[@]}"; do
    [[ $name != --gin.SWEEP_DIR* ]] || die "pass the SWEEP_DIR with --sweep-dir, not $name after --"
  done
  CMD=(python -m prompt_tuning_jax.sweep "${CMD[@]}" "--gin.SWEEP_DIR='$SWEEP_DIR_OPT'")
  for name in "${NAMES[@]}"; do
    NAME=$name
    say "starting a sweep worker on $NAME"
    start_job || failed+=("$name")
  done
  (( ! ${#failed[@]} )) || fail "no sweep worker started on ${failed[*]}: set it up (scripts/tpu.sh setup --name NAME), then run the same sweep command again"
  say "${#NAMES[@]} sweep workers started on $SWEEP_DIR_OPT; follow one with scripts/tpu.sh logs --name NAME"
}

cmd_fetch() {
  local src=${MODEL_DIR_OPT%/} dest
  [[ -n $src ]] || die "fetch needs the run's gs:// MODEL_DIR: pass --model-dir gs://BUCKET/RUN or set MODEL_DIR"
  [[ $src == gs://* ]] || die "fetch copies from a gs:// MODEL_DIR (got $src); a run on one host wrote to that TPU VM's disk: copy it with gcloud compute tpus tpu-vm scp"
  dest=${POSITIONAL[0]:-runs/${src##*/}}
  if (( ! DRY_RUN )); then mkdir -p "$dest"; fi
  gc storage cp -r --continue-on-error "$src/prompts" "$src/metrics.jsonl" "$src/metrics.csv" "$src/plots" \
    "$src/tensorboard" "$src/best.json" "$dest/"
}

cmd_delete_quietly() {
  if (( TPU_VM )); then gc compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
  else gc compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet; fi
}

cmd_delete() {
  require name zone
  cmd_delete_quietly
}

cmd_info() {
  require accelerator
  local n version
  n=$(hosts)
  version=$(runtime_version 2>/dev/null) || version="unknown (pass --runtime-version)"
  echo "$ACCELERATOR: ${n/#0/unknown number of} host(s); runtime version $version"
}

main() {
  parse_args "$@"
  case $SUBCOMMAND in
    create|setup|launch|logs|babysit|sweep|fetch|delete|info) ;;
    "") die "no subcommand: scripts/tpu.sh {create|setup|launch|logs|babysit|sweep|fetch|delete|info} ... (see --help)";;
    *) die "unknown subcommand $SUBCOMMAND: use create, setup, launch, logs, babysit, sweep, fetch, delete or info";;
  esac
  if (( ${#CMD[@]} )) && [[ $SUBCOMMAND != launch && $SUBCOMMAND != babysit && $SUBCOMMAND != sweep ]]; then
    die "$SUBCOMMAND takes no command after --; only launch, babysit and sweep do"
  fi
  if (( ${#NAMES[@]} > 1 )) && [[ $SUBCOMMAND != sweep ]]; then
    die "$SUBCOMMAND takes one TPU name (got ${NAMES[*]}); only sweep takes several"
  fi
  if (( ${#POSITIONAL[@]} )) && [[ $SUBCOMMAND != fetch || ${#POSITIONAL[@]} -gt 1 ]]; then
    die "unexpected argument ${POSITIONAL[${#POSITIONAL[@]}-1]} (see scripts/tpu.sh --help)"
  fi
  if (( ! DRY_RUN )); then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
  fi
  "cmd_$SUBCOMMAND"
}

main "$@"
