"""Each bad input of the inference modes gets one line that names it and says what to do; from
`main.py`, that line is `error: ...` and nothing else."""

import os
import shutil
import subprocess
import sys

import pytest

from vireid_jax.inference import cli
from vireid_jax.inference.errors import InferenceError

from inference_fixtures import run, write_folder, write_image  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(mode, workdir, **options) -> str:
  with pytest.raises(InferenceError) as error:
    cli.run(mode, workdir, None, cli.Options(**options))
  message = str(error.value)
  assert '\n' not in message, message
  return message


def test_a_workdir_without_checkpoints(tmp_path):
  (tmp_path / 'run').mkdir()
  message = _one_line('export', str(tmp_path / 'run'))
  assert 'has no checkpoints' in message and 'train there first' in message
  message = _one_line('export', str(tmp_path / 'nowhere'))
  assert 'does not exist' in message


def test_a_run_with_only_latest_checkpoints_names_the_flag(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  copy = tmp_path / 'run'
  shutil.copytree(os.path.join(workdir, 'checkpoints', 'latest'), copy / 'checkpoints' / 'latest')
  message = _one_line('export', str(copy))
  assert 'no best checkpoint' in message and '--checkpoint=latest' in message


def test_an_image_folder_with_no_images(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'sub' / 'readme.txt').write_text('no images here')
  message = _one_line('embed', workdir, images=[str(tmp_path / 'empty')], modality='visible',
                      out=str(tmp_path / 'e.npz'))
  assert 'folder with no images' in message and str(tmp_path / 'empty') in message
  message = _one_line('search', workdir, query=[str(tmp_path / 'empty')],
                      query_modality='visible', gallery=[str(tmp_path / 'empty')],
                      gallery_modality='infrared')
  assert 'folder with no images' in message
  assert not os.path.exists(tmp_path / 'e.npz')


def test_a_modality_the_run_did_not_train(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  write_image(tmp_path / 'a.jpg')
  message = _one_line('embed', workdir, images=[str(tmp_path / 'a.jpg')], modality='thermal',
                      out=str(tmp_path / 'a.npz'))
  assert "modality 'thermal'" in message and 'visible and infrared' in message
  message = _one_line('embed', workdir, images=[str(tmp_path / 'a.jpg')],
                      out=str(tmp_path / 'a.npz'))
  assert '--modality is needed' in message


def test_a_single_image_too_small_or_not_rgb_stops_the_api(run, tmp_path):  # pylint: disable=redefined-outer-name
  import vireid_jax  # pylint: disable=import-outside-toplevel
  workdir, _ = run
  model = vireid_jax.Model.from_workdir(workdir)
  tiny = write_image(tmp_path / 'tiny.png', size=(3, 3))
  cmyk = write_image(tmp_path / 'cmyk.jpg', mode='CMYK')
  for path, words in ((tiny, 'too small'), (cmyk, 'neither RGB nor greyscale')):
    with pytest.raises(InferenceError) as error:
      model.embed(path, 'visible')
    assert words in str(error.value) and path in str(error.value)
    assert '\n' not in str(error.value)


def test_every_image_unusable_and_a_bad_pattern(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  write_image(tmp_path / 'bad' / 'tiny.png', size=(2, 2))
  message = _one_line('search', workdir, query=[str(tmp_path / 'bad')],
                      query_modality='visible', gallery=[str(tmp_path / 'bad')],
                      gallery_modality='infrared')
  assert 'no query image could be used' in message
  message = _one_line('search', workdir, query=['x'], gallery=['y'], id_pattern='(?P<id>\\d+)')
  assert 'no group named pid' in message
  write_folder(tmp_path / 'good', 2)
  message = _one_line('search', workdir, query=[str(tmp_path / 'good')],
                      query_modality='visible', gallery=[str(tmp_path / 'good')],
                      gallery_modality='infrared', id_pattern='market')
  assert 'does not match the identity pattern' in message


@pytest.mark.slow
def test_main_prints_one_error_line(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  (tmp_path / 'empty').mkdir()
  write_image(tmp_path / 'a.jpg')
  cases = [
      (['--mode=embed', f'--workdir={tmp_path / "empty"}', f'--images={tmp_path / "a.jpg"}',
        '--modality=visible', f'--out={tmp_path / "a.npz"}'], 'has no checkpoints'),
      (['--mode=embed', f'--workdir={workdir}', f'--images={tmp_path / "empty"}',
        '--modality=visible', f'--out={tmp_path / "a.npz"}'], 'folder with no images'),
      (['--mode=search', f'--workdir={workdir}', f'--query={tmp_path / "a.jpg"}',
        '--query_modality=infrared', f'--gallery={tmp_path / "a.jpg"}',
        '--gallery_modality=rgb'], "modality 'rgb'"),
  ]
  for args, words in cases:
    result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count('\n') == 1 and result.stderr.startswith('error: '), result.stderr
    assert words in result.stderr
