"""PGM's own training loops (`train_sysu.py` of commit 3448f52: `main`, which runs
`main_worker_stage1`, then `main_worker_stage2`), fed the project's data.

`main()` runs stage 1 as it is (its call of stage 2 is commented out in the authors' file: they
run it by uncommenting that line); then `main_worker_stage2(args, 'sysu_s1', 'sysu_s2')` runs
stage 2. The CPU patches of torch_cpu.py apply (their `nn.DataParallel` over 4 GPUs emulated
with 4 replicas), and these replacements of what reads files or draws the data (monkeypatched
into the module, never an edited copy):

  get_data('sysu_ir' | 'sysu_rgb')   our training images as their sysu_ir / sysu_rgb give them:
                                     (<id>_c<cam>_<file>.jpg, identity, camera - 1)
  get_test_loader(...)               the clustering extraction: our uint8 training images,
                                     ToTensor + Normalize as torchvision computes them, in the
                                     order of `sorted(dataset.train)`, batch 256 as theirs
  get_train_loader_ir / _color       an IterLoader over our sampled steps: exactly the network
                                     inputs and labels our step trained on (labels in their
                                     numbering); their sampler and transforms never run
  Logger                             the log goes to <out>/reference_log.txt
  save_checkpoint, load_checkpoint   no files: their stage 1 evaluates and saves `model_best`
                                     only from epoch 6, so a short stage 1 would write none; the
                                     project evaluates every stage-1 epoch and restarts stage 2
                                     from its best, and `load_checkpoint` hands their stage 2
                                     their own state after that same stage-1 epoch. Its later
                                     calls (the final tests after each stage) end the stage.

and the observation points of reference_mbccm.py (extraction, Jaccard input, DBSCAN,
trainer.train's entry: memories and the PGM maps, optimizer.step: the loss terms
`loss_ir`, `loss_rgb`, `cross_loss`, `loss` of ClusterContrastTrainer.train's frame). Where
their maps differ from ours, their stage 2 is handed ours (in their numbering), so that later
steps still compare.
"""

import importlib
import os
import sys
import types

import numpy as np
import torch

from benchmarks.lockstep import compare
from benchmarks.lockstep import names
from benchmarks.lockstep import reference_common as common
from benchmarks.lockstep import torch_cpu
from benchmarks.lockstep.settings import RunSettings

MARKER = 'train_sysu.py'
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TABLES = (('visible', 'memory_rgb'), ('infrared', 'memory_ir'))
PRETRAINED = 'resnet50-19c8e357.pth'


class StageEnd(Exception):
  """Raised by `load_checkpoint` where a stage's final testing starts."""


def args_for(settings: RunSettings, logs_dir: str) -> types.SimpleNamespace:
  """train_sysu.py's argparse defaults (train_sysu.py:1055-1105) with run_train_sysu.sh's
  values (batch 256, 16 instances, 200 iterations), at the lockstep's sizes."""
  s = settings
  return types.SimpleNamespace(
      dataset='sysu', batch_size=s.infrared_images, test_batch=64, workers=0,
      height=s.image_size[0], width=s.image_size[1], num_instances=s.instances_per_cluster,
      eps=s.eps, eps_gap=0.02, k1=s.k1, k2=s.k2, arch='agw', features=0, dropout=0,
      momentum=0.2, lr=s.learning_rate, weight_decay=5e-4, epochs=s.stage1_epochs,
      iters=s.steps_per_epoch, step_size=s.lr_step, seed=1, print_freq=10**9, eval_step=1,
      temp=0.05, data_dir='<lockstep: the project\'s images>', logs_dir=logs_dir,
      pooling_type='gem', use_hard=False, no_cam=False)


def market_name(path: str) -> str:
  """Our raw-layout path camX/<id>/<file> as prepare_sysu.py names the copy:
  <id>_c<X>_<file>."""
  cam, pid, file = str(path).split('/')[-3:]
  return f'{pid}_c{cam[-1]}_{file}'


