"""The one configuration tree of vireid_jax.

`base_config()` holds the core's settings with the values that produced MBCCM's published
SYSU-MM01 numbers (docs/mbccm.md, "Settings"); `configs/sysu.py`, `configs/regdb.py`,
`configs/llcm.py` and `configs/demo.py` change only what differs for their experiment. Every
number here is named after the piece it drives, and the comment says where it comes from, so
no magic constant needs to live in code.
"""

import os
import urllib.parse

import ml_collections

from vireid_jax import optim as optim_lib

# config.model.pretrained values that are not paths (initial_weights.py resolves them).
PRETRAINED_IMAGENET = 'imagenet'
PRETRAINED_NONE = 'none'
PRETRAINED_SYNTHETIC = 'synthetic_imagenet'
# The weight files a path may name (models/weights.py reads them).
WEIGHTS_SUFFIXES = ('.pth', '.pt', '.pth.tar', '.bin', '.safetensors', '.npz')


def base_config() -> ml_collections.ConfigDict:
  """Paper settings for SYSU-MM01 (docs/mbccm.md, "Settings"); dataset configs override the rest."""
  config = ml_collections.ConfigDict()
  # The training method: a package under vireid_jax/methods/ ('mbccm', 'pgm',
  # 'cluster_contrast', ...) or an importable module of your own ('my_lab.my_method'). The core
  # holds only its own groups here; each method's config function (vireid_jax/methods/<name>/
  # config.py, called by configs/*.py) adds the groups it reads.
  config.method = 'mbccm'
  config.seed = 0  # one seed for sampling, augmentation, init and gallery-free randomness

  # --- data (docs/mbccm.md, "Data") ---
  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'sysu'  # 'sysu' | 'regdb' | 'llcm'
  config.data.root = ''  # folder holding SYSU-MM01/ (raw or Market-style), RegDB/ or LLCM/
  config.data.layout = 'auto'  # SYSU only: 'raw' (cam1..cam6 + exp/), 'market', or 'auto'
  config.data.cache_dir = ''  # prepared uint8 arrays; '' -> <root>/vireid_jax_cache
  config.data.synthetic = False  # True: generate the synthetic set into root when missing
  config.data.synthetic_ids = 0  # identities of the synthetic set (0 -> generator default)
  config.data.image_height = 288  # every image resized once to 288x144 (test images: Lanczos)
  config.data.image_width = 144
  # Filter of the training images (those clustered and trained on): 'lanczos' (MBCCM, as its
  # test images) | 'bicubic' (PGM: torchvision Resize(interpolation=3), TS:106,408; its test
  # images stay Lanczos, TS:138; docs/pgm.md, quirk 13). Bicubic is a second cache beside the
  # Lanczos one.
  config.data.train_resize = 'lanczos'
  config.data.mean = (0.485, 0.456, 0.406)  # ImageNet normalisation
  config.data.std = (0.229, 0.224, 0.225)
  config.data.trial = 1  # RegDB split 1..10 (each a separate training run)
  config.data.num_workers = 0  # image decode threads for `prepare`; 0 -> one per core
  # Training images resident on every device (True) or fed from host memory each step (False);
  # unset: resident when they take at most 20% of a device's memory (train.py).
  config.data.images_on_device = ml_collections.config_dict.placeholder(bool)

  # --- network (docs/mbccm.md, "Network") ---
  config.model = ml_collections.ConfigDict()
  config.model.stage_sizes = (3, 4, 6, 3)  # ResNet-50 blocks per layer1..layer4
  config.model.block = 'bottleneck'  # 'bottleneck' (ResNet-50) | 'basic' (ResNet-18 style)
  config.model.width = 64  # channels of the stem; layer k has width * 2**k (x4 bottleneck)
  config.model.last_stride = 1  # layer4 stride 1: an 18x9 map for a 288x144 input
  config.model.gem_p = 3.0  # GeM pooling exponent, fixed
  config.model.gem_eps = 1e-12  # added inside the GeM mean before the 1/p root
  config.model.neck_init_std = 0.01  # BN-neck weight ~ N(1, 0.01), bias frozen at 0
  # The neck's training variance in two passes, mean((x - mean)^2), as PyTorch's BatchNorm1d
  # computes it; False: E[x^2] - E[x]^2 in one pass, which loses digits in float32 where the
  # pooled features' means dwarf their spread (benchmarks/neck_variance.py).
  config.model.neck_two_pass = True
  # Both stems start from the same weights, as in the paper (both load ImageNet). Without
  # pretrained weights this copies the visible stem's random init into the infrared stem, so
  # the two modalities start in one feature space and cross-modality matching means something.
  config.model.identical_stems = True
  # Where the stems and trunk start (vireid_jax/models/initial_weights.py):
  #   'imagenet': torchvision's ImageNet ResNet-50, the paper's start: torch.hub's cache
  #     ($TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/..., else ~/.cache/torch/...)
  #     holding resnet50-0676ba61.pth or resnet50-19c8e357.pth, else downloaded there from
  #     imagenet_url. No file and no network: the run stops at once, before any data is read,
  #     and names the two ways out: --config.model.pretrained=/path/to/resnet50.pth, or
  #     --config.model.pretrained=none;
  #   a path: a torchvision ResNet state dict (.pth/.pt read without PyTorch, .safetensors, .npz);
  #   'synthetic_imagenet': the synthetic stand-in that config.pretrain describes (made on first
  #     use; the demo's start);
  #   'none': random weights, announced by a warning ('' means the same).
  config.model.pretrained = 'imagenet'
  # torchvision's IMAGENET1K_V1 ResNet-50; the hex part of the file name is its sha256's prefix,
  # checked after downloading as torch.hub checks it.
  config.model.imagenet_url = 'https://download.pytorch.org/models/resnet50-0676ba61.pth'
  config.model.dtype = 'auto'  # compute dtype: 'auto' (bf16 on GPU/TPU, f32 on CPU) | 'float32' | 'bfloat16'
  # The features that decide the clustering and the evaluation: computed in float32 at the
  # highest matmul precision, as the authors' float32 (TF32-convolution) extraction, whatever
  # the training steps compute in ('compute' = model.dtype). docs/speed.md, "Precision of the
  # features that decide clustering", has what bfloat16 extraction changes and what float32
  # costs.
  config.model.extract_dtype = 'float32'  # 'float32' | 'bfloat16' | 'compute'
  config.model.extract_precision = 'highest'  # 'default' | 'high' | 'highest' (float32 only)
  # BatchNorm as the authors ran it: nn.DataParallel over k GPUs splits the visible batch and the
  # infrared batch each into k chunks, and every BatchNorm normalises GPU j's chunks alone
  # (running statistics: GPU 0's). 1 = the whole batch (one GPU); MBCCM's tester hard-codes 3
  # GPUs, its paper does not say how many trained; PGM's scripts use 4. Must divide the batch
  # of each modality (docs/mbccm.md, quirk 3; docs/pgm.md, quirk 5).
  config.model.bn_groups = 1
  # AGW's non-local blocks in the trunk (docs/pgm.md, "Network"); MBCCM runs without
  # (non_local='off').
  config.model.non_local = False
  config.model.non_local_blocks = (0, 2, 3, 0)  # per layer1..layer4, after the layer's last blocks

  # --- clustering (docs/mbccm.md, "Step 2: cluster") ---
  config.cluster = ml_collections.ConfigDict()
  config.cluster.k1 = 30  # k-reciprocal neighbours (neighbour table holds k1 columns, self included)
  config.cluster.k2 = 6  # local query expansion
  config.cluster.eps = 0.6  # DBSCAN eps: 0.6 SYSU, 0.3 RegDB
  config.cluster.min_samples = 4  # DBSCAN min_samples
  # The features clustered: f(x), or with `flip` the mean with the mirror image, renormalised
  # (`renormalize`, as eval.flip) or not. PGM: flip=True, renormalize=False, i.e.
  # (f(x) + f(flip x)) / 2 with norms below 1 (EV:43-49; docs/pgm.md, quirk 6).
  config.cluster.flip = False
  config.cluster.renormalize = True
  # Jaccard neighbour ranking: 'dot' (unit features, renormalised if they drift; MBCCM) | 'l2'
  # (features as given, true squared L2 as faiss IndexFlatL2, weights from raw dot products;
  # PGM's compute_jaccard_distance(search_option=3) on its non-unit features, FR:58-85).
  config.cluster.rank_by = 'dot'
  # The order the images of a modality are clustered in (DBSCAN's border points go to the
  # cluster that reaches them first, and clusters are numbered in that order): 'reader', the
  # dataset reader's (identity, camera, file; PGM's sorted Market-style names give the same)
  # | 'path', sorted by the path relative to the dataset root, as MBCCM's dbscan_cluster sorts
  # its training list (train_mbccm.py:79; the raw SYSU-MM01 layout's camX/<id>/<file>: camera
  # first).
  config.cluster.order = 'reader'
  # Cluster centres: the members' mean, L2-normalised (MBCCM), or the plain mean (PGM, whose
  # memories and matching normalise it themselves, TS:482-503).
  config.cluster.normalize_centers = True
  # True: use the true identities as clusters and matches (supervised upper bound, for
  # studies on labelled data; never the paper's setting).
  config.cluster.oracle = False
  config.cluster.on_no_clusters = 'stop'  # a modality with no cluster: 'stop' the run | 'skip' the epoch

  # --- memory primitives (vireid_jax/memory.py); each method adds its own settings here ---
  config.memory = ml_collections.ConfigDict()
  # How momentum updates run (same numbers either way): 'sequential' scans the samples,
  # 'by_rank' updates all rows at once per occurrence rank; 'auto': sequential on CPU, by_rank
  # on GPU/TPU.
  config.memory.update_method = 'auto'

  # --- optimiser (vireid_jax/optim.py: adam | adamw | sgd, parameter groups, schedules) ---
  # The authors' Adam: L2 weight decay added to the gradient (PyTorch Adam, not AdamW), step
  # decay by epoch.
  config.optim = optim_lib.default_config()
  config.optim.learning_rate = 3.5e-4
  config.optim.lr_boundaries = (20, 50, 70)  # epochs where the lr is multiplied by 0.1
  config.optim.lr_decay = 0.1
  config.optim.weight_decay = 5e-4

  # --- schedule ---
  config.schedule = ml_collections.ConfigDict()
  config.schedule.epochs = 80  # epochs of the run; the method's schedule says what each one does

  # --- evaluation (docs/mbccm.md, "Evaluation protocols") ---
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256  # feature extraction batch
  config.eval.flip = False  # average features of the image and its mirror (reference: off)
  config.eval.sysu_mode = 'all'  # during training: 'all' | 'indoor'
  config.eval.sysu_shots = 1  # during training: 1 single-shot | 10 multi-shot
  # LLCM: the direction whose mAP picks the best checkpoint; the LLCM authors' default
  # direction (test_mode [1, 2] in their train.py / test.py). Both are always reported.
  config.eval.llcm_setting = 'infrared_to_visible'  # | 'visible_to_infrared'
  config.eval.train_trials = (0,)  # gallery draws used by the in-training evaluation (reference: trial 0)
  config.eval.trials = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)  # gallery draws for `--mode eval`
  # `--mode eval`: 'both' (the best checkpoint, chosen on the test set during training as the
  # authors' code does, beside the latest), 'best', 'latest' or a checkpoint folder.
  config.eval.checkpoint = 'both'
  config.eval.ranklist_queries = 8  # queries drawn in the rank-list image; 0 = none
  config.eval.max_rank = 20
  config.eval.at_start = True  # also score the untrained network, so reports show the gain
  # What picks the best checkpoint among the evaluated epochs (strictly greater wins): 'mAP'
  # (MBCCM) or 'rank1' (Rank-1, PCLHD's code), of the selection setting above.
  config.eval.select_by = 'mAP'

  # --- the ImageNet stand-in (vireid_jax/models/pretrain.py), used when model.pretrained is
  # 'synthetic_imagenet': a plain ResNet classifier of the model's stem and trunk, trained with
  # labels on visible images of synthetic people who are not in the dataset. The recipe is
  # torchvision's ImageNet one where it carries over (SGD, Nesterov momentum 0.9, warm-up + cosine,
  # label smoothing 0.1, random resized crop, flip, colour jitter); sizes fit a 2-core CPU.
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.population_seed = 1  # the synthetic datasets are population 0: other people
  config.pretrain.num_ids = 256  # classes (people)
  config.pretrain.images_per_id = 16  # visible images per person, cycling the 4 visible cameras
  # Initialisation, image order and augmentation. Not config.seed: one stand-in serves every
  # training seed, as one ImageNet checkpoint serves every run of the paper.
  config.pretrain.seed = 0
  # 10 epochs fit the labels but their features carried nothing across modalities (cross-
  # modality mAP of the start at chance); 30 do (docs/mbccm.md, "The demo, and what it
  # reaches"). 60 bought no more.
  config.pretrain.epochs = 30
  config.pretrain.batch_size = 128
  config.pretrain.learning_rate = 0.1  # peak, after warm-up (torchvision: 0.1 at batch 256)
  config.pretrain.warmup_epochs = 1.0  # linear warm-up, then cosine decay to 0
  config.pretrain.momentum = 0.9  # Nesterov
  config.pretrain.weight_decay = 1e-4  # L2 added to the gradient (torchvision's recipe)
  config.pretrain.label_smoothing = 0.1
  # layer4 stride while pretraining. ImageNet ResNets use 2 and MBCCM sets 1 after loading,
  # which at 288x144 changes little; at the demo's 64x32 a stride of 2 leaves layer4 a 2x1 map
  # whose features and BN statistics do not carry over to the 4x2 map MBCCM trains on (a
  # clearly lower demo mAP in single runs), so the stand-in is pretrained with the stride
  # MBCCM uses.
  config.pretrain.last_stride = 1
  config.pretrain.crop_area = (0.35, 1.0)  # RandomResizedCrop area (ImageNet: 0.08; people are
  #                                          small images with the person filling them)
  config.pretrain.crop_aspect = (3 / 4, 4 / 3)  # relative to the image's own aspect
  config.pretrain.flip_prob = 0.5
  # Colour jitter stronger than ImageNet's usual (0.4, 0.4, 0.4, 0.1) in hue, and greyscale and
  # inversion more often: features that cannot lean on colour are the ones infrared images share.
  config.pretrain.brightness = 0.4  # ColorJitter brightness, contrast, saturation factors
  config.pretrain.contrast = 0.4
  config.pretrain.saturation = 0.4
  config.pretrain.hue = 0.5  # ColorJitter hue: chroma rotated by up to half a turn
  config.pretrain.grey_prob = 0.5  # RandomGrayscale (MoCo v2 / SimCLR recipes use 0.2)
  config.pretrain.invert_prob = 0.3  # Invert, an AutoAugment / RandAugment ImageNet operation
  config.pretrain.output_dir = 'data/pretrained'  # file name: a hash of the settings above

  config.log_every = 50  # steps between progress-bar metric refreshes
  # Write each epoch's pseudo labels and match mask to <workdir>/pseudo_labels/ (for studies).
  config.save_pseudo_labels = False
  return config


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names the field."""


_CHOICES = {
    'data.dataset': ('sysu', 'regdb', 'llcm'),
    'data.layout': ('auto', 'raw', 'market'),
    'data.train_resize': ('lanczos', 'bicubic'),
    'model.block': ('bottleneck', 'basic'),
    'model.dtype': ('auto', 'float32', 'bfloat16'),
    'model.extract_dtype': ('float32', 'bfloat16', 'compute'),
    'model.extract_precision': ('default', 'high', 'highest'),
    'memory.update_method': ('auto', 'sequential', 'by_rank'),
    'cluster.on_no_clusters': ('stop', 'skip'),
    'cluster.rank_by': ('dot', 'l2'),
    'cluster.order': ('reader', 'path'),
    'eval.sysu_mode': ('all', 'indoor'),
    'eval.llcm_setting': ('infrared_to_visible', 'visible_to_infrared'),
    'eval.select_by': ('mAP', 'rank1'),
}


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def check_bn_groups(bn_groups, batches) -> None:
  """ConfigError unless `bn_groups` is a positive int dividing every per-step modality batch.

  Args:
    bn_groups: config.model.bn_groups.
    batches: what each modality feeds the network per step, e.g. {'visible': 2 * B,
      'infrared': B}; a method whose batch differs passes its own.
  """
  if isinstance(bn_groups, bool) or not isinstance(bn_groups, int) or bn_groups < 1:
    raise ConfigError(f'config.model.bn_groups = {bn_groups!r}; expected a positive int (1 = '
                      f'whole-batch BatchNorm, k = the BatchNorm of k DataParallel GPUs)')
  for modality, rows in batches.items():
    if rows % bn_groups:
      sizes = ', '.join(f'{m} {n}' for m, n in batches.items())
      raise ConfigError(
          f'config.model.bn_groups = {bn_groups} does not divide the {modality} batch of {rows} '
          f'rows per step ({sizes}): choose a bn_groups that divides each, or change '
          f"the method's batch (config.sampler)")


def _validate_model(config: ml_collections.ConfigDict) -> None:
  model = config.model
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel  (methods import this)
  batch = methods.for_config(config).batch_sizes(config)  # the method's step
  check_bn_groups(model.bn_groups, {'visible': batch.visible_inputs,
                                    'infrared': batch.infrared_inputs})
  if not isinstance(model.non_local, bool):
    raise ConfigError(f'config.model.non_local = {model.non_local!r}; expected True or False')
  blocks = tuple(model.non_local_blocks)
  if (len(blocks) != 4 or
      not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in blocks)):
    raise ConfigError(f'config.model.non_local_blocks = {blocks!r}; expected four counts >= 0, '
                      f'the non-local blocks of layer1..layer4 (AGW: (0, 2, 3, 0))')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the values that a typo or an impossible combination would break later."""
  for field, choices in _CHOICES.items():
    if _get(config, field) not in choices:
      raise ConfigError(f'config.{field} = {_get(config, field)!r}; expected one of {choices}')
  if config.data.dataset == 'regdb' and not 1 <= config.data.trial <= 10:
    raise ConfigError(f'config.data.trial = {config.data.trial}; RegDB trials are 1..10')
  if config.eval.sysu_shots not in (1, 10):
    raise ConfigError(f'config.eval.sysu_shots = {config.eval.sysu_shots}; expected 1 or 10')
  _validate_pretrained(config.model)
  optim_lib.validate(config.optim)
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel  (methods import this)
  method = methods.for_config(config)
  method.validate(config)
  _validate_model(config)
  if not config.data.root and not config.data.synthetic:
    raise ConfigError('config.data.root is empty: pass --config.data.root=/path/holding/the/'
                      'dataset (the folder with SYSU-MM01/, RegDB/ or LLCM/)')


def _validate_pretrained(model_cfg: ml_collections.ConfigDict) -> None:
  """A keyword or a weights file's name: a typo ('ImageNet', 'random') must not pass as a path."""
  value = model_cfg.pretrained
  keywords = (PRETRAINED_IMAGENET, PRETRAINED_NONE, PRETRAINED_SYNTHETIC, '')
  if value not in keywords and not value.lower().endswith(WEIGHTS_SUFFIXES):
    raise ConfigError(
        f'config.model.pretrained = {value!r}; expected \'imagenet\' (torchvision\'s ResNet-50, '
        f'the paper\'s start), \'none\' (random weights), \'synthetic_imagenet\' (the demo\'s '
        f'stand-in) or the path of a {"/".join(WEIGHTS_SUFFIXES)} file')
  if value == PRETRAINED_IMAGENET and not os.path.basename(
      urllib.parse.urlparse(model_cfg.imagenet_url).path):
    raise ConfigError(f'config.model.imagenet_url = {model_cfg.imagenet_url!r} names no file')
