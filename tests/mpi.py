"""How the tests start real MPI jobs on this machine (root, 2 cores)."""
import os
import shutil
import subprocess
import sys


def mpirun(np_, *args, timeout=300, env=None, **kwargs):
    """Runs `mpirun -np np_ python args...` and returns the CompletedProcess (text output)."""
    if shutil.which("mpirun") is None:
        raise RuntimeError("mpirun is not installed: run 'bash docker/install-system.sh' as root")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np_),
           "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS", sys.executable] + [str(a) for a in args]
    full_env = mpi_env(env)
    return subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, **kwargs)


def mpi_env(extra=None):
    """Environment for an MPI job here: one thread per rank, no CMA, repo on the path."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env
