"""`--mode export`: the artifact, loaded in a fresh process with JAX alone (no vireid_jax), gives
the features `--mode embed` writes; it lowers for CPU, CUDA and TPU; its contract JSON says so."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vireid_jax.inference import cli
from vireid_jax.inference import export as export_lib
from vireid_jax.inference import store

from inference_fixtures import HEIGHT, WIDTH, run, write_folder  # pylint: disable=unused-import

# What a system without the training code runs: the contract's resize, the artifact's call.
_LOADER = textwrap.dedent('''
    import importlib.util, json, sys
    import numpy as np
    from PIL import Image
    from jax import export

    artifact, contract_file, modality, out = sys.argv[1:5]
    contract = json.load(open(contract_file))
    _, height, width, _ = contract['inputs']['images']['shape']
    exported = export.deserialize(bytearray(open(artifact, 'rb').read()))

    def load(path):
        with Image.open(path) as image:
            image = image.convert('RGB')
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            return np.asarray(image, np.uint8)

    images = np.stack([load(path) for path in sys.argv[5:]])
    code = np.int32(contract['inputs']['modality']['values'][modality])
    np.save(out, np.asarray(exported.call(images, code)))
    # Neither imported nor importable here: the artifact stands alone.
    assert 'vireid_jax' not in sys.modules
    assert importlib.util.find_spec('vireid_jax') is None
    print(json.dumps(list(exported.platforms)))
''')


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  folder = tmp_path_factory.mktemp('export')
  artifact = str(folder / 'model.jaxexport')
  text = cli.run('export', workdir, None, cli.Options(out=artifact))
  assert artifact in text
  return workdir, folder, artifact


@pytest.mark.slow
def test_the_artifact_alone_gives_the_features_of_mode_embed(exported):  # pylint: disable=redefined-outer-name
  workdir, folder, artifact = exported
  paths = write_folder(folder / 'photos', 11, seed=5)
  (folder / 'loader.py').write_text(_LOADER)
  environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  # Only what the loader needs besides numpy, PIL and JAX (flatbuffers, where it was installed
  # beside the environment instead of in it).
  import flatbuffers  # pylint: disable=import-outside-toplevel
  environment['PYTHONPATH'] = os.path.dirname(os.path.dirname(flatbuffers.__file__))
  for modality in ('visible', 'infrared'):
    embedded = str(folder / f'{modality}.npz')
    cli.run('embed', workdir, None, cli.Options(images=[str(folder / 'photos')],
                                               modality=modality, out=embedded))
    out = str(folder / f'{modality}.npy')
    result = subprocess.run(
        [sys.executable, str(folder / 'loader.py'), artifact,
         export_lib.contract_path(artifact), modality, out, *paths],
        capture_output=True, text=True, timeout=300, cwd=str(folder), env=environment)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == ['cpu', 'cuda', 'tpu']
    loaded = store.load(embedded)
    assert loaded.paths.tolist() == paths
    np.testing.assert_allclose(np.load(out), loaded.features, rtol=0, atol=1e-5)


def test_the_artifact_lowers_for_cpu_cuda_and_tpu_with_a_symbolic_batch(exported):  # pylint: disable=redefined-outer-name
  _, _, artifact = exported
  loaded = export_lib.load(artifact)
  assert loaded.platforms == ('cpu', 'cuda', 'tpu')
  images, modality = loaded.in_avals
  assert str(images.shape[0]) == 'batch' and images.shape[1:] == (HEIGHT, WIDTH, 3)
  assert images.dtype == np.uint8 and modality.shape == () and modality.dtype == np.int32
  out, = loaded.out_avals
  assert str(out.shape[0]) == 'batch' and out.shape[1] == 32 and out.dtype == np.float32
  # No kernel of one platform alone (a LAPACK call, a host callback): portable StableHLO. The
  # only custom call is jax.export's own check of the symbolic batch, resolved when it is
  # compiled on any platform.
  calls = {line.split('@')[1].split('(')[0] for line in loaded.mlir_module().splitlines()
           if 'stablehlo.custom_call' in line and '@' in line}
  assert calls <= {'shape_assertion'}, calls
  # Any batch size runs (here on the CPU), the two stems giving other features.
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    images = rng.integers(0, 256, (batch, HEIGHT, WIDTH, 3), np.uint8)
    visible = export_lib.call(loaded, images, 'visible')
    infrared = export_lib.call(loaded, images, 'infrared')
    assert visible.shape == (batch, 32)
    np.testing.assert_allclose(np.linalg.norm(visible, axis=1), 1, atol=1e-5)
    assert np.abs(visible - infrared).max() > 0


def test_the_contract_names_the_input_the_checkpoint_and_the_artifact(exported):  # pylint: disable=redefined-outer-name
  workdir, _, artifact = exported
  contract = json.loads(open(export_lib.contract_path(artifact)).read())
  opened = cli.run_lib.load_run(workdir, 'best')
  assert contract['inputs']['images']['shape'] == ['batch', HEIGHT, WIDTH, 3]
  assert contract['inputs']['images']['dtype'] == 'uint8'
  assert contract['inputs']['modality']['values'] == {'visible': 0, 'infrared': 1}
  assert contract['normalisation']['mean'] == list(opened.config.data.mean)
  assert contract['normalisation']['std'] == list(opened.config.data.std)
  assert contract['flip_averaged'] is True
  assert contract['weights_sha256'] == opened.weights_sha256
  assert contract['checkpoint'] == opened.checkpoint and contract['checkpoint_epoch'] == 1
  with open(artifact, 'rb') as f:
    assert contract['artifact_sha256'] == hashlib.sha256(f.read()).hexdigest()
