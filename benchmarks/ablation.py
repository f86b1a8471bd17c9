r"""The demo's ablation table: the methods and what each part of MBCCM buys, over training seeds.

  python benchmarks/ablation.py                       # 8 settings x seeds 0 1 2
  python benchmarks/ablation.py --seeds 0 1 2 3 4 --root runs/ablation
  python benchmarks/ablation.py --only PGM ClusterContrast
  python benchmarks/ablation.py --root runs/ablation_16 --only ClusterContrast "full MBCCM" PGM \
      --set demo.py:schedule.epochs=16 --set "demo.py:optim.lr_boundaries=(12, 100, 100)" \
      --set pgm_demo.py:schedule.epochs=16 --set pgm_demo.py:schedule.stage2_start=8 \
      --set "pgm_demo.py:optim.lr_boundaries=(6, 100)"    # another budget (here the old one)

Settings (each one README command 1 with `--config.seed=<seed>`, the config and the overrides
named; all from the same pretrained start, the synthetic ImageNet stand-in):

  pretrained start only   the ImageNet stand-in, not adapted (no training run: scored directly)
  ClusterContrast         configs/demo.py --config.method=cluster_contrast: each modality alone
  stage 1 only            configs/demo.py --config.schedule.stage2_start=<epochs>: MBCCM's stage 1
  full MBCCM              configs/demo.py as it is
  MBCCM without L_cc      configs/demo.py --config.loss.beta=0: no consistency loss
  PGM                     configs/pgm_demo.py as it is: the same budget (24 epochs of 30 steps)
  PCLHD                   configs/pclhd_demo.py as it is: the same budget, two updates per step
  supervised bound        configs/demo.py --config.cluster.oracle=True: true identities

Every training run is its own `python main.py` process (so a run can be resumed by running the
script again: finished runs are skipped), its best checkpoint is chosen as the paper does (by
the in-training mAP, trial 0) and then scored with `python main.py --mode eval`: SYSU-MM01
all-search single-shot over gallery draws 0-9. The table gives mean ± sample standard deviation
(ddof 1) over seeds of those 10-draw means, the matching measures of the last epoch, and the
minutes per run; it is written to <root>/ablation.md (and .json) and printed with the script's
wall time and the checks of the demo's targets (docs/mbccm.md, "Ablation").
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, config file, overrides); the stage-1-only override needs the config's epoch count,
# filled in below. The start is scored, not trained.
SETTINGS = (
    ('pretrained start only', 'demo.py', None),
    ('ClusterContrast (method=cluster_contrast)', 'demo.py', ('method', 'cluster_contrast')),
    ('stage 1 only', 'demo.py', ('schedule.stage2_start', 'EPOCHS')),
    ('full MBCCM', 'demo.py', ()),
    ('MBCCM without L_cc (loss.beta=0)', 'demo.py', ('loss.beta', '0.0')),
    ('PGM', 'pgm_demo.py', ()),
    ('PCLHD', 'pclhd_demo.py', ()),
    ('supervised bound (cluster.oracle)', 'demo.py', ('cluster.oracle', 'True')),
)
METRICS = ('rank1', 'mAP', 'mINP')
# Matching measures of the last epoch: the one-to-one (Hungarian) partner's identity, infrared
# clusters with a same-identity partner, and matched pairs sharing an identity (PGM's pairs).
MATCHING = ('match/one_to_one_precision', 'match/infrared_with_true_partner',
            'match/pair_precision')
# PCLHD's joint clustering of the last epoch: the purity of its clusters, and the share of
# them that hold both modalities (the clusters its second update trains on).
JOINT = ('joint/purity', 'joint/mixed_share')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=os.path.join(ROOT, 'configs'),
                      help='the folder holding demo.py and pgm_demo.py')
  parser.add_argument('--seeds', type=int, nargs='+', default=(0, 1, 2),
                      help='training seeds (config.seed); at least 3 for a std worth reading')
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'ablation'),
                      help='one workdir per setting and seed goes under it')
  parser.add_argument('--only', nargs='+', default=None,
                      help='run only the settings whose name starts with one of these words')
  parser.add_argument('--set', action='append', default=[], metavar='CONFIG:FIELD=VALUE',
                      help='an override for every run of one config file (e.g. demo.py:'
                           'schedule.epochs=24), to measure another budget; repeatable')
  return parser.parse_args(argv)


def _slug(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name.split(' (')[0]).strip('_')


def _run(command: list[str], log_path: str) -> float:
  """Runs a main.py command with its output in log_path; returns its wall seconds."""
  start = time.time()
  with open(log_path, 'a', encoding='utf-8') as log:
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  if result.returncode != 0:
    raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}); see {log_path}')
  return time.time() - start


def _metrics(workdir: str) -> list[dict]:
  """The run's per-epoch rows (metrics.jsonl; epoch 0 is the evaluation before training)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def train_and_score(config_path: str, overrides: list[str], workdir: str, epochs: int,
                    select_by: str = 'mAP') -> dict:
  """One training run (skipped when finished) and its best checkpoint scored on 10 draws."""
  os.makedirs(workdir, exist_ok=True)
  main = [sys.executable, os.path.join(ROOT, 'main.py'), '--config', config_path,
          '--workdir', workdir, *overrides]
  timing_path = os.path.join(workdir, 'ablation_seconds.json')
  rows = _metrics(workdir)
  scored_path = os.path.join(workdir, 'eval', 'sysu_best.json')
  if not rows or rows[-1]['epoch'] != epochs:
    seconds = _run(main, os.path.join(workdir, 'train.log'))
    with open(timing_path, 'w', encoding='utf-8') as f:
      json.dump({'train_seconds': seconds}, f)
    rows = _metrics(workdir)
    if os.path.isfile(scored_path):
      os.remove(scored_path)  # scored before this run finished
  if not os.path.isfile(scored_path):
    _run([*main, '--mode', 'eval'], os.path.join(workdir, 'eval.log'))
  with open(scored_path, encoding='utf-8') as f:
    scored = json.load(f)['all_search_single_shot']['mean']
  out = {k: float(scored[k]) for k in METRICS}
  out.update({k: float(rows[-1][k]) for k in MATCHING + JOINT if k in rows[-1]})
  trained = [r for r in rows if r['epoch'] >= 1 and 'eval/mAP' in r]
  out['best_epoch'] = max(trained, key=lambda r: r[f'eval/{select_by}'])['epoch']
  if os.path.isfile(timing_path):
    with open(timing_path, encoding='utf-8') as f:
      out['train_seconds'] = json.load(f)['train_seconds']
  return out