def run(reference_dir: str, settings: RunSettings, feed, sink, out_dir: str,
        dtype=torch.float32) -> None:
  """Runs their two stages for the whole lockstep run, reporting to `sink`."""
  if settings.stage1_epochs != settings.stage2_epochs:
    raise ValueError('train_sysu.py runs both stages for args.epochs: use equal stage lengths')
  code = torch_cpu.find_folder(reference_dir, MARKER)
  if code is None or not os.path.isdir(os.path.join(code, 'clustercontrast')):
    raise FileNotFoundError(f'{reference_dir}: no {MARKER} beside clustercontrast/; fetch the '
                            f'authors\' code (docs/verification.md)')
  torch_cpu.setup(settings.groups, dtype)
  torch_cpu.add_path(code)
  sys.dont_write_bytecode = True
  data = feed.read_data()
  their_paths = {m: [market_name(p) for p in data[f'{m}/paths']] for m in common.MODALITIES}
  ls = common.Lockstep(settings, feed, sink, their_paths,
                       os.path.join(out_dir, 'reference_log.txt'))
  imagenet = torch_cpu.as_torch_state(
      {k[len(names.VISIBLE_PREFIX):] if k.startswith(names.VISIBLE_PREFIX) else
       k[len(names.TRUNK_PREFIX):]: v for k, v in ls.initial.items()
       if k.startswith((names.VISIBLE_PREFIX, names.TRUNK_PREFIX))})
  real_load = torch.load

  def load(f, *args, **kwargs):  # resnet_agw.py:189's ImageNet file: our initial weights
    if isinstance(f, str) and f.endswith(PRETRAINED):
      return {k: v.clone() for k, v in imagenet.items()}
    return real_load(f, *args, **kwargs)

  torch.load = load
  ts = importlib.import_module('train_sysu')
  trainers = importlib.import_module('clustercontrast.trainers')
  _patch(ts, trainers, ls, settings, dtype)
  sink.initial(ls.initial)
  args = args_for(settings, out_dir)
  ts.parser = types.SimpleNamespace(parse_args=lambda: args)
  stdout = sys.stdout
  try:
    try:
      ts.main()  # stage 1
    except StageEnd:
      pass
    try:
      ts.main_worker_stage2(args, 'sysu_s1', 'sysu_s2')
    except StageEnd:
      pass
  finally:
    sys.stdout = stdout
    torch.load = real_load


