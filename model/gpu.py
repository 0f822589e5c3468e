"""TensorFlow's process configuration: threads per rank, the GPU, and the GPU's memory.

The `unified` strategy (opt-in) is the earlier released code's method (aetherAI/whole-slide-cnn),
not this paper's, which does not mention memory (docs/fidelity.md, row `unified`): the GPU
allocator is given a memory fraction above 1,

    per_process_gpu_memory_fraction = host RAM / GPU RAM,

and TensorFlow then allocates CUDA unified (managed) memory, which the driver pages between
GPU and host. That code also rewrote the graph and used mixed precision to fit a 21,500^2 slide
in 256-512 GB of host RAM; done plainly here, a step needs ~790 GB, which
``model.strategy.check_memory`` refuses up front. Every other strategy keeps the default
allocator: the session config turns unified memory on only for `unified`.

Under eager execution the config must be given before the first op runs, so the CLI calls
``configure(config)`` at start, before ``tf.compat.v1.enable_v2_behavior()``.
"""
import os
import shutil
import subprocess

from data.errors import InputError


def unified_memory_fraction(host_ram_bytes, gpu_ram_bytes):
    """host RAM / GPU RAM: above 1 means oversubscription into host memory."""
    if host_ram_bytes <= 0 or gpu_ram_bytes <= 0:
        raise ValueError("RAM sizes must be positive (host {}, GPU {})".format(
            host_ram_bytes, gpu_ram_bytes))
    return float(host_ram_bytes) / float(gpu_ram_bytes)


def session_config(host_ram_bytes=None, gpu_ram_bytes=None, local_rank=0, threads=None,
                   unified=False, gpu=True):
    """A ``tf.compat.v1.ConfigProto`` for one rank.

    - GPU: only the GPU ``local_rank`` is visible (one GPU per rank, as in Horovod's examples);
      memory grows on demand (allow_growth); only with ``unified`` (the `unified` strategy) and
      both RAM sizes known is the allocator fraction host/GPU RAM and ``use_unified_memory`` set.
    - CPU: ``threads`` intra-op threads and one inter-op thread (ranks share the cores).
    ``gpu=False`` (no GPU on the machine) leaves the GPU options alone: TF aborts when asked
    for a visible GPU that does not exist.
    """
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    if gpu:
        options = config.gpu_options
        options.visible_device_list = str(local_rank)
        options.allow_growth = True
        if unified and host_ram_bytes and gpu_ram_bytes:
            fraction = unified_memory_fraction(host_ram_bytes, gpu_ram_bytes)
            options.per_process_gpu_memory_fraction = fraction
            options.experimental.use_unified_memory = fraction > 1.0
    if threads:
        config.intra_op_parallelism_threads = int(threads)
        config.inter_op_parallelism_threads = 1
    return config


def host_ram_bytes():
    import psutil
    return psutil.virtual_memory().total


def _device_index(local_rank):
    """What nvidia-smi calls the ``local_rank``-th visible GPU: nvidia-smi ignores
    CUDA_VISIBLE_DEVICES, whose entries (indices or UUIDs) it accepts after ``-i``."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    return visible[local_rank] if local_rank < len(visible) else str(local_rank)


def gpu_ram_bytes(local_rank=0):
    """Total memory of the ``local_rank``-th visible GPU from nvidia-smi (memory.total), or None
    without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
             "-i", _device_index(int(local_rank))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30,
            check=True).stdout.decode()
        return int(float(out.strip().splitlines()[0])) * 1024 * 1024   # MiB
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def gpu_available():
    """True when nvidia-smi sees a GPU and CUDA_VISIBLE_DEVICES does not hide them all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return gpu_ram_bytes(0) is not None


def threads_per_rank(local_size=1):
    """OMP_NUM_THREADS when set, else the cores shared out among the ranks of this node."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // max(1, local_size))


class GraphModeError(InputError):
    """This process already runs TensorFlow in TF1's graph mode, and eager execution is needed."""


def configure(config):
    """Makes ``config`` the eager context's configuration; call before any TF op runs.

    Training runs eagerly. A process that has already built a graph (TF1's default mode, e.g. a
    model built before ``fit``) can no longer switch: that is a one-line GraphModeError here
    rather than TensorFlow's own ValueError. (Prediction runs in either mode: model/runner.py.)
    """
    import tensorflow as tf
    try:
        tf.compat.v1.enable_eager_execution(config=config)
    except ValueError:
        if tf.executing_eagerly():   # eager already, with other options: TensorFlow's message
            raise
        raise GraphModeError(
            "TensorFlow already runs in graph mode in this process (something built a graph "
            "first, e.g. a model), and training needs eager execution from the start: call fit "
            "before building anything, or run python -m reproduce train")