def load_config(config_path: str):
  spec = importlib.util.spec_from_file_location('ablation_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def score_start(config_path: str, seed: int) -> dict:
  """The pretrained start of seed `seed`, not adapted, on gallery draws 0-9."""
  # pylint: disable=import-outside-toplevel
  from vireid_jax import data as data_lib
  from vireid_jax.evaluation import driver as evaluate_lib
  from vireid_jax import extract as extract_lib
  from vireid_jax import models
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state
  config = load_config(config_path)
  config.seed = seed
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  state = train_state.create_train_state(config, model, mesh)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  extract_batch = extract_lib.make_extract_fn(model, tuple(config.data.mean),
                                              tuple(config.data.std), config.eval.flip)

  def extract(images, modality, desc):
    return extract_lib.extract_features(extract_batch, variables, images, modality,
                                        config.eval.batch_size, mesh, desc=desc, progress=False)

  test_visible, test_infrared = data_lib.load_test(config.data)
  results = evaluate_lib.evaluate_features(config, extract, test_visible, test_infrared,
                                           trials=range(10))
  return {k: float(results['all_search_single_shot']['mean'][k]) for k in METRICS}


def _mean_std(values: list[float]) -> tuple[float, float]:
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values, spec='.2f') -> str:
  if not values:
    return '-'
  mean, std = _mean_std(values)
  return f'{mean:{spec}} ± {std:{spec}}'


