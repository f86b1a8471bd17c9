"""Evaluation of re-id features: SYSU-MM01, RegDB and LLCM protocols, reports, rank lists.

`metrics` scores one distance matrix (fractions); `galleries` draws the per-trial galleries;
`protocols` runs the standard test protocols on extracted features and returns results in
percent; `report` writes JSON, Markdown and a CMC plot; `ranklist` draws queries beside their
top-ranked gallery images.
"""

from vireid_jax.evaluation.galleries import gallery_indices
from vireid_jax.evaluation.galleries import one_per_identity_camera
from vireid_jax.evaluation.metrics import eval_llcm
from vireid_jax.evaluation.metrics import eval_regdb
from vireid_jax.evaluation.metrics import eval_sysu
from vireid_jax.evaluation.metrics import llcm_drop_mask
from vireid_jax.evaluation.metrics import sysu_drop_mask
from vireid_jax.evaluation.protocols import aggregate_files
from vireid_jax.evaluation.protocols import aggregate_trials
from vireid_jax.evaluation.protocols import evaluate_llcm
from vireid_jax.evaluation.protocols import evaluate_regdb
from vireid_jax.evaluation.protocols import evaluate_sysu
from vireid_jax.evaluation.protocols import LLCM_SETTINGS
from vireid_jax.evaluation.protocols import METRIC_KEYS
from vireid_jax.evaluation.protocols import REGDB_SETTINGS
from vireid_jax.evaluation.protocols import setting_name
from vireid_jax.evaluation.ranklist import choose_queries
from vireid_jax.evaluation.ranklist import save_ranklist
from vireid_jax.evaluation.results import display_name
from vireid_jax.evaluation.results import markdown_table
from vireid_jax.evaluation.results import plot_cmc
from vireid_jax.evaluation.results import side_by_side_table
from vireid_jax.evaluation.results import trial_and_mean_table
from vireid_jax.evaluation.results import write_results