def _patch(ts, trainers, ls: common.Lockstep, settings: RunSettings, dtype) -> None:
  data = ls.data
  snapshots = {}  # stage-1 epoch -> their model's state_dict after it
  stage = {'stage': 1, 'loads': 0}

  class Dataset:  # get_data(name, data_dir): sysu_ir / sysu_rgb
    def __init__(self, modality):
      cams = data[f'{modality}/cams']
      self.train = [(name, int(pid), int(cam) - 1) for name, pid, cam in zip(
          ls.their_paths[modality], data[f'{modality}/pids'], cams)]
      self.images_dir = '<lockstep>'
      self.modality = modality
      # their name -> our index
      self.index = {name: i for i, name in enumerate(ls.their_paths[modality])}

  datasets = {'sysu_rgb': Dataset('visible'), 'sysu_ir': Dataset('infrared')}

  def get_test_loader(dataset, height, width, batch_size, workers, testset=None,
                      test_transformer=None):
    rows = sorted(dataset.train) if testset is None else testset
    index = np.array([dataset.index[name] for name, _, _ in rows])
    images = data[f'{dataset.modality}/images'][index]
    batches = []
    for begin in range(0, len(rows), batch_size):
      part = rows[begin:begin + batch_size]
      x = torch_cpu.to_tensor_normalize(images[begin:begin + batch_size], MEAN, STD).to(dtype)
      batches.append((x, [r[0] for r in part], torch.tensor([r[1] for r in part]),
                      torch.tensor([r[2] for r in part]), torch.arange(begin, begin + len(part))))
    return batches

  class Feeder:
    """One epoch's steps, read from our record as their two IterLoaders ask for them."""

    def __init__(self, epoch):
      self.steps = list(ls.feed.steps_of_epoch(epoch))
      self.position = -1
      self.record = None

    def advance(self):
      self.position += 1
      self.record = ls.feed.read_step(self.steps[self.position])

  class IterLoader:  # clustercontrast.utils.data.IterLoader over our steps
    def __init__(self, feeder, modality):
      self.feeder, self.modality = feeder, modality

    def __len__(self):
      return len(self.feeder.steps)

    def new_epoch(self):
      pass

    def next(self):
      r = self.feeder
      if self.modality == 'infrared':  # trainers.py:61 asks the infrared loader first
        r.advance()
      step = r.record
      labels = torch.from_numpy(ls.their_labels(self.modality, step[f'labels/{self.modality}']))
      names_ = ['<lockstep>'] * len(labels)
      if self.modality == 'infrared':  # (imgs, fnames, pids, camids, indexes)
        return (common.tensor(step['inputs/infrared'], dtype), names_, labels,
                torch.zeros_like(labels), torch.zeros_like(labels))
      view_a, view_b = common.tensor(step['inputs/visible'], dtype).chunk(2)
      # (imgs, imgs1, fnames, pids, camids, indexes)
      return (view_a, view_b, names_, labels, torch.zeros_like(labels), torch.zeros_like(labels))

  feeders = {}

  def feeder():
    if ls.epoch not in feeders:
      feeders.clear()
      feeders[ls.epoch] = Feeder(ls.epoch)
    return feeders[ls.epoch]

  real_dbscan = ts.DBSCAN
  real_jaccard = ts.compute_jaccard_distance
  real_extract = ts.extract_features
  real_create = ts.create_model
  real_train = trainers.ClusterContrastTrainer.train
  match = their_matching(ts)

  def compute_jaccard_distance(features, *args, **kwargs):
    modality = ls.modality_of(len(features))
    ls.record[f'features/{modality}'] = ls.to_ours(features.numpy(), modality)
    ls.jaccard_calls[modality] = (args, kwargs)
    return real_jaccard(features, *args, **kwargs)

  def extract_features(model, loader, *args, mode=0, **kwargs):
    if mode == 1:  # each epoch extracts the visible set first (train_sysu.py:453,759)
      ls.epoch += 1
      ls.record = {f'start/{k}': v for k, v in ls.state().items()}
      if stage['stage'] == 2 and ls.epoch == ls.settings.stage1_epochs:
        ls.record['restart/from_epoch'] = stage['restored']
    return real_extract(model, loader, *args, mode=mode, **kwargs)

  def create_model(args):
    model = real_create(args)
    common.state_setup(model, ls.initial)
    ls.model = model
    return model

  def load_checkpoint(fpath):
    stage['loads'] += 1
    if stage['loads'] == 2:  # main_worker_stage2's start: stage 1's model_best
      ours = ls.feed.read_epoch(ls.settings.stage1_epochs)
      best = int(ours.get('restart/from_epoch', ls.settings.stage1_epochs - 1))
      if best < 0:  # the project chose none: it continues from the last stage-1 epoch
        best = ls.settings.stage1_epochs - 1
      stage['stage'], stage['restored'] = 2, best
      return {'state_dict': snapshots[best]}
    raise StageEnd(fpath)  # the final tests after a stage's loop

  def train(self, epoch, data_loader_ir, data_loader_rgb, optimizer, print_freq=10,
            train_iters=400, i2r=None, r2i=None):
    ls.trainer = self
    record = dict(ls.record, epoch=ls.epoch, stage=stage['stage'])
    for ours, theirs in TABLES:
      record[f'memories/{ours}'] = getattr(self, theirs).features.numpy().copy()
    if r2i:  # stage 2 with maps (train_sysu.py:899)
      num_v, num_i = len(record['memories/visible']), len(record['memories/infrared'])
      record['association/visible_to_infrared'] = np.array(
          [r2i.get(v, -1) for v in range(num_v)], np.int64)
      record['association/infrared_to_visible'] = np.array(
          [i2r.get(i, -1) for i in range(num_i)], np.int64)
      # The decisive check: their matching statements on OUR centres (our memories as
      # initialised: F.normalize of the centres, as theirs), in OUR numbering, must give our
      # maps. Our numbering, not theirs: their round 2 pairs the unmatched clusters by
      # position (docs/pgm.md, "Reference quirks", 1), so which clusters it pairs follows the
      # numbering, and the two sides' numberings may differ where their partitions agree.
      ours = ls.ours_epoch()
      if 'association/visible_to_infrared' in ours:
        on_i2r, on_r2i = match(common.tensor(ours['memories/visible'], dtype),
                               common.tensor(ours['memories/infrared'], dtype))
        ours_v, ours_i = len(ours['memories/visible']), len(ours['memories/infrared'])
        on_ours = {'association/visible_to_infrared': np.array(
                       [on_r2i.get(v, -1) for v in range(ours_v)], np.int64),
                   'association/infrared_to_visible': np.array(
                       [on_i2r.get(i, -1) for i in range(ours_i)], np.int64)}
        identity = {'visible': np.arange(ours_v), 'infrared': np.arange(ours_i)}
        equal = bool(compare.association_equal(ours, on_ours, identity))
        left = None if equal else compare.association_extends(ours, on_ours, identity)
        record['association_on_our_centres'] = equal or left is not None
        record['association_unmatched_by_theirs'] = 0 if equal else (left or 0)
      i2r, r2i = _ours_if_different(ls, record, i2r, r2i)
    ls.sink.epoch(ls.epoch, record)
    ls.record = {}
    result = real_train(self, epoch, data_loader_ir, data_loader_rgb, optimizer,
                        print_freq=print_freq, train_iters=train_iters, i2r=i2r, r2i=r2i)
    if stage['stage'] == 1:
      module = ls.model
      snapshots[epoch] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return result

  def optimizer_factory(real_adam):
    def adam(params, *args, **kwargs):
      optimizer = real_adam(params, *args, **kwargs)
      parameters = common.params_of(optimizer)

      def before():
        local = common.locals_of(real_train.__code__)  # trainers.py:104, at optimizer.step()
        value = lambda name: float(torch.as_tensor(local[name]).detach())
        return {'epoch': ls.epoch, 'stage': stage['stage'],
                'lr': optimizer.param_groups[0]['lr'],
                'grad_norm': torch_cpu.step_norm(parameters),
                'loss/infrared': value('loss_ir'), 'loss/visible': value('loss_rgb'),
                'loss/cross': value('cross_loss'), 'loss/total': value('loss')}

      common.record_steps(optimizer, before, lambda record: ls.finish_step(record, TABLES))
      return optimizer
    return adam

  ts.get_data = lambda name, data_dir: datasets[name]
  ts.get_test_loader = get_test_loader
  ts.get_train_loader_ir = lambda *args, **kwargs: IterLoader(feeder(), 'infrared')
  ts.get_train_loader_color = lambda *args, **kwargs: IterLoader(feeder(), 'visible')
  ts.Logger = lambda path: common.LogFile(ls.log_path)
  ts.save_checkpoint = lambda *args, **kwargs: None
  ts.load_checkpoint = load_checkpoint
  ts.DBSCAN = common.recording_dbscan(ls, real_dbscan, real_jaccard, dtype)
  ts.compute_jaccard_distance = compute_jaccard_distance
  ts.extract_features = extract_features
  ts.create_model = create_model
  trainers.ClusterContrastTrainer.train = train
  # train_sysu.py:397,724 build torch.optim.Adam: record at its step (this process runs
  # only their code)
  torch.optim.Adam = optimizer_factory(torch.optim.Adam)