def markdown(rows: dict, seeds) -> str:
  lines = ['| setting | Rank-1 | mAP | mINP | one-to-one same id (last epoch) | infrared '
           'clusters with a same-id partner (last epoch) | matched pairs same id (last epoch) '
           '| joint clusters: purity (last epoch) | joint clusters with both modalities (last '
           'epoch) | best epoch | minutes per run |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for name, runs in rows.items():
    pick = lambda key: [r[key] for r in runs if key in r]
    minutes = [r['train_seconds'] / 60 for r in runs if 'train_seconds' in r]
    lines.append(f'| {name} | ' + ' | '.join(_cell(pick(k)) for k in METRICS)
                 + ''.join(f' | {_cell(pick(key))}' for key in MATCHING + JOINT)
                 + f' | {_cell(pick("best_epoch"), ".1f")} | {_cell(minutes, ".1f")} |')
  lines.append('')
  lines.append(f'Seeds {list(seeds)} (config.seed); each run\'s best checkpoint (by in-training '
               f'mAP, as MBCCM\'s and PGM\'s code; PCLHD: Rank-1, as its code) scored on '
               f'SYSU-MM01 all-search single-shot, gallery draws 0-9; mean ± std (ddof 1) over '
               f'seeds, in percent; matching and joint-cluster measures are shares.')
  return '\n'.join(lines)


def target_checks(rows: dict) -> list[str]:
  """The demo's targets (docs/mbccm.md, "Ablation"), computed from the rows (None where a
  setting was not run)."""
  maps = {name.split(' (')[0]: [r['mAP'] for r in runs] for name, runs in rows.items()}
  start, stage1 = maps.get('pretrained start only'), maps.get('stage 1 only')
  full, bound = maps.get('full MBCCM'), maps.get('supervised bound')
  out = []
  if full and stage1:
    margin = statistics.mean(full) - statistics.mean(stage1)
    spread = max(_mean_std(full)[1], _mean_std(stage1)[1])
    out.append(f'full MBCCM - stage 1 only: {margin:+.2f} mAP; 2 x the larger seed std: '
               f'{2 * spread:.2f} -> {"met" if margin > 2 * spread else "NOT met"}')
  if full and start and bound:
    gap = statistics.mean(bound) - statistics.mean(start)
    recovered = (statistics.mean(full) - statistics.mean(start)) / gap if gap else float('nan')
    out.append(f'share of the start-to-bound gap recovered by full MBCCM: {recovered:.2f} '
               f'(target >= 0.5) -> {"met" if recovered >= 0.5 else "NOT met"}')
  if bound:
    out.append(f'supervised bound mAP {statistics.mean(bound):.2f} (target >= 50) -> '
               f'{"met" if statistics.mean(bound) >= 50 else "NOT met"}')
  # The methods against each other: a difference counts only beyond twice the larger seed std.
  for a, b in (('full MBCCM', 'ClusterContrast'), ('PGM', 'ClusterContrast'),
               ('full MBCCM', 'PGM'), ('PCLHD', 'ClusterContrast'), ('PCLHD', 'PGM'),
               ('full MBCCM', 'PCLHD')):
    if maps.get(a) and maps.get(b):
      margin = statistics.mean(maps[a]) - statistics.mean(maps[b])
      spread = max(_mean_std(maps[a])[1], _mean_std(maps[b])[1])
      out.append(f'{a} - {b}: {margin:+.2f} mAP; 2 x the larger seed std: {2 * spread:.2f} '
                 f'-> {"separated" if abs(margin) > 2 * spread else "within seed noise"}')
  full_runs = rows.get('full MBCCM', [])
  for key, target in zip(MATCHING[:2], (0.5, 0.8)):
    values = [r[key] for r in full_runs if key in r]
    if values:
      mean = statistics.mean(values)
      out.append(f'full MBCCM last-epoch {key}: {mean:.3f} (target >= {target}) -> '
                 f'{"met" if mean >= target else "NOT met"}')
  return out


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  extra = {}  # config file -> ['--config.field=value', ...]
  for item in args.set:
    config_file, _, assignment = item.partition(':')
    extra.setdefault(config_file, []).append(f'--config.{assignment}')
  rows = {}
  for name, config_file, override in SETTINGS:
    config_path = os.path.abspath(os.path.join(args.configs, config_file))
    loaded = load_config(config_path)
    epochs, select_by = loaded.schedule.epochs, loaded.eval.select_by
    for flag in extra.get(config_file, []):  # the budget the runs will have
      if flag.startswith('--config.schedule.epochs='):
        epochs = int(flag.split('=', 1)[1])
    if args.only and not any(name.startswith(word) for word in args.only):
      continue
    runs = []
    for seed in args.seeds:
      print(f'[{time.time() - start:6.0f} s] {name}, seed {seed}', flush=True)
      if override is None:
        runs.append(score_start(config_path, seed))
        continue
      flags = [f'--config.seed={seed}', *extra.get(config_file, [])]
      if override:
        field, value = override
        flags.append(f'--config.{field}={epochs if value == "EPOCHS" else value}')
      workdir = os.path.join(args.root, _slug(name), f'seed{seed}')
      runs.append(train_and_score(config_path, flags, workdir, epochs, select_by))
    rows[name] = runs
  table = markdown(rows, args.seeds)
  checks = target_checks(rows)
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, 'ablation.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n\n' + '\n'.join(f'- {c}' for c in checks) + '\n')
  with open(os.path.join(args.root, 'ablation.json'), 'w', encoding='utf-8') as f:
    json.dump({'seeds': list(args.seeds), 'rows': rows, 'checks': checks}, f, indent=1)
  load = os.getloadavg()
  print(table)
  print('\n'.join(checks))
  print(f'wall time {(time.time() - start) / 60:.1f} min (load average at the end: '
        f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); written to {args.root}/ablation.md')


if __name__ == '__main__':
  main()
