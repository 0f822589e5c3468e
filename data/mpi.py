"""Whether this process was started by an MPI launcher, and as which rank of how many.

Launchers announce themselves in the environment: Open MPI's ``mpirun`` sets
``OMPI_COMM_WORLD_SIZE``/``OMPI_COMM_WORLD_RANK``, MPICH's Hydra (and Intel MPI) ``PMI_SIZE``/
``PMI_RANK``, and a PMIx server (Open MPI >= 4, Slurm's srun) ``PMIX_RANK``. Reading them needs
no MPI library, so commands can check the world size before Horovod or mpi4py initialise MPI.
"""
import os

SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _first_int(names, env):
    for name in names:
        if str(env.get(name, "")).isdigit():
            return int(env[name])
    return None


def launched(env=None):
    """True when an MPI launcher started this process (any of the variables above is set)."""
    env = os.environ if env is None else env
    return any(name in env for name in SIZE_VARIABLES + RANK_VARIABLES)


def world_size(env=None):
    """The number of ranks the launcher announced; 1 without a launcher (or when it does not
    say, as PMIx alone does: MPI itself knows then)."""
    env = os.environ if env is None else env
    size = _first_int(SIZE_VARIABLES, env)
    return 1 if size is None else size


def rank(env=None):
    """This process's rank as the launcher announced it; 0 without a launcher."""
    env = os.environ if env is None else env
    r = _first_int(RANK_VARIABLES, env)
    return 0 if r is None else r
