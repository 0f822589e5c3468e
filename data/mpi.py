"""Whether this process was started by an MPI launcher, and as which rank of how many.

Launchers announce themselves in the environment: Open MPI's ``mpirun`` sets
``OMPI_COMM_WORLD_SIZE``/``OMPI_COMM_WORLD_RANK``, MPICH's Hydra (and Intel MPI) ``PMI_SIZE``/
``PMI_RANK``, and a PMIx server (Open MPI >= 4, Slurm's srun) ``PMIX_RANK``. Reading them needs
no MPI library, so commands can check the world size before Horovod or mpi4py initialise MPI.
"""
import os

SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _announced(names, env, default):
    """The first of ``names`` set to a whole number in ``env`` (os.environ when None), else
    ``default``."""
    env = os.environ if env is None else env
    for name in names:
        if str(env.get(name, "")).isdigit():
            return int(env[name])
    return default


def launched(env=None):
    """True when an MPI launcher started this process (any of the variables above is set)."""
    env = os.environ if env is None else env
    return any(name in env for name in SIZE_VARIABLES + RANK_VARIABLES)


def world_size(env=None):
    """The number of ranks the launcher announced; 1 without a launcher (or when it does not
    say, as PMIx alone does: MPI itself knows then)."""
    return _announced(SIZE_VARIABLES, env, 1)


def rank(env=None):
    """This process's rank as the launcher announced it; 0 without a launcher."""
    return _announced(RANK_VARIABLES, env, 0)


LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def local_rank(env=None):
    """This rank's index among the ranks of its node, as the launcher announced it (0 without
    one)."""
    return _announced(LOCAL_RANK_VARIABLES, env, 0)


def local_size(env=None):
    """The number of ranks on this node, as the launcher announced it (1 without one)."""
    return max(1, _announced(LOCAL_SIZE_VARIABLES, env, 1))


def communicator():
    """(comm, rank, size): mpi4py's world communicator when an MPI launcher started more than one
    rank, else (None, 0, 1). mpi4py is imported only then, so a plain run needs no MPI library."""
    if not launched():
        return None, 0, 1
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None, 0, 1
    return comm, comm.Get_rank(), comm.Get_size()