def their_matching(ts):
  """train_sysu.py's Progressive Graph Matching block (main_worker_stage2, the `if
  num_cluster_rgb >= num_cluster_ir:` statement of TS:822-847), compiled from their file as it
  is: `match(centres_rgb, centres_ir) -> (i2r, r2i)` runs their statements on given centres."""
  import ast  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel
  import scipy.optimize  # pylint: disable=import-outside-toplevel
  source = inspect.getsource(ts.main_worker_stage2)
  tree = ast.parse(textwrap_dedent(source))
  block = [node for node in ast.walk(tree) if isinstance(node, ast.If)
           and ast.unparse(node.test) == 'num_cluster_rgb >= num_cluster_ir']
  if len(block) != 1:
    raise RuntimeError('train_sysu.py: the PGM block (if num_cluster_rgb >= num_cluster_ir) '
                       'was not found once')
  code = compile(ast.Module(body=block, type_ignores=[]), inspect.getsourcefile(ts), 'exec')

  def match(centres_rgb, centres_ir):
    namespace = dict(cluster_features_rgb=centres_rgb, cluster_features_ir=centres_ir,
                     num_cluster_rgb=len(centres_rgb), num_cluster_ir=len(centres_ir),
                     i2r={}, r2i={}, R=[], bgm=False, torch=torch,
                     F=torch.nn.functional,
                     linear_sum_assignment=scipy.optimize.linear_sum_assignment)
    exec(code, namespace)  # pylint: disable=exec-used
    return namespace['i2r'], namespace['r2i']

  return match


def textwrap_dedent(source: str) -> str:
  import textwrap  # pylint: disable=import-outside-toplevel
  return textwrap.dedent(source)


def _ours_if_different(ls: common.Lockstep, record: dict, i2r: dict, r2i: dict):
  """Their maps, or ours in their numbering where they differ (recorded as forced)."""
  ours = ls.ours_epoch()
  if 'association/visible_to_infrared' not in ours:
    return i2r, r2i
  vis, inf = ls.maps['visible'], ls.maps['infrared']
  ours_r2i = {int(vis[v]): int(inf[i]) for v, i in enumerate(ours['association/visible_to_infrared'])
              if i >= 0}
  ours_i2r = {int(inf[i]): int(vis[v]) for i, v in enumerate(ours['association/infrared_to_visible'])
              if v >= 0}
  same = ({int(k): int(v) for k, v in r2i.items()} == ours_r2i and
          {int(k): int(v) for k, v in i2r.items()} == ours_i2r)
  if same:
    return i2r, r2i
  record['association_forced'] = True
  return ({np.int64(k): np.int64(v) for k, v in ours_i2r.items()},
          {np.int64(k): np.int64(v) for k, v in ours_r2i.items()})
