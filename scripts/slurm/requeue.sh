# Sourced by the sbatch scripts. `requeueable CMD ARGS...` runs CMD in its own process group; SLURM's warning
# signal before the time limit (#SBATCH --signal=B:USR1@SECONDS, sent to this batch shell) stops it cleanly
# (SIGTERM: the running stage removes its temporary folder; pretraining keeps its checkpoints) and requeues
# the job. The requeued job runs the same command again: finished stages are skipped, pretraining resumes from
# its last checkpoint (trainer.save_interval). Without the warning signal, a plain SIGTERM (scancel, the time
# limit itself) reaches every process of the job and the stages clean up the same way, without a requeue.
requeueable() {
  setsid "$@" &
  _requeue_child=$!
  trap _requeue_now USR1
  local rc=0
  wait "$_requeue_child" || rc=$?
  trap - USR1
  return "$rc"
}

_requeue_now() {
  echo "requeue.sh: job $SLURM_JOB_ID got the time-limit warning (SIGUSR1): stopping the pipeline, then requeueing"
  kill -TERM -- "-$_requeue_child" 2>/dev/null || true
  wait "$_requeue_child" 2>/dev/null || true
  # The shell scripts end at once; wait for the stage processes of the group to finish cleaning up (a
  # requeue now would kill them mid-cleanup). At most five minutes: the warning comes ten before the limit.
  for _ in $(seq 300); do kill -0 -- "-$_requeue_child" 2>/dev/null || break; sleep 1; done
  # The requeue makes SLURM signal this batch shell (SIGTERM) at once, which could kill it before it logs the
  # requeue; ignore it here (nothing is left to stop), so the line below is written and the shell exits itself.
  trap '' TERM
  if scontrol requeue "$SLURM_JOB_ID"; then
    echo "requeue.sh: job $SLURM_JOB_ID requeued (restart $((${SLURM_RESTART_COUNT:-0} + 1))); it continues where it stopped"
    exit 0
  fi
  echo "requeue.sh: scontrol requeue $SLURM_JOB_ID failed; rerun the same submission to continue" >&2
  exit 1
}
