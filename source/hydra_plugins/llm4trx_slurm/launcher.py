"""The Hydra launcher behind `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml).

It lives in the `hydra_plugins` namespace package because Hydra instantiates launchers only from there.

hydra-submitit-launcher's SlurmLauncher (one SLURM job per sweep point, submitted through submitit), plus:
- a clear one-line error, before anything is submitted, where there is no SLURM (no `sbatch` on PATH);
- tasks_per_node defaults to one task per GPU (at least one);
- in a job with several tasks, each task gets the torch.distributed / Composer environment (RANK, WORLD_SIZE,
  LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's variables, so pretraining
  (Composer) and embedding (accelerate) run one rank per task without a launcher of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params.get("tasks_per_node") is None:
            self.params["tasks_per_node"] = max(1, int(self.params.get("gpus_per_node") or 0))

    def launch(self, job_overrides, initial_job_idx):
        if shutil.which("sbatch") is None:
            fail(
                "SLURM is not available on this machine (no `sbatch` on PATH); drop hydra/launcher=slurm to run "
                "here, or submit from a SLURM login node"
            )
        try:
            subprocess.run(
                ["sinfo", "--noheader", "--format=%P"], check=True, capture_output=True, text=True, timeout=60
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            last = (getattr(err, "stderr", None) or str(err)).strip().splitlines()[-1:] or ["no answer"]
            fail(
                f"SLURM is installed but its controller does not answer (`sinfo`: {last[0]}); check SLURM_CONF "
                f"and that slurmctld runs"
            )
        return super().launch(job_overrides, initial_job_idx)

    def __call__(self, *args: Any, **kwargs: Any):
        """Runs inside the SLURM job, once per task."""
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            os.environ["NODE_RANK"] = str(job.node)
        return super().__call__(*args, **kwargs)


def fail(message: str) -> None:
    # SystemExit passes through Hydra's error handling untouched: one line, no traceback.
    print(f"error: hydra/launcher=slurm: {message}", file=sys.stderr)
    sys.exit(2)
